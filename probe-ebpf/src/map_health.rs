//! Counts inserts refused by full maps, per map (see `probe_common::map_health`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use probe_common::map_health::MapId;

#[map]
static MAP_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(MapId::COUNT, 0);

#[inline(always)]
pub fn record_full(map: MapId) {
    if let Some(count) = MAP_FULL.get_ptr_mut(map as u32) {
        // SAFETY: a per-CPU slot is only touched by the program running on this CPU.
        unsafe { *count += 1 };
    }
}
