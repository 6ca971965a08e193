//! Types shared by cniguard's eBPF programs (`probe-ebpf`) and its daemon.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, has no implicit padding (the
//! size assertions below fail the build otherwise) and, with the `user` feature, implements
//! `aya::Pod` so the daemon can read it from maps. Label strings live here too, next to the
//! numbers they name, so the two sides cannot drift apart.
#![no_std]
// Explicit padding (`_pad`) is part of the layout both sides share, and both build it.
#![allow(clippy::pub_underscore_fields)]

pub mod counters;
pub mod dns;
pub mod drops;
pub mod iface_stats;
pub mod kernel;
pub mod localhost;
pub mod map_health;
pub mod overlay;
pub mod sock_state;
pub mod tcp_health;
pub mod underlay;

/// Asserts at compile time that a shared type has exactly the size of its fields, i.e. that
/// the compiler inserted no padding the other side might not expect.
macro_rules! assert_size {
    ($type:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$type>() == $size);
    };
}
pub(crate) use assert_size;

/// Implements `aya::Pod` (plain old data: any bit pattern is valid) for the daemon side.
macro_rules! impl_pod {
    ($($type:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: #[repr(C)], only integer fields, no padding (see assert_size!).
            unsafe impl aya::Pod for $type {}
        )+
    };
}
pub(crate) use impl_pod;

/// Which way a packet crosses the interface a classifier is attached to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const ALL: [Self; 2] = [Self::Ingress, Self::Egress];

    /// The `direction` label value.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    #[must_use]
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }

    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        Self::from_u32(value as u32)
    }
}
