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

//!
//! Each exchange is timed in the protocol the connection speaks ([`crate::exchanges`]),
//! over IPv4 and IPv6 loopback (`127.0.0.0/8`, `::1`).

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
        LATENCY_MAX_ENTRIES, LOCALHOST_PORTS_MAX_ENTRIES, LatencyKey, LatencyKind, MIDWAY_SEARCH_SEGMENTS,
        Phase, Protocol, SCOPE_MAX_ENTRIES,
    },
    map_health::MapId,
};

use crate::{
    counters::{add, record_latency},
    exchanges::{self, EXCHANGES, Payload},
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
/// `skb->protocol` of an IPv4 and an IPv6 packet (network byte order in a u32).
const ETH_P_IP_BE: u32 = 0x0008;
const ETH_P_IPV6_BE: u32 = 0xdd86;
const IPV6_HEADER_LEN: usize = 40;
/// `::1`.
const IPV6_LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Server ports to watch (9000, 9500, 8080, 8081 by default); filled by the daemon.
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
    if !through_loopback(&ctx) {
        return ALLOW;
    }
    let mut segment = Segment::default();
    if read_cgroup_segment(&ctx, &mut segment) {
        let chunk = SkbChunk { ctx: &ctx, start: segment.payload_at, len: segment.payload };
        sent(&segment, &chunk);
    }
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn localhost_ingress(ctx: SkBuffContext) -> i32 {
    if !through_loopback(&ctx) {
        return ALLOW;
    }
    let mut segment = Segment::default();
    if read_cgroup_segment(&ctx, &mut segment) && segment.flags & TCP_RST != 0 {
        reset(&segment);
    }
    ALLOW
}

/// Whether the packet leaves through, or came in from, a loopback device. The programs run
/// for every socket of the host (they hang on the root cgroup): one field read turns
/// away all other traffic before any load (the device is set on egress too, as the cgroup
/// hook runs after routing).
#[inline(always)]
fn through_loopback(ctx: &SkBuffContext) -> bool {
    // SAFETY: the kernel hands this program its __sk_buff.
    unsafe { (*ctx.skb.skb).ifindex == LOOPBACK_IFINDEX }
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
    let mut segment = Segment::default();
    let ip_at = read_xmit_segment(skb, device, &mut segment);
    if ip_at != 0 {
        if segment.flags & TCP_RST != 0 {
            reset(&segment);
        } else {
            sent(&segment, &kernel::skb_payload(skb, ip_at + segment.payload_at as u64, segment.payload));
        }
    }
}

/// The payload of a segment a `cgroup_skb` program sees, read through the kernel (which
/// reaches into page fragments).
struct SkbChunk<'a> {
    ctx: &'a SkBuffContext,
    start: usize,
    len: u32,
}

impl Payload for SkbChunk<'_> {
    #[inline(always)]
    fn len(&self) -> u32 {
        self.len
    }

    #[inline(always)]
    fn read<T>(&self, at: u32) -> Option<T> {
        self.ctx.load::<T>(self.start + at as usize).ok()
    }
}

/// A loopback TCP segment of a watched connection.
#[derive(Default)]
struct Segment {
    key: ConnectionKey,
    /// Sent by the client (towards the watched port).
    from_client: bool,
    flags: u8,
    seq: u32,
    /// Where the payload starts, from the IP header, and its length.
    payload_at: usize,
    payload: u32,
}

/// The IP layer of a loopback TCP packet: both addresses (zero for IPv6's `::1`), the
/// version, the IP header's length and the length of what follows it.
struct Ip {
    source: [u8; 4],
    destination: [u8; 4],
    version: u8,
    header_len: usize,
    l4_len: usize,
}

/// Reads into `segment` the segment a `cgroup_skb` program sees; false if it is not one of
/// a watched connection. A BPF subprogram: its temporaries leave the stack when it returns.
#[inline(never)]
fn read_cgroup_segment(ctx: &SkBuffContext, segment: &mut Segment) -> bool {
    match cgroup_segment(ctx) {
        Some(read) => {
            *segment = read;
            true
        }
        None => false,
    }
}

