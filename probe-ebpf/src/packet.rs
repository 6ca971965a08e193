//! Bounds-checked header parsing shared by the classifiers.
//!
//! Headers are read straight from the packet ([`read`]: direct packet access, checked against
//! `data_end`), and through `bpf_skb_load_bytes` only where the skb's linear part ends
//! before them (a GSO packet's pages, a header the driver left unpulled): the helper call
//! costs more than the rest of a classifier. A header is only believed when it fits in the
//! frame and its length fields agree with the frame; otherwise the frame is `Malformed`.

use aya_ebpf::programs::TcContext;
use probe_common::iface_stats::ProtocolClass;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_IPV6: u16 = 0x86DD;
/// An ARP header for IPv4 over Ethernet.
const ARP_LEN: usize = 28;

const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// The IPv4 header fields the classifiers read (the fixed 20 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_length: [u8; 2],
    id: [u8; 2],
    flags_fragment_offset: [u8; 2],
    ttl: u8,
    protocol: u8,
    checksum: [u8; 2],
    source: [u8; 4],
    destination: [u8; 4],
}

/// The first 8 bytes of the IPv6 header: everything but the addresses.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Prefix {
    version_class_flow: [u8; 4],
    payload_length: [u8; 2],
    next_header: u8,
    hop_limit: u8,
}

/// The classes one IP version maps transport protocols to.
struct Family {
    tcp: ProtocolClass,
    udp: ProtocolClass,
    icmp: ProtocolClass,
    icmp_protocol: u8,
    other: ProtocolClass,
}

const IPV4: Family = Family {
    tcp: ProtocolClass::Ipv4Tcp,
    udp: ProtocolClass::Ipv4Udp,
    icmp: ProtocolClass::Ipv4Icmp,
    icmp_protocol: IPPROTO_ICMP,
    other: ProtocolClass::Ipv4Other,
};

const IPV6: Family = Family {
    tcp: ProtocolClass::Ipv6Tcp,
    udp: ProtocolClass::Ipv6Udp,
    icmp: ProtocolClass::Ipv6Icmp,
    icmp_protocol: IPPROTO_ICMPV6,
    other: ProtocolClass::Ipv6Other,
};

/// The protocol class of the frame in `ctx`, which starts at its Ethernet header.
#[inline(always)]
pub fn classify(ctx: &TcContext) -> ProtocolClass {
    let len = ctx.len() as usize;
    let Some((ethertype, l3)) = ethernet(ctx) else {
        return ProtocolClass::Malformed;
    };
    match ethertype {
        ETH_P_IP => classify_ipv4(ctx, l3, len),
        ETH_P_IPV6 => ipv6(ctx, l3, len),
        ETH_P_ARP if l3 + ARP_LEN <= len => ProtocolClass::Arp,
        ETH_P_ARP => ProtocolClass::Malformed,
        _ => ProtocolClass::Other,
    }
}

/// The ethertype after at most one VLAN tag, and where the network header starts.
#[inline(always)]
pub fn ethernet(ctx: &TcContext) -> Option<(u16, usize)> {
    let ethertype = load_be16(ctx, ETH_HLEN - 2)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        // A second tag (QinQ) shows up as an unknown inner ethertype: `Other`.
        let inner = load_be16(ctx, ETH_HLEN + VLAN_HLEN - 2)?;
        return Some((inner, ETH_HLEN + VLAN_HLEN));
    }
    Some((ethertype, ETH_HLEN))
}

/// An IPv4 packet whose header checks out against the frame.
pub struct Ipv4 {
    pub source: [u8; 4],
    pub destination: [u8; 4],
    pub protocol: u8,
    /// Where the transport header starts.
    pub l4: usize,
    /// Where the IP packet ends (Ethernet padding excluded).
    pub end: usize,
    /// Not the first fragment: no transport header here.
    pub later_fragment: bool,
}

/// The IPv4 header at `l3`, or `None` if it is malformed (see the module documentation).
#[inline(always)]
pub fn ipv4(ctx: &TcContext, l3: usize, len: usize) -> Option<Ipv4> {
    let header = read::<Ipv4Header>(ctx, l3)?;
    if header.version_ihl >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(header.version_ihl & 0x0f) * 4;
    if header_len < IPV4_MIN_HLEN || l3 + header_len > len {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes(header.total_length));
    // A GSO packet beyond 64 KiB (BIG TCP) carries a total length of 0: the frame decides.
    let end = if total_len == 0 {
        len
    } else if total_len < header_len || l3 + total_len > len {
        return None;
    } else {
        l3 + total_len
    };
    Some(Ipv4 {
        source: header.source,
        destination: header.destination,
        protocol: header.protocol,
        l4: l3 + header_len,
        end,
        // Only the first fragment carries the transport header.
        later_fragment: u16::from_be_bytes(header.flags_fragment_offset) & 0x1fff != 0,
    })
}

