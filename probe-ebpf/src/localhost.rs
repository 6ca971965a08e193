//! `localhost`: TCP over loopback to the watched ports, in every namespace, from one of two
//! hooks, whichever this kernel accepts (the daemon loads the first, then the second):
//!
//! - the root cgroup's socket hooks (`cgroup_skb`): one attachment sees every pod's
//!   loopback without touching any `lo`, and `bpf_get_netns_cookie` tells the pods apart
//!   (kernels that allow that helper there: not 6.12, 6.18 does). Each loopback packet passes
//!   the sender's egress hook and the receiver's ingress hook. Egress sees the SYN, the
//!   SYN-ACK, data and FIN; ingress is used for RSTs only, because the RST that refuses a
//!   SYN comes from the kernel, not from a socket, and is only sure to pass a hook where it
//!   arrives. The cookie is turned into the namespace's inode number, cniguard's one name
//!   for a namespace, through `NETNS_BY_COOKIE`, which the daemon fills.
//! - fentry on `loopback_xmit`, the loopback device's transmit function (5.5 and later):
//!   every loopback packet of every namespace passes it once, RSTs included, and nothing
//!   else does, so traffic on other devices never runs it. The namespace is the device's
//!   (`dev->nd_net->ns.inum`, offsets from the kernel's BTF).
//! - where the kernel refuses fentry, the `net_dev_start_xmit` raw tracepoint: the same,
//!   but it fires for every device's packets, so it looks at the device's index first
//!   (every namespace's loopback is index 1) and returns for all others.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_ktime_get_ns},
    macros::{cgroup_skb, fentry, map, raw_tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::{FEntryContext, RawTracePointContext, SkBuffContext},
};
use probe_common::{
    counters::Histogram,
    localhost::{
        CONNECTIONS_MAX_ENTRIES, ConnectionKey, ConnectionState, FailureKey, FailureReason,
        LATENCY_MAX_ENTRIES, LOCALHOST_PORTS_MAX_ENTRIES, LatencyKey, LatencyKind, Phase, SCOPE_MAX_ENTRIES,
    },
    map_health::MapId,
};

use crate::{
    counters::{add, record_latency},
    kernel,
    map_health::record_full,
    scope,
};

/// cgroup_skb verdict: let the packet through.
const ALLOW: i32 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const IPPROTO_TCP: u8 = 6;
/// `skb->protocol` of an IPv4 packet (network byte order in a u32).
const ETH_P_IP_BE: u32 = 0x0008;

/// Server ports to watch (9500, 8080, 8081 by default); filled by the daemon.
#[map]
static LOCALHOST_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(LOCALHOST_PORTS_MAX_ENTRIES, 0);

/// Connections in flight. Entries go with a FIN or RST; the daemon reclaims those whose
/// SYN was never answered (a timeout) or that went quiet.
#[map]
static CONNECTIONS: HashMap<ConnectionKey, ConnectionState> =
    HashMap::with_max_entries(CONNECTIONS_MAX_ENTRIES, 0);

#[map]
static LATENCY: PerCpuHashMap<LatencyKey, Histogram> =
    PerCpuHashMap::with_max_entries(LATENCY_MAX_ENTRIES, 0);

#[map]
static FAILURES: PerCpuHashMap<FailureKey, u64> = PerCpuHashMap::with_max_entries(LATENCY_MAX_ENTRIES, 0);

/// Namespace cookie to inode number, for the `cgroup_skb` programs; filled by the daemon
/// from its namespace inventory. A namespace it has not seen yet is not counted.
#[map]
static NETNS_BY_COOKIE: HashMap<u64, u64> = HashMap::with_max_entries(SCOPE_MAX_ENTRIES, 0);

