//! `tcp_health`: TCP retransmissions, resets sent and received, and sampled smoothed RTT,
//! of the namespaces in scope, by the configured CIDR the remote end falls in (old pods,
//! new pods, services, nodes, other), from the `tcp_*` raw tracepoints.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuHashMap};
use aya::programs::KProbe;
use aya::programs::kprobe::KProbeLink;
use aya::programs::raw_trace_point::RawTracePointLink;
use probe_common::counters::Histogram;
use probe_common::kernel::KernelOffsets;
use probe_common::tcp_health::{TcpEvent, TcpKey};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::registry::{Need, ProbeSpec, Programs, Started};
use super::shared::{CidrClasses, LatencyTotals, attach_raw_tracepoint, summed};
use crate::judgement::signals::{SignalSource, Totals};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::btf::Btf;

pub const NAME: &str = "tcp_health";

/// (program, tracepoint, the arguments the program reads), on every kernel.
const TRACEPOINTS: &[(&str, &str, &[&str])] = &[
    ("tcp_retransmit", RETRANSMIT, &["sock*", "sk_buff*"]),
    ("tcp_retransmit_synack", "tcp_retransmit_synack", &["sock*", "request_sock*"]),
    ("tcp_receive_reset", "tcp_receive_reset", &["sock*"]),
    ("tcp_rtt", "tcp_probe", &["sock*", "sk_buff*"]),
];

const SEND_RESET: &str = "tcp_send_reset";
const SEND_RESET_ARGS: &[&str] = &["sock*", "sk_buff*"];
/// The kernel functions that send a passive reset and count it in `OutRsts`, each with
/// the kprobe program of the same name.
const PASSIVE_RESET_FUNCTIONS: &[&str] = &["tcp_v4_send_reset", "tcp_v6_send_reset"];

/// How resets sent are seen on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetHooks {
    /// The `tcp_send_reset` tracepoint reports every reset, socket or not: its reason
    /// argument (6.10) came with that.
    Tracepoint,
    /// It skips resets without a socket (a port nothing listens on): it gives only the
    /// active resets, and kprobes on the functions that send passive ones give the rest.
    ActiveAndKprobes,
}

impl ResetHooks {
    fn on(btf: &Btf) -> Result<Self> {
        let args = btf.check_tracepoint(SEND_RESET, SEND_RESET_ARGS)?;
        Ok(if args.get(2).is_some_and(|a| a == "sk_rst_reason") {
            Self::Tracepoint
        } else {
            Self::ActiveAndKprobes
        })
    }

    fn programs(self) -> &'static [&'static str] {
        match self {
            Self::Tracepoint => {
                &["tcp_retransmit", "tcp_retransmit_synack", "tcp_receive_reset", "tcp_rtt", "tcp_send_reset"]
            }
            Self::ActiveAndKprobes => &[
                "tcp_retransmit",
                "tcp_retransmit_synack",
                "tcp_receive_reset",
                "tcp_rtt",
                "tcp_send_active_reset",
                "tcp_v4_send_reset",
                "tcp_v6_send_reset",
            ],
        }
    }
}

const RETRANSMIT: &str = "tcp_retransmit_skb";

/// Fills in which argument of `tcp_retransmit_skb` is its result, on kernels whose
/// tracepoint has one (it then also fires for attempts that did not go out).
///
/// # Errors
/// If the kernel has no such tracepoint.
pub fn find_arguments(btf: &Btf, offsets: &mut KernelOffsets) -> Result<()> {
    let args = btf.tracepoint_args(RETRANSMIT)?;
    offsets.retransmit_err_arg = match args.get(2).map(String::as_str) {
        Some("int") => 2,
        _ => 0,
    };
    Ok(())
}

pub struct TcpHealth {
    _links: Vec<RawTracePointLink>,
    _kprobes: Vec<KProbeLink>,
    events: Mutex<PerCpuHashMap<MapData, TcpKey, u64>>,
    rtt: Mutex<PerCpuHashMap<MapData, u8, Histogram>>,
    classes: Arc<CidrClasses>,
}

impl TcpHealth {
    /// Attaches the tracepoint programs and registers the collector.
    ///
    /// # Errors
    /// If a program cannot load or attach.
    pub fn start(
        ebpf: &mut Ebpf,
        btf: &Btf,
        classes: Arc<CidrClasses>,
        metrics: &DaemonMetrics,
    ) -> Result<Arc<Self>> {
        let events = PerCpuHashMap::try_from(
            ebpf.take_map("TCP_EVENTS").context("the eBPF object has no TCP_EVENTS map")?,
        )?;
        let rtt =
            PerCpuHashMap::try_from(ebpf.take_map("TCP_RTT").context("the eBPF object has no TCP_RTT map")?)?;
        let mut links = Vec::new();
        for (program, tracepoint, expected) in TRACEPOINTS {
            links.push(attach_raw_tracepoint(ebpf, btf, program, tracepoint, expected)?.0);
        }
        let mut kprobes = Vec::new();
        let resets = match ResetHooks::on(btf)? {
            ResetHooks::Tracepoint => "tcp_send_reset",
            ResetHooks::ActiveAndKprobes => match attach_passive_resets(ebpf) {
                Ok(attached) => {
                    kprobes = attached;
                    "tcp_send_active_reset"
                }
                Err(err) => {
                    tracing::warn!(
                        "resets sent miss those for ports nothing listens on (this kernel's tcp_send_reset tracepoint skips them, and no kprobe attaches: {err:#})"
                    );
                    "tcp_send_reset"
                }
            },
        };
        links.push(attach_raw_tracepoint(ebpf, btf, resets, SEND_RESET, SEND_RESET_ARGS)?.0);
        let probe = Arc::new(Self {
            _links: links,
            _kprobes: kprobes,
            events: Mutex::new(events),
            rtt: Mutex::new(rtt),
            classes,
        });
        metrics.registry.register(Box::new(TcpCollector::new(probe.clone())))?;
        Ok(probe)
    }
}

