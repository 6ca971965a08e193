//! `localhost`: the Seldon agent's path to its MLServer over 127.0.0.1 inside every pod,
//! measured passively (connect and request-to-response latency, failures) and, when
//! configured, actively (the runbook's health check, run by the daemon in the pod).
//!
//! Why socket hooks on the root cgroup rather than a classifier on each pod's `lo`: one
//! attachment sees the loopback of every namespace, including pods that appear after the
//! daemon started, with nothing to attach or detach as they come and go, and the
//! namespace cookie of each packet tells the pods apart. The daemon only has to keep the
//! cookie-to-name inventory current (see `namespaces`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::programs::cgroup_skb::CgroupSkbLink;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use probe_common::localhost::{
    ConnectionKey, ConnectionState, FailureKey, FailureReason, Histogram, LatencyKey, LatencyKind, Phase,
};
use prometheus::GaugeVec;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::config::{CheckSettings, LocalhostSettings};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::namespaces::{self, SharedInventory};
use crate::probes::shared::{LatencyTotals, summed};
use crate::probes::underlay::monotonic_ns;

pub const NAME: &str = "localhost";
const LABELS: &[&str] = &["netns", "port"];
const FAILURE_LABELS: &[&str] = &["netns", "port", "reason"];

pub struct Localhost {
    _links: Vec<CgroupSkbLink>,
    connections: Mutex<HashMap<MapData, ConnectionKey, ConnectionState>>,
    latency: Mutex<PerCpuHashMap<MapData, LatencyKey, Histogram>>,
    failures: Mutex<PerCpuHashMap<MapData, FailureKey, u64>>,
    /// Timeouts, counted here: a SYN that is never answered leaves no packet to see.
    timeouts: Mutex<BTreeMap<(u64, u16), u64>>,
    inventory: SharedInventory,
    settings: LocalhostSettings,
}

impl Localhost {
    /// Attaches the programs to the root cgroup, registers the metrics and starts the
    /// sweeper (and the active check, if configured).
    ///
    /// # Errors
    /// If there is no cgroup v2 mount, or the kernel refuses the programs (it must allow
    /// `bpf_get_netns_cookie` in `cgroup_skb` programs).
    pub fn start(
        ebpf: &mut Ebpf,
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
        let latency = PerCpuHashMap::try_from(take("LATENCY")?)?;
        let failures = PerCpuHashMap::try_from(take("FAILURES")?)?;
        let root = cgroup2_root()?;
        let cgroup =
            File::open(&root).with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
        let mut links = Vec::new();
        for (function, attach_type) in [
            ("localhost_egress", CgroupSkbAttachType::Egress),
            ("localhost_ingress", CgroupSkbAttachType::Ingress),
        ] {
            let program: &mut CgroupSkb = ebpf
                .program_mut(function)
                .with_context(|| format!("the eBPF object has no program {function}"))?
                .try_into()?;
            program.load().with_context(|| {
                format!(
                    "loading {function} (the kernel must allow bpf_get_netns_cookie in cgroup_skb programs)"
                )
            })?;
            // aya attaches with a BPF link here (Linux 5.7+), which is always one program of
            // many on the cgroup, so others' programs keep running; the kernel takes no
            // flags for that (`Single` is flags 0, where `AllowMultiple` would be refused).
            let link = program
                .attach(cgroup.as_fd(), attach_type, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {function} to {}", root.display()))?;
            links.push(program.take_link(link)?);
        }
        drop(ports);
        let probe = Arc::new(Self {
            _links: links,
            connections: Mutex::new(connections),
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
        if let Some(check) = probe.settings.check.clone() {
            let success = catalogue::LOCALHOST_PROBE_SUCCESS.gauge_vec()?;
            let seconds = catalogue::LOCALHOST_PROBE_SECONDS.gauge_vec()?;
            metrics.registry.register(Box::new(success.clone()))?;
            metrics.registry.register(Box::new(seconds.clone()))?;
            tokio::spawn(run_checks(probe.inventory.clone(), check, success, seconds));
        }
        tracing::info!(root = %root.display(), ports = ?probe.settings.ports, "localhost probe attached to the cgroup v2 root");
        Ok(probe)
    }

    /// Counts SYNs unanswered for longer than the connect timeout as timeouts, forgets
    /// connections silent for longer than the idle timeout, and drops what is kept for
    /// namespaces that are gone.
    fn sweep(&self) {
        let now = monotonic_ns();
        let connect_timeout = u64::try_from(self.settings.connect_timeout.as_nanos()).unwrap_or(u64::MAX);
        let idle_timeout = u64::try_from(self.settings.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        let entries: Vec<(ConnectionKey, ConnectionState)> =
            connections.iter().filter_map(Result::ok).collect();
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
            }
        }
        drop(connections);
        let live = namespaces::read(&self.inventory).cookies();
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

/// Where cgroup v2 is mounted (its root holds every process of the host).
fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(path))
        })
        .context("no cgroup v2 mount (mount -t cgroup2 none /sys/fs/cgroup/unified): the localhost probe needs one")
}

