//! `localhost`: the Seldon agent's path to its MLServer over 127.0.0.1 inside every pod,
//! measured passively: connect and request-to-response latency, and failures. (The active
//! health check, `[localhost.check]`, is `checks::health`.)
//!
//! Two hooks, both one attachment for every namespace, pods that appear later included,
//! with nothing to attach or detach as they come and go; the first this kernel accepts is
//! used, found by loading it (never by version number):
//!
//! - `cgroup_skb` programs on the cgroup v2 root, where the kernel allows
//!   `bpf_get_netns_cookie` in them (not 6.12; 6.18 does). Their cookie is turned into the
//!   namespace's inode number through `NETNS_BY_COOKIE`, which the daemon writes with
//!   every namespace scan (`shared::Scope`), before the scan is used.
//! - else fentry on `loopback_xmit` (5.5 and later, with BTF), which reads the namespace
//!   from the device (`dev->nd_net->ns.inum`). It runs for loopback packets only: traffic
//!   on every other device never reaches it, where `cgroup_skb` programs run (and return
//!   at once) for every packet of every socket, and a raw tracepoint on `net_dev_xmit`
//!   would run for every packet of every device. A classifier on each pod's `lo` would
//!   cost non-loopback traffic nothing either, but needs one attachment per namespace,
//!   misses a pod's first connections until it is attached, and could not watch the
//!   node's own `lo` (nothing is attached there).
//! - else (a kernel that refuses fentry, as this machine's does) the `net_dev_start_xmit`
//!   raw tracepoint, which fires for every device and returns at once for all but
//!   loopback (index 1 in every namespace).
//!
//! Every map is keyed by the namespace's inode number (see `namespaces`).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry};
use probe_common::counters::Histogram;
use probe_common::localhost::{
    ConnectionKey, ConnectionState, ExchangeState, FailureKey, FailureReason, LatencyKey, LatencyKind, Phase,
    Protocol, StreamKey, http2_error_code,
};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use serde::Deserialize;

use crate::checks::health::HealthCheckConfig;
use crate::judgement::signals::{SignalSource, Totals, add_buckets};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::btf::Btf;
use crate::node::namespaces::{self, SharedInventory};
use crate::probes::registry::{ProbeSpec, Programs, Started};
use crate::probes::shared::{LatencyTotals, attach_raw_tracepoint, monotonic_ns, summed};

pub const NAME: &str = "localhost";
const LABELS: &[&str] = &["netns", "port"];
const RESPONSE_LABELS: &[&str] = &["netns", "port", "protocol"];
const FAILURE_LABELS: &[&str] = &["netns", "port", "reason"];
const STREAM_FAILURE_LABELS: &[&str] = &["netns", "port", "frame", "code"];

/// The `[localhost]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalhostConfig {
    /// Server ports whose loopback connections are measured: MLServer's as Seldon Core v2
    /// runs it (HTTP 9000, gRPC 9500) and standalone (8080, 8081).
    pub ports: Vec<u16>,
    /// A SYN unanswered this long is a `timeout` failure.
    pub connect_timeout_seconds: u64,
    /// A connection silent this long is forgotten (its state reclaimed).
    pub idle_timeout_seconds: u64,
    /// Which hook the programs use; `auto`, the first the kernel accepts, unless testing.
    pub hook: LocalhostHook,
    /// The active check, HTTP `GET /v2/health/ready` on 9000 and gRPC `ServerReady` on 9500
    /// (`checks::health` owns it).
    pub check: HealthCheckConfig,
}

/// Where the localhost programs attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalhostHook {
    /// `cgroup_skb` where the kernel allows `bpf_get_netns_cookie` there, else
    /// `loopback_xmit`, else `net_dev_start_xmit`.
    #[default]
    Auto,
    /// `cgroup_skb` programs on the cgroup v2 root only.
    CgroupSkb,
    /// fentry on `loopback_xmit` only.
    LoopbackXmit,
    /// The `net_dev_start_xmit` raw tracepoint only.
    NetDevStartXmit,
}

