//! Health of the eBPF maps themselves: inserts refused because a map was full.
//!
//! A full map never costs a packet: the program counts the refusal here (a per-CPU array
//! indexed by [`MapId`]) and lets the packet pass.

/// Which map refused an insert: the index into the `MAP_FULL` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapId {
    IfaceStats = 0,
    VxlanStats = 1,
    VxlanMalformed = 2,
    BgpStats = 3,
    BgpLastSeen = 4,
    OverlayStats = 5,
    /// A ring buffer with no room: an event lost, not a packet.
    BgpEvents = 6,
    SockEvents = 7,
    LocalhostConnections = 8,
    LocalhostLatency = 9,
    LocalhostFailures = 10,
    Drops = 11,
    DropEvents = 12,
    TcpHealth = 13,
    TcpRtt = 14,
    DnsPending = 15,
    DnsCounts = 16,
    DnsLatency = 17,
    DnsServers = 18,
    BgpOpens = 19,
    LocalhostExchanges = 20,
    LocalhostStreams = 21,
}

impl MapId {
    pub const COUNT: u32 = 22;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::IfaceStats,
        Self::VxlanStats,
        Self::VxlanMalformed,
        Self::BgpStats,
        Self::BgpLastSeen,
        Self::OverlayStats,
        Self::BgpEvents,
        Self::SockEvents,
        Self::LocalhostConnections,
        Self::LocalhostLatency,
        Self::LocalhostFailures,
        Self::Drops,
        Self::DropEvents,
        Self::TcpHealth,
        Self::TcpRtt,
        Self::DnsPending,
        Self::DnsCounts,
        Self::DnsLatency,
        Self::DnsServers,
        Self::BgpOpens,
        Self::LocalhostExchanges,
        Self::LocalhostStreams,
    ];

    /// The `map` label value of `cniguard_map_full_total`.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::IfaceStats => "iface_stats",
            Self::VxlanStats => "vxlan_stats",
            Self::VxlanMalformed => "vxlan_malformed",
            Self::BgpStats => "bgp_stats",
            Self::BgpLastSeen => "bgp_last_seen",
            Self::OverlayStats => "overlay_stats",
            Self::BgpEvents => "bgp_events",
            Self::SockEvents => "sock_events",
            Self::LocalhostConnections => "localhost_connections",
            Self::LocalhostLatency => "localhost_latency",
            Self::LocalhostFailures => "localhost_failures",
            Self::Drops => "drops",
            Self::DropEvents => "drop_events",
            Self::TcpHealth => "tcp_health",
            Self::TcpRtt => "tcp_rtt",
            Self::DnsPending => "dns_pending",
            Self::DnsCounts => "dns_counts",
            Self::DnsLatency => "dns_latency",
            Self::DnsServers => "dns_servers",
            Self::BgpOpens => "bgp_opens",
            Self::LocalhostExchanges => "localhost_exchanges",
            Self::LocalhostStreams => "localhost_streams",
        }
    }
}
