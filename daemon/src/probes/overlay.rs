//! `overlay`: traffic inside each VXLAN device by the configured CIDR (old pods, new pods,
//! services, other) of its source and destination. The program counts into a per-CPU
//! block per device (`OVERLAY_BLOCKS`, a few devices by `ifindex % OVERLAY_DEVICE_SLOTS`),
//! and into the `OVERLAY_STATS` hash for a device whose block another holds; the collector
//! adds both.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use probe_common::Direction;
use probe_common::counters::PacketCount;
use probe_common::overlay::{CLASS_SLOTS, OTHER_CIDR, OVERLAY_DEVICE_SLOTS, OverlayBlock, OverlayKey};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::registry::{ProbeSpec, Programs, Started};
use super::shared::{CidrClasses, ClaimedSlots, clear_slot};
use super::{InterfaceProbe, TcProgram};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::interfaces::AttachedInterfaces;
use crate::node::interfaces::{Interface, InterfaceTable};

pub const NAME: &str = "overlay";

const PROGRAMS: &[TcProgram] = &[
    TcProgram { function: "overlay_ingress", direction: Direction::Ingress },
    TcProgram { function: "overlay_egress", direction: Direction::Egress },
];

const LABELS: &[&str] = &["device", "src_cidr", "dst_cidr"];

struct Maps {
    blocks: PerCpuArray<MapData, OverlayBlock>,
    stats: PerCpuHashMap<MapData, OverlayKey, PacketCount>,
}

pub struct Overlay {
    maps: Mutex<Maps>,
    claimed: Mutex<ClaimedSlots>,
    classes: Arc<CidrClasses>,
    attached: AttachedInterfaces,
}

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "overlay traffic by CIDR",
    loses: "cniguard_overlay_packets_total: inner traffic by old/new pod CIDR",
    programs: Programs::All(&["overlay_ingress", "overlay_egress"]),
    needs: &[],
    required: true,
    prepare: None,
    start: |context| {
        let classes = context.classes.clone();
        Ok(Started::Interface(Overlay::register(context.ebpf, classes, context.attached, context.metrics)?))
    },
};

impl Overlay {
    /// Takes the probe's map and registers the collector.
    ///
    /// # Errors
    /// If the map is missing.
    pub fn register(
        ebpf: &mut Ebpf,
        classes: Arc<CidrClasses>,
        attached: &AttachedInterfaces,
        metrics: &DaemonMetrics,
    ) -> Result<Arc<dyn InterfaceProbe>> {
        let blocks = ebpf.take_map("OVERLAY_BLOCKS").context("the eBPF object has no OVERLAY_BLOCKS map")?;
        let stats = ebpf.take_map("OVERLAY_STATS").context("the eBPF object has no OVERLAY_STATS map")?;
        let maps = Maps { blocks: PerCpuArray::try_from(blocks)?, stats: PerCpuHashMap::try_from(stats)? };
        let probe = Arc::new(Self {
            maps: Mutex::new(maps),
            claimed: Mutex::default(),
            classes,
            attached: attached.clone(),
        });
        metrics.registry.register(Box::new(OverlayCollector {
            probe: probe.clone(),
            packets: catalogue::OVERLAY_PACKETS_TOTAL.desc(),
        }))?;
        Ok(probe)
    }
}

impl InterfaceProbe for Overlay {
    fn name(&self) -> &'static str {
        NAME
    }

    fn programs(&self) -> &'static [TcProgram] {
        PROGRAMS
    }

    fn wants(&self, interface: &Interface, _all: &InterfaceTable) -> bool {
        interface.vxlan.is_some()
    }

    fn retain_interfaces(&self, keep: &dyn Fn(u32) -> bool) {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<OverlayKey> =
            maps.stats.keys().filter_map(Result::ok).filter(|k| !keep(k.ifindex)).collect();
        for key in stale {
            let _ = maps.stats.remove(&key);
        }
        // Only the blocks of devices that went are read and freed: a block is 17 KiB per
        // CPU, and this runs on every link change.
        let current = self.attached.entries().into_iter().map(|(ifindex, _)| ifindex);
        let gone = self.claimed.lock().unwrap_or_else(PoisonError::into_inner).gone(keep, current);
        for ifindex in gone {
            clear_slot(&mut maps.blocks, ifindex % OVERLAY_DEVICE_SLOTS, |block| block.ifindex, keep);
        }
    }
}

/// Every non-zero count, from the blocks and the overflow map, summed over CPUs.
#[must_use]
pub fn counts<B: Borrow<MapData>, S: Borrow<MapData>>(
    blocks: &PerCpuArray<B, OverlayBlock>,
    stats: &PerCpuHashMap<S, OverlayKey, PacketCount>,
) -> BTreeMap<OverlayKey, PacketCount> {
    let mut counts: BTreeMap<OverlayKey, PacketCount> = BTreeMap::new();
    let mut add = |key: OverlayKey, count: &PacketCount| {
        if count.packets > 0 {
            let sum = counts.entry(key).or_default();
            sum.packets += count.packets;
            sum.bytes += count.bytes;
        }
    };
    // The class of a cell: the last slot per end is `other`.
    let class = |slot: usize| {
        if slot == CLASS_SLOTS - 1 { OTHER_CIDR } else { u8::try_from(slot).unwrap_or(OTHER_CIDR) }
    };
    for index in 0..OVERLAY_DEVICE_SLOTS {
        let Ok(per_cpu) = blocks.get(&index, 0) else { continue };
        for block in per_cpu.iter().filter(|block| block.ifindex != 0) {
            for (cell, count) in block.counts.iter().enumerate() {
                let (src_class, dst_class) = (class(cell / CLASS_SLOTS), class(cell % CLASS_SLOTS));
                add(OverlayKey { ifindex: block.ifindex, src_class, dst_class, _pad: [0; 2] }, count);
            }
        }
    }
    for (key, per_cpu) in stats.iter().filter_map(Result::ok) {
        per_cpu.iter().for_each(|count| add(key, count));
    }
    counts
}

struct OverlayCollector {
    probe: Arc<Overlay>,
    packets: Desc,
}

impl Collector for OverlayCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.packets]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let probe = &self.probe;
        // CIDRs sharing a name share a series.
        let mut totals: BTreeMap<[String; 3], u64> = BTreeMap::new();
        let maps = probe.maps.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, count) in counts(&maps.blocks, &maps.stats) {
            let Some(device) = probe.attached.name(key.ifindex) else { continue };
            let labels = [
                device,
                probe.classes.name(key.src_class).to_owned(),
                probe.classes.name(key.dst_class).to_owned(),
            ];
            *totals.entry(labels).or_default() += count.packets;
        }
        drop(maps);
        let mut packets = FamilyBuilder::counter(&self.packets, LABELS);
        for (labels, count) in &totals {
            packets.sample(&[&labels[0], &labels[1], &labels[2]], *count as f64);
        }
        packets.build().into_iter().collect()
    }
}