/// The segment a `cgroup_skb` program sees, if it is one of a watched connection.
#[inline(always)]
fn cgroup_segment(ctx: &SkBuffContext) -> Option<Segment> {
    // SAFETY: the kernel hands this program its __sk_buff.
    let protocol = unsafe { (*ctx.skb.skb).protocol };
    // cgroup_skb packets start at the IP header.
    let ip = if protocol == ETH_P_IP_BE {
        ipv4(&ctx.load::<[u8; 20]>(0).ok()?)?
    } else if protocol == ETH_P_IPV6_BE {
        ipv6(&ctx.load::<[u8; IPV6_HEADER_LEN]>(0).ok()?)?
    } else {
        return None;
    };
    let tcp = ctx.load::<[u8; 14]>(ip.header_len).ok()?;
    let ends = watched(&tcp)?;
    // SAFETY: the helper only reads the context it is given.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.skb.skb.cast()) };
    // SAFETY: a map value, read at once.
    let netns = unsafe { *NETNS_BY_COOKIE.get(cookie)? };
    segment(&ip, &tcp, ends, netns)
}

/// Reads into `segment` the segment `loopback_xmit` sends; returns where its IP header is,
/// or 0 if it is not one of a watched connection. A BPF subprogram, as above.
#[inline(never)]
fn read_xmit_segment(skb: u64, device: u64, segment: &mut Segment) -> u64 {
    match xmit_segment(skb, device) {
        Some((read, ip_at)) => {
            *segment = read;
            ip_at
        }
        None => 0,
    }
}

/// The segment `loopback_xmit` sends, if it is one of a watched connection, and where
/// its IP header is.
#[inline(always)]
fn xmit_segment(skb: u64, device: u64) -> Option<(Segment, u64)> {
    let (header, version) = kernel::skb_ip_header(skb)?;
    let ip = if version == 4 {
        ipv4(&kernel::read_at::<[u8; 20]>(header)?)?
    } else {
        ipv6(&kernel::read_at::<[u8; IPV6_HEADER_LEN]>(header)?)?
    };
    let tcp: [u8; 14] = kernel::read_at(header + ip.header_len as u64)?;
    let ends = watched(&tcp)?;
    Some((segment(&ip, &tcp, ends, kernel::device_netns(device)?)?, header))
}

