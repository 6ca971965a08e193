//! `tcp_health`: retransmissions, resets and smoothed RTT of the namespaces in scope, by
//! the configured CIDR the remote end falls in.

use crate::{assert_size, impl_pod};

/// What happened to a connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpEvent {
    Retransmit = 1,
    ResetSent = 2,
    ResetReceived = 3,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpKey {
    /// Index of the remote end's CIDR in the configuration, or `overlay::OTHER_CIDR`.
    pub peer_class: u8,
    /// A [`TcpEvent`] as u8.
    pub event: u8,
    pub _pad: [u8; 6],
}

/// One `tcp_probe` event in this many per CPU feeds the RTT histogram: the tracepoint
/// fires for every ACK, the RTT changes slowly.
pub const RTT_SAMPLE_EVERY: u64 = 16;

assert_size!(TcpKey, 8);
impl_pod!(TcpKey);
