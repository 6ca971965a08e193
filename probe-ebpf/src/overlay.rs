//! `overlay`: on the VXLAN devices, the traffic inside the tunnel by the configured CIDR
//! its source and destination fall in (old pods, new pods, services, other), so the move
//! from old to new addresses shows per device during the cutover. Each device counts into
//! a per-CPU block of its own (no hash lookup per packet); `OVERLAY_STATS` takes a device
//! whose block another holds.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use probe_common::{
    counters::PacketCount,
    map_health::MapId,
    overlay::{OVERLAY_DEVICE_SLOTS, OVERLAY_STATS_MAX_ENTRIES, OverlayBlock, OverlayKey, cell},
};

use crate::{
    cidr,
    counters::add_packet,
    packet::{self, ETH_P_IP},
};

#[map]
static OVERLAY_BLOCKS: PerCpuArray<OverlayBlock> = PerCpuArray::with_max_entries(OVERLAY_DEVICE_SLOTS, 0);

#[map]
static OVERLAY_STATS: PerCpuHashMap<OverlayKey, PacketCount> =
    PerCpuHashMap::with_max_entries(OVERLAY_STATS_MAX_ENTRIES, 0);

#[classifier]
pub fn overlay_ingress(ctx: TcContext) -> i32 {
    observe(&ctx);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn overlay_egress(ctx: TcContext) -> i32 {
    observe(&ctx);
    TC_ACT_UNSPEC
}

/// Counts IPv4 packets by (source CIDR, destination CIDR). A packet crosses the device in
/// one direction only, so both hooks count into the same entries.
#[inline(always)]
fn observe(ctx: &TcContext) {
    let len = ctx.len() as usize;
    let Some((ETH_P_IP, l3)) = packet::ethernet(ctx) else { return };
    let Some(ip) = packet::ipv4(ctx, l3, len) else { return };
    // SAFETY: the kernel hands this program its __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(cidrs) = cidr::table() else { return };
    let (src_class, dst_class) = (cidrs.class(ip.source), cidrs.class(ip.destination));
    if let Some(block) = OVERLAY_BLOCKS.get_ptr_mut(ifindex % OVERLAY_DEVICE_SLOTS) {
        // SAFETY: a per-CPU value, only written by this CPU while this program runs (tc
        // programs run with bottom halves off).
        let block = unsafe { &mut *block };
        if block.ifindex == 0 {
            // Free blocks are all zeros: userspace clears a whole block when its device goes.
            block.ifindex = ifindex;
        }
        if block.ifindex == ifindex {
            if let Some(count) = block.counts.get_mut(cell(src_class, dst_class)) {
                count.packets += 1;
                count.bytes += u64::from(ctx.len());
            }
            return;
        }
    }
    let key = OverlayKey { ifindex, src_class, dst_class, _pad: [0; 2] };
    add_packet(&OVERLAY_STATS, &key, ctx.len(), MapId::OverlayStats);
}
