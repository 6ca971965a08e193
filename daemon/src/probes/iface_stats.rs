//! `iface_stats`: packets and bytes per interface, direction and protocol class.
//!
//! The classifiers count into a per-CPU hash map; this collector sums the CPUs at scrape
//! time. Map values only grow while an interface lives, so the counters never go backwards;
//! when the interface goes, its entries are deleted and its series disappear.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuHashMap};
use probe_common::Direction;
use probe_common::counters::PacketCount;
use probe_common::iface_stats::{IfaceCounters, IfaceKey, ProtocolClass};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::registry::{ProbeSpec, Programs, Started};
use super::{InterfaceProbe, TcProgram};
use crate::judgement::signals::{SignalSource, Totals};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::interfaces::AttachedInterfaces;
use crate::node::interfaces::{Interface, InterfaceSelector, InterfaceTable};

pub const NAME: &str = "iface_stats";

const PROGRAMS: &[TcProgram] = &[
    TcProgram { function: "iface_stats_ingress", direction: Direction::Ingress },
    TcProgram { function: "iface_stats_egress", direction: Direction::Egress },
];

const LABELS: &[&str] = &["interface", "direction", "protocol"];

type CountersMap = PerCpuHashMap<MapData, IfaceKey, IfaceCounters>;

pub struct IfaceStats {
    counters: Mutex<CountersMap>,
    attached: AttachedInterfaces,
    selector: InterfaceSelector,
}

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "interface packet counts",
    loses: "cniguard_interface_*: pod traffic per veth/cali interface",
    programs: Programs::All(&["iface_stats_ingress", "iface_stats_egress"]),
    needs: &[],
    required: true,
    prepare: None,
    start: |context| {
        let selector = context.settings.interfaces.clone();
        let probe = IfaceStats::register(context.ebpf, selector, context.attached, context.metrics)?;
        context.signals.publish(probe.clone());
        Ok(Started::Interface(probe))
    },
};

impl IfaceStats {
    /// Takes the `IFACE_STATS` map and registers the collector.
    ///
    /// # Errors
    /// If the map is missing or of another type (an eBPF object from another build).
    pub fn register(
        ebpf: &mut Ebpf,
        selector: InterfaceSelector,
        attached: &AttachedInterfaces,
        metrics: &DaemonMetrics,
    ) -> Result<Arc<Self>> {
        let map = ebpf.take_map("IFACE_STATS").context("the eBPF object has no IFACE_STATS map")?;
        let probe = Arc::new(Self {
            counters: Mutex::new(CountersMap::try_from(map)?),
            attached: attached.clone(),
            selector,
        });
        metrics.registry.register(Box::new(IfaceStatsCollector::new(probe.clone())))?;
        Ok(probe)
    }

    /// Sums every CPU's counts, per interface name, direction and class.
    fn totals(&self) -> Vec<(String, Direction, ProtocolClass, PacketCount)> {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut totals = Vec::new();
        for entry in counters.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            let (Some(name), Some(direction)) =
                (self.attached.name(key.ifindex), Direction::from_u32(key.direction))
            else {
                continue;
            };
            for class in ProtocolClass::ALL {
                let mut sum = PacketCount::default();
                for cpu in per_cpu.iter() {
                    let count = cpu.by_class[class as usize];
                    sum.packets += count.packets;
                    sum.bytes += count.bytes;
                }
                if sum.packets > 0 {
                    totals.push((name.clone(), direction, class, sum));
                }
            }
        }
        totals
    }
}

impl SignalSource for IfaceStats {
    /// Packets each watched interface received: on a pod's node-side veth, what the pod
    /// sent (`pods_on_old_addresses` reads it).
    fn add_to(&self, totals: &mut Totals) {
        for (name, direction, _, count) in self.totals() {
            if direction == Direction::Ingress {
                *totals.interface_packets_received.entry(name).or_default() += count.packets as f64;
            }
        }
    }
}

impl InterfaceProbe for IfaceStats {
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
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<IfaceKey> =
            counters.keys().filter_map(Result::ok).filter(|key| !keep(key.ifindex)).collect();
        for key in stale {
            // Already gone is fine: a concurrent delete, or a re-created entry deleted twice.
            let _ = counters.remove(&key);
        }
    }
}

struct IfaceStatsCollector {
    probe: Arc<IfaceStats>,
    packets: Desc,
    bytes: Desc,
}

impl IfaceStatsCollector {
    fn new(probe: Arc<IfaceStats>) -> Self {
        Self {
            probe,
            packets: catalogue::INTERFACE_PACKETS_TOTAL.desc(),
            bytes: catalogue::INTERFACE_BYTES_TOTAL.desc(),
        }
    }
}

impl Collector for IfaceStatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.packets, &self.bytes]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut packets = FamilyBuilder::counter(&self.packets, LABELS);
        let mut bytes = FamilyBuilder::counter(&self.bytes, LABELS);
        for (interface, direction, class, count) in self.probe.totals() {
            let labels = [interface.as_str(), direction.label(), class.label()];
            packets.sample(&labels, count.packets as f64);
            bytes.sample(&labels, count.bytes as f64);
        }
        [packets.build(), bytes.build()].into_iter().flatten().collect()
    }
}
