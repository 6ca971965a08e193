//! The configured CIDRs (old pods, new pods, services, nodes...) that addresses are
//! classified by; shared by the overlay and TCP health programs.

use aya_ebpf::{macros::map, maps::Array};
use probe_common::overlay::{CidrTable, OTHER_CIDR};

/// One entry: the daemon writes the whole table at start (see `CidrTable`).
#[map]
static CIDR_TABLE: Array<CidrTable> = Array::with_max_entries(1, 0);

/// The table, for a program that classifies more than one address (one map lookup).
#[inline(always)]
pub fn table() -> Option<&'static CidrTable> {
    CIDR_TABLE.get(0)
}

/// The index of the configured CIDR `address` falls in, or `OTHER_CIDR`.
#[inline(always)]
pub fn class(address: [u8; 4]) -> u8 {
    table().map_or(OTHER_CIDR, |table| table.class(address))
}
