//! `dns`: DNS as the pods on this node see it, on their veths: queries by interface and
//! server, answers by response code, query-to-answer latency, and timeouts.
//!
//! The classifiers match answers to queries in the kernel (`DNS_PENDING`); a query still
//! there after `[dns] timeout_seconds` is taken out here and counted as a timeout. Whoever
//! deletes the entry first decides: an answer that loses the race is counted as unmatched
//! (late), never as both.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use probe_common::Direction;
use probe_common::counters::Histogram;
use probe_common::dns::{DnsCountKey, DnsOutcome, Pending, PendingKey, rcode_label};
use prometheus::IntCounterVec;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use serde::Deserialize;

use super::registry::{ProbeSpec, Programs, Started};
use super::shared::{LatencyTotals, monotonic_ns, summed};

use super::{InterfaceProbe, TcProgram};
use crate::judgement::signals::{SignalSource, Totals};
use crate::metrics::labels::PeerLabels;
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::interfaces::AttachedInterfaces;
use crate::node::interfaces::{Interface, InterfaceSelector, InterfaceTable};

pub const NAME: &str = "dns";

const PROGRAMS: &[TcProgram] = &[
    TcProgram { function: "dns_ingress", direction: Direction::Ingress },
    TcProgram { function: "dns_egress", direction: Direction::Egress },
];

/// The `[dns]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// The pod-facing interfaces (the node's end of each pod's veth) DNS is watched on.
    pub interfaces: Vec<String>,
    /// A query unanswered this long is a timeout.
    pub timeout_seconds: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self { interfaces: vec!["veth*".into(), "cali*".into()], timeout_seconds: 2 }
    }
}

/// The validated `[dns]` table.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    pub interfaces: InterfaceSelector,
    pub timeout: Duration,
}

/// What is wrong with the `[dns]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("must be at least 1 (seconds)")]
    Timeout,
    /// An invalid interface pattern, with the selector's reason.
    #[error("{0}")]
    Interfaces(String),
}

impl DnsError {
    /// The configuration field the error is about.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::Timeout => "dns.timeout_seconds",
            Self::Interfaces(_) => "dns.interfaces",
        }
    }
}

impl DnsConfig {
    pub fn validate(&self) -> Result<DnsSettings, DnsError> {
        if self.timeout_seconds == 0 {
            return Err(DnsError::Timeout);
        }
        Ok(DnsSettings {
            interfaces: InterfaceSelector::new(&self.interfaces).map_err(DnsError::Interfaces)?,
            timeout: Duration::from_secs(self.timeout_seconds),
        })
    }
}

/// The servers share one cap (`max_peers`) across the DNS metrics.
const SERVER_LABELS: &str = catalogue::DNS_SERVERS;
/// How often outstanding queries are checked for timeouts.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

pub struct Dns {
    pending: Mutex<HashMap<MapData, PendingKey, Pending>>,
    counts: Mutex<PerCpuHashMap<MapData, DnsCountKey, u64>>,
    latency: Mutex<PerCpuHashMap<MapData, [u8; 4], Histogram>>,
    timeouts: IntCounterVec,
    /// The sum of `timeouts` over servers, for judgement.
    timeouts_total: AtomicU64,
    timeout: Duration,
    selector: InterfaceSelector,
    attached: AttachedInterfaces,
    servers: Arc<PeerLabels>,
}

