//! Feeding crafted packets to cniguard's classifiers through BPF_PROG_TEST_RUN, and reading
//! what they counted.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use aya::Pod;
use aya::maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use probe_common::Direction;
use probe_common::counters::PacketCount;
use probe_common::iface_stats::IfaceCounters;

/// The verdict every cniguard classifier returns: `TC_ACT_UNSPEC`, "carry on as if this
/// program were not here".
pub const PASS_THROUGH: u32 = (-1_i32).cast_unsigned();

/// BPF_PROG_TEST_RUN hands the program an skb on the loopback device of the calling
/// thread's namespace, whose index is always 1.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// cniguard's eBPF object with some of its classifiers loaded (not attached anywhere).
pub struct Classifiers {
    ebpf: Ebpf,
}

impl Classifiers {
    /// # Errors
    /// If the object or a program does not load.
    pub fn load(programs: &[&str]) -> Result<Self> {
        let silent = 0_u8;
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &silent, true)
            .load(cniguard::node::ebpf::OBJECT)?;
        for name in programs {
            classifier(&mut ebpf, name)?.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Self { ebpf })
    }

    /// Runs `program` once on `packet` and returns its verdict.
    ///
    /// # Errors
    /// If the kernel refuses the run (e.g. a packet shorter than an Ethernet header).
    pub fn run(&mut self, program: &str, packet: &[u8]) -> Result<u32> {
        let options = TestRunOptions { data_in: Some(packet), ..TestRunOptions::default() };
        Ok(classifier(&mut self.ebpf, program)?.test_run(options)?.return_value)
    }

    /// Runs `program` once on `packet` as if it crossed interface `ifindex` (which must
    /// exist in the calling thread's namespace): the kernel takes `__sk_buff.ifindex` from
    /// the context passed in.
    ///
    /// # Errors
    /// If the kernel refuses the run (no such interface, say).
    pub fn run_on(&mut self, program: &str, packet: &[u8], ifindex: u32) -> Result<u32> {
        // `struct __sk_buff` up to and including `ifindex` (offset 40); the kernel takes a
        // shorter context and zero-fills the rest.
        let mut context = [0_u8; 44];
        context[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let options =
            TestRunOptions { data_in: Some(packet), ctx_in: Some(&context), ..TestRunOptions::default() };
        Ok(classifier(&mut self.ebpf, program)?.test_run(options)?.return_value)
    }

    /// Runs `program` `repeat` times on `packet` in the kernel and returns the kernel's
    /// average time per run.
    ///
    /// # Errors
    /// If the kernel refuses the run, or the verdict is not pass-through.
    pub fn time(&mut self, program: &str, packet: &[u8], repeat: u32) -> Result<Duration> {
        let options = TestRunOptions { data_in: Some(packet), repeat, ..TestRunOptions::default() };
        let result = classifier(&mut self.ebpf, program)?.test_run(options)?;
        ensure!(result.return_value == PASS_THROUGH, "{program} returned {}", result.return_value);
        Ok(result.duration)
    }

    /// The `iface_stats` counts for `ifindex` and `direction`, summed over CPUs.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn iface_counters(&self, ifindex: u32, direction: Direction) -> Result<IfaceCounters> {
        let slots = PerCpuArray::try_from(self.ebpf.map("IFACE_SLOTS").context("no IFACE_SLOTS map")?)?;
        let overflow = PerCpuHashMap::try_from(self.ebpf.map("IFACE_STATS").context("no IFACE_STATS map")?)?;
        Ok(cniguard::probes::iface_stats::counters_of(&slots, Some(&overflow), ifindex, direction))
    }
}

impl Classifiers {
    /// Tells the underlay program which UDP ports carry VXLAN.
    ///
    /// # Errors
    /// If the map cannot be written.
    pub fn set_vxlan_ports(&mut self, ports: &[u16]) -> Result<()> {
        let mut map: HashMap<_, u16, u8> =
            HashMap::try_from(self.ebpf.map_mut("VXLAN_PORTS").context("no VXLAN_PORTS")?)?;
        for port in ports {
            map.insert(port, 1, 0)?;
        }
        Ok(())
    }