#[cgroup_skb(egress)]
pub fn localhost_egress(ctx: SkBuffContext) -> i32 {
    if let Some(segment) = cgroup_segment(&ctx) {
        sent(&segment);
    }
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn localhost_ingress(ctx: SkBuffContext) -> i32 {
    if let Some(segment) = cgroup_segment(&ctx)
        && segment.flags & TCP_RST != 0
    {
        reset(&segment);
    }
    ALLOW
}

/// `loopback_xmit(skb, dev)`: every loopback packet, once, as the device sends it.
#[fentry(function = "loopback_xmit")]
pub fn localhost_xmit(ctx: FEntryContext) -> i32 {
    transmitted(ctx.arg(0), ctx.arg(1));
    0
}

/// Every namespace's loopback device has this index (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// `net_dev_start_xmit(skb, dev)`: every packet any device sends; loopback's only are read.
/// The daemon checks the arguments in the kernel's BTF before attaching.
#[raw_tracepoint(tracepoint = "net_dev_start_xmit")]
pub fn localhost_dev_xmit(ctx: RawTracePointContext) -> u32 {
    let device: u64 = ctx.arg(1);
    if kernel::device_ifindex(device) == Some(LOOPBACK_IFINDEX) {
        transmitted(ctx.arg(0), device);
    }
    0
}

/// A loopback packet as the device sends it: RSTs end connections, the rest move them on.
#[inline(always)]
fn transmitted(skb: u64, device: u64) {
    if let Some(segment) = xmit_segment(skb, device) {
        if segment.flags & TCP_RST != 0 {
            reset(&segment);
        } else {
            sent(&segment);
        }
    }
}

/// A loopback TCP segment of a watched connection.
struct Segment {
    key: ConnectionKey,
    /// Sent by the client (towards the watched port).
    from_client: bool,
    flags: u8,
    payload: usize,
}

/// The segment a `cgroup_skb` program sees, if it is one of a watched connection.
#[inline(always)]
fn cgroup_segment(ctx: &SkBuffContext) -> Option<Segment> {
    // SAFETY: the kernel hands this program its __sk_buff.
    if unsafe { (*ctx.skb.skb).protocol } != ETH_P_IP_BE {
        return None;
    }
    // cgroup_skb packets start at the IP header.
    let ip = ctx.load::<[u8; 20]>(0).ok()?;
    let tcp = ctx.load::<[u8; 14]>(ip_header_len(&ip)?).ok()?;
    let ends = watched(&tcp)?;
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.skb.skb.cast()) };
    // SAFETY: a map value, read at once.
    let netns = unsafe { *NETNS_BY_COOKIE.get(cookie)? };
    segment(&ip, &tcp, ends, netns)
}

/// The segment `loopback_xmit` sends, if it is one of a watched connection.
#[inline(always)]
fn xmit_segment(skb: u64, device: u64) -> Option<Segment> {
    let header = kernel::skb_ipv4_header(skb)?;
    let ip: [u8; 20] = kernel::read_at(header)?;
    let tcp: [u8; 14] = kernel::read_at(header + ip_header_len(&ip)? as u64)?;
    let ends = watched(&tcp)?;
    segment(&ip, &tcp, ends, kernel::device_netns(device)?)
}

/// The IPv4 header's length, if `ip` is a loopback TCP one.
#[inline(always)]
fn ip_header_len(ip: &[u8; 20]) -> Option<usize> {
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || header_len < 20 || ip[9] != IPPROTO_TCP || ip[12] != 127 || ip[16] != 127 {
        return None;
    }
    Some(header_len)
}

/// The ports, and whether the client sent it, if one of the segment's ports is watched.
#[inline(always)]
fn watched(tcp: &[u8; 14]) -> Option<(u16, u16, bool)> {
    let source_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let destination_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let from_client = if LOCALHOST_PORTS.get_ptr(destination_port).is_some() {
        true
    } else if LOCALHOST_PORTS.get_ptr(source_port).is_some() {
        false
    } else {
        return None;
    };
    Some((source_port, destination_port, from_client))
}

