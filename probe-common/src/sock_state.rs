//! `sock_state`: TCP state changes of the sockets on watched ports (BGP, Typha), from the
//! `sock:inet_sock_set_state` tracepoint.

use crate::{assert_size, impl_pod};

/// A state change of a watched TCP socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStateEvent {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Linux TCP states (`TCP_ESTABLISHED` = 1 ... `TCP_NEW_SYN_RECV` = 12).
    pub oldstate: u8,
    pub newstate: u8,
    pub _pad: [u8; 2],
}

pub const WATCHED_PORTS_MAX_ENTRIES: u32 = 64;
pub const AF_INET: u16 = 2;
pub const IPPROTO_TCP: u16 = 6;

assert_size!(SockStateEvent, 16);
impl_pod!(SockStateEvent);
