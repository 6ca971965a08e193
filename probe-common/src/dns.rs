//! `dns`: DNS queries from pods and the answers back to them, on the pod-facing interfaces,
//! matched into latencies; queries left unanswered become timeouts in userspace.

use crate::{assert_size, impl_pod};

pub const DNS_PORT: u16 = 53;
/// The fixed DNS header: id, flags, and four section counts.
pub const DNS_HEADER_LEN: usize = 12;
pub const PENDING_MAX_ENTRIES: u32 = 16_384;
pub const DNS_COUNTS_MAX_ENTRIES: u32 = 4096;
pub const DNS_LATENCY_MAX_ENTRIES: u32 = 1024;
/// Servers the pods have queried: only their answers are counted under their address.
pub const DNS_SERVERS_MAX_ENTRIES: u32 = 1024;

/// The transport a DNS message travelled over.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnsTransport {
    Udp = 17,
    Tcp = 6,
}

/// One outstanding query: the client (a pod) asked the server, with this DNS id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PendingKey {
    pub client: [u8; 4],
    pub server: [u8; 4],
    pub client_port: u16,
    pub server_port: u16,
    pub id: u16,
    /// A [`DnsTransport`] as u8.
    pub transport: u8,
    pub _pad: u8,
}

/// When the query went out, and through which interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub sent_ns: u64,
    pub ifindex: u32,
    pub _pad: u32,
}

/// What a counted DNS message was.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnsOutcome {
    /// A query from a pod.
    Query = 1,
    /// An answer that matched an outstanding query; `rcode` holds its response code.
    Response = 2,
    /// An answer to no outstanding query: late (after the timeout) or unsolicited. Counted
    /// under its server only when the pods have queried that server; every other source
    /// (unsolicited, perhaps spoofed) shares server 0.0.0.0, so a spoofer cannot fill the
    /// map with sources.
    Unmatched = 3,
    /// A query whose outstanding-query entry could not be stored (the map is full).
    Untracked = 4,
    /// Port 53 traffic that is not a DNS message of the expected kind: too short for its
    /// header, a question where an answer belongs, or the reverse.
    Malformed = 5,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsCountKey {
    /// The DNS server's address (zero for `Malformed`).
    pub server: [u8; 4],
    /// The pod-facing interface the message crossed.
    pub ifindex: u32,
    /// A [`DnsOutcome`] as u8.
    pub outcome: u8,
    /// The response code (low 4 bits of the flags) of a `Response`, else 0.
    pub rcode: u8,
    /// For `Malformed`: the [`crate::Direction`] as u8.
    pub direction: u8,
    pub _pad: u8,
}

/// DNS response codes cniguard names; every other is `other`.
#[must_use]
pub const fn rcode_label(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        5 => "REFUSED",
        _ => "other",
    }
}

assert_size!(PendingKey, 16);
assert_size!(Pending, 16);
assert_size!(DnsCountKey, 12);
impl_pod!(PendingKey, Pending, DnsCountKey);
