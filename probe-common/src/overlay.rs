//! `overlay`: what flows inside the VXLAN devices, by the configured CIDR of its source and
//! destination.

use crate::counters::PacketCount;
use crate::{assert_size, impl_pod};

/// The class of an address in no configured CIDR.
pub const OTHER_CIDR: u8 = u8::MAX;
/// How many CIDRs can be configured.
pub const MAX_CIDRS: u32 = 32;
/// Capacity of the `OVERLAY_STATS` overflow map (devices whose block another holds).
pub const OVERLAY_STATS_MAX_ENTRIES: u32 = 4096;

/// VXLAN devices the `OVERLAY_BLOCKS` per-CPU array holds, by `ifindex % OVERLAY_DEVICE_SLOTS`:
/// a node has one or two (`flannel.1`, `vxlan.calico`), and a block costs the classifier
/// no hash lookup. A device whose block another holds counts in `OVERLAY_STATS`.
pub const OVERLAY_DEVICE_SLOTS: u32 = 4;
/// Class slots per end: every configured CIDR, and the last for [`OTHER_CIDR`].
pub const CLASS_SLOTS: usize = MAX_CIDRS as usize + 1;

/// One device's counts by (source class, destination class), per CPU; `ifindex` is the
/// device it counts for on that CPU (0: free, claimed by the first to count there).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayBlock {
    pub ifindex: u32,
    pub _pad: u32,
    pub counts: [PacketCount; CLASS_SLOTS * CLASS_SLOTS],
}

impl Default for OverlayBlock {
    #[allow(
        clippy::large_stack_arrays,
        reason = "userspace only, to clear a block: 17 KiB on a host thread's stack"
    )]
    fn default() -> Self {
        Self { ifindex: 0, _pad: 0, counts: [PacketCount::default(); CLASS_SLOTS * CLASS_SLOTS] }
    }
}

/// Where (source class, destination class) counts in a block.
#[allow(clippy::inline_always, reason = "inlined into eBPF programs")]
#[inline(always)]
#[must_use]
pub fn cell(src_class: u8, dst_class: u8) -> usize {
    let slot = |class: u8| {
        if class == OTHER_CIDR { CLASS_SLOTS - 1 } else { usize::from(class).min(CLASS_SLOTS - 1) }
    };
    slot(src_class) * CLASS_SLOTS + slot(dst_class)
}

assert_size!(OverlayBlock, 8 + 16 * CLASS_SLOTS * CLASS_SLOTS);
impl_pod!(OverlayBlock);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OverlayKey {
    pub ifindex: u32,
    /// Index of the source's CIDR in the configuration, or [`OTHER_CIDR`].
    pub src_class: u8,
    pub dst_class: u8,
    pub _pad: [u8; 2],
}

assert_size!(OverlayKey, 8);
impl_pod!(OverlayKey);

/// The configured CIDRs as the programs match them: a short list scanned in order, longest
/// prefix first, so the first match is the longest-prefix match. For the handful of CIDRs
/// a migration configures this costs a few compares per address, where an LPM trie lookup
/// walks the trie through a helper call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrTable {
    /// How many of `entries` are in use.
    pub count: u32,
    pub entries: [CidrEntry; MAX_CIDRS as usize],
}

/// One CIDR: an address is in it when `address & mask == network`, both as the address's
/// four bytes read as a native-endian `u32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrEntry {
    pub network: u32,
    pub mask: u32,
    /// The CIDR's index in the daemon's configuration (its class).
    pub class: u8,
    pub _pad: [u8; 3],
}

assert_size!(CidrEntry, 12);
assert_size!(CidrTable, 4 + 12 * MAX_CIDRS as usize);
impl_pod!(CidrTable);

impl Default for CidrTable {
    fn default() -> Self {
        Self { count: 0, entries: [CidrEntry::default(); MAX_CIDRS as usize] }
    }
}

impl CidrTable {
    /// The table for `cidrs` (network, prefix length), each class its index in the list;
    /// those past [`MAX_CIDRS`] are left out (the daemon refuses such a configuration).
    /// Of two identical CIDRs the later one wins, as it would in a trie.
    #[must_use]
    pub fn new(cidrs: &[([u8; 4], u8)]) -> Self {
        let mut table = Self::default();
        let mut order = [0_usize; MAX_CIDRS as usize];
        let count = cidrs.len().min(MAX_CIDRS as usize);
        for (slot, index) in order.iter_mut().zip(0..count) {
            *slot = index;
        }
        let order = &mut order[..count];
        order.sort_unstable_by_key(|index| (core::cmp::Reverse(cidrs[*index].1), core::cmp::Reverse(*index)));
        for (entry, index) in table.entries.iter_mut().zip(order.iter()) {
            let (network, prefix_len) = cidrs[*index];
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0);
            let mask = u32::from_ne_bytes(mask.to_be_bytes());
            *entry = CidrEntry {
                network: u32::from_ne_bytes(network) & mask,
                mask,
                class: u8::try_from(*index).unwrap_or(OTHER_CIDR),
                _pad: [0; 3],
            };
        }
        table.count = u32::try_from(count).unwrap_or(0);
        table
    }

    /// The class of `address`: the index of the longest configured CIDR it lies in, or
    /// [`OTHER_CIDR`].
    // The eBPF programs call it per packet: it must not become a BPF-to-BPF call.
    #[allow(clippy::inline_always, reason = "inlined into eBPF programs")]
    #[inline(always)]
    #[must_use]
    pub fn class(&self, address: [u8; 4]) -> u8 {
        let address = u32::from_ne_bytes(address);
        // A plain bounded loop: the verifier of every supported kernel (5.10 on) accepts it.
        let mut index = 0;
        while index < MAX_CIDRS as usize {
            if index >= self.count as usize {
                break;
            }
            let entry = &self.entries[index];
            if address & entry.mask == entry.network {
                return entry.class;
            }
            index += 1;
        }
        OTHER_CIDR
    }
}
