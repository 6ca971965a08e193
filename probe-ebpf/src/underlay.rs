//! `underlay`: on a node's underlay device, VXLAN by port, VNI and remote node, and BGP
//! messages by peer and type, with NOTIFICATIONs sent to userspace.
//!
//! The underlay carries all of a node's traffic, so the common case (neither VXLAN nor BGP)
//! costs an Ethernet, an IPv4 and a port read, and nothing else.

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_CLOSE_WAIT, BPF_TCP_CLOSING, BPF_TCP_ESTABLISHED, BPF_TCP_FIN_WAIT1,
        BPF_TCP_FIN_WAIT2, BPF_TCP_LAST_ACK, BPF_TCP_NEW_SYN_RECV, TC_ACT_UNSPEC, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{bpf_ktime_get_ns, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use probe_common::{
    Direction,
    counters::PacketCount,
    map_health::MapId,
    underlay::{
        BGP_FILTER_ON, BGP_HEADER_LEN, BGP_OPEN_FIXED_LEN, BGP_PORT, BGP_STATS_MAX_ENTRIES, BgpKey,
        BgpMessageKind, BgpNotificationEvent, BgpOpen, BgpOpenKey, MAX_BGP_MESSAGES_PER_SEGMENT,
        VXLAN_FLAG_VNI, VXLAN_HEADER_LEN, VXLAN_PORTS_MAX_ENTRIES, VXLAN_STATS_MAX_ENTRIES, VxlanKey,
        VxlanMalformedKey,
    },
};

use crate::{
    counters::{add, add_packet},
    map_health::record_full,
    packet::{self, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, TCP_MIN_HLEN, UDP_HLEN},
};

/// UDP destination ports that carry VXLAN; filled by the daemon.
#[map]
static VXLAN_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(VXLAN_PORTS_MAX_ENTRIES, 0);

#[map]
static VXLAN_STATS: PerCpuHashMap<VxlanKey, PacketCount> =
    PerCpuHashMap::with_max_entries(VXLAN_STATS_MAX_ENTRIES, 0);

#[map]
static VXLAN_MALFORMED: PerCpuHashMap<VxlanMalformedKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);

#[map]
static BGP_STATS: PerCpuHashMap<BgpKey, u64> = PerCpuHashMap::with_max_entries(BGP_STATS_MAX_ENTRIES, 0);

/// `[0]`: whether only segments of established sockets count under their peer's address
/// (`BGP_FILTER_ON`); set by the daemon.
#[map]
static BGP_FILTER: Array<u32> = Array::with_max_entries(1, 0);

/// When a BGP message last arrived from each peer (`bpf_ktime_get_ns`, per CPU: the daemon
/// takes the latest).
#[map]
static BGP_LAST_SEEN: PerCpuHashMap<[u8; 4], u64> = PerCpuHashMap::with_max_entries(BGP_STATS_MAX_ENTRIES, 0);

/// The latest OPEN per peer and direction: sessions open rarely, so one write each.
#[map]
static BGP_OPENS: HashMap<BgpOpenKey, BgpOpen> = HashMap::with_max_entries(BGP_STATS_MAX_ENTRIES, 0);

/// NOTIFICATIONs: rare, so a ring buffer write each costs nothing that matters.
#[map]
static BGP_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[classifier]
pub fn underlay_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn underlay_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) {
    let len = ctx.len() as usize;
    let Some((ETH_P_IP, l3)) = packet::ethernet(ctx) else { return };
    let Some(ip) = packet::ipv4(ctx, l3, len) else { return };
    if ip.later_fragment {
        return;
    }
    let (peer, local) = match direction {
        Direction::Ingress => (ip.source, ip.destination),
        Direction::Egress => (ip.destination, ip.source),
    };
    match ip.protocol {
        IPPROTO_UDP => vxlan(ctx, direction, peer, ip.l4, ip.end),
        IPPROTO_TCP => bgp(ctx, direction, peer, local, ip.l4, ip.end),
        _ => {}
    }
}

