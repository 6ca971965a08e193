//! `cniguard run`: load the probes, follow the interfaces, serve metrics, clean up on exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::VERSION;
use crate::checks::health::SharedLocalhost;
use crate::config::Settings;
use crate::judgement::baseline::{self, BaselineCollector, BaselineSettings, Baselines, SharedBaselines};
use crate::judgement::phase::{self, PhaseCollector, SharedPhase};
use crate::judgement::signals::Signals;
use crate::judgement::triggers::{self, SharedTriggers, Triggers};
use crate::metrics::DaemonMetrics;
use crate::metrics::labels::PeerLabels;
use crate::node::btf::Btf;
use crate::node::ebpf::Globals;
use crate::node::interfaces::{AttachedInterfaces, LinkWatcher};
use crate::node::namespaces::{self, NetnsScope, SharedInventory};
use crate::node::preflight::Kernel;
use crate::probes::attach::Attachments;
use crate::probes::registry::{self, ProbeContext, ProbeSettings, Probes};
use crate::probes::shared::{CidrClasses, Scope};
use crate::probes::sock_state::LocalAddresses;
use crate::server::{self, Endpoints};
use crate::state_file::StateFile;

/// How often the node's interfaces and routes are read for its phase.
const PHASE_EVERY: Duration = Duration::from_secs(2);

/// Runs until SIGTERM or SIGINT, then detaches everything it attached.
///
/// # Errors
/// If the listen address is taken, or the eBPF object cannot be loaded.
pub async fn run(settings: Settings) -> Result<()> {
    let mut panics = watch_panics();
    let kernel = Kernel::running();
    let metrics = DaemonMetrics::new(VERSION, &kernel.release);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut stop_signals = StopSignals::new()?;

    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set another with --listen)", settings.listen))?;
    let rewriter = crate::server::Rewriter::default();
    let status = crate::judgement::status::SharedSources::default();
    let endpoints = Endpoints {
        registry: metrics.registry.clone(),
        ready: ready.clone(),
        rewriter: rewriter.clone(),
        status: status.clone(),
    };
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(server::serve(listener, endpoints, async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    }));

    let state_dir = state_dir(&settings)?;
    // What the node and cluster mode share, made first so that neither waits for the other.
    let phase = SharedPhase::default();
    let inventory = SharedInventory::default();
    // Cluster mode (a no-op in node-local mode): pod labels, the cluster's view of the
    // phase, check targets (`cluster.targets()`) and trigger Events (`cluster.events()`).
    let cluster = crate::cluster::Cluster::start(
        &settings.cluster,
        crate::cluster::ClusterContext {
            node: node_name(),
            registry: metrics.registry.clone(),
            phase: phase.clone(),
            inventory: inventory.clone(),
            rewriter,
        },
    )
    .await?;
    let (discovered_tx, discovered) = watch::channel(Vec::new());
    crate::checks::follow_cluster_targets(cluster.targets(), discovered_tx);
    let links = Links { status, discovered, events: cluster.events(), phase, inventory };
    let mut node = Node::start(&settings, &kernel, metrics, state_dir.as_deref(), &links).await?;
    crate::heap::release_freed();
    ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %settings.listen,
        mode = node.attachments.mode(),
        patterns = ?settings.interfaces.patterns().collect::<Vec<_>>(),
        attached = node.attachments.attached_count(),
        probes = node.probes.running(),
        probes_off = ?node.probes.off.iter().map(|(probe, _)| probe).collect::<Vec<_>>(),
        "cniguard ready"
    );
    let outcome = tokio::select! {
        () = stop_signals.recv() => Ok(()),
        _ = stop_rx.changed() => Ok(()),
        result = node.follow(settings.resync_interval) => result,
        panic = panics.wait_for(Option::is_some) => Err(anyhow::anyhow!(
            "{}; stopping so that cniguard restarts whole, never running on without a task",
            panic.ok().and_then(|panic| panic.clone()).unwrap_or_default()
        )),
    };
    tracing::info!("stopping: detaching from {} interfaces", node.attachments.attached_count());
    node.attachments.detach_all().await;
    let _ = stop_tx.send(true);
    outcome?;
    server.await.context("metrics server task")?.context("metrics server")?;
    Ok(())
}

