//! Values several probes' maps share: packet and byte counts, and latency histograms.

use crate::{assert_size, impl_pod};

/// A packet and byte count. Bytes are `skb->len` at the tc hook: whole frames including the
/// Ethernet header, as the kernel's own interface counters (`ip -s link`) count them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Histogram bucket upper bounds in nanoseconds: 10 us to 1 s, seven of them below the
/// runbook's 1 ms criterion. A last, implicit bucket holds everything slower.
pub const LATENCY_BOUNDS_NS: [u64; 18] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    750_000,
    1_000_000,
    2_500_000,
    5_000_000,
    7_500_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// Sample counts per bucket (not cumulative) and their sum.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS],
    pub sum_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: [0; LATENCY_BUCKETS], sum_ns: 0 }
    }
}

assert_size!(PacketCount, 16);
assert_size!(Histogram, 8 * (LATENCY_BUCKETS + 1));
impl_pod!(PacketCount, Histogram);
