//! `drops`: every packet the kernel drops (the `kfree_skb` tracepoint), by reason,
//! device, namespace and protocol, and a sampled few with where in the kernel they died.

use crate::{assert_size, impl_pod};

pub const DROPS_MAX_ENTRIES: u32 = 8192;
/// A detail event per CPU at most this often, so a drop storm cannot flood the ring buffer.
pub const DROP_EVENT_INTERVAL_NS: u64 = 100_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// The namespace (its inode number; 0 when the skb had neither device nor socket).
    pub netns: u64,
    /// The skb's device in that namespace (0 without one).
    pub ifindex: u32,
    /// An `enum skb_drop_reason` value; its name comes from the kernel's BTF.
    /// [`REASON_NONE_GIVEN`] on kernels whose tracepoint has no reason (before 5.17).
    pub reason: u32,
    /// Where the kernel freed the skb, on kernels that give no reason (the location then
    /// stands in for it); 0 where the kernel gives one, so the key space stays as small.
    pub location: u64,
    /// The skb's protocol (ethertype, in host byte order).
    pub protocol: u16,
    pub _pad: [u8; 6],
}

/// The `reason` of a drop on a kernel whose `kfree_skb` tracepoint gives none.
pub const REASON_NONE_GIVEN: u32 = u32::MAX;

/// A sampled drop, with the kernel address it happened at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub netns: u64,
    pub location: u64,
    pub ifindex: u32,
    pub reason: u32,
    pub protocol: u16,
    pub _pad: [u8; 6],
}

assert_size!(DropKey, 32);
assert_size!(DropEvent, 32);
impl_pod!(DropKey, DropEvent);
