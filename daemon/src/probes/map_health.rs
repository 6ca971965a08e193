//! `cniguard_map_full_total{map}`: inserts the eBPF programs could not make because a map
//! was full. Each is a packet that was let through uncounted.

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray};
use probe_common::map_health::MapId;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::registry::{ProbeSpec, Programs, Started};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};

const LABELS: &[&str] = &["map"];

struct MapFullCollector {
    counts: PerCpuArray<MapData, u64>,
    desc: Desc,
}

pub const SPEC: ProbeSpec = ProbeSpec {
    name: "map_health",
    what: "full-map counts",
    loses: "cniguard_map_full_total: maps that overflow go unseen",
    programs: Programs::All(&[]),
    needs: &[],
    required: true,
    prepare: None,
    start: |context| {
        register(context.ebpf, context.metrics)?;
        Ok(Started::Collector)
    },
};

pub fn register(ebpf: &mut Ebpf, metrics: &DaemonMetrics) -> Result<()> {
    let map = ebpf.take_map("MAP_FULL").context("the eBPF object has no MAP_FULL map")?;
    let collector =
        MapFullCollector { counts: PerCpuArray::try_from(map)?, desc: catalogue::MAP_FULL_TOTAL.desc() };
    metrics.registry.register(Box::new(collector))?;
    Ok(())
}

impl Collector for MapFullCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut family = FamilyBuilder::counter(&self.desc, LABELS);
        for map in MapId::ALL {
            let total: u64 = self.counts.get(&(map as u32), 0).map_or(0, |per_cpu| per_cpu.iter().sum());
            family.sample(&[map.label()], total as f64);
        }
        family.build().into_iter().collect()
    }
}