/// Every panic, on any task or thread (the baseline thread, the checks, the triggers'
/// evaluator, cluster watchers...), as a message naming the thread: `run` stops the daemon
/// on the first, cleanly, with an error (the DaemonSet restarts it). A task silently gone
/// would leave a daemon that looks healthy and judges nothing.
fn watch_panics() -> watch::Receiver<Option<String>> {
    static PANICS: std::sync::OnceLock<watch::Sender<Option<String>>> = std::sync::OnceLock::new();
    PANICS
        .get_or_init(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                previous(info);
                let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
                if let Some(panics) = PANICS.get() {
                    let message = format!("thread `{thread}` panicked: {info}");
                    panics.send_if_modified(|first| {
                        let unset = first.is_none();
                        if unset {
                            *first = Some(message);
                        }
                        unset
                    });
                }
            }));
            watch::channel(None).0
        })
        .subscribe()
}

/// What ties the node to the parts around it: `/status` (served before the node starts),
/// the check targets cluster mode discovers, the Events trigger changes become, and the
/// phase and namespace inventory cluster mode reads.
struct Links {
    status: crate::judgement::status::SharedSources,
    discovered: watch::Receiver<Vec<crate::checks::Target>>,
    events: crate::cluster::EventRecorder,
    phase: SharedPhase,
    inventory: SharedInventory,
}

/// Every probe of this node, loaded and attached, and what keeps them current.
struct Node {
    attachments: Attachments,
    watcher: LinkWatcher,
    addresses: LocalAddresses,
    namespaces: Namespaces,
    /// Kept for as long as the node runs: dropping it detaches the probes' programs.
    probes: Probes,
    phase: PhaseTracker,
}

/// Reads the node's phase and hands it to the baselines (which keep it across restarts)
/// and to its collector.
struct PhaseTracker {
    baselines: SharedBaselines,
    latest: SharedPhase,
}

impl PhaseTracker {
    /// Loads the baselines, reads the phase once and starts the baseline sampler.
    async fn start(
        settings: BaselineSettings,
        latest: SharedPhase,
        registry: &prometheus::Registry,
        inventory: &SharedInventory,
        signals: Signals,
        file: StateFile,
        watcher: &LinkWatcher,
        attachments: &Attachments,
    ) -> Result<Self> {
        let baselines: SharedBaselines =
            Arc::new(std::sync::Mutex::new(Baselines::load(file, settings.windows)));
        registry.register(Box::new(PhaseCollector::new(latest.clone())))?;
        registry.register(Box::new(BaselineCollector::new(baselines.clone())))?;
        let phase = Self { baselines: baselines.clone(), latest };
        phase.refresh(watcher.handle(), attachments).await;
        baseline::start_sampling(baselines, signals, inventory.clone(), settings.window)
            .context("starting the baseline thread")?;
        Ok(phase)
    }

    async fn refresh(&self, handle: &rtnetlink::Handle, attachments: &Attachments) {
        match phase::Signals::read(handle, attachments.interfaces()).await {
            Ok(signals) => {
                let record = self
                    .baselines
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .observe_phase(signals.phase());
                *self.latest.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((record, signals));
            }
            Err(err) => tracing::warn!("reading the node's routes for its phase failed, will retry: {err}"),
        }
    }
}

/// The state directory, created if missing. One asked for explicitly must work; the
/// default may not (an unprivileged demo run): then baselines live only in memory.
fn state_dir(settings: &Settings) -> Result<Option<std::path::PathBuf>> {
    let state = &settings.state;
    match std::fs::create_dir_all(&state.dir) {
        Ok(()) => Ok(Some(state.dir.clone())),
        Err(err) if state.explicit => {
            anyhow::bail!(
                "cannot create the state directory {}: {err} (choose another with --state-dir)",
                state.dir.display()
            )
        }
        Err(err) => {
            tracing::warn!(
                dir = %state.dir.display(),
                "cannot create the state directory ({err}): baselines will not survive a restart; pass --state-dir"
            );
            Ok(None)
        }
    }
}

/// This node's name: `NODE_NAME` (set from the pod spec in the DaemonSet), else the host name.
fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|name| name.trim().to_owned())
        })
        .unwrap_or_default()
}