#[inline(always)]
fn vxlan(ctx: &TcContext, direction: Direction, peer: [u8; 4], l4: usize, end: usize) {
    if l4 + UDP_HLEN > end {
        return;
    }
    // The destination port names the tunnel; the source port is flow entropy.
    let Some(port) = packet::load_be16(ctx, l4 + 2) else { return };
    if VXLAN_PORTS.get_ptr(port).is_none() {
        return;
    }
    // SAFETY: the kernel hands this program its __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let header = l4 + UDP_HLEN;
    let valid = if header + VXLAN_HEADER_LEN <= end {
        packet::read::<[u8; VXLAN_HEADER_LEN]>(ctx, header).filter(|h| h[0] & VXLAN_FLAG_VNI != 0)
    } else {
        None
    };
    let Some(header) = valid else {
        add(&VXLAN_MALFORMED, &VxlanMalformedKey { ifindex, port, _pad: 0 }, 1, MapId::VxlanMalformed);
        return;
    };
    let vni = u32::from_be_bytes([0, header[4], header[5], header[6]]);
    let key = VxlanKey { ifindex, peer, vni, port, direction: direction as u8, _pad: 0 };
    add_packet(&VXLAN_STATS, &key, ctx.len(), MapId::VxlanStats);
}

#[inline(always)]
fn bgp(ctx: &TcContext, direction: Direction, peer: [u8; 4], local: [u8; 4], l4: usize, end: usize) {
    if l4 + TCP_MIN_HLEN > end {
        return;
    }
    let Some(ports) = packet::read::<[u8; 4]>(ctx, l4) else { return };
    let (source, destination) =
        (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]));
    if source != BGP_PORT && destination != BGP_PORT {
        return;
    }
    // A segment to port 179 needs no handshake: its source may be spoofed. Only segments of
    // an established socket key their peer; the rest share 0.0.0.0.
    let (peer_port, local_port) = match direction {
        Direction::Ingress => (source, destination),
        Direction::Egress => (destination, source),
    };
    let established = established(ctx, peer, local, peer_port, local_port);
    let event_peer = peer;
    let peer = if established { peer } else { [0; 4] };
    let Some(data_offset) = packet::read::<u8>(ctx, l4 + 12) else { return };
    let mut offset = l4 + usize::from(data_offset >> 4) * 4;
    if offset >= end {
        return; // a bare ACK (or SYN, FIN): no BGP in it
    }
    // BGP messages are read through the helper: a segment's later messages sit at offsets
    // the verifier cannot bound, and BGP is a few packets a second.
    let mut seen_message = false;
    for _ in 0..MAX_BGP_MESSAGES_PER_SEGMENT {
        if offset >= end {
            break;
        }
        // A header that does not fit is the start of a message the next segment finishes;
        // only when the segment begins that way is it the continuation of an earlier one.
        let header =
            if offset + BGP_HEADER_LEN <= end { ctx.load::<[u8; BGP_HEADER_LEN]>(offset).ok() } else { None };
        let Some(header) = header else {
            if !seen_message {
                count_bgp(direction, peer, BgpMessageKind::Unaligned);
            }
            break;
        };
        if header[..16].iter().any(|byte| *byte != 0xff) {
            count_bgp(direction, peer, BgpMessageKind::Unaligned);
            break;
        }
        let length = usize::from(u16::from_be_bytes([header[16], header[17]]));
        let kind = BgpMessageKind::from_type(header[18]);
        if length < BGP_HEADER_LEN {
            count_bgp(direction, peer, BgpMessageKind::Invalid);
            break;
        }
        count_bgp(direction, peer, kind);
        seen_message = true;
        if kind == BgpMessageKind::Notification {
            notify(ctx, direction, event_peer, established, offset);
        }
        // Only a session of this node's own sockets says what its ends are.
        if kind == BgpMessageKind::Open && established {
            record_open(ctx, direction, peer, local, offset, end);
        }
        offset += length;
    }
    if seen_message && established && direction == Direction::Ingress {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if BGP_LAST_SEEN.insert(peer, now, 0).is_err() {
            record_full(MapId::BgpLastSeen);
        }
    }
}