impl Dns {
    /// Takes the probe's maps, registers its collector and starts the timeout sweep.
    ///
    /// # Errors
    /// If a map is missing (an eBPF object from another build).
    pub fn register(
        ebpf: &mut Ebpf,
        selector: InterfaceSelector,
        timeout: Duration,
        attached: &AttachedInterfaces,
        servers: Arc<PeerLabels>,
        metrics: &DaemonMetrics,
    ) -> Result<Arc<Self>> {
        let mut take =
            |name: &str| ebpf.take_map(name).with_context(|| format!("the eBPF object has no {name} map"));
        let timeouts = catalogue::DNS_TIMEOUTS_TOTAL.int_counter_vec()?;
        metrics.registry.register(Box::new(timeouts.clone()))?;
        let probe = Arc::new(Self {
            pending: Mutex::new(HashMap::try_from(take("DNS_PENDING")?)?),
            counts: Mutex::new(PerCpuHashMap::try_from(take("DNS_COUNTS")?)?),
            latency: Mutex::new(PerCpuHashMap::try_from(take("DNS_LATENCY")?)?),
            timeouts,
            timeouts_total: AtomicU64::new(0),
            timeout,
            selector,
            attached: attached.clone(),
            servers,
        });
        metrics.registry.register(Box::new(DnsCollector::new(probe.clone())))?;
        let sweeper = probe.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                sweeper.expire(monotonic_ns());
            }
        });
        Ok(probe)
    }

    /// Counts and forgets the queries older than the timeout at `now_ns` (CLOCK_MONOTONIC,
    /// the programs' clock).
    fn expire(&self, now_ns: u64) {
        let timeout_ns = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let expired: Vec<PendingKey> = pending
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, query)| now_ns.saturating_sub(query.sent_ns) >= timeout_ns)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            // Not found: the answer arrived in between and the program took it.
            if pending.remove(&key).is_ok() {
                let server = self.servers.label(SERVER_LABELS, Ipv4Addr::from(key.server));
                self.timeouts.with_label_values(&[server.as_str()]).inc();
                self.timeouts_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn server(&self, address: [u8; 4]) -> String {
        self.servers.label(SERVER_LABELS, Ipv4Addr::from(address))
    }
}

impl InterfaceProbe for Dns {
    fn name(&self) -> &'static str {
        NAME
    }

    fn programs(&self) -> &'static [TcProgram] {
        PROGRAMS
    }

    fn wants(&self, interface: &Interface, _all: &InterfaceTable) -> bool {
        self.selector.selects(interface)
    }

    fn retain_interfaces(&self, keep: &dyn Fn(u32) -> bool) {
        // Answers are kept under interface 0 (their series have no interface label).
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<DnsCountKey> =
            counts.keys().filter_map(Result::ok).filter(|k| k.ifindex != 0 && !keep(k.ifindex)).collect();
        for key in stale {
            let _ = counts.remove(&key);
        }
    }
}

