//! Active connectivity checks: the rollback triggers need ground truth even when no traffic
//! flows. Every `[checks] interval_seconds` the daemon enters the network namespace of a
//! pod on this node (the first whose `netns` label matches `[checks] from`) and, from
//! there, connects to each target: other nodes' pods (`pod_to_pod`), critical services
//! (`service`), and names through the cluster resolver (`dns`). The packets leave through
//! the pod's own veth and cross the CNI exactly as that pod's traffic does (Flannel's
//! bridge and VXLAN, or Calico's routes, BGP and VXLAN), so a check fails when pod traffic
//! would. A target whose latest result is older than 3 intervals (no round has run: the
//! `from` pod is gone) is stale: no data for the triggers, shown in `cniguard_check_stale`.

pub mod engine;
pub mod health;
pub mod listeners;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use prometheus::{GaugeVec, HistogramVec, IntCounterVec, Registry};
use serde::Deserialize;

use tokio::sync::watch;

use crate::metrics::catalogue;
use crate::node::namespaces::{self, SharedInventory};

use self::engine::Failure;
use self::engine::HttpGet;
use self::settings::ChecksSettings;

/// How long a check's results are remembered (the longest window a trigger looks at).
pub const HISTORY: Duration = Duration::from_hours(1);

/// A target whose latest result is older than this many intervals is stale: no data for
/// the triggers (the `from` pod is gone, rounds stopped), shown in `cniguard_check_stale`.
pub const STALE_AFTER_INTERVALS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    PodToPod,
    Service,
    Dns,
}

impl CheckKind {
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::PodToPod => "pod_to_pod",
            Self::Service => "service",
            Self::Dns => "dns",
        }
    }
}

/// One target, as configured (`[[checks.targets]]` or a targets file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub check: CheckKind,
    /// The `target` label.
    pub name: String,
    /// For `pod_to_pod`: the node the target pod runs on (`connectivity_lost` is judged per
    /// peer node); defaults to `name`.
    #[serde(default)]
    pub peer: Option<String>,
    /// `host:port` for `pod_to_pod` and `service`; a host name is resolved through the
    /// resolver, from the pod. For `dns`: the DNS server to ask (IPv4:port) instead of
    /// `[checks] resolver`.
    #[serde(default)]
    pub address: Option<String>,
    /// Make it an HTTP GET of this path (a 2xx answer is success) instead of a TCP connect.
    #[serde(default)]
    pub http_path: Option<String>,
    /// For `dns`: the name to resolve (an A record must come back).
    #[serde(default)]
    pub query: Option<String>,
}

/// A validated target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub check: CheckKind,
    pub name: String,
    pub peer: String,
    /// The address or name to connect to; for `dns`, the name to resolve.
    pub host: String,
    pub port: u16,
    pub http_path: Option<String>,
    /// For `dns`: the server this target asks, if not `[checks] resolver`.
    pub resolver: Option<SocketAddrV4>,
}

