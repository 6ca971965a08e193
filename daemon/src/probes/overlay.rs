//! `overlay`: traffic inside each VXLAN device by the configured CIDR (old pods, new pods,
//! services, other) of its source and destination.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuHashMap};
use probe_common::Direction;
use probe_common::counters::PacketCount;
use probe_common::overlay::OverlayKey;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::registry::{ProbeSpec, Programs, Started};
use super::shared::CidrClasses;
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

pub struct Overlay {
    stats: Mutex<PerCpuHashMap<MapData, OverlayKey, PacketCount>>,
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
        let stats = ebpf.take_map("OVERLAY_STATS").context("the eBPF object has no OVERLAY_STATS map")?;
        let probe = Arc::new(Self {
            stats: Mutex::new(PerCpuHashMap::try_from(stats)?),
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
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<OverlayKey> =
            stats.keys().filter_map(Result::ok).filter(|k| !keep(k.ifindex)).collect();
        for key in stale {
            let _ = stats.remove(&key);
        }
    }
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
        for (key, per_cpu) in
            probe.stats.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Result::ok)
        {
            let Some(device) = probe.attached.name(key.ifindex) else { continue };
            let labels = [
                device,
                probe.classes.name(key.src_class).to_owned(),
                probe.classes.name(key.dst_class).to_owned(),
            ];
            *totals.entry(labels).or_default() += per_cpu.iter().map(|c| c.packets).sum::<u64>();
        }
        let mut packets = FamilyBuilder::counter(&self.packets, LABELS);
        for (labels, count) in &totals {
            packets.sample(&[&labels[0], &labels[1], &labels[2]], *count as f64);
        }
        packets.build().into_iter().collect()
    }
}