/// Runs the active check in every selected namespace at each interval, for as long as the
/// daemon runs; series of namespaces no longer checked are removed.
async fn run_checks(inventory: SharedInventory, check: CheckSettings, success: GaugeVec, seconds: GaugeVec) {
    let mut ticker = tokio::time::interval(check.interval);
    let mut checked: BTreeSet<String> = BTreeSet::new();
    let port = check.port.to_string();
    loop {
        ticker.tick().await;
        let targets: Vec<(String, PathBuf)> = namespaces::read(&inventory)
            .by_cookie
            .values()
            .filter(|ns| !ns.own && check.namespaces.is_match(ns.label()))
            .map(|ns| (ns.label(), ns.path.clone()))
            .collect();
        let mut pending = Vec::new();
        for (label, path) in targets {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let (http_path, timeout, target_port) = (check.path.clone(), check.timeout, check.port);
            // A thread of its own: entering the pod's namespace changes only this thread.
            std::thread::spawn(move || {
                let _ = sender.send(health_check(&path, target_port, &http_path, timeout));
            });
            pending.push((label, receiver));
        }
        let mut now_checked = BTreeSet::new();
        for (label, receiver) in pending {
            let Ok((ok, elapsed)) = receiver.await else { continue };
            success.with_label_values(&[&label, &port]).set(f64::from(u8::from(ok)));
            seconds.with_label_values(&[&label, &port]).set(elapsed.as_secs_f64());
            now_checked.insert(label);
        }
        for gone in checked.difference(&now_checked) {
            let _ = success.remove_label_values(&[gone, &port]);
            let _ = seconds.remove_label_values(&[gone, &port]);
        }
        checked = now_checked;
    }
}

/// `GET path` on 127.0.0.1:`port` inside the namespace at `netns`: whether it answered 2xx
/// within `timeout`, and how long it took from connect to the end of the answer.
fn health_check(netns: &std::path::Path, port: u16, path: &str, timeout: Duration) -> (bool, Duration) {
    let start = Instant::now();
    let result = (|| -> std::io::Result<bool> {
        let file = File::open(netns)?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&address, timeout)?;
        stream
            .set_read_timeout(Some(timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1))))?;
        // HTTP/1.0: one request, and the server closes once it has answered.
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: cniguard\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let status = answer
            .split(|b| *b == b' ')
            .nth(1)
            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok());
        Ok(status.is_some_and(|s| (200..300).contains(&s)))
    })();
    (result.unwrap_or(false), start.elapsed())
}

struct LocalhostCollector {
    probe: Arc<Localhost>,
    connect: Desc,
    response: Desc,
    failures: Desc,
}

impl LocalhostCollector {
    fn new(probe: Arc<Localhost>) -> Self {
        Self {
            probe,
            connect: catalogue::LOCALHOST_CONNECT_SECONDS.desc(),
            response: catalogue::LOCALHOST_RESPONSE_SECONDS.desc(),
            failures: catalogue::LOCALHOST_CONNECT_FAILURES_TOTAL.desc(),
        }
    }
}

impl Collector for LocalhostCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.connect, &self.response, &self.failures]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let probe = &self.probe;
        let inventory = namespaces::read(&probe.inventory);
        let (mut connect, mut response) = (LatencyTotals::default(), LatencyTotals::default());
        for (key, per_cpu) in
            probe.latency.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Result::ok)
        {
            let Some(netns) = inventory.label(key.netns) else { continue };
            let totals = if key.kind == LatencyKind::Connect as u8 { &mut connect } else { &mut response };
            totals.add(vec![netns, key.port.to_string()], &per_cpu);
        }
        let (connect, response) =
            (connect.family(&self.connect, LABELS), response.family(&self.response, LABELS));
        let mut failures: BTreeMap<[String; 3], u64> = BTreeMap::new();
        for (key, count) in summed(&probe.failures) {
            let (Some(netns), Some(reason)) =
                (inventory.label(key.netns), FailureReason::from_u8(key.reason))
            else {
                continue;
            };
            *failures.entry([netns, key.port.to_string(), reason.label().to_owned()]).or_default() += count;
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
        [connect, response, failure_family.build()].into_iter().flatten().collect()
    }
}