impl Target {
    /// # Errors
    /// A message naming what is wrong with the target and how to fix it.
    pub fn parse(config: &TargetConfig, has_resolver: bool) -> Result<Self, String> {
        let name = &config.name;
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("target name `{name}` must be 1 to 64 characters without spaces"));
        }
        let mut resolver = None;
        let (host, port) = match (config.check, &config.address, &config.query) {
            (CheckKind::Dns, address, Some(query)) if !query.is_empty() => {
                resolver = match address {
                    Some(address) => Some(address.parse::<SocketAddrV4>().map_err(|_| {
                        format!("dns check `{name}`: address `{address}` is not the IPv4 address and port of a DNS server")
                    })?),
                    None if has_resolver => None,
                    None => {
                        return Err(format!(
                            "dns check `{name}` needs `[checks] resolver` (the cluster DNS, e.g. 10.43.0.10:53) or its own `address`"
                        ));
                    }
                };
                (query.clone(), 53)
            }
            (CheckKind::Dns, _, _) => {
                return Err(format!("dns check `{name}` needs `query`, the name to resolve"));
            }
            (_, Some(address), _) => {
                let (host, port) = address
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host, port.parse::<u16>().ok().filter(|p| *p != 0)?)))
                    .ok_or_else(|| format!("target `{name}`: address `{address}` is not host:port"))?;
                if host.parse::<Ipv4Addr>().is_err() && !has_resolver {
                    return Err(format!(
                        "target `{name}`: `{host}` is a name; set `[checks] resolver` to resolve it"
                    ));
                }
                (host.to_owned(), port)
            }
            (_, None, _) => return Err(format!("target `{name}` needs `address` (host:port)")),
        };
        if let Some(path) = &config.http_path
            && !path.starts_with('/')
        {
            return Err(format!("target `{name}`: http_path `{path}` must start with /"));
        }
        Ok(Self {
            check: config.check,
            name: name.clone(),
            peer: config.peer.clone().unwrap_or_else(|| name.clone()),
            host,
            port,
            http_path: config.http_path.clone(),
            resolver,
        })
    }
}

/// A targets file: `[[targets]]` entries, re-read every round (the lab, or an operator's
/// automation, keeps it current as pods move).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    #[serde(default)]
    targets: Vec<TargetConfig>,
}

/// One target's latest result and recent history, for the triggers.
#[derive(Debug, Clone)]
pub struct TargetState {
    pub check: CheckKind,
    pub peer: String,
    /// (when, succeeded), oldest first, over the last hour.
    pub history: VecDeque<(Instant, bool)>,
    pub last_failure: Option<Failure>,
    /// How old the latest result may be before it is stale ([`STALE_AFTER_INTERVALS`]
    /// check intervals).
    pub stale_after: Duration,
}

impl TargetState {
    #[must_use]
    pub fn latest(&self) -> Option<bool> {
        self.history.back().map(|(_, ok)| *ok)
    }

    /// Whether the latest result is older than `stale_after` at `now` (or there is none):
    /// then it is no data, never a failure or a success.
    #[must_use]
    pub fn is_stale(&self, now: Instant) -> bool {
        self.history.back().is_none_or(|(at, _)| now.saturating_duration_since(*at) > self.stale_after)
    }

    /// Successes over results since `since`; `None` without results.
    #[must_use]
    pub fn success_ratio(&self, since: Instant) -> Option<f64> {
        let recent: Vec<bool> =
            self.history.iter().filter(|(at, _)| *at >= since).map(|(_, ok)| *ok).collect();
        #[allow(clippy::cast_precision_loss, reason = "a few thousand results at most")]
        (!recent.is_empty()).then(|| recent.iter().filter(|ok| **ok).count() as f64 / recent.len() as f64)
    }
}

/// The checks' results by target name, shared with the triggers and `/status`.
pub type SharedResults = Arc<Mutex<BTreeMap<String, TargetState>>>;

struct CheckMetrics {
    success: GaugeVec,
    seconds: HistogramVec,
    failures: IntCounterVec,
    stale: GaugeVec,
}

