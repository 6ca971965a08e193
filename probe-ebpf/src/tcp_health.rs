//! `tcp_health`: retransmissions, resets sent and received, and sampled smoothed RTT, from
//! the `tcp_*` raw tracepoints, counted by the configured CIDR of the remote end.
//!
//! Raw tracepoints, not the classic ones: a classic tracepoint program is skipped whenever
//! any other tracing program runs on the CPU (a drop counted in process context when a
//! softirq retransmits), which lost a few retransmits in ten thousand; a raw tracepoint
//! program is only skipped when it interrupts itself.

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use probe_common::{
    counters::Histogram,
    map_health::MapId,
    overlay::MAX_CIDRS,
    tcp_health::{RTT_SAMPLE_EVERY, TcpEvent, TcpKey},
};

use crate::{
    cidr,
    counters::{add, record_latency},
    kernel, scope,
};

#[map]
static TCP_EVENTS: PerCpuHashMap<TcpKey, u64> = PerCpuHashMap::with_max_entries(4 * (MAX_CIDRS + 1), 0);

/// Smoothed RTT by the remote end's CIDR class.
#[map]
static TCP_RTT: PerCpuHashMap<u8, Histogram> = PerCpuHashMap::with_max_entries(MAX_CIDRS + 1, 0);

#[map]
static RTT_SAMPLING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `tcp_retransmit_skb(sk, skb[, err])`. The kernel counts segments, and one skb may carry
/// several; with `err`, the tracepoint also fires for attempts that never reached the
/// transmit path, which the kernel does not count (`-EBUSY`: the first copy is still
/// queued on the host).
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: RawTracePointContext) -> u32 {
    // The verifier wants a constant index into the arguments: `err` is the third or absent.
    if kernel::offsets().retransmit_err_arg == 2 && ctx.arg::<u64>(2) as i32 != 0 {
        return 0;
    }
    let (sock, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    count(sock, sock, TcpEvent::Retransmit, u64::from(kernel::tcp_skb_segments(skb)));
    0
}

/// `tcp_retransmit_synack(sk, req)`: the kernel counts a SYN-ACK sent again as a
/// retransmitted segment too, and it is the sign of a handshake's last ACK getting lost.
#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: RawTracePointContext) -> u32 {
    let (listener, request): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    count(listener, request, TcpEvent::Retransmit, 1);
    0
}

/// `tcp_receive_reset(sk)`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> u32 {
    let sock: u64 = ctx.arg(0);
    count(sock, sock, TcpEvent::ResetReceived, 1);
    0
}

/// `tcp_send_reset(sk, skb, ...)`: a reset for a port nothing listens on has no socket;
/// then the skb it answers tells the namespace and the peer.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> u32 {
    let (sock, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if sock != 0 {
        count(sock, sock, TcpEvent::ResetSent, 1);
        return 0;
    }
    let Some(peer) = kernel::skb_ipv4_source(skb) else { return 0 };
    if scope::in_scope(kernel::skb_device(skb).1) {
        record(TcpEvent::ResetSent, peer, 1);
    }
    0
}

/// `tcp_probe(sk, skb)`: fires for every segment received, so one in `RTT_SAMPLE_EVERY`.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_rtt(ctx: RawTracePointContext) -> u32 {
    let Some(seen) = RTT_SAMPLING.get_ptr_mut(0) else { return 0 };
    // SAFETY: a per-CPU slot; an interrupting run on this CPU can only shift the sampling.
    let seen = unsafe { &mut *seen };
    *seen += 1;
    if *seen % RTT_SAMPLE_EVERY != 0 {
        return 0;
    }
    let sock: u64 = ctx.arg(0);
    let (Some(peer), Some(srtt_us)) = (kernel::sock_peer(sock), kernel::tcp_srtt_us(sock)) else { return 0 };
    if kernel::sock_netns(sock).is_some_and(scope::in_scope) {
        record_latency(&TCP_RTT, &cidr::class(peer), u64::from(srtt_us) * 1000, MapId::TcpRtt);
    }
    0
}

/// Counts `amount` of `event` for the socket at `sock` (its namespace) whose remote end is
/// that of `ends` (the socket itself, or a request socket of a listener).
#[inline(always)]
fn count(sock: u64, ends: u64, event: TcpEvent, amount: u64) {
    let Some(peer) = kernel::sock_peer(ends) else { return };
    if kernel::sock_netns(sock).is_some_and(scope::in_scope) {
        record(event, peer, amount);
    }
}

#[inline(always)]
fn record(event: TcpEvent, peer: [u8; 4], amount: u64) {
    let key = TcpKey { peer_class: cidr::class(peer), event: event as u8, _pad: [0; 6] };
    add(&TCP_EVENTS, &key, amount, MapId::TcpHealth);
}