/// Attaches a kprobe to each function that sends passive resets. One the kernel lacks
/// (`tcp_v6_send_reset` without IPv6) is left out.
fn attach_passive_resets(ebpf: &mut Ebpf) -> Result<Vec<KProbeLink>> {
    let mut links = Vec::new();
    for function in PASSIVE_RESET_FUNCTIONS {
        let program: &mut KProbe = ebpf
            .program_mut(function)
            .with_context(|| format!("the eBPF object has no {function} program"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {function}"))?;
        match program.attach(function, 0) {
            Ok(link) => links.push(program.take_link(link)?),
            Err(err) if !links.is_empty() => tracing::debug!("no kprobe on {function}: {err}"),
            Err(err) => return Err(err).with_context(|| format!("attaching a kprobe to {function}")),
        }
    }
    Ok(links)
}

/// Retransmits by peer CIDR, and resets by peer CIDR and direction.
struct EventCounts {
    retransmits: BTreeMap<String, u64>,
    resets: BTreeMap<(String, &'static str), u64>,
}

impl TcpHealth {
    fn event_counts(&self) -> EventCounts {
        let mut counts = EventCounts { retransmits: BTreeMap::new(), resets: BTreeMap::new() };
        for (key, count) in summed(&self.events) {
            let class = self.classes.name(key.peer_class).to_owned();
            let slot = match key.event {
                e if e == TcpEvent::Retransmit as u8 => counts.retransmits.entry(class).or_default(),
                e if e == TcpEvent::ResetSent as u8 => counts.resets.entry((class, "sent")).or_default(),
                e if e == TcpEvent::ResetReceived as u8 => {
                    counts.resets.entry((class, "received")).or_default()
                }
                _ => continue,
            };
            *slot += count;
        }
        counts
    }
}

impl SignalSource for TcpHealth {
    fn add_to(&self, totals: &mut Totals) {
        totals.retransmits += self.event_counts().retransmits.values().sum::<u64>() as f64;
    }
}

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "TCP retransmits, resets and RTT",
    loses: "cniguard_tcp_retransmits/resets/srtt: TCP health, and the regression trigger's retransmit ratio",
    programs: Programs::ByBtf(|btf| Ok(ResetHooks::on(btf)?.programs())),
    needs: &[Need::Btf],
    required: false,
    prepare: Some(find_arguments),
    start: |context| {
        let probe = TcpHealth::start(context.ebpf, context.btf()?, context.classes.clone(), context.metrics)?;
        context.signals.publish(probe.clone());
        Ok(Started::Running(Box::new(probe)))
    },
};

struct TcpCollector {
    probe: Arc<TcpHealth>,
    retransmits: Desc,
    resets: Desc,
    rtt: Desc,
}

impl TcpCollector {
    fn new(probe: Arc<TcpHealth>) -> Self {
        Self {
            probe,
            retransmits: catalogue::TCP_RETRANSMITS_TOTAL.desc(),
            resets: catalogue::TCP_RESETS_TOTAL.desc(),
            rtt: catalogue::TCP_SRTT_SECONDS.desc(),
        }
    }
}

impl Collector for TcpCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.retransmits, &self.resets, &self.rtt]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let probe = &self.probe;
        let EventCounts { retransmits, resets } = probe.event_counts();
        let mut retransmit_family = FamilyBuilder::counter(&self.retransmits, &["peer_cidr"]);
        for (class, count) in &retransmits {
            retransmit_family.sample(&[class], *count as f64);
        }
        let mut reset_family = FamilyBuilder::counter(&self.resets, &["peer_cidr", "direction"]);
        for ((class, direction), count) in &resets {
            reset_family.sample(&[class, direction], *count as f64);
        }
        let mut rtt = LatencyTotals::default();
        for (class, per_cpu) in
            probe.rtt.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Result::ok)
        {
            rtt.add(vec![probe.classes.name(class).to_owned()], &per_cpu);
        }
        let rtt = rtt.family(&self.rtt, &["peer_cidr"]);
        [retransmit_family.build(), reset_family.build(), rtt].into_iter().flatten().collect()
    }
}
