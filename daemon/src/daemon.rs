//! `cniguard run`: load the probes, follow the interfaces, serve metrics, clean up on exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::attach::Attachments;
use crate::config::Settings;
use crate::interfaces::LinkWatcher;
use crate::labels::PeerLabels;
use crate::metrics::{AttachFailure, DaemonMetrics};
use crate::preflight::Kernel;
use crate::probes::sock_state::{LocalAddresses, SockState};
use crate::probes::{self, AttachedInterfaces};
use crate::server::{self, Endpoints};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs until SIGTERM or SIGINT, then detaches everything it attached.
///
/// # Errors
/// If the listen address is taken, or the eBPF object cannot be loaded.
pub async fn run(settings: Settings) -> Result<()> {
    let kernel = Kernel::running();
    let metrics = DaemonMetrics::new(VERSION, &kernel.release);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut stop_signals = StopSignals::new()?;

    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set another with --listen)", settings.listen))?;
    let endpoints = Endpoints { registry: metrics.registry.clone(), ready: ready.clone() };
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(server::serve(listener, endpoints, async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    }));

    // Tracepoint layouts come from this kernel's tracefs; without them, the socket probe
    // stays off and says why, and everything else runs.
    let sock_state_fields = probes::sock_state::fields();
    if let Err(err) = &sock_state_fields {
        tracing::warn!("BGP session state and Typha connections are off: {err:#}");
        metrics
            .attach_errors
            .with_label_values(&[probes::sock_state::NAME, AttachFailure::Unsupported.label()])
            .inc();
    }
    let mut ebpf =
        crate::ebpf::load(settings.ebpf_log_level, &sock_state_fields.as_ref().copied().unwrap_or_default())?;
    crate::ebpf::forward_logs(&mut ebpf)?;
    let names = AttachedInterfaces::default();
    let peers = Arc::new(PeerLabels::new(settings.max_peers, &metrics.registry));
    let probes = probes::interface_probes(&mut ebpf, &settings, &names, &peers, &metrics)?;
    let mut watcher = LinkWatcher::start().context("subscribing to netlink link notifications")?;
    let addresses: LocalAddresses = Arc::default();
    refresh_addresses(&watcher, &addresses).await;
    let sock_state = match sock_state_fields {
        Ok(_) => {
            match SockState::start(&mut ebpf, settings.typha_port, addresses.clone(), peers.clone(), &metrics)
            {
                Ok(probe) => Some(probe),
                Err(err) => {
                    tracing::warn!("BGP session state and Typha connections are off: {err:#}");
                    metrics
                        .attach_errors
                        .with_label_values(&[
                            probes::sock_state::NAME,
                            AttachFailure::from_errno(None).label(),
                        ])
                        .inc();
                    None
                }
            }
        }
        Err(_) => None,
    };
    let mut attachments = Attachments::new(
        ebpf,
        settings.tc_attach,
        &kernel,
        probes,
        names,
        metrics,
        watcher.handle().clone(),
    )?;
    attachments.reconcile(watcher.list().await.context("listing interfaces")?).await;
    ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %settings.listen,
        mode = attachments.mode(),
        patterns = ?settings.interfaces.patterns().collect::<Vec<_>>(),
        attached = attachments.attached_count(),
        bgp_peers = sock_state.as_ref().map(SockState::known_peers),
        "cniguard ready"
    );

    let mut resync = tokio::time::interval(settings.resync_interval);
    resync.reset();
    loop {
        tokio::select! {
            () = stop_signals.recv() => break,
            _ = stop_rx.changed() => break,
            change = watcher.next() => if let Some(change) = change {
                attachments.apply(change).await;
                // A new or re-addressed device may carry the node's address.
                refresh_addresses(&watcher, &addresses).await;
            } else {
                tracing::warn!("netlink notifications stopped; subscribing again and re-listing");
                watcher = LinkWatcher::start().context("subscribing to netlink link notifications")?;
                resync.reset_immediately();
            },
            _ = resync.tick() => {
                match watcher.list().await {
                    Ok(interfaces) => attachments.reconcile(interfaces).await,
                    Err(err) => tracing::warn!("listing interfaces failed, will retry: {err}"),
                }
                refresh_addresses(&watcher, &addresses).await;
            },
        }
    }
    tracing::info!("stopping: detaching from {} interfaces", attachments.attached_count());
    attachments.detach_all().await;
    let _ = stop_tx.send(true);
    server.await.context("metrics server task")?.context("metrics server")?;
    Ok(())
}

/// Re-reads the node's own addresses (which tell its sockets from other namespaces').
async fn refresh_addresses(watcher: &LinkWatcher, addresses: &LocalAddresses) {
    match watcher.ipv4_addresses().await {
        Ok(current) => *addresses.write().unwrap_or_else(std::sync::PoisonError::into_inner) = current,
        Err(err) => tracing::warn!("listing addresses failed, will retry: {err}"),
    }
}

/// SIGTERM (Kubernetes, systemd) and SIGINT (a terminal).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