impl CheckMetrics {
    fn register(registry: &Registry) -> Result<Self> {
        let success = catalogue::CHECK_SUCCESS.gauge_vec()?;
        let seconds = catalogue::CHECK_SECONDS.histogram_vec(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?;
        let failures = catalogue::CHECK_FAILURES_TOTAL.int_counter_vec()?;
        let stale = catalogue::CHECK_STALE.gauge_vec()?;
        registry.register(Box::new(success.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        Ok(Self { success, seconds, failures, stale })
    }
}

/// Starts the checks; their results land in the returned map.
///
/// # Errors
/// If a metric cannot be registered (a duplicate name: a programming error).
pub fn start(
    settings: ChecksSettings,
    inventory: SharedInventory,
    discovered: watch::Receiver<Vec<Target>>,
    registry: &Registry,
) -> Result<SharedResults> {
    let metrics = CheckMetrics::register(registry)?;
    let results = SharedResults::default();
    let shared = results.clone();
    let stale_after = settings.interval * STALE_AFTER_INTERVALS;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = String::new();
        loop {
            tick.tick().await;
            let (settings, inventory) = (settings.clone(), inventory.clone());
            let discovered = discovered.borrow().clone();
            let round =
                tokio::task::spawn_blocking(move || run_round(&settings, discovered, &inventory)).await;
            match round {
                Ok(Ok(outcomes)) => record(&metrics, &shared, outcomes, Instant::now(), stale_after),
                Ok(Err(why)) => {
                    if why != warned {
                        tracing::warn!("active checks not run: {why}");
                        warned = why;
                    }
                }
                Err(err) => tracing::warn!("active checks failed: {err}"),
            }
            mark_stale(&metrics, &shared, Instant::now());
        }
    });
    Ok(results)
}

/// Turns the cluster's targets into checks as they change: each peer node's echo pod as a
/// `pod_to_pod` target named after the node (the Prometheus rules read `target` as the
/// other end of the pair), each critical Service by its ClusterIP.
pub fn follow_cluster_targets(
    mut cluster: watch::Receiver<crate::cluster::ClusterTargets>,
    checks: watch::Sender<Vec<crate::checks::Target>>,
) {
    tokio::spawn(async move {
        loop {
            let targets = {
                let current = cluster.borrow_and_update();
                let mut targets: Vec<Target> = Vec::new();
                for peer in &current.peers {
                    // One echo pod per node (a DaemonSet); a second one of a node is a rollout.
                    if targets.iter().any(|t| t.name == peer.node) {
                        continue;
                    }
                    targets.push(Target {
                        check: CheckKind::PodToPod,
                        name: peer.node.clone(),
                        peer: peer.node.clone(),
                        host: peer.address.to_string(),
                        port: peer.port,
                        http_path: None,
                        resolver: None,
                    });
                }
                for service in &current.services {
                    let name = format!("{}/{}", service.namespace, service.name);
                    targets.push(Target {
                        check: CheckKind::Service,
                        peer: name.clone(),
                        name,
                        host: service.address.to_string(),
                        port: service.port,
                        http_path: None,
                        resolver: None,
                    });
                }
                targets
            };
            if checks.send(targets).is_err() || cluster.changed().await.is_err() {
                return;
            }
        }
    });
}

/// A check's outcome: the target, how long it took, and the failure if any.
type Outcome = (Target, Duration, Option<Failure>);

/// Every target once, in parallel, from the first pod namespace matching `from`.
fn run_round(
    settings: &ChecksSettings,
    discovered: Vec<Target>,
    inventory: &SharedInventory,
) -> Result<Vec<Outcome>, String> {
    let mut targets = settings.targets.clone();
    if let Some(path) = &settings.targets_file {
        targets.extend(read_targets_file(path, settings.resolver.is_some())?);
    }
    // Configured targets win over discovered ones of the same name.
    for target in discovered {
        if !targets.iter().any(|t| t.name == target.name) {
            targets.push(target);
        }
    }
    if targets.is_empty() {
        return Err("nothing to check yet: add [[checks.targets]] or a targets_file, or run in cluster mode with the cniguard-echo DaemonSet (deploy/echo.yaml)".into());
    }
    let origin = {
        let inventory = namespaces::read(inventory);
        let mut pods: Vec<(String, PathBuf)> = inventory
            .by_netns
            .values()
            .filter(|ns| !ns.own && settings.from.is_match(ns.label()))
            .map(|ns| (ns.label(), ns.path.clone()))
            .collect();
        pods.sort();
        pods.into_iter().next()
    };
    let Some((_, path)) = origin else {
        return Err("no pod namespace on this node matches `[checks] from`".into());
    };
    let outcomes = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .into_iter()
            .map(|target| {
                let path = &path;
                scope.spawn(move || {
                    let started = Instant::now();
                    let failure = namespaces::in_namespace(path, || check(&target, settings))
                        .unwrap_or(Some(Failure::Other));
                    (target, started.elapsed(), failure)
                })
            })
            .collect();
        handles.into_iter().filter_map(|handle| handle.join().ok()).collect()
    });
    Ok(outcomes)
}

