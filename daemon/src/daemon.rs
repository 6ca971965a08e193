//! `cniguard run`: load the probes, follow the interfaces, serve metrics, clean up on exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::attach::Attachments;
use crate::config::Settings;
use crate::interfaces::LinkWatcher;
use crate::labels::PeerLabels;
use crate::metrics::{AttachFailure, DaemonMetrics};
use crate::namespaces::{self, NetnsScope, SharedInventory};
use crate::preflight::Kernel;
use crate::probes::localhost::Localhost;
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

    let mut node = Node::start(&settings, &kernel, metrics).await?;
    ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %settings.listen,
        mode = node.attachments.mode(),
        patterns = ?settings.interfaces.patterns().collect::<Vec<_>>(),
        attached = node.attachments.attached_count(),
        bgp_peers = node.sock_state.as_ref().map(SockState::known_peers),
        "cniguard ready"
    );
    tokio::select! {
        () = stop_signals.recv() => {}
        _ = stop_rx.changed() => {}
        result = node.follow(settings.resync_interval) => result?,
    }
    tracing::info!("stopping: detaching from {} interfaces", node.attachments.attached_count());
    node.attachments.detach_all().await;
    let _ = stop_tx.send(true);
    server.await.context("metrics server task")?.context("metrics server")?;
    Ok(())
}

/// Every probe of this node, loaded and attached, and what keeps them current.
struct Node {
    attachments: Attachments,
    watcher: LinkWatcher,
    addresses: LocalAddresses,
    namespaces: Namespaces,
    sock_state: Option<SockState>,
}

impl Node {
    /// Loads the eBPF object, starts every probe and attaches to the interfaces present.
    /// A probe the kernel cannot run is left off with a warning and an attach error; the
    /// others run.
    async fn start(settings: &Settings, kernel: &Kernel, metrics: DaemonMetrics) -> Result<Self> {
        // Tracepoint layouts come from this kernel's tracefs.
        let sock_state_fields = probes::sock_state::fields();
        let mut ebpf = crate::ebpf::load(
            settings.ebpf_log_level,
            &sock_state_fields.as_ref().copied().unwrap_or_default(),
            settings.netns_scope,
        )?;
        crate::ebpf::forward_logs(&mut ebpf)?;
        let names = AttachedInterfaces::default();
        let peers = Arc::new(PeerLabels::new(settings.max_peers, &metrics.registry));
        let interface_probes = probes::interface_probes(&mut ebpf, settings, &names, &peers, &metrics)?;
        let watcher = LinkWatcher::start().context("subscribing to netlink link notifications")?;
        let addresses: LocalAddresses = Arc::default();
        refresh_addresses(&watcher, &addresses).await;
        let sock_state = optional(
            probes::sock_state::NAME,
            "BGP session state and Typha connections",
            sock_state_fields.and_then(|_| {
                SockState::start(&mut ebpf, settings.typha_port, addresses.clone(), peers.clone(), &metrics)
            }),
            &metrics,
        );
        let inventory = SharedInventory::default();
        let localhost = optional(
            probes::localhost::NAME,
            "localhost latency",
            Localhost::start(&mut ebpf, settings.localhost.clone(), inventory.clone(), &metrics),
            &metrics,
        );
        let mut attachments = Attachments::new(
            ebpf,
            settings.tc_attach,
            kernel,
            interface_probes,
            names,
            metrics,
            watcher.handle().clone(),
        )?;
        attachments.reconcile(watcher.list().await.context("listing interfaces")?).await;
        let namespaces = Namespaces {
            handle: watcher.handle().clone(),
            scope: settings.netns_scope,
            inventory,
            localhost,
        };
        namespaces.refresh(&attachments).await;
        Ok(Self { attachments, watcher, addresses, namespaces, sock_state })
    }

    /// Follows link notifications, re-lists everything every `resync_interval`, and
    /// re-scans namespaces after link changes (pods come and go with their veths), at most
    /// once a second. Returns only on an unrecoverable netlink failure.
    async fn follow(&mut self, resync_interval: Duration) -> Result<()> {
        let mut resync = tokio::time::interval(resync_interval);
        resync.reset();
        let mut namespaces_changed = false;
        let mut namespace_rescan = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                change = self.watcher.next() => if let Some(change) = change {
                    self.attachments.apply(change).await;
                    // A new or re-addressed device may carry the node's address.
                    refresh_addresses(&self.watcher, &self.addresses).await;
                    namespaces_changed = true;
                } else {
                    tracing::warn!("netlink notifications stopped; subscribing again and re-listing");
                    self.watcher = LinkWatcher::start().context("subscribing to netlink link notifications")?;
                    resync.reset_immediately();
                },
                _ = resync.tick() => {
                    match self.watcher.list().await {
                        Ok(interfaces) => self.attachments.reconcile(interfaces).await,
                        Err(err) => tracing::warn!("listing interfaces failed, will retry: {err}"),
                    }
                    refresh_addresses(&self.watcher, &self.addresses).await;
                    self.namespaces.refresh(&self.attachments).await;
                },
                _ = namespace_rescan.tick(), if namespaces_changed => {
                    namespaces_changed = false;
                    self.namespaces.refresh(&self.attachments).await;
                },
            }
        }
    }
}

/// A probe that started, or `None` with a warning (`<what> is off: why`) and an attach
/// error counted as `unsupported`.
fn optional<T>(probe: &'static str, what: &str, started: Result<T>, metrics: &DaemonMetrics) -> Option<T> {
    match started {
        Ok(probe) => Some(probe),
        Err(err) => {
            tracing::warn!("{what} is off: {err:#}");
            metrics.attach_errors.with_label_values(&[probe, AttachFailure::Unsupported.label()]).inc();
            None
        }
    }
}

/// The namespaces in scope, and the probes that need to know them.
struct Namespaces {
    handle: rtnetlink::Handle,
    scope: NetnsScope,
    inventory: SharedInventory,
    localhost: Option<Arc<Localhost>>,
}

impl Namespaces {
    async fn refresh(&self, attachments: &Attachments) {
        match namespaces::scan(&self.handle, self.scope, &attachments.peer_nsids()).await {
            Ok(inventory) => {
                if let Some(localhost) = &self.localhost
                    && self.scope == NetnsScope::Node
                {
                    localhost.set_scope(&inventory.cookies());
                }
                *self.inventory.write().unwrap_or_else(std::sync::PoisonError::into_inner) = inventory;
            }
            Err(err) => tracing::warn!("scanning network namespaces failed, will retry: {err:#}"),
        }
    }
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
