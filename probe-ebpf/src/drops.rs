//! `drops`: the `kfree_skb` raw tracepoint, counted in-kernel by reason (or, where the
//! kernel gives none, by location), device, namespace and protocol; a few sampled drops go
//! to userspace with their kernel location.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
    programs::RawTracePointContext,
};
use probe_common::{
    drops::{DROP_EVENT_INTERVAL_NS, DROPS_MAX_ENTRIES, DropEvent, DropKey, REASON_NONE_GIVEN},
    map_health::MapId,
};

use crate::{counters::add, kernel, map_health::record_full, scope};

#[map]
static DROPS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::with_max_entries(DROPS_MAX_ENTRIES, 0);

#[map]
static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// When each CPU last sent a detail event.
#[map]
static LAST_DROP_EVENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `kfree_skb(skb, location, reason, ...)`: the daemon checks these positions in the
/// kernel's BTF before attaching.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drops(ctx: RawTracePointContext) -> u32 {
    // An enum: the low 32 bits of the register.
    let reason = ctx.arg::<u64>(2) as u32;
    count(ctx.arg(0), ctx.arg(1), reason, 0);
    0
}

/// `kfree_skb(skb, location)`, on kernels whose tracepoint gives no reason (before 5.17):
/// the location stands in for it in the key. A program of its own, because a raw
/// tracepoint program may not read past the tracepoint's arguments (the kernel refuses to
/// attach one whose highest read is beyond them).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drops_unreasoned(ctx: RawTracePointContext) -> u32 {
    let location: u64 = ctx.arg(1);
    count(ctx.arg(0), location, REASON_NONE_GIVEN, location);
    0
}

#[inline(always)]
fn count(skb: u64, location: u64, reason: u32, key_location: u64) {
    let (ifindex, netns) = kernel::skb_device(skb);
    if !scope::in_scope(netns) {
        return;
    }
    let protocol = kernel::skb_protocol(skb);
    let key = DropKey { netns, ifindex, reason, location: key_location, protocol, _pad: [0; 6] };
    add(&DROPS, &key, 1, MapId::Drops);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(last) = LAST_DROP_EVENT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; an interrupting run on this CPU can at worst send one
        // more sample.
        let last = unsafe { &mut *last };
        if now.saturating_sub(*last) >= DROP_EVENT_INTERVAL_NS {
            *last = now;
            let event = DropEvent { netns, location, ifindex, reason, protocol, _pad: [0; 6] };
            if DROP_EVENTS.output::<DropEvent>(&event, 0).is_err() {
                record_full(MapId::DropEvents);
            }
        }
    }
}