/// An IPv4 loopback TCP header.
#[inline(always)]
fn ipv4(ip: &[u8; 20]) -> Option<Ip> {
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || header_len < 20 || ip[9] != IPPROTO_TCP || ip[12] != 127 || ip[16] != 127 {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    Some(Ip {
        source: [ip[12], ip[13], ip[14], ip[15]],
        destination: [ip[16], ip[17], ip[18], ip[19]],
        version: 4,
        header_len,
        l4_len: total_len.saturating_sub(header_len),
    })
}

/// An IPv6 loopback TCP header (`::1` to `::1`, TCP right after the fixed header, as
/// loopback sends it).
#[inline(always)]
fn ipv6(ip: &[u8; IPV6_HEADER_LEN]) -> Option<Ip> {
    if ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP {
        return None;
    }
    if ip[8..24] != IPV6_LOOPBACK || ip[24..40] != IPV6_LOOPBACK {
        return None;
    }
    let l4_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    Some(Ip { source: [0; 4], destination: [0; 4], version: 6, header_len: IPV6_HEADER_LEN, l4_len })
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
fn segment(ip: &Ip, tcp: &[u8; 14], ends: (u16, u16, bool), netns: u64) -> Option<Segment> {
    let (source_port, destination_port, from_client) = ends;
    if !scope::in_scope(netns) {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let key = if from_client {
        ConnectionKey {
            netns,
            client: ip.source,
            server: ip.destination,
            client_port: source_port,
            server_port: destination_port,
            ip_version: ip.version,
            _pad: [0; 3],
        }
    } else {
        ConnectionKey {
            netns,
            client: ip.destination,
            server: ip.source,
            client_port: destination_port,
            server_port: source_port,
            ip_version: ip.version,
            _pad: [0; 3],
        }
    };
    Some(Segment {
        key,
        from_client,
        flags: tcp[13],
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        payload_at: ip.header_len + data_offset,
        payload: ip.l4_len.saturating_sub(data_offset) as u32,
    })
}

/// What a segment leaves to do once its connection has moved on: walk its HTTP/2
/// frames, and forget the connection (a FIN).
const WALK_HTTP2: u8 = 1;
const CLOSE: u8 = 2;

/// A segment sent on a watched connection. Its steps are BPF subprograms called one
/// after the other, not inside each other: the kernel adds up the stacks of nested calls
/// against its 512 bytes.
#[inline(always)]
fn sent<P: Payload>(segment: &Segment, payload: &P) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let next = connection(segment, payload, now);
    if next & WALK_HTTP2 != 0 {
        let context = exchanges::Context {
            key: &segment.key,
            from_client: segment.from_client,
            seq: segment.seq,
            payload: segment.payload,
            now,
        };
        // Checked before the walk, so that the verifier meets the walk with one kind of
        // payload, not once for each way the hook could fail to read it.
        if payload.len() != segment.payload {
            exchanges::http2_unreadable(&context);
        } else if exchanges::http2_walk(&context, payload) {
            exchanges::http2_act(&context);
        }
    }
    if next & CLOSE != 0 {
        let _ = CONNECTIONS.remove(segment.key);
        let _ = EXCHANGES.remove(segment.key);
    }
}

/// Moves the segment's connection on (handshake, turn, HTTP/1.1 exchange); returns what
/// is left to do ([`WALK_HTTP2`], [`CLOSE`]).
#[inline(never)]
fn connection<P: Payload>(segment: &Segment, payload: &P, now: u64) -> u8 {
    let key = &segment.key;
    let syn = segment.flags & TCP_SYN != 0;
    let ack = segment.flags & TCP_ACK != 0;
    let state = CONNECTIONS.get_ptr_mut(key);
    if syn && !ack && segment.from_client {
        // A retransmitted SYN keeps the first one's time: the wait counts from there.
        if state.is_none_or(|s| unsafe { (*s).phase } != Phase::SynSent as u8) {
            let fresh = ConnectionState {
                since_ns: now,
                last_ns: now,
                client_seq: segment.seq.wrapping_add(1),
                server_seq: 0,
                phase: Phase::SynSent as u8,
                protocol: Protocol::Unknown as u8,
                search_left: 0,
                _pad: [0; 5],
            };
            if CONNECTIONS.insert(key, fresh, 0).is_err() {
                record_full(MapId::LocalhostConnections);
            }
            // A connection's old walk (its 4-tuple reused) starts over.
            let _ = EXCHANGES.remove(key);
        }
        return 0;
    }
    let state = match state {
        Some(state) => state,
        // A connection already open when the daemon started: follow it from here.
        None if segment.payload > 0 && !syn => {
            let open = ConnectionState {
                since_ns: now,
                last_ns: now,
                client_seq: 0,
                server_seq: 0,
                phase: Phase::Open as u8,
                protocol: Protocol::Unknown as u8,
                search_left: MIDWAY_SEARCH_SEGMENTS,
                _pad: [0; 5],
            };
            if CONNECTIONS.insert(key, open, 0).is_err() {
                record_full(MapId::LocalhostConnections);
                return 0;
            }
            let Some(state) = CONNECTIONS.get_ptr_mut(key) else { return 0 };
            state
        }
        None => return 0,
    };
    // SAFETY: a map value, alive while this program runs; concurrent updates of one
    // connection are at worst a lost sample, never a bad access.
    let state = unsafe { &mut *state };
    state.last_ns = now;
    if syn && ack && !segment.from_client && state.phase == Phase::SynSent as u8 {
        sample(key, LatencyKind::Connect, Protocol::Unknown, now.saturating_sub(state.since_ns));
        state.phase = Phase::Open as u8;
        state.server_seq = segment.seq.wrapping_add(1);
    }
    let mut next = 0;
    if segment.payload > 0 && exchange(segment, state, payload, now) {
        next |= WALK_HTTP2;
    }
    if segment.flags & TCP_FIN != 0 {
        next |= CLOSE;
    }
    next
}

/// A segment with payload: the client's first bytes say what the connection speaks, then
/// HTTP/1.1 and other protocols count their exchanges here; true if it is HTTP/2, whose
/// frames are walked next.
#[inline(always)]
fn exchange<P: Payload>(segment: &Segment, state: &mut ConnectionState, payload: &P, now: u64) -> bool {
    let key = &segment.key;
    if state.protocol == Protocol::Unknown as u8 {
        if !segment.from_client {
            // The server speaks first (an HTTP/2 server's SETTINGS may leave before the
            // client's preface arrives): those are whole frames nothing is measured by,
            // so its walk starts after them.
            if state.server_seq != 0 {
                state.server_seq = segment.seq.wrapping_add(segment.payload);
            }
            return false;
        }
        let first = payload.read::<[u8; 4]>(0);
        let mut protocol = first.map_or(Protocol::Other, exchanges::detect);
        // A connection first seen open (no handshake) may be anywhere in its stream.
        let midway = state.client_seq == 0;
        let mut at_frames = false;
        if midway && protocol == Protocol::Other {
            if payload.len() == segment.payload && exchanges::frames_start_here(payload, segment.payload) {
                protocol = Protocol::Http2;
                at_frames = true;
            } else if state.search_left > 1 {
                state.search_left -= 1;
                return false; // not measured until a segment shows what it speaks
            }
        }
        let started = if protocol == Protocol::Other {
            true
        } else if at_frames {
            exchanges::start_at_frames(key, segment.seq)
        } else if midway && protocol == Protocol::Http2 {
            exchanges::start(key, segment.seq, 0) // this segment is the preface
        } else {
            exchanges::start(key, state.client_seq, state.server_seq)
        };
        if !started {
            record_full(MapId::LocalhostExchanges);
            protocol = Protocol::Other;
        }
        state.protocol = protocol as u8;
    }
    if state.protocol == Protocol::Http2 as u8 {
        return true;
    }
    if state.protocol == Protocol::Other as u8 {
        // Turn by turn: the client's first byte to the server's first byte.
        if segment.from_client && state.phase == Phase::Open as u8 {
            state.phase = Phase::AwaitingResponse as u8;
            state.since_ns = now;
        } else if !segment.from_client && state.phase == Phase::AwaitingResponse as u8 {
            sample(key, LatencyKind::Response, Protocol::Other, now.saturating_sub(state.since_ns));
            state.phase = Phase::Open as u8;
        }
        return false;
    }
    let Some(walk) = EXCHANGES.get_ptr_mut(key) else { return false };
    // SAFETY: a map value, alive while this program runs.
    let walk = unsafe { &mut *walk };
    let context = exchanges::Context {
        key,
        from_client: segment.from_client,
        seq: segment.seq,
        payload: segment.payload,
        now,
    };
    exchanges::http1(&context, walk, payload);
    false
}

/// A RST arrived: refusal if the connection was still opening, a reset if it was open.
#[inline(always)]
fn reset(segment: &Segment) {
    let key = &segment.key;
    let Some(state) = CONNECTIONS.get_ptr(key) else { return };
    // SAFETY: a map value, alive while this program runs.
    let phase = unsafe { (*state).phase };
    let reason = if phase == Phase::SynSent as u8 { FailureReason::Refused } else { FailureReason::Reset };
    count_failure(key, reason, 0);
    let _ = CONNECTIONS.remove(key);
    let _ = EXCHANGES.remove(key);
}

/// One failure of the connection's port, with its HTTP/2 error code where it has one.
#[inline(always)]
pub(crate) fn count_failure(key: &ConnectionKey, reason: FailureReason, code: u8) {
    let failure =
        FailureKey { netns: key.netns, port: key.server_port, reason: reason as u8, code, _pad: [0; 4] };
    add(&FAILURES, &failure, 1, MapId::LocalhostFailures);
}

#[inline(always)]
pub(crate) fn sample(key: &ConnectionKey, kind: LatencyKind, protocol: Protocol, nanoseconds: u64) {
    let latency = LatencyKey {
        netns: key.netns,
        port: key.server_port,
        kind: kind as u8,
        protocol: protocol as u8,
        _pad: [0; 4],
    };
    record_latency(&LATENCY, &latency, nanoseconds, MapId::LocalhostLatency);
}
