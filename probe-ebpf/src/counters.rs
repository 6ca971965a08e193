//! Per-CPU counters in hash maps, shared by the probes.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};
use probe_common::map_health::MapId;

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

/// Adds `amount` to the per-CPU `u64` under `key`.
#[inline(always)]
pub fn add<K>(map: &PerCpuHashMap<K, u64>, key: &K, amount: u64, id: MapId) {
    if let Some(value) = counter(map, key, id) {
        // SAFETY: a per-CPU value, only written by this CPU while this program runs.
        unsafe { *value += amount };
    }
}

/// Adds one packet of `bytes` to the per-CPU count under `key`.
#[inline(always)]
pub fn add_packet<K>(
    map: &PerCpuHashMap<K, probe_common::iface_stats::PacketCount>,
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
