//! `overlay`: what flows inside the VXLAN devices, by the configured CIDR of its source and
//! destination.

use crate::{assert_size, impl_pod};

/// The class of an address in no configured CIDR.
pub const OTHER_CIDR: u8 = u8::MAX;
/// How many CIDRs can be configured.
pub const MAX_CIDRS: u32 = 32;
pub const OVERLAY_STATS_MAX_ENTRIES: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OverlayKey {
    pub ifindex: u32,
    /// Index of the source's CIDR in the configuration, or [`OTHER_CIDR`].
    pub src_class: u8,
    pub dst_class: u8,
    pub _pad: [u8; 2],
}

assert_size!(OverlayKey, 8);
impl_pod!(OverlayKey);
