//! `iface_stats`: packets and bytes per interface, direction and protocol class.

use crate::counters::PacketCount;
use crate::{Direction, assert_size, impl_pod};

/// Map key: one entry per attached interface and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    /// The interface index in the daemon's network namespace (`__sk_buff.ifindex`).
    pub ifindex: u32,
    /// A [`Direction`] as `u32`, which keeps the key free of padding.
    pub direction: u32,
}

impl IfaceKey {
    #[must_use]
    pub const fn new(ifindex: u32, direction: Direction) -> Self {
        Self { ifindex, direction: direction as u32 }
    }
}

/// Map value: one [`PacketCount`] per [`ProtocolClass`], indexed by the class number, so a
/// packet costs one map lookup whatever its protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub by_class: [PacketCount; ProtocolClass::COUNT],
}

/// What a classifier makes of a frame's protocols.
///
/// `Malformed` is a frame whose headers contradict themselves or end early (a truncated
/// header, IPv4 IHL below 5, a total length longer than the frame): it is counted, never
/// dropped and never guessed at.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolClass {
    Ipv4Tcp = 0,
    Ipv4Udp = 1,
    Ipv4Icmp = 2,
    Ipv4Other = 3,
    Ipv6Tcp = 4,
    Ipv6Udp = 5,
    Ipv6Icmp = 6,
    Ipv6Other = 7,
    Arp = 8,
    Other = 9,
    Malformed = 10,
}

impl ProtocolClass {
    pub const COUNT: usize = 11;
    pub const ALL: [Self; Self::COUNT] = [
        Self::Ipv4Tcp,
        Self::Ipv4Udp,
        Self::Ipv4Icmp,
        Self::Ipv4Other,
        Self::Ipv6Tcp,
        Self::Ipv6Udp,
        Self::Ipv6Icmp,
        Self::Ipv6Other,
        Self::Arp,
        Self::Other,
        Self::Malformed,
    ];

    /// The `protocol` label value.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ipv4Tcp => "ipv4_tcp",
            Self::Ipv4Udp => "ipv4_udp",
            Self::Ipv4Icmp => "ipv4_icmp",
            Self::Ipv4Other => "ipv4_other",
            Self::Ipv6Tcp => "ipv6_tcp",
            Self::Ipv6Udp => "ipv6_udp",
            Self::Ipv6Icmp => "ipv6_icmp",
            Self::Ipv6Other => "ipv6_other",
            Self::Arp => "arp",
            Self::Other => "other",
            Self::Malformed => "malformed",
        }
    }
}

/// Interfaces the `IFACE_SLOTS` per-CPU array holds, by `ifindex % IFACE_SLOT_COUNT`: an
/// array slot costs the classifier no hash lookup. Ifindexes grow as pods come and go, so
/// two live interfaces may share a slot; the later one counts in `IFACE_STATS`.
pub const IFACE_SLOT_COUNT: u32 = 2048;

/// Where `ifindex` counts in `direction` in `IFACE_SLOTS`.
#[allow(clippy::inline_always, reason = "inlined into eBPF programs")]
#[inline(always)]
#[must_use]
pub const fn slot_index(ifindex: u32, direction: Direction) -> u32 {
    (ifindex % IFACE_SLOT_COUNT) * 2 + direction as u32
}

/// One `IFACE_SLOTS` value: the interface it counts for (per CPU: the first to count
/// there claims it; 0 is free) and its counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceSlot {
    pub ifindex: u32,
    pub _pad: u32,
    pub counters: IfaceCounters,
}

/// Capacity of the `IFACE_STATS` overflow map (interfaces whose slot another holds, times
/// two directions).
pub const IFACE_STATS_MAX_ENTRIES: u32 = 2048;

assert_size!(IfaceKey, 8);
assert_size!(IfaceCounters, 16 * ProtocolClass::COUNT);
assert_size!(IfaceSlot, 8 + 16 * ProtocolClass::COUNT);
impl_pod!(IfaceKey, IfaceCounters, IfaceSlot);