impl LocalhostHook {
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::CgroupSkb => "cgroup_skb",
            Self::LoopbackXmit => "loopback_xmit",
            Self::NetDevStartXmit => "net_dev_start_xmit",
        }
    }
}

impl Default for LocalhostConfig {
    fn default() -> Self {
        Self {
            ports: vec![9000, 9500, 8080, 8081],
            connect_timeout_seconds: 3,
            idle_timeout_seconds: 600,
            hook: LocalhostHook::Auto,
            check: HealthCheckConfig::default(),
        }
    }
}

/// The validated `[localhost]` table, less its `check`.
#[derive(Debug, Clone)]
pub struct LocalhostSettings {
    pub ports: Vec<u16>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub hook: LocalhostHook,
}

/// What is wrong with the `[localhost]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalhostError {
    #[error("list at least one port, and no port 0")]
    NoPorts,
    #[error("at most {max} ports")]
    TooManyPorts { max: u32 },
    #[error("timeouts must be at least 1 second")]
    Timeout,
}

impl LocalhostError {
    /// The configuration field the error is about.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::NoPorts | Self::TooManyPorts { .. } => "localhost.ports",
            Self::Timeout => "localhost.connect_timeout_seconds",
        }
    }
}

impl LocalhostConfig {
    pub fn validate(&self) -> Result<LocalhostSettings, LocalhostError> {
        if self.ports.is_empty() || self.ports.contains(&0) {
            return Err(LocalhostError::NoPorts);
        }
        let max = probe_common::localhost::LOCALHOST_PORTS_MAX_ENTRIES;
        if self.ports.len() > max as usize {
            return Err(LocalhostError::TooManyPorts { max });
        }
        if self.connect_timeout_seconds == 0 || self.idle_timeout_seconds == 0 {
            return Err(LocalhostError::Timeout);
        }
        Ok(LocalhostSettings {
            ports: self.ports.clone(),
            connect_timeout: Duration::from_secs(self.connect_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            hook: self.hook,
        })
    }
}

pub struct Localhost {
    _links: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// The hook in use: `cgroup_skb` or `loopback_xmit`.
    pub hook: LocalhostHook,
    connections: Mutex<HashMap<MapData, ConnectionKey, ConnectionState>>,
    /// The HTTP walks and HTTP/2 streams of the connections: reclaimed with them.
    exchanges: Mutex<HashMap<MapData, ConnectionKey, ExchangeState>>,
    streams: Mutex<HashMap<MapData, StreamKey, u64>>,
    latency: Mutex<PerCpuHashMap<MapData, LatencyKey, Histogram>>,
    failures: Mutex<PerCpuHashMap<MapData, FailureKey, u64>>,
    /// Timeouts, counted here: a SYN that is never answered leaves no packet to see.
    timeouts: Mutex<BTreeMap<(u64, u16), u64>>,
    inventory: SharedInventory,
    settings: LocalhostSettings,
}

impl Localhost {
    /// Loads and attaches the programs on the first hook the kernel accepts, registers the
    /// metrics and starts the sweeper.
    ///
    /// # Errors
    /// If the kernel refuses both hooks (the reasons of both are given).
    pub fn start(
        ebpf: &mut Ebpf,
        btf: &Result<Btf, String>,
        settings: LocalhostSettings,
        inventory: SharedInventory,
        metrics: &DaemonMetrics,
    ) -> Result<Arc<Self>> {
        let mut take =
            |name: &str| ebpf.take_map(name).with_context(|| format!("the eBPF object has no {name} map"));
        let mut ports: HashMap<MapData, u16, u8> = HashMap::try_from(take("LOCALHOST_PORTS")?)?;
        for port in &settings.ports {
            ports.insert(port, 1, 0)?;
        }
        let connections = HashMap::try_from(take("CONNECTIONS")?)?;
        let exchanges = HashMap::try_from(take("EXCHANGES")?)?;
        let streams = HashMap::try_from(take("STREAMS")?)?;
        let latency = PerCpuHashMap::try_from(take("LATENCY")?)?;
        let failures = PerCpuHashMap::try_from(take("FAILURES")?)?;
        let (hook, links, place) = match settings.hook {
            LocalhostHook::CgroupSkb => attach_cgroup_skb(ebpf)?,
            LocalhostHook::LoopbackXmit => attach_loopback_xmit(ebpf, btf)?,
            LocalhostHook::NetDevStartXmit => attach_net_dev_start_xmit(ebpf, btf)?,
            LocalhostHook::Auto => attach_cgroup_skb(ebpf)
                .or_else(|cgroup| {
                    attach_loopback_xmit(ebpf, btf).map_err(|fentry| {
                        anyhow::anyhow!("cgroup_skb: {cgroup:#}; loopback_xmit: {fentry:#}")
                    })
                })
                .or_else(|both| {
                    attach_net_dev_start_xmit(ebpf, btf)
                        .map_err(|tracepoint| tracepoint.context(format!("and before it, {both:#}")))
                })?,
        };
        // The programs hold the map now; its fd had to stay open until they loaded.
        drop(ports);
        let probe = Arc::new(Self {
            _links: links,
            hook,
            connections: Mutex::new(connections),
            exchanges: Mutex::new(exchanges),
            streams: Mutex::new(streams),
            latency: Mutex::new(latency),
            failures: Mutex::new(failures),
            timeouts: Mutex::new(BTreeMap::new()),
            inventory,
            settings,
        });
        metrics.registry.register(Box::new(LocalhostCollector::new(probe.clone())))?;
        let sweeper = probe.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                sweeper.sweep();
            }
        });
        tracing::info!(hook = hook.label(), at = %place, ports = ?probe.settings.ports, "localhost probe attached");
        Ok(probe)
    }

    /// Counts SYNs unanswered for longer than the connect timeout as timeouts, forgets
    /// connections silent for longer than the idle timeout (with their walks and streams),
    /// and drops what is kept for namespaces that are gone.
    fn sweep(&self) {
        let now = monotonic_ns();
        let connect_timeout = u64::try_from(self.settings.connect_timeout.as_nanos()).unwrap_or(u64::MAX);
        let idle_timeout = u64::try_from(self.settings.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        let entries: Vec<(ConnectionKey, ConnectionState)> =
            connections.iter().filter_map(Result::ok).collect();
        let mut live_connections = std::collections::HashSet::with_capacity(entries.len());
        for (key, state) in entries {
            if state.phase == Phase::SynSent as u8 && now.saturating_sub(state.since_ns) > connect_timeout {
                *self
                    .timeouts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry((key.netns, key.server_port))
                    .or_default() += 1;
                let _ = connections.remove(&key);
            } else if now.saturating_sub(state.last_ns) > idle_timeout {
                let _ = connections.remove(&key);
            } else {
                live_connections.insert(key);
            }
        }
        drop(connections);
        // A walk or stream whose connection is gone (closed, timed out, idle) goes too. A
        // walk is made after its connection, so one seen here without it is stale.
        let mut exchanges = self.exchanges.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<ConnectionKey> =
            exchanges.keys().filter_map(Result::ok).filter(|key| !live_connections.contains(key)).collect();
        for key in stale {
            let _ = exchanges.remove(&key);
        }
        drop(exchanges);
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<StreamKey> = streams
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !live_connections.contains(&key.connection))
            .collect();
        for key in stale {
            let _ = streams.remove(&key);
        }
        drop(streams);
        let live = namespaces::read(&self.inventory).ids();
        if live.is_empty() {
            return; // not scanned yet
        }
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<LatencyKey> =
            latency.keys().filter_map(Result::ok).filter(|k| !live.contains(&k.netns)).collect();
        for key in stale {
            let _ = latency.remove(&key);
        }
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<FailureKey> =
            failures.keys().filter_map(Result::ok).filter(|k| !live.contains(&k.netns)).collect();
        for key in stale {
            let _ = failures.remove(&key);
        }
        self.timeouts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(netns, _), _| live.contains(netns));
    }
}

