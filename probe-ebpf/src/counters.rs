//! Per-CPU counters in hash maps, shared by the probes.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};
use probe_common::{
    counters::{Histogram, LATENCY_BOUNDS_NS, LATENCY_BUCKETS},
    map_health::MapId,
};

use crate::map_health::record_full;

/// The per-CPU value for `key`, created zeroed on first use; `None` (and counted under
/// `id` in `MAP_FULL`) only if the map is full.
#[inline(always)]
pub fn counter<K, V: Default>(map: &PerCpuHashMap<K, V>, key: &K, id: MapId) -> Option<*mut V> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(value);
    }
    // Another CPU may create the entry at the same moment: NOEXIST makes that harmless, and
    // the second lookup finds whichever insert won.
    let _ = map.insert(key, V::default(), u64::from(BPF_NOEXIST));
    let value = map.get_ptr_mut(key);
    if value.is_none() {
        record_full(id);
    }
    value
}

/// Adds `amount` to a per-CPU slot. Atomically: tracepoints and cgroup hooks run both in
/// process context and in softirqs that interrupt it on the same CPU, where a plain `+=`
/// loses counts (the TCP test caught a few retransmits missing that way).
#[inline(always)]
pub fn bump(slot: *mut u64, amount: u64) {
    // SAFETY: `slot` points into a map value, which lives while this program runs.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            slot, amount,
        );
    }
    // SAFETY: as above.
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(slot) }
        .fetch_add(amount, core::sync::atomic::Ordering::Relaxed);
}

/// Adds `amount` to the per-CPU `u64` under `key`.
#[inline(always)]
pub fn add<K>(map: &PerCpuHashMap<K, u64>, key: &K, amount: u64, id: MapId) {
    if let Some(value) = counter(map, key, id) {
        bump(value, amount);
    }
}

/// Records a latency sample in the per-CPU histogram under `key`.
#[inline(always)]
pub fn record_latency<K>(map: &PerCpuHashMap<K, Histogram>, key: &K, nanoseconds: u64, id: MapId) {
    let Some(histogram) = counter(map, key, id) else { return };
    let mut bucket = LATENCY_BUCKETS - 1;
    for (index, bound) in LATENCY_BOUNDS_NS.iter().enumerate() {
        if nanoseconds <= *bound {
            bucket = index;
            break;
        }
    }
    // SAFETY: a map value, alive while this program runs; only its fields' addresses are taken.
    unsafe {
        if bucket < LATENCY_BUCKETS {
            bump(&raw mut (*histogram).buckets[bucket], 1);
        }
        bump(&raw mut (*histogram).sum_ns, nanoseconds);
    }
}

/// Adds one packet of `bytes` to the per-CPU count under `key`. Plain adds: only tc
/// programs count packets, and they run with bottom halves off, never interrupted by
/// another run on the same CPU.
#[inline(always)]
pub fn add_packet<K>(
    map: &PerCpuHashMap<K, probe_common::counters::PacketCount>,
    key: &K,
    bytes: u32,
    id: MapId,
) {
    if let Some(count) = counter(map, key, id) {
        // SAFETY: a per-CPU value, only written by this CPU while this program runs.
        let count = unsafe { &mut *count };
        count.packets += 1;
        count.bytes += u64::from(bytes);
    }
}
