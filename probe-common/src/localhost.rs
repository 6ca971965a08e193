//! `localhost`: TCP over loopback inside each namespace (the Seldon agent calling its
//! MLServer on 127.0.0.1:9500): connect and request-to-response latency, and failures.

use crate::{assert_size, impl_pod};

pub const CONNECTIONS_MAX_ENTRIES: u32 = 65_536;
pub const LATENCY_MAX_ENTRIES: u32 = 4096;
pub const LOCALHOST_PORTS_MAX_ENTRIES: u32 = 64;
pub const SCOPE_MAX_ENTRIES: u32 = 4096;

/// One TCP connection over loopback, oriented client to server (the server's port is the
/// watched one), in one namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    /// The namespace's inode number (`ns.inum`; `stat -L -c %i /proc/<pid>/ns/net`).
    pub netns: u64,
    pub client: [u8; 4],
    pub server: [u8; 4],
    pub client_port: u16,
    pub server_port: u16,
    pub _pad: [u8; 4],
}

/// Where a connection is in its life.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The client's SYN is out, unanswered.
    SynSent = 1,
    /// Established, no request outstanding.
    Open = 2,
    /// The client sent a request; the server has not answered yet.
    AwaitingResponse = 3,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionState {
    /// When the SYN, or the outstanding request, was sent (`bpf_ktime_get_ns`).
    pub since_ns: u64,
    /// The connection's last packet: idle entries are reclaimed by the daemon.
    pub last_ns: u64,
    /// A [`Phase`] as u8.
    pub phase: u8,
    pub _pad: [u8; 7],
}

/// What a latency sample measures.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LatencyKind {
    /// SYN sent to SYN-ACK sent back.
    Connect = 0,
    /// The client's first request byte to the server's first response byte.
    Response = 1,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LatencyKey {
    pub netns: u64,
    pub port: u16,
    /// A [`LatencyKind`] as u8.
    pub kind: u8,
    pub _pad: [u8; 5],
}

/// Why a connection failed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// A RST answered the SYN: nothing listens on the port.
    Refused = 1,
    /// The SYN was never answered (counted by the daemon when the state times out).
    Timeout = 2,
    /// An established connection was reset.
    Reset = 3,
}

impl FailureReason {
    pub const ALL: [Self; 3] = [Self::Refused, Self::Timeout, Self::Reset];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
        }
    }

    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Refused),
            2 => Some(Self::Timeout),
            3 => Some(Self::Reset),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailureKey {
    pub netns: u64,
    pub port: u16,
    /// A [`FailureReason`] as u8.
    pub reason: u8,
    pub _pad: [u8; 5],
}

assert_size!(ConnectionKey, 24);
assert_size!(ConnectionState, 24);
assert_size!(LatencyKey, 16);
assert_size!(FailureKey, 16);
impl_pod!(ConnectionKey, ConnectionState, LatencyKey, FailureKey);
