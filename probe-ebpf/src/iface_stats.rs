//! `iface_stats`: packets and bytes per interface, direction and protocol class.
//!
//! One per-CPU hash map entry per interface and direction holds the counts of every
//! protocol class, so each packet costs one lookup and two adds, without locks.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    Direction,
    iface_stats::{IFACE_STATS_MAX_ENTRIES, IfaceCounters, IfaceKey, ProtocolClass},
    map_health::MapId,
};

use crate::{counters::counter, packet};

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
    let key = IfaceKey::new(ifindex, direction);
    let Some(counters) = counter(&IFACE_STATS, &key, MapId::IfaceStats) else {
        return;
    };
    // SAFETY: per-CPU value: only this CPU writes it while this program runs.
    let counters = unsafe { &mut *counters };
    if let Some(count) = counters.by_class.get_mut(class as usize) {
        count.packets += 1;
        count.bytes += u64::from(ctx.len());
    }
    if class == ProtocolClass::Malformed {
        debug!(ctx, "iface_stats: malformed frame on ifindex {}, len {}", ifindex, ctx.len());
    }
}