type Attached = (LocalhostHook, Vec<Box<dyn std::any::Any + Send + Sync>>, String);

/// The first hook whose programs this kernel loads, in `auto`'s order, as `run` would pick
/// it (`cniguard check` asks this; nothing is attached).
///
/// # Errors
/// Why each hook was refused.
pub fn load_first(ebpf: &mut Ebpf, btf: &Result<Btf, String>) -> Result<&'static str> {
    let Err(cgroup) = load_cgroup_skb(ebpf) else { return Ok("cgroup_skb") };
    let Err(fentry) = load_loopback_xmit(ebpf, btf) else { return Ok("loopback_xmit") };
    load_net_dev_start_xmit(ebpf, btf).map(|()| "net_dev_start_xmit").map_err(|err| {
        err.context(format!("and before it, cgroup_skb: {cgroup:#}; loopback_xmit: {fentry:#}"))
    })
}

const CGROUP_PROGRAMS: [(&str, CgroupSkbAttachType); 2] =
    [("localhost_egress", CgroupSkbAttachType::Egress), ("localhost_ingress", CgroupSkbAttachType::Ingress)];

/// Loads both `cgroup_skb` programs: the kernel must allow `bpf_get_netns_cookie` in them.
fn load_cgroup_skb(ebpf: &mut Ebpf) -> Result<[(&'static str, CgroupSkbAttachType); 2]> {
    for (function, _) in CGROUP_PROGRAMS {
        let program: &mut CgroupSkb = ebpf
            .program_mut(function)
            .with_context(|| format!("the eBPF object has no program {function}"))?
            .try_into()?;
        program.load().with_context(|| {
            format!("loading {function} (the kernel must allow bpf_get_netns_cookie in cgroup_skb programs)")
        })?;
    }
    Ok(CGROUP_PROGRAMS)
}

/// Loads both `cgroup_skb` programs, then attaches them to the cgroup v2 root.
fn attach_cgroup_skb(ebpf: &mut Ebpf) -> Result<Attached> {
    let programs = load_cgroup_skb(ebpf)?;
    let root = crate::node::cgroup2_root()?;
    let cgroup =
        File::open(&root).with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
    let mut links: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    for (function, attach_type) in programs {
        let program: &mut CgroupSkb = ebpf
            .program_mut(function)
            .with_context(|| format!("the eBPF object has no program {function}"))?
            .try_into()?;
        // aya attaches with a BPF link here (Linux 5.7+), which is always one program of
        // many on the cgroup, so others' programs keep running; the kernel takes no
        // flags for that (`Single` is flags 0, where `AllowMultiple` would be refused).
        let link = program
            .attach(cgroup.as_fd(), attach_type, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {function} to {}", root.display()))?;
        links.push(Box::new(program.take_link(link)?));
    }
    Ok((LocalhostHook::CgroupSkb, links, root.display().to_string()))
}

/// Loads `localhost_xmit` as fentry on `loopback_xmit` and attaches it. It reads the skb
/// and the device at offsets from the kernel's BTF, in `KERNEL_OFFSETS` since the object
/// was loaded.
fn attach_loopback_xmit(ebpf: &mut Ebpf, btf: &Result<Btf, String>) -> Result<Attached> {
    load_loopback_xmit(ebpf, btf)?;
    let program: &mut FEntry = ebpf
        .program_mut(XMIT_PROGRAM)
        .with_context(|| format!("the eBPF object has no program {XMIT_PROGRAM}"))?
        .try_into()?;
    let link = program.attach().with_context(|| format!("attaching {XMIT_PROGRAM} to loopback_xmit"))?;
    let link = program.take_link(link)?;
    Ok((LocalhostHook::LoopbackXmit, vec![Box::new(link)], "loopback_xmit".to_owned()))
}

const XMIT_PROGRAM: &str = "localhost_xmit";

fn load_loopback_xmit(ebpf: &mut Ebpf, btf: &Result<Btf, String>) -> Result<()> {
    const FUNCTION: &str = XMIT_PROGRAM;
    btf.as_ref()
        .map_err(|err| anyhow::anyhow!("{FUNCTION} reads kernel structs at offsets from BTF: {err}"))?;
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF for fentry")?;
    let program: &mut FEntry = ebpf
        .program_mut(FUNCTION)
        .with_context(|| format!("the eBPF object has no program {FUNCTION}"))?
        .try_into()?;
    program
        .load("loopback_xmit", &btf)
        .with_context(|| format!("loading {FUNCTION} (fentry on loopback_xmit)"))?;
    Ok(())
}

/// Loads `localhost_dev_xmit` and attaches it to the `net_dev_start_xmit` raw tracepoint,
/// after checking the tracepoint's arguments in the kernel's BTF.
fn attach_net_dev_start_xmit(ebpf: &mut Ebpf, btf: &Result<Btf, String>) -> Result<Attached> {
    let btf =
        btf.as_ref().map_err(|err| anyhow::anyhow!("{DEV_XMIT_TRACEPOINT} needs the kernel's BTF: {err}"))?;
    let (link, _) = attach_raw_tracepoint(ebpf, btf, DEV_XMIT_PROGRAM, DEV_XMIT_TRACEPOINT, DEV_XMIT_ARGS)?;
    Ok((LocalhostHook::NetDevStartXmit, vec![Box::new(link)], DEV_XMIT_TRACEPOINT.to_owned()))
}

const DEV_XMIT_PROGRAM: &str = "localhost_dev_xmit";
const DEV_XMIT_TRACEPOINT: &str = "net_dev_start_xmit";
const DEV_XMIT_ARGS: &[&str] = &["sk_buff*", "net_device*"];

fn load_net_dev_start_xmit(ebpf: &mut Ebpf, btf: &Result<Btf, String>) -> Result<()> {
    let btf =
        btf.as_ref().map_err(|err| anyhow::anyhow!("{DEV_XMIT_TRACEPOINT} needs the kernel's BTF: {err}"))?;
    btf.check_tracepoint(DEV_XMIT_TRACEPOINT, DEV_XMIT_ARGS)?;
    let program: &mut aya::programs::RawTracePoint = ebpf
        .program_mut(DEV_XMIT_PROGRAM)
        .with_context(|| format!("the eBPF object has no program {DEV_XMIT_PROGRAM}"))?
        .try_into()?;
    program.load().with_context(|| format!("loading {DEV_XMIT_PROGRAM}"))
}

impl Localhost {
    /// The connect histograms by `netns` and `port`, and the response histograms by
    /// `netns`, `port` and `protocol`, of the namespaces watched.
    fn latency(&self) -> (LatencyTotals, LatencyTotals) {
        let inventory = namespaces::read(&self.inventory);
        let (mut connect, mut response) = (LatencyTotals::default(), LatencyTotals::default());
        for (key, per_cpu) in
            self.latency.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Result::ok)
        {
            let Some(netns) = inventory.label(key.netns) else { continue };
            if key.kind == LatencyKind::Connect as u8 {
                connect.add(vec![netns, key.port.to_string()], &per_cpu);
            } else {
                let protocol = Protocol::from_u8(key.protocol).label().to_owned();
                response.add(vec![netns, key.port.to_string(), protocol], &per_cpu);
            }
        }
        (connect, response)
    }
}

impl SignalSource for Localhost {
    fn add_to(&self, totals: &mut Totals) {
        let (_, response) = self.latency();
        add_buckets(&mut totals.localhost_response, response.summed_buckets());
        for (pod, buckets) in response.summed_buckets_by_first_label() {
            add_buckets(totals.localhost_response_by_pod.entry(pod).or_default(), buckets);
        }
    }
}

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "localhost latency",
    loses: "cniguard_localhost_connect_* and _response_seconds: the in-pod 127.0.0.1 latency, and the localhost_latency_slo trigger",
    programs: Programs::FirstLoading(load_first),
    needs: &[],
    required: false,
    prepare: None,
    start: |context| {
        let probe = Localhost::start(
            context.ebpf,
            context.btf,
            context.settings.localhost.clone(),
            context.inventory.clone(),
            context.metrics,
        )?;
        context.signals.publish(probe.clone());
        Ok(Started::Running(Box::new(probe)))
    },
};