#[inline(always)]
fn classify_ipv4(ctx: &TcContext, l3: usize, len: usize) -> ProtocolClass {
    match ipv4(ctx, l3, len) {
        Some(ip) => transport(ctx, &IPV4, ip.protocol, ip.l4, ip.end, ip.later_fragment),
        None => ProtocolClass::Malformed,
    }
}

#[inline(always)]
fn ipv6(ctx: &TcContext, l3: usize, len: usize) -> ProtocolClass {
    if l3 + IPV6_HLEN > len {
        return ProtocolClass::Malformed;
    }
    let Some(header) = read::<Ipv6Prefix>(ctx, l3) else {
        return ProtocolClass::Malformed;
    };
    if header.version_class_flow[0] >> 4 != 6 {
        return ProtocolClass::Malformed;
    }
    let payload_len = usize::from(u16::from_be_bytes(header.payload_length));
    let l4 = l3 + IPV6_HLEN;
    // As for IPv4, a payload length of 0 (jumbogram, BIG TCP) leaves the frame to decide.
    let end = if payload_len == 0 {
        len
    } else if l4 + payload_len > len {
        return ProtocolClass::Malformed;
    } else {
        l4 + payload_len
    };
    // Extension headers are not walked: they land in `ipv6_other`.
    transport(ctx, &IPV6, header.next_header, l4, end, false)
}

/// Classifies by transport protocol; TCP and UDP only when their header fits before `end`.
#[inline(always)]
fn transport(
    ctx: &TcContext,
    family: &Family,
    protocol: u8,
    l4: usize,
    end: usize,
    later_fragment: bool,
) -> ProtocolClass {
    let valid = |check: fn(&TcContext, usize, usize) -> bool| later_fragment || check(ctx, l4, end);
    match protocol {
        IPPROTO_TCP if valid(tcp_header_fits) => family.tcp,
        IPPROTO_UDP if valid(udp_header_fits) => family.udp,
        IPPROTO_TCP | IPPROTO_UDP => ProtocolClass::Malformed,
        p if p == family.icmp_protocol => family.icmp,
        _ => family.other,
    }
}

#[inline(always)]
fn tcp_header_fits(ctx: &TcContext, l4: usize, end: usize) -> bool {
    if l4 + TCP_MIN_HLEN > end {
        return false;
    }
    let Some(data_offset) = read::<u8>(ctx, l4 + 12) else {
        return false;
    };
    let header_len = usize::from(data_offset >> 4) * 4;
    header_len >= TCP_MIN_HLEN && l4 + header_len <= end
}

#[inline(always)]
fn udp_header_fits(ctx: &TcContext, l4: usize, end: usize) -> bool {
    if l4 + UDP_HLEN > end {
        return false;
    }
    let Some(length) = load_be16(ctx, l4 + 4) else {
        return false;
    };
    let length = usize::from(length);
    length >= UDP_HLEN && l4 + length <= end
}

#[inline(always)]
pub fn load_be16(ctx: &TcContext, offset: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
}

/// Offsets beyond this are read through the helper: the verifier accepts a packet pointer
/// moved by a variable only when it can bound the variable, and no header cniguard reads
/// directly lies further in.
const DIRECT_MAX_OFFSET: usize = 1024;

/// The `T` at `offset` in the frame, or `None` if the frame ends before it. Read in place
/// when it lies in the linear part, else copied out by `bpf_skb_load_bytes`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // For one byte LLVM turns `at + 1 <= end` into `at < end`, which the verifier does not
    // take as a bound: at least two bytes are checked (a last byte is then the helper's).
    let checked = if core::mem::size_of::<T>() < 2 { 2 } else { core::mem::size_of::<T>() };
    if offset <= DIRECT_MAX_OFFSET {
        let at = ctx.data() + offset;
        if at + checked <= ctx.data_end() {
            // SAFETY: `at .. at + size_of::<T>()` lies inside the linear packet data, which
            // the kernel keeps in place while this program runs; `T` is plain bytes.
            return Some(unsafe { core::ptr::read_unaligned(at as *const T) });
        }
    }
    ctx.load::<T>(offset).ok()
}
