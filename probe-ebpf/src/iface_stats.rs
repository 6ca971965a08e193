//! `iface_stats`: packets and bytes per interface, direction and protocol class.
//!
//! One per-CPU array slot per interface and direction holds the counts of every protocol
//! class, so each packet costs an array lookup (inlined by the verifier) and two adds,
//! without locks. An interface whose slot another interface holds counts in a per-CPU hash
//! map instead (`IFACE_STATS`); userspace adds both.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    Direction,
    iface_stats::{
        IFACE_SLOT_COUNT, IFACE_STATS_MAX_ENTRIES, IfaceCounters, IfaceKey, IfaceSlot, ProtocolClass,
        slot_index,
    },
    map_health::MapId,
};

use crate::{counters::counter, packet};

#[map]
static IFACE_SLOTS: PerCpuArray<IfaceSlot> = PerCpuArray::with_max_entries(2 * IFACE_SLOT_COUNT, 0);

#[map]
static IFACE_STATS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::with_max_entries(IFACE_STATS_MAX_ENTRIES, 0);

#[classifier]
pub fn iface_stats_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn iface_stats_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(ctx: &TcContext, direction: Direction) {
    let class = packet::classify(ctx);
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel handed this program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(counters) = counters(ifindex, direction) else {
        return;
    };
    if let Some(count) = counters.by_class.get_mut(class as usize) {
        count.packets += 1;
        count.bytes += u64::from(ctx.len());
    }
    if class == ProtocolClass::Malformed {
        debug!(ctx, "iface_stats: malformed frame on ifindex {}, len {}", ifindex, ctx.len());
    }
}

/// This CPU's counters of `ifindex` in `direction`: its array slot, claimed if free, or
/// its overflow entry.
#[inline(always)]
fn counters(ifindex: u32, direction: Direction) -> Option<&'static mut IfaceCounters> {
    if let Some(slot) = IFACE_SLOTS.get_ptr_mut(slot_index(ifindex, direction)) {
        // SAFETY: per-CPU value: only this CPU writes it, and tc programs run with bottom
        // halves off, so no other run interrupts this one on this CPU.
        let slot = unsafe { &mut *slot };
        if slot.ifindex == 0 {
            // Free slots are all zeros: userspace clears a whole slot when its interface goes.
            slot.ifindex = ifindex;
        }
        if slot.ifindex == ifindex {
            return Some(&mut slot.counters);
        }
    }
    let counters = counter(&IFACE_STATS, &IfaceKey::new(ifindex, direction), MapId::IfaceStats)?;
    // SAFETY: as above, a per-CPU value.
    Some(unsafe { &mut *counters })
}
