//! `iface_stats`: packets and bytes per interface, direction and protocol class.
//!
//! The classifiers count into a per-CPU array slot per interface and direction (and, for an
//! interface whose slot another holds, a per-CPU hash entry); this collector sums the CPUs
//! at scrape time. Values only grow while an interface lives, so the counters never go
//! backwards; when the interface goes, its slot and entries are cleared and its series
//! disappear. Both reads and clean-ups cost in proportion to the attached interfaces,
//! never to the maps' capacity.

use std::borrow::Borrow;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use probe_common::Direction;
use probe_common::counters::PacketCount;
use probe_common::iface_stats::{IfaceCounters, IfaceKey, IfaceSlot, ProtocolClass, slot_index};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::registry::{ProbeSpec, Programs, Started};
use super::shared::{ClaimedSlots, clear_slot};
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

type SlotsMap = PerCpuArray<MapData, IfaceSlot>;
type OverflowMap = PerCpuHashMap<MapData, IfaceKey, IfaceCounters>;

struct Maps {
    slots: SlotsMap,
    overflow: OverflowMap,
}

pub struct IfaceStats {
    maps: Mutex<Maps>,
    claimed: Mutex<ClaimedSlots>,
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
    /// Takes the `IFACE_SLOTS` and `IFACE_STATS` maps and registers the collector.
    ///
    /// # Errors
    /// If a map is missing or of another type (an eBPF object from another build).
    pub fn register(
        ebpf: &mut Ebpf,
        selector: InterfaceSelector,
        attached: &AttachedInterfaces,
        metrics: &DaemonMetrics,
    ) -> Result<Arc<Self>> {
        let slots = ebpf.take_map("IFACE_SLOTS").context("the eBPF object has no IFACE_SLOTS map")?;
        let overflow = ebpf.take_map("IFACE_STATS").context("the eBPF object has no IFACE_STATS map")?;
        let maps = Maps { slots: SlotsMap::try_from(slots)?, overflow: OverflowMap::try_from(overflow)? };
        let probe = Arc::new(Self {
            maps: Mutex::new(maps),
            claimed: Mutex::default(),
            attached: attached.clone(),
            selector,
        });
        metrics.registry.register(Box::new(IfaceStatsCollector::new(probe.clone())))?;
        Ok(probe)
    }

    /// Sums every CPU's counts, per interface name, direction (of `directions`) and class.
    fn totals(&self, directions: &[Direction]) -> Vec<(String, Direction, ProtocolClass, PacketCount)> {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        // Overflow entries exist only after two interfaces met in a slot: one call, not
        // one lookup per interface, says whether there are any.
        let overflow = maps.overflow.keys().next().is_some().then_some(&maps.overflow);
        let mut totals = Vec::new();
        for (ifindex, name) in self.attached.entries() {
            for direction in directions.iter().copied() {
                let counters = counters_of(&maps.slots, overflow, ifindex, direction);
                for class in ProtocolClass::ALL {
                    let sum = counters.by_class[class as usize];
                    if sum.packets > 0 {
                        totals.push((name.clone(), direction, class, sum));
                    }
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
        for (name, _, _, count) in self.totals(&[Direction::Ingress]) {
            *totals.interface_packets_received.entry(name).or_default() += count.packets as f64;
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
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.attached.entries().into_iter().map(|(ifindex, _)| ifindex);
        let gone = self.claimed.lock().unwrap_or_else(PoisonError::into_inner).gone(keep, current);
        for ifindex in gone {
            for direction in Direction::ALL {
                // Already gone is fine: the interface may never have overflowed.
                let _ = maps.overflow.remove(&IfaceKey::new(ifindex, direction));
                clear_slot(&mut maps.slots, slot_index(ifindex, direction), |slot| slot.ifindex, keep);
            }
        }
    }
}

/// The counts of `ifindex` in `direction`, every CPU's slot and overflow entry added
/// (`overflow`: `None` when the caller knows it is empty).
#[must_use]
pub fn counters_of<S: Borrow<MapData>, O: Borrow<MapData>>(
    slots: &PerCpuArray<S, IfaceSlot>,
    overflow: Option<&PerCpuHashMap<O, IfaceKey, IfaceCounters>>,
    ifindex: u32,
    direction: Direction,
) -> IfaceCounters {
    let mut total = IfaceCounters::default();
    let mut add = |counters: &IfaceCounters| {
        for (sum, count) in total.by_class.iter_mut().zip(counters.by_class) {
            sum.packets += count.packets;
            sum.bytes += count.bytes;
        }
    };
    if let Ok(per_cpu) = slots.get(&slot_index(ifindex, direction), 0) {
        per_cpu.iter().filter(|slot| slot.ifindex == ifindex).for_each(|slot| add(&slot.counters));
    }
    if let Some(Ok(per_cpu)) = overflow.map(|overflow| overflow.get(&IfaceKey::new(ifindex, direction), 0)) {
        per_cpu.iter().for_each(&mut add);
    }
    total
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
        for (interface, direction, class, count) in self.probe.totals(&Direction::ALL) {
            let labels = [interface.as_str(), direction.label(), class.label()];
            packets.sample(&labels, count.packets as f64);
            bytes.sample(&labels, count.bytes as f64);
        }
        [packets.build(), bytes.build()].into_iter().flatten().collect()
    }
}