fn read_targets_file(path: &Path, has_resolver: bool) -> Result<Vec<Target>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let file: TargetsFile =
        toml::from_str(&text).map_err(|err| format!("{}: {}", path.display(), err.message()))?;
    file.targets
        .iter()
        .map(|target| Target::parse(target, has_resolver).map_err(|err| format!("{}: {err}", path.display())))
        .collect()
}

fn record(
    metrics: &CheckMetrics,
    shared: &SharedResults,
    outcomes: Vec<Outcome>,
    now: Instant,
    stale_after: Duration,
) {
    let mut results = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let current: BTreeSet<String> = outcomes.iter().map(|(target, _, _)| target.name.clone()).collect();
    // Targets no longer configured leave /metrics and the triggers.
    let gone: Vec<(String, CheckKind)> = results
        .iter()
        .filter(|(name, _)| !current.contains(*name))
        .map(|(name, state)| (name.clone(), state.check))
        .collect();
    for (name, check) in gone {
        let _ = metrics.success.remove_label_values(&[check.label(), &name]);
        let _ = metrics.seconds.remove_label_values(&[check.label(), &name]);
        let _ = metrics.stale.remove_label_values(&[check.label(), &name]);
        results.remove(&name);
    }
    for (target, took, failure) in outcomes {
        let labels = [target.check.label(), target.name.as_str()];
        metrics.success.with_label_values(&labels).set(f64::from(u8::from(failure.is_none())));
        metrics.seconds.with_label_values(&labels).observe(took.as_secs_f64());
        if let Some(failure) = failure {
            metrics.failures.with_label_values(&[labels[0], labels[1], failure.label()]).inc();
        }
        let state = results.entry(target.name.clone()).or_insert_with(|| TargetState {
            check: target.check,
            peer: target.peer.clone(),
            history: VecDeque::new(),
            last_failure: None,
            stale_after,
        });
        state.check = target.check;
        state.stale_after = stale_after;
        state.peer.clone_from(&target.peer);
        state.history.push_back((now, failure.is_none()));
        while state.history.front().is_some_and(|(at, _)| now.duration_since(*at) > HISTORY) {
            state.history.pop_front();
        }
        state.last_failure = failure;
    }
}

/// `cniguard_check_stale` for every target at `now`: 1 while its latest result is stale.
fn mark_stale(metrics: &CheckMetrics, shared: &SharedResults, now: Instant) {
    let results = shared.lock().unwrap_or_else(PoisonError::into_inner);
    for (name, state) in results.iter() {
        let stale = state.is_stale(now);
        metrics.stale.with_label_values(&[state.check.label(), name]).set(f64::from(u8::from(stale)));
    }
}