#[inline(always)]
fn count_bgp(direction: Direction, peer: [u8; 4], kind: BgpMessageKind) {
    let key = BgpKey { peer, direction: direction as u8, kind: kind as u8, _pad: [0; 2] };
    add(&BGP_STATS, &key, 1, MapId::BgpStats);
}

/// Keeps what the OPEN at `offset` says of its sender; one cut short is left out.
#[inline(always)]
fn record_open(
    ctx: &TcContext,
    direction: Direction,
    peer: [u8; 4],
    local: [u8; 4],
    offset: usize,
    end: usize,
) {
    let fields = offset + BGP_HEADER_LEN;
    if fields + BGP_OPEN_FIXED_LEN > end {
        return;
    }
    let Ok(open) = ctx.load::<[u8; BGP_OPEN_FIXED_LEN]>(fields) else { return };
    let key = BgpOpenKey { peer, direction: direction as u8, _pad: [0; 3] };
    let value = BgpOpen {
        local,
        identifier: [open[5], open[6], open[7], open[8]],
        my_as: u16::from_be_bytes([open[1], open[2]]),
        hold_time: u16::from_be_bytes([open[3], open[4]]),
    };
    if BGP_OPENS.insert(key, value, 0).is_err() {
        record_full(MapId::BgpOpens);
    }
}

/// Sends the NOTIFICATION at `offset` (error code and subcode follow the header) to
/// userspace; one cut short is still reported, with code and subcode 0.
#[inline(always)]
fn notify(ctx: &TcContext, direction: Direction, peer: [u8; 4], established: bool, offset: usize) {
    let [code, subcode] = ctx.load::<[u8; 2]>(offset + BGP_HEADER_LEN).unwrap_or([0, 0]);
    // SAFETY: the kernel hands this program its __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let event = BgpNotificationEvent {
        peer,
        ifindex,
        direction: direction as u8,
        code,
        subcode,
        established: u8::from(established),
    };
    if BGP_EVENTS.output::<BgpNotificationEvent>(&event, 0).is_err() {
        record_full(MapId::BgpEvents);
    }
}

/// Whether the segment counts under its peer's address: always while no filter is on, else
/// only if this namespace has a TCP socket for its four-tuple past the SYN: established, or
/// a request socket waiting for the handshake's last ACK (a passive peer's OPEN often rides
/// on that ACK, and tc sees it before TCP does). A listener, which any SYN or stray segment
/// would find, does not count; `skc` lookup, so a request socket is not turned into it.
#[inline(always)]
fn established(ctx: &TcContext, peer: [u8; 4], local: [u8; 4], peer_port: u16, local_port: u16) -> bool {
    if BGP_FILTER.get(0).is_none_or(|on| *on != BGP_FILTER_ON) {
        return true;
    }
    // The lookup sees the segment as arriving: source the peer, destination this node.
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: u32::from_ne_bytes(peer),
                daddr: u32::from_ne_bytes(local),
                sport: peer_port.to_be(),
                dport: local_port.to_be(),
            },
        },
    };
    // SAFETY: the context is this program's __sk_buff; the tuple is on the stack, its IPv4
    // part as long as the size given; a socket found is released below on every path.
    let sock = unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb.cast(),
            &raw mut tuple,
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sock.is_null() {
        return false;
    }
    // SAFETY: a socket the helper returned, not yet released.
    let state = unsafe { (*sock).state };
    // SAFETY: as above; released once.
    unsafe { bpf_sk_release(sock.cast()) };
    matches!(
        state,
        BPF_TCP_ESTABLISHED
            | BPF_TCP_NEW_SYN_RECV
            | BPF_TCP_FIN_WAIT1
            | BPF_TCP_FIN_WAIT2
            | BPF_TCP_CLOSE_WAIT
            | BPF_TCP_LAST_ACK
            | BPF_TCP_CLOSING
    )
}