    /// Turns on the underlay program's BGP socket filter, as the daemon does: segments of no
    /// socket past its handshake (every crafted frame) count under peer 0.0.0.0.
    ///
    /// # Errors
    /// If the map is missing.
    pub fn set_bgp_filter(&mut self) -> Result<()> {
        let mut map: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("BGP_FILTER").context("no BGP_FILTER")?)?;
        map.set(0, probe_common::underlay::BGP_FILTER_ON, 0)?;
        Ok(())
    }

    /// Loads CIDR classes into the programs' table: `(network, prefix length)` in order,
    /// each class its index.
    ///
    /// # Errors
    /// If the map cannot be written.
    pub fn set_cidr_classes(&mut self, cidrs: &[([u8; 4], u32)]) -> Result<()> {
        let mut map: Array<_, probe_common::overlay::CidrTable> =
            Array::try_from(self.ebpf.map_mut("CIDR_TABLE").context("no CIDR_TABLE")?)?;
        let cidrs: Vec<([u8; 4], u8)> = cidrs
            .iter()
            .map(|(network, length)| Ok((*network, u8::try_from(*length)?)))
            .collect::<Result<_>>()?;
        map.set(0, probe_common::overlay::CidrTable::new(&cidrs), 0)?;
        Ok(())
    }

    /// A per-CPU `u64` counter of map `name` under `key`, summed (0 if absent).
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn count<K: Pod>(&self, name: &str, key: &K) -> Result<u64> {
        let map: PerCpuHashMap<_, K, u64> =
            PerCpuHashMap::try_from(self.ebpf.map(name).context("no such map")?)?;
        Ok(map.get(key, 0).map_or(0, |per_cpu| per_cpu.iter().sum()))
    }

    /// The overlay program's counts, blocks and overflow map added (as the collector does).
    ///
    /// # Errors
    /// If a map cannot be read.
    pub fn overlay_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<probe_common::overlay::OverlayKey, PacketCount>> {
        let blocks =
            PerCpuArray::try_from(self.ebpf.map("OVERLAY_BLOCKS").context("no OVERLAY_BLOCKS map")?)?;
        let stats = PerCpuHashMap::try_from(self.ebpf.map("OVERLAY_STATS").context("no OVERLAY_STATS map")?)?;
        Ok(cniguard::probes::overlay::counts(&blocks, &stats))
    }

    /// A per-CPU packet count of map `name` under `key`, summed (zero if absent).
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn packets<K: Pod>(&self, name: &str, key: &K) -> Result<PacketCount> {
        let map: PerCpuHashMap<_, K, PacketCount> =
            PerCpuHashMap::try_from(self.ebpf.map(name).context("no such map")?)?;
        Ok(map.get(key, 0).map_or(PacketCount::default(), |per_cpu| {
            per_cpu.iter().fold(PacketCount::default(), |sum, c| PacketCount {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            })
        }))
    }

    /// Every entry of per-CPU `u64` map `name`, summed: to check nothing else was counted.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn all_counts<K: Pod>(&self, name: &str) -> Result<Vec<(K, u64)>> {
        let map: PerCpuHashMap<_, K, u64> =
            PerCpuHashMap::try_from(self.ebpf.map(name).context("no such map")?)?;
        Ok(map.iter().filter_map(Result::ok).map(|(k, per_cpu)| (k, per_cpu.iter().sum())).collect())
    }

    /// Every entry of (shared, not per-CPU) hash map `name`.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn all_values<K: Pod, V: Pod>(&self, name: &str) -> Result<Vec<(K, V)>> {
        let map: HashMap<_, K, V> = HashMap::try_from(self.ebpf.map(name).context("no such map")?)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// The records waiting in ring buffer `name`.
    ///
    /// # Errors
    /// If the map is not a ring buffer.
    pub fn drain<T: Pod>(&mut self, name: &str) -> Result<Vec<T>> {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut(name).context("no such ring buffer")?)?;
        let mut records = Vec::new();
        while let Some(item) = ring.next() {
            ensure!(item.len() >= size_of::<T>(), "a record of {} bytes", item.len());
            // SAFETY: T is plain data, and the program wrote exactly a T.
            records.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
        }
        Ok(records)
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?)
}
