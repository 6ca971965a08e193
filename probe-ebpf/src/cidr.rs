//! The configured CIDRs (old pods, new pods, services, nodes...) that addresses are
//! classified by; shared by the overlay and TCP health programs.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use probe_common::overlay::{MAX_CIDRS, OTHER_CIDR};

/// Longest prefix wins; the value is the CIDR's index in the daemon's configuration.
#[map]
static CIDR_CLASSES: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_CIDRS, 1); // BPF_F_NO_PREALLOC

/// The index of the configured CIDR `address` falls in, or `OTHER_CIDR`.
#[inline(always)]
pub fn class(address: [u8; 4]) -> u8 {
    CIDR_CLASSES.get(Key::new(32, address)).copied().unwrap_or(OTHER_CIDR)
}
