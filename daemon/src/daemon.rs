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
use crate::metrics::DaemonMetrics;
use crate::preflight::Kernel;
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

    let mut ebpf = crate::ebpf::load(settings.ebpf_log_level)?;
    crate::ebpf::forward_logs(&mut ebpf)?;
    let names = AttachedInterfaces::default();
    let probes = probes::interface_probes(&mut ebpf, &names, &metrics)?;
    let mut watcher = LinkWatcher::start().context("subscribing to netlink link notifications")?;
    let mut attachments = Attachments::new(
        ebpf,
        settings.tc_attach,
        &kernel,
        probes,
        settings.interfaces.clone(),
        names,
        metrics,
        watcher.handle().clone(),
    )?;
    attachments.reconcile(&watcher.list().await.context("listing interfaces")?).await;
    ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %settings.listen,
        mode = attachments.mode(),
        patterns = ?settings.interfaces.patterns().collect::<Vec<_>>(),
        attached = attachments.attached_count(),
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
            } else {
                tracing::warn!("netlink notifications stopped; subscribing again and re-listing");
                watcher = LinkWatcher::start().context("subscribing to netlink link notifications")?;
                resync.reset_immediately();
            },
            _ = resync.tick() => match watcher.list().await {
                Ok(interfaces) => attachments.reconcile(&interfaces).await,
                Err(err) => tracing::warn!("listing interfaces failed, will retry: {err}"),
            },
        }
    }
    tracing::info!("stopping: detaching from {} interfaces", attachments.attached_count());
    attachments.detach_all().await;
    let _ = stop_tx.send(true);
    server.await.context("metrics server task")?.context("metrics server")?;
    Ok(())
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
