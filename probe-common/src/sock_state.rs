//! `sock_state`: TCP state changes of the sockets on watched ports (BGP, Typha), from the
//! `sock:inet_sock_set_state` tracepoint.

use crate::{assert_size, impl_pod};

/// Where the tracepoint's fields sit in its record. Read from the tracepoint's format file
/// when the daemon starts (never compiled in: layouts differ between kernels) and written
/// into the program as a global before it loads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStateFields {
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
}

/// A state change of a watched TCP socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStateEvent {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Host byte order, as the tracepoint reports them.
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

assert_size!(SockStateFields, 16);
assert_size!(SockStateEvent, 16);
impl_pod!(SockStateFields, SockStateEvent);