/// The counts behind the DNS counters, by their labels.
#[derive(Default)]
struct DnsCounts {
    queries: BTreeMap<(String, String), u64>,
    responses: BTreeMap<(String, &'static str), u64>,
    unmatched: BTreeMap<String, u64>,
    untracked: BTreeMap<String, u64>,
    malformed: BTreeMap<(String, &'static str), u64>,
}

impl Dns {
    fn counts(&self) -> DnsCounts {
        self.counts_of(&summed(&self.counts))
    }

    /// The counts by label, from one read of the map.
    fn counts_of(&self, entries: &[(DnsCountKey, u64)]) -> DnsCounts {
        let mut counts = DnsCounts::default();
        for &(key, count) in entries {
            let interface = || self.attached.name(key.ifindex);
            match key.outcome {
                o if o == DnsOutcome::Query as u8 => {
                    let Some(interface) = interface() else { continue };
                    *counts.queries.entry((interface, self.server(key.server))).or_default() += count;
                }
                o if o == DnsOutcome::Response as u8 => {
                    *counts
                        .responses
                        .entry((self.server(key.server), rcode_label(key.rcode)))
                        .or_default() += count;
                }
                o if o == DnsOutcome::Unmatched as u8 => {
                    *counts.unmatched.entry(self.server(key.server)).or_default() += count;
                }
                o if o == DnsOutcome::Untracked as u8 => {
                    *counts.untracked.entry(self.server(key.server)).or_default() += count;
                }
                o if o == DnsOutcome::Malformed as u8 => {
                    let Some(interface) = interface() else { continue };
                    let direction =
                        if key.direction == Direction::Ingress as u8 { "ingress" } else { "egress" };
                    *counts.malformed.entry((interface, direction)).or_default() += count;
                }
                _ => {}
            }
        }
        counts
    }
}

impl SignalSource for Dns {
    fn add_to(&self, totals: &mut Totals) {
        // One read of the map serves both the totals and the per-server view.
        let entries = summed(&self.counts);
        let counts = self.counts_of(&entries);
        totals.dns_queries += counts.queries.values().sum::<u64>() as f64;
        totals.dns_failures += counts
            .responses
            .iter()
            .filter(|((_, rcode), _)| matches!(*rcode, "SERVFAIL" | "REFUSED"))
            .map(|(_, count)| *count)
            .sum::<u64>() as f64;
        totals.dns_timeouts += self.timeouts_total.load(Ordering::Relaxed) as f64;
        // By server address, for the findings (`old_service_cidr_in_use`).
        for &(key, count) in &entries {
            let server = totals.dns_servers.entry(Ipv4Addr::from(key.server));
            match key.outcome {
                o if o == DnsOutcome::Query as u8 => {
                    let server = server.or_default();
                    server.queries += count as f64;
                    server.interfaces.extend(self.attached.name(key.ifindex));
                }
                o if o == DnsOutcome::Response as u8 => server.or_default().answers += count as f64,
                _ => {}
            }
        }
    }
}

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "DNS from the pods",
    loses: "cniguard_dns_*: the pods' DNS, and the dns_failing trigger's query ratio",
    programs: Programs::All(&["dns_ingress", "dns_egress"]),
    needs: &[],
    required: true,
    prepare: None,
    start: |context| {
        let settings = &context.settings.dns;
        let probe = Dns::register(
            context.ebpf,
            settings.interfaces.clone(),
            settings.timeout,
            context.attached,
            context.peers.clone(),
            context.metrics,
        )?;
        context.signals.publish(probe.clone());
        Ok(Started::Interface(probe))
    },
};

struct DnsCollector {
    probe: Arc<Dns>,
    queries: Desc,
    responses: Desc,
    unmatched: Desc,
    untracked: Desc,
    malformed: Desc,
    latency: Desc,
}

impl DnsCollector {
    fn new(probe: Arc<Dns>) -> Self {
        Self {
            probe,
            queries: catalogue::DNS_QUERIES_TOTAL.desc(),
            responses: catalogue::DNS_RESPONSES_TOTAL.desc(),
            unmatched: catalogue::DNS_UNMATCHED_RESPONSES_TOTAL.desc(),
            untracked: catalogue::DNS_UNTRACKED_QUERIES_TOTAL.desc(),
            malformed: catalogue::DNS_MALFORMED_TOTAL.desc(),
            latency: catalogue::DNS_LATENCY_SECONDS.desc(),
        }
    }
}

impl Collector for DnsCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.queries, &self.responses, &self.unmatched, &self.untracked, &self.malformed, &self.latency]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let DnsCounts { queries, responses, unmatched, untracked, malformed } = self.probe.counts();
        let mut families = Vec::new();
        let mut family = FamilyBuilder::counter(&self.queries, &["interface", "server"]);
        for ((interface, server), count) in &queries {
            family.sample(&[interface, server], *count as f64);
        }
        families.push(family.build());
        let mut family = FamilyBuilder::counter(&self.responses, &["server", "rcode"]);
        for ((server, rcode), count) in &responses {
            family.sample(&[server, rcode], *count as f64);
        }
        families.push(family.build());
        for (desc, counts) in [(&self.unmatched, &unmatched), (&self.untracked, &untracked)] {
            let mut family = FamilyBuilder::counter(desc, &["server"]);
            for (server, count) in counts {
                family.sample(&[server], *count as f64);
            }
            families.push(family.build());
        }
        let mut family = FamilyBuilder::counter(&self.malformed, &["interface", "direction"]);
        for ((interface, direction), count) in &malformed {
            family.sample(&[interface, direction], *count as f64);
        }
        families.push(family.build());
        families.push(self.latency_family());
        families.into_iter().flatten().collect()
    }
}

impl DnsCollector {
    fn latency_family(&self) -> Option<MetricFamily> {
        let probe = &self.probe;
        let histograms: Vec<([u8; 4], Vec<Histogram>)> = probe
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Result::ok)
            .map(|(server, per_cpu)| (server, per_cpu.iter().copied().collect()))
            .collect();
        let mut totals = LatencyTotals::default();
        for (server, per_cpu) in histograms {
            totals.add(vec![probe.server(server)], &per_cpu);
        }
        totals.family(&self.latency, &["server"])
    }
}