struct LocalhostCollector {
    probe: Arc<Localhost>,
    connect: Desc,
    response: Desc,
    failures: Desc,
    stream_failures: Desc,
    unmeasured: Desc,
}

impl LocalhostCollector {
    fn new(probe: Arc<Localhost>) -> Self {
        Self {
            probe,
            connect: catalogue::LOCALHOST_CONNECT_SECONDS.desc(),
            response: catalogue::LOCALHOST_RESPONSE_SECONDS.desc(),
            failures: catalogue::LOCALHOST_CONNECT_FAILURES_TOTAL.desc(),
            stream_failures: catalogue::LOCALHOST_STREAM_FAILURES_TOTAL.desc(),
            unmeasured: catalogue::LOCALHOST_UNMEASURED_TOTAL.desc(),
        }
    }
}

impl Collector for LocalhostCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.connect, &self.response, &self.failures, &self.stream_failures, &self.unmeasured]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let probe = &self.probe;
        let (connect, response) = probe.latency();
        let inventory = namespaces::read(&probe.inventory);
        let (connect, response) =
            (connect.family(&self.connect, LABELS), response.family(&self.response, RESPONSE_LABELS));
        let mut failures: BTreeMap<[String; 3], u64> = BTreeMap::new();
        let mut stream_failures: BTreeMap<[String; 4], u64> = BTreeMap::new();
        let mut unmeasured: BTreeMap<[String; 3], u64> = BTreeMap::new();
        for (key, count) in summed(&probe.failures) {
            let (Some(netns), Some(reason)) =
                (inventory.label(key.netns), FailureReason::from_u8(key.reason))
            else {
                continue;
            };
            let port = key.port.to_string();
            if FailureReason::STREAM.contains(&reason) {
                let code = http2_error_code(key.code).to_owned();
                *stream_failures.entry([netns, port, reason.label().to_owned(), code]).or_default() += count;
            } else if FailureReason::UNMEASURED.contains(&reason) {
                *unmeasured.entry([netns, port, reason.label().to_owned()]).or_default() += count;
            } else {
                *failures.entry([netns, port, reason.label().to_owned()]).or_default() += count;
            }
        }
        for ((netns, port), count) in probe.timeouts.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let Some(netns) = inventory.label(*netns) else { continue };
            *failures
                .entry([netns, port.to_string(), FailureReason::Timeout.label().to_owned()])
                .or_default() += count;
        }
        let mut failure_family = FamilyBuilder::counter(&self.failures, FAILURE_LABELS);
        for (labels, count) in &failures {
            failure_family.sample(&[&labels[0], &labels[1], &labels[2]], *count as f64);
        }
        let mut stream_family = FamilyBuilder::counter(&self.stream_failures, STREAM_FAILURE_LABELS);
        for (labels, count) in &stream_failures {
            stream_family.sample(&[&labels[0], &labels[1], &labels[2], &labels[3]], *count as f64);
        }
        let mut unmeasured_family = FamilyBuilder::counter(&self.unmeasured, FAILURE_LABELS);
        for (labels, count) in &unmeasured {
            unmeasured_family.sample(&[&labels[0], &labels[1], &labels[2]], *count as f64);
        }
        [connect, response, failure_family.build(), stream_family.build(), unmeasured_family.build()]
            .into_iter()
            .flatten()
            .collect()
    }
}