#[inline(always)]
fn segment(ip: &[u8; 20], tcp: &[u8; 14], ends: (u16, u16, bool), netns: u64) -> Option<Segment> {
    let (source_port, destination_port, from_client) = ends;
    if !scope::in_scope(netns) {
        return None;
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let (source, destination) = ([ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]]);
    let key = if from_client {
        ConnectionKey {
            netns,
            client: source,
            server: destination,
            client_port: source_port,
            server_port: destination_port,
            _pad: [0; 4],
        }
    } else {
        ConnectionKey {
            netns,
            client: destination,
            server: source,
            client_port: destination_port,
            server_port: source_port,
            _pad: [0; 4],
        }
    };
    Some(Segment {
        key,
        from_client,
        flags: tcp[13],
        payload: total_len.saturating_sub(header_len + data_offset),
    })
}

#[inline(always)]
fn sent(segment: &Segment) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = &segment.key;
    let syn = segment.flags & TCP_SYN != 0;
    let ack = segment.flags & TCP_ACK != 0;
    let state = CONNECTIONS.get_ptr_mut(key);
    if syn && !ack && segment.from_client {
        // A retransmitted SYN keeps the first one's time: the wait counts from there.
        if state.is_none_or(|s| unsafe { (*s).phase } != Phase::SynSent as u8) {
            let fresh =
                ConnectionState { since_ns: now, last_ns: now, phase: Phase::SynSent as u8, _pad: [0; 7] };
            if CONNECTIONS.insert(key, fresh, 0).is_err() {
                record_full(MapId::LocalhostConnections);
            }
        }
        return;
    }
    let state = match state {
        Some(state) => state,
        // A connection already open when the daemon started: follow it from here.
        None if segment.payload > 0 && !syn => {
            let open =
                ConnectionState { since_ns: now, last_ns: now, phase: Phase::Open as u8, _pad: [0; 7] };
            if CONNECTIONS.insert(key, open, 0).is_err() {
                record_full(MapId::LocalhostConnections);
                return;
            }
            let Some(state) = CONNECTIONS.get_ptr_mut(key) else { return };
            state
        }
        None => return,
    };
    // SAFETY: a map value, alive while this program runs; concurrent updates of one
    // connection are at worst a lost sample, never a bad access.
    let state = unsafe { &mut *state };
    state.last_ns = now;
    if syn && ack && !segment.from_client && state.phase == Phase::SynSent as u8 {
        sample(key, LatencyKind::Connect, now.saturating_sub(state.since_ns));
        state.phase = Phase::Open as u8;
    }
    if segment.payload > 0 {
        if segment.from_client && state.phase == Phase::Open as u8 {
            state.phase = Phase::AwaitingResponse as u8;
            state.since_ns = now;
        } else if !segment.from_client && state.phase == Phase::AwaitingResponse as u8 {
            sample(key, LatencyKind::Response, now.saturating_sub(state.since_ns));
            state.phase = Phase::Open as u8;
        }
    }
    if segment.flags & TCP_FIN != 0 {
        let _ = CONNECTIONS.remove(key);
    }
}

/// A RST arrived: refusal if the connection was still opening, a reset if it was open.
#[inline(always)]
fn reset(segment: &Segment) {
    let key = &segment.key;
    let Some(state) = CONNECTIONS.get_ptr(key) else { return };
    // SAFETY: a map value, alive while this program runs.
    let phase = unsafe { (*state).phase };
    let reason = if phase == Phase::SynSent as u8 { FailureReason::Refused } else { FailureReason::Reset };
    let failure = FailureKey { netns: key.netns, port: key.server_port, reason: reason as u8, _pad: [0; 5] };
    add(&FAILURES, &failure, 1, MapId::LocalhostFailures);
    let _ = CONNECTIONS.remove(key);
}

#[inline(always)]
fn sample(key: &ConnectionKey, kind: LatencyKind, nanoseconds: u64) {
    let latency = LatencyKey { netns: key.netns, port: key.server_port, kind: kind as u8, _pad: [0; 5] };
    record_latency(&LATENCY, &latency, nanoseconds, MapId::LocalhostLatency);
}