impl Node {
    /// Loads the eBPF object, starts every probe of the table (`probes::registry`) and
    /// attaches to the interfaces present, then starts judgement over what they count.
    async fn start(
        settings: &Settings,
        kernel: &Kernel,
        metrics: DaemonMetrics,
        state_dir: Option<&std::path::Path>,
        links: &Links,
    ) -> Result<Self> {
        // Where this kernel keeps the fields the tracepoint programs read, from its BTF.
        // Without it, the probes that need it stay off and the others run.
        let btf = Btf::kernel().and_then(|btf| {
            let mut offsets = btf.kernel_offsets()?;
            registry::prepare_all(&btf, &mut offsets)?;
            Ok((btf, offsets))
        });
        let mut ebpf = crate::node::ebpf::load(&Globals {
            log_level: settings.ebpf_log_level,
            scope: settings.netns_scope,
            kernel: btf.as_ref().map(|(_, offsets)| *offsets).unwrap_or_default(),
        })?;
        let btf = btf.map(|(btf, _)| btf).map_err(|err| format!("{err:#}"));
        crate::node::ebpf::forward_logs(&mut ebpf)?;
        let names = AttachedInterfaces::default();
        let all_names = AttachedInterfaces::default();
        let peers = Arc::new(PeerLabels::new(settings.max_peers, &metrics.registry));
        let classes = Arc::new(CidrClasses::load(&mut ebpf, &settings.cidrs)?);
        let scope = Scope::take(&mut ebpf)?;
        let watcher = LinkWatcher::start().context("subscribing to netlink link notifications")?;
        let addresses: LocalAddresses = Arc::default();
        refresh_addresses(&watcher, &addresses).await;
        let inventory = links.inventory.clone();
        let signals = Signals::default();
        let probe_settings = probe_settings(settings);
        let probes = registry::start_all(&mut ProbeContext {
            ebpf: &mut ebpf,
            btf: &btf,
            settings: &probe_settings,
            attached: &names,
            all_interfaces: &all_names,
            peers: &peers,
            classes: &classes,
            inventory: &inventory,
            addresses: &addresses,
            signals: &signals,
            metrics: &metrics,
        })?;
        let registry = metrics.registry.clone();
        let mut attachments = Attachments::new(
            ebpf,
            settings.tc_attach,
            kernel,
            probes.interface.clone(),
            names,
            all_names,
            metrics,
            watcher.handle().clone(),
        )?;
        attachments.reconcile(watcher.list().await.context("listing interfaces")?).await;
        let rejected = crate::state_file::rejections(&registry)?;
        namespaces::register_metrics(&registry)?;
        let node = node_name();
        let state_file = |name, format| StateFile::new(state_dir, name, format, &node, rejected.clone());
        let phase = PhaseTracker::start(
            settings.baseline,
            links.phase.clone(),
            &registry,
            &inventory,
            signals.clone(),
            state_file(baseline::FILE_NAME, baseline::FORMAT),
            &watcher,
            &attachments,
        )
        .await?;
        let localhost = settings
            .health_check
            .as_ref()
            .map(|check| crate::checks::health::start(check.clone(), inventory.clone(), &registry))
            .transpose()?;
        let (checks, triggers) = start_judgement(
            settings,
            &registry,
            &inventory,
            &phase,
            state_file(triggers::FILE_NAME, triggers::FORMAT),
            links,
        )?;
        let history = crate::live::start(signals.clone(), phase.latest.clone());
        let sources = (signals, phase.latest.clone(), localhost.clone(), watcher.handle().clone());
        let diagnosis = start_diagnosis(settings, sources, &registry, links)?;
        let _ = links.status.set(crate::judgement::status::Sources {
            node,
            phase: phase.latest.clone(),
            triggers,
            checks,
            localhost,
            diagnosis,
            history,
        });
        let namespaces =
            Namespaces { handle: watcher.handle().clone(), mode: settings.netns_scope, inventory, scope };
        namespaces.refresh(&attachments).await;
        Ok(Self { attachments, watcher, addresses, namespaces, probes, phase })
    }

