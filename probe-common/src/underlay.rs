//! `underlay`: VXLAN and BGP as they cross a node's underlay device.

use crate::{assert_size, impl_pod};

/// The BGP port.
pub const BGP_PORT: u16 = 179;
/// How many BGP messages the program walks in one TCP segment; later ones go uncounted.
pub const MAX_BGP_MESSAGES_PER_SEGMENT: usize = 8;
/// Size of the BGP header: 16-byte marker, 2-byte length, 1-byte type.
pub const BGP_HEADER_LEN: usize = 19;
/// VXLAN header: flags, reserved, 24-bit VNI, reserved.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The "I" flag: the VNI is valid. Without it a packet is not VXLAN as Flannel and Calico
/// send it.
pub const VXLAN_FLAG_VNI: u8 = 0x08;

pub const VXLAN_STATS_MAX_ENTRIES: u32 = 16_384;
pub const BGP_STATS_MAX_ENTRIES: u32 = 4096;
/// `BGP_FILTER[0]`: when 1, a BGP segment counts under its peer's address only if it
/// belongs to a TCP socket of this namespace past its handshake (looked up in the kernel:
/// a spoofer cannot mint one); every other source shares peer 0.0.0.0. The daemon sets it;
/// at 0 (crafted frames in BPF_PROG_TEST_RUN) every source counts under its address.
pub const BGP_FILTER_ON: u32 = 1;
/// Room for VXLAN ports the daemon recognises (configured plus those of local devices).
pub const VXLAN_PORTS_MAX_ENTRIES: u32 = 64;

/// Encapsulated traffic by underlay interface, direction, port, VNI and remote node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VxlanKey {
    pub ifindex: u32,
    /// The outer address of the other end: the destination going out, the source coming in.
    pub peer: [u8; 4],
    /// The VNI, from the header's 24 bits.
    pub vni: u32,
    /// The UDP destination port the packet was recognised by.
    pub port: u16,
    /// A `Direction` as u8.
    pub direction: u8,
    pub _pad: u8,
}

/// Packets on a VXLAN port that are not VXLAN: a header cut short, or the I flag unset.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VxlanMalformedKey {
    pub ifindex: u32,
    pub port: u16,
    pub _pad: u16,
}

/// What a BGP message (or a segment that is not one) counts as.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BgpMessageKind {
    Open = 1,
    Update = 2,
    Notification = 3,
    Keepalive = 4,
    RouteRefresh = 5,
    /// A segment on port 179 whose payload does not start with a BGP marker: the middle
    /// of a message, or not BGP at all. Counted, never guessed at.
    Unaligned = 6,
    /// A marker, but a length below the header's or an unknown type.
    Invalid = 7,
}

impl BgpMessageKind {
    pub const ALL: [Self; 7] = [
        Self::Open,
        Self::Update,
        Self::Notification,
        Self::Keepalive,
        Self::RouteRefresh,
        Self::Unaligned,
        Self::Invalid,
    ];

    /// The message type byte's meaning (RFC 4271, RFC 2918).
    #[must_use]
    pub const fn from_type(message_type: u8) -> Self {
        match message_type {
            1 => Self::Open,
            2 => Self::Update,
            3 => Self::Notification,
            4 => Self::Keepalive,
            5 => Self::RouteRefresh,
            _ => Self::Invalid,
        }
    }

    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1..=5 => Some(Self::from_type(value)),
            6 => Some(Self::Unaligned),
            7 => Some(Self::Invalid),
            _ => None,
        }
    }

    /// The `type` label value.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Update => "update",
            Self::Notification => "notification",
            Self::Keepalive => "keepalive",
            Self::RouteRefresh => "route_refresh",
            Self::Unaligned => "unaligned",
            Self::Invalid => "invalid",
        }
    }
}

/// BGP messages by peer, direction and kind; peer 0.0.0.0 holds those of segments that
/// belong to no established socket when the filter is on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BgpKey {
    /// The other end of the session.
    pub peer: [u8; 4],
    /// A `Direction` as u8.
    pub direction: u8,
    /// A [`BgpMessageKind`] as u8.
    pub kind: u8,
    pub _pad: [u8; 2],
}

/// A NOTIFICATION seen on the wire, sent to userspace through a ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BgpNotificationEvent {
    pub peer: [u8; 4],
    pub ifindex: u32,
    /// A `Direction` as u8: ingress means the peer sent it.
    pub direction: u8,
    pub code: u8,
    pub subcode: u8,
    /// 1 when the segment belongs to a socket of this node past its handshake (or no filter
    /// is on); 0 for a source that could be spoofed.
    pub established: u8,
}

/// The latest OPEN seen on a BGP peer's session, by peer and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BgpOpenKey {
    pub peer: [u8; 4],
    /// A `Direction` as u8: egress is this node's own OPEN.
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// What an OPEN says about its sender (RFC 4271 4.2), with this node's address on the
/// segment: a sender whose identifier is not the address it peers from is worth naming.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BgpOpen {
    /// This node's address on the segment (its source going out, destination coming in).
    pub local: [u8; 4],
    /// The BGP identifier (router id) the sender announces.
    pub identifier: [u8; 4],
    /// "My Autonomous System", network order turned host (AS_TRANS, 23456, for a 4-byte AS).
    pub my_as: u16,
    pub hold_time: u16,
}

/// The OPEN's fixed fields after the header: version, my AS, hold time, identifier.
pub const BGP_OPEN_FIXED_LEN: usize = 9;

assert_size!(VxlanKey, 16);
assert_size!(VxlanMalformedKey, 8);
assert_size!(BgpKey, 8);
assert_size!(BgpNotificationEvent, 12);
assert_size!(BgpOpenKey, 8);
assert_size!(BgpOpen, 12);
impl_pod!(VxlanKey, VxlanMalformedKey, BgpKey, BgpNotificationEvent, BgpOpenKey, BgpOpen);
