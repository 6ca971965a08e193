//! `tcp_health`: retransmissions, resets sent and received, and sampled smoothed RTT, from
//! the `tcp_*` raw tracepoints, counted by the configured CIDR of the remote end.
//!
//! Resets sent match the kernel's `OutRsts`: where the `tcp_send_reset` tracepoint skips
//! resets without a socket (before 6.10), kprobes on `tcp_v4_send_reset` and
//! `tcp_v6_send_reset`, where the kernel counts them, take the passive ones.
//!
//! Raw tracepoints, not the classic ones: a classic tracepoint program is skipped whenever
//! any other tracing program runs on the CPU (a drop counted in process context when a
//! softirq retransmits), which lost a few retransmits in ten thousand; a raw tracepoint
//! program is only skipped when it interrupts itself.

use aya_ebpf::{
    macros::{kprobe, map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{ProbeContext, RawTracePointContext},
};
use probe_common::{
    counters::Histogram,
    map_health::MapId,
    overlay::{MAX_CIDRS, OTHER_CIDR},
    tcp_health::{RTT_SAMPLE_EVERY, TcpEvent, TcpKey},
};

use crate::{
    cidr,
    counters::{add, record_latency},
    kernel, scope,
};

/// The RST bit of a TCP header's flags byte.
const TCP_RST: u8 = 0x04;

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

/// `tcp_send_reset(sk, skb, ...)`, on kernels where it reports every reset (from 6.10,
/// when it gained its reason argument): a reset for a port nothing listens on has no
/// socket; then the skb it answers tells the namespace and the peer.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> u32 {
    let (sock, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if sock != 0 {
        count_reset(sock);
    } else {
        count_answered(skb);
    }
    0
}

/// `tcp_send_reset(sk, skb)` on older kernels, which call it for resets with a socket
/// only: here just the active ones (`tcp_send_active_reset`, no skb), since the passive
/// ones, socket or not, come from [`tcp_v4_send_reset`] and [`tcp_v6_send_reset`].
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_active_reset(ctx: RawTracePointContext) -> u32 {
    let (sock, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if skb == 0 {
        count_reset(sock);
    }
    0
}

/// `tcp_v4_send_reset(sk, skb)`: the reset answering `skb`, where the kernel counts
/// `OutRsts`; `sk` is absent for a port nothing listens on.
#[kprobe]
pub fn tcp_v4_send_reset(ctx: ProbeContext) -> u32 {
    passive_reset(&ctx);
    0
}

/// `tcp_v6_send_reset(sk, skb)`: the same for IPv6, whose peers count as `other`.
#[kprobe]
pub fn tcp_v6_send_reset(ctx: ProbeContext) -> u32 {
    passive_reset(&ctx);
    0
}

#[inline(always)]
fn passive_reset(ctx: &ProbeContext) {
    let (Some(sock), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else { return };
    // The kernel never answers a reset with a reset (and counts nothing then).
    if kernel::skb_tcp_flags(skb).is_none_or(|flags| flags & TCP_RST != 0) {
        return;
    }
    if sock != 0 {
        count_reset(sock);
    } else {
        count_answered(skb);
    }
}

/// A reset sent on the socket at `sock`; an IPv6 peer counts as `other`, as the kernel's
/// `OutRsts` counts both families.
#[inline(always)]
fn count_reset(sock: u64) {
    if kernel::sock_netns(sock).is_some_and(scope::in_scope) {
        record_class(TcpEvent::ResetSent, kernel::sock_peer(sock).map_or(OTHER_CIDR, cidr::class), 1);
    }
}

/// A reset without a socket, for the segment `skb` (its device's namespace, its source).
#[inline(always)]
fn count_answered(skb: u64) {
    if scope::in_scope(kernel::skb_device(skb).1) {
        let class = kernel::skb_ipv4_source(skb).map_or(OTHER_CIDR, cidr::class);
        record_class(TcpEvent::ResetSent, class, 1);
    }
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
    record_class(event, cidr::class(peer), amount);
}

#[inline(always)]
fn record_class(event: TcpEvent, peer_class: u8, amount: u64) {
    let key = TcpKey { peer_class, event: event as u8, _pad: [0; 6] };
    add(&TCP_EVENTS, &key, amount, MapId::TcpHealth);
}