    /// Follows link notifications, re-lists everything every `resync_interval`, and
    /// re-scans namespaces after link changes (pods come and go with their veths), at most
    /// once a second. Returns only on an unrecoverable netlink failure.
    async fn follow(&mut self, resync_interval: Duration) -> Result<()> {
        let mut resync = tokio::time::interval(resync_interval);
        resync.reset();
        let mut links_changed = false;
        let mut rescan = tokio::time::interval(Duration::from_secs(1));
        // Routes (BIRD's) change without a link notification: the phase is re-read often.
        let mut phase_tick = tokio::time::interval(PHASE_EVERY);
        loop {
            tokio::select! {
                change = self.watcher.next() => if let Some(change) = change {
                    self.attachments.apply(change).await;
                    links_changed = true;
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
                () = self.attachments.retry_due() => self.attachments.retry().await,
                _ = phase_tick.tick() => self.phase.refresh(self.watcher.handle(), &self.attachments).await,
                // A burst of link changes (a CNI creating pods) costs one address dump and one
                // namespace scan a second, not one per notification.
                _ = rescan.tick(), if links_changed => {
                    links_changed = false;
                    // A new or re-addressed device may carry the node's address.
                    refresh_addresses(&self.watcher, &self.addresses).await;
                    self.namespaces.refresh(&self.attachments).await;
                },
            }
        }
    }
}

/// The findings over what the probes count, unless `[diagnose] enabled = false`.
fn start_diagnosis(
    settings: &Settings,
    (signals, phase, localhost, handle): (Signals, SharedPhase, Option<SharedLocalhost>, rtnetlink::Handle),
    registry: &prometheus::Registry,
    links: &Links,
) -> Result<Option<crate::diagnose::SharedDiagnosis>> {
    let Some(diagnose) = &settings.diagnose else { return Ok(None) };
    let sources = crate::diagnose::Sources {
        signals,
        phase,
        localhost,
        handle,
        typha_port: settings.typha_port,
        inventory: links.inventory.clone(),
    };
    let events = links.events.clone();
    // In cluster mode, each finding raised or cleared is also an Event on the Node.
    let diagnosis = crate::diagnose::start(diagnose.clone(), sources, registry, move |change| {
        let finding = &change.finding;
        let message = format!("{}: {}; fix: {}", finding.subject, finding.evidence, finding.fix);
        events.record_finding(finding.name.label(), change.raised, &message);
    })?;
    Ok(Some(diagnosis))
}

/// The active checks and the rollback triggers over them, the baselines and the phase.
fn start_judgement(
    settings: &Settings,
    registry: &prometheus::Registry,
    inventory: &SharedInventory,
    phase: &PhaseTracker,
    triggers_file: StateFile,
    links: &Links,
) -> Result<(Option<crate::checks::SharedResults>, Option<SharedTriggers>)> {
    let checks = match &settings.checks {
        Some(checks) => {
            Some(crate::checks::start(checks.clone(), inventory.clone(), links.discovered.clone(), registry)?)
        }
        None => None,
    };
    let Some(trigger_settings) = &settings.triggers else { return Ok((checks, None)) };
    // A carried trigger time before the node's phase record cannot be true.
    let not_before =
        phase.baselines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).phase().map(|r| r.since);
    let triggers: SharedTriggers = Arc::new(std::sync::Mutex::new(Triggers::load(
        trigger_settings.rules.clone(),
        triggers_file,
        not_before,
    )));
    let (results, baselines, phase) =
        (checks.clone().unwrap_or_default(), phase.baselines.clone(), phase.latest.clone());
    let events = links.events.clone();
    triggers::start(
        triggers.clone(),
        registry,
        trigger_settings.evaluate_every,
        move |rules| triggers::gather(rules, &results, &baselines, &phase),
        // In cluster mode, each change is also an Event on the Node.
        move |transition| {
            events.record_trigger(transition.trigger.label(), transition.active, &transition.detail);
        },
    )?;
    Ok((checks, Some(triggers)))
}

/// Each probe's settings, from its owner's section.
fn probe_settings(settings: &Settings) -> ProbeSettings {
    ProbeSettings {
        interfaces: settings.interfaces.clone(),
        vxlan_ports: settings.vxlan_ports.clone(),
        underlay_interfaces: settings.underlay_interfaces.clone(),
        dns: settings.dns.clone(),
        localhost: settings.localhost.clone(),
        typha_port: settings.typha_port,
        drop_locations: settings.drop_locations,
        old_services: settings.diagnose.as_ref().map_or_else(Default::default, |diagnose| {
            (diagnose.old_service_cidrs.clone(), diagnose.old_service_ports.clone())
        }),
    }
}

/// The namespaces in scope, and the programs that need to know them.
struct Namespaces {
    handle: rtnetlink::Handle,
    mode: NetnsScope,
    inventory: SharedInventory,
    /// The programs' copy of the scope (used in node scope).
    scope: Scope,
}

impl Namespaces {
    async fn refresh(&self, attachments: &Attachments) {
        match namespaces::scan(&self.handle, self.mode, &attachments.peer_nsids()).await {
            Ok(inventory) => {
                if self.mode == NetnsScope::Node {
                    self.scope.set(&inventory.ids());
                }
                self.scope.set_cookies(&inventory.by_cookie());
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
pub(crate) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

#[cfg(test)]
mod tests {
    /// A thread that panics (as the baseline thread did on a window of i64::MAX seconds)
    /// is reported, by name, to what stops the daemon; the first panic is the one kept.
    #[test]
    fn a_panicking_thread_is_reported() {
        let panics = super::watch_panics();
        for name in ["baselines", "later"] {
            let thread = std::thread::Builder::new()
                .name(name.into())
                .spawn(|| panic!("overflow when adding duration to instant"))
                .unwrap();
            assert!(thread.join().is_err());
        }
        let first = panics.borrow().clone().expect("the panic was reported");
        assert!(first.starts_with("thread `baselines` panicked: "), "{first}");
        assert!(first.contains("overflow when adding duration to instant"), "{first}");
    }
}