/// Runs one check from the current thread's namespace: `None` on success.
fn check(target: &Target, settings: &ChecksSettings) -> Option<Failure> {
    let deadline = Instant::now() + settings.timeout;
    if target.check == CheckKind::Dns {
        let resolver = target.resolver.or(settings.resolver)?;
        return match engine::resolve(resolver, &target.host, deadline) {
            Ok(addresses) if addresses.is_empty() => Some(Failure::DnsEmpty),
            Ok(_) => None,
            Err(failure) => Some(failure),
        };
    }
    let address = match target.host.parse::<Ipv4Addr>() {
        Ok(address) => address,
        Err(_) => match settings.resolver.map(|resolver| engine::resolve(resolver, &target.host, deadline)) {
            Some(Ok(addresses)) => *addresses.first()?,
            _ => return Some(Failure::Resolve),
        },
    };
    let mut stream = match engine::connect(SocketAddr::from((address, target.port)), deadline) {
        Ok(stream) => stream,
        Err(failure) => return Some(failure),
    };
    let path = target.http_path.as_deref()?;
    HttpGet { host: &target.host, path, user_agent: "cniguard-check" }.status(&mut stream).err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(toml_text: &str) -> Result<Target, String> {
        let config: TargetConfig = toml::from_str(toml_text).map_err(|err| err.to_string())?;
        Target::parse(&config, false)
    }

    #[test]
    fn targets_are_validated_with_a_reason() {
        let pod =
            target("check = \"pod_to_pod\"\nname = \"node-2\"\naddress = \"10.244.2.10:9465\"").unwrap();
        assert_eq!((pod.port, pod.peer.as_str()), (9465, "node-2"));
        assert!(target("check = \"pod_to_pod\"\nname = \"x\"").unwrap_err().contains("needs `address`"));
        assert!(
            target("check = \"service\"\nname = \"x\"\naddress = \"10.0.0.1\"")
                .unwrap_err()
                .contains("not host:port")
        );
        let name =
            target("check = \"service\"\nname = \"x\"\naddress = \"scheduler.seldon:9004\"").unwrap_err();
        assert!(name.contains("set `[checks] resolver`"), "{name}");
        assert!(target("check = \"dns\"\nname = \"x\"").unwrap_err().contains("needs `query`"));
        let own =
            target("check = \"dns\"\nname = \"x\"\nquery = \"a.b\"\naddress = \"10.42.2.10:53\"").unwrap();
        assert_eq!(own.resolver, Some("10.42.2.10:53".parse().unwrap()));
        let bad = target("check = \"dns\"\nname = \"x\"\nquery = \"a.b\"\naddress = \"dns:53\"").unwrap_err();
        assert!(bad.contains("not the IPv4 address and port of a DNS server"), "{bad}");
        let path =
            target("check = \"service\"\nname = \"x\"\naddress = \"10.0.0.1:80\"\nhttp_path = \"ready\"");
        assert!(path.unwrap_err().contains("must start with /"));
    }

    #[test]
    fn success_ratio_counts_only_the_window() {
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        let state = TargetState {
            check: CheckKind::PodToPod,
            peer: "node-2".into(),
            history: VecDeque::from([(start, false), (later, true), (later, true), (later, false)]),
            last_failure: None,
            stale_after: Duration::from_secs(30),
        };
        assert_eq!(state.success_ratio(later), Some(2.0 / 3.0));
        assert_eq!(state.success_ratio(later + Duration::from_secs(1)), None);
        assert_eq!(state.latest(), Some(false));
    }

    /// Results recorded at t and never again (the `from` pod vanished): fresh for 3
    /// intervals (30 s at 10 s), stale after, and `cniguard_check_stale` says so.
    #[test]
    #[allow(clippy::float_cmp, reason = "the gauge is exactly 0 or 1")]
    fn results_go_stale_after_three_intervals() {
        let registry = Registry::new();
        let metrics = CheckMetrics::register(&registry).unwrap();
        let shared = SharedResults::default();
        let start = Instant::now();
        let target = Target::parse(
            &toml::from_str("check = \"pod_to_pod\"\nname = \"node-2\"\naddress = \"10.244.2.10:9465\"")
                .unwrap(),
            false,
        )
        .unwrap();
        let stale_after = Duration::from_secs(10) * STALE_AFTER_INTERVALS;
        record(
            &metrics,
            &shared,
            vec![(target, Duration::from_millis(3), Some(Failure::Timeout))],
            start,
            stale_after,
        );
        let stale = || metrics.stale.with_label_values(&["pod_to_pod", "node-2"]).get();
        mark_stale(&metrics, &shared, start + Duration::from_secs(30));
        assert_eq!(stale(), 0.0, "30 s old: still fresh");
        assert!(!shared.lock().unwrap()["node-2"].is_stale(start + Duration::from_secs(30)));
        mark_stale(&metrics, &shared, start + Duration::from_secs(31));
        assert_eq!(stale(), 1.0, "31 s old: stale");
        assert!(shared.lock().unwrap()["node-2"].is_stale(start + Duration::from_secs(31)));
    }
}
