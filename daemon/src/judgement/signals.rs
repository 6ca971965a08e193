//! Typed signals: the cumulative totals judgement reads (the baselines, and through them
//! the rollback triggers), published by the probes that count them. A probe computes its
//! share from the same read of its maps that its collector turns into /metrics, so what
//! judgement sees is what an operator sees, without anyone parsing metric names.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, PoisonError, RwLock};

/// Cumulative readings at one instant: counts since the daemon started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Packets the kernel dropped, by its reason name. `NOT_SPECIFIED` is left out: the
    /// kernel's default reason marks skbs freed on many harmless paths.
    pub drops: BTreeMap<String, f64>,
    pub retransmits: f64,
    /// TCP segments the watched namespaces sent (the kernel's OutSegs; the baseline sampler
    /// reads it from /proc, no probe counts it).
    pub segments_sent: f64,
    pub dns_queries: f64,
    /// Answers that say the resolver failed: SERVFAIL and REFUSED.
    pub dns_failures: f64,
    pub dns_timeouts: f64,
    /// `(upper bound in seconds, cumulative count)` of the localhost response histograms,
    /// summed over namespaces and ports, by bound; the last bound is +Inf.
    pub localhost_response: Vec<(f64, f64)>,
    /// VXLAN packets on the underlay, by the other end, UDP port and direction.
    pub vxlan: BTreeMap<VxlanFlow, f64>,
    /// This node's BGP sessions, by peer.
    pub bgp: BTreeMap<Ipv4Addr, Session>,
    /// NOTIFICATIONs that end a BGP session before it is established, by peer.
    pub bgp_rejections: BTreeMap<Ipv4Addr, BgpRejections>,
    /// The latest OPEN this node sent to each BGP peer.
    pub bgp_opens_sent: BTreeMap<Ipv4Addr, OpenSent>,
    /// Connections opened to an address of an old service range, by that address and port
    /// and by the address they were opened from (any namespace's: a pod's).
    pub old_service_connections: BTreeMap<(std::net::SocketAddrV4, Ipv4Addr), Attempts>,
    /// Connections this node opened to Calico Typha.
    pub typha: Attempts,
    /// The pods' DNS, by server address.
    pub dns_servers: BTreeMap<Ipv4Addr, DnsServer>,
    /// `localhost_response`, by pod (`netns` label).
    pub localhost_response_by_pod: BTreeMap<String, Vec<(f64, f64)>>,
    /// Packets each watched interface received, by its name (on a pod's node-side veth:
    /// what the pod sent).
    pub interface_packets_received: BTreeMap<String, f64>,
}

/// The pods' DNS to one server, cumulative.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsServer {
    pub queries: f64,
    pub answers: f64,
    /// The pod-facing interfaces the queries came through.
    pub interfaces: std::collections::BTreeSet<String>,
}

/// One direction of VXLAN between this node and another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanFlow {
    pub peer: Ipv4Addr,
    pub port: u16,
    /// Sent by this node (else received).
    pub egress: bool,
}

/// Connection attempts this node made, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Attempts {
    pub established: f64,
    /// Attempts that ended before they were established (refused, reset, timed out).
    pub failed: f64,
}

impl Attempts {
    /// Counts one attempt that ended established, or not.
    pub fn count(&mut self, established: bool) {
        if established {
            self.established += 1.0;
        } else {
            self.failed += 1.0;
        }
    }
}

/// One BGP peer's TCP session as this node sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Session {
    /// A connection with the peer is ESTABLISHED now.
    pub up: bool,
    /// Connections this node opened to the peer's port 179.
    pub attempts: Attempts,
}

/// NOTIFICATIONs on one peer's sessions that end them before they are established (an
/// OPEN rejected, a header or FSM error, a connection rejected), cumulative; only those of
/// segments of this node's own sockets (a spoofed source never counts).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BgpRejections {
    /// Sent by this node to the peer.
    pub sent: f64,
    /// Received from the peer.
    pub received: f64,
    /// The latest: sent by this node (else received), its code and subcode.
    pub latest: Option<(bool, u8, u8)>,
}

/// What this node's latest OPEN to a peer announced, and where it was sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSent {
    /// The source address of the segment: the address this node peers from.
    pub local: Ipv4Addr,
    /// The BGP identifier (router id) it announced.
    pub identifier: Ipv4Addr,
}

/// A probe that counts something judgement reads.
pub trait SignalSource: Send + Sync {
    /// Adds this probe's counts to `totals`.
    fn add_to(&self, totals: &mut Totals);
}

/// Where the probes publish, and where judgement reads.
#[derive(Clone, Default)]
pub struct Signals(Arc<RwLock<Vec<Arc<dyn SignalSource>>>>);

impl Signals {
    pub fn publish(&self, source: Arc<dyn SignalSource>) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).push(source);
    }

    /// Every source's counts now.
    #[must_use]
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for source in self.0.read().unwrap_or_else(PoisonError::into_inner).iter() {
            source.add_to(&mut totals);
        }
        totals
    }
}

/// Adds cumulative histogram buckets `(upper bound, count)` into `into`, bound by bound,
/// keeping `into` sorted by bound.
pub fn add_buckets(into: &mut Vec<(f64, f64)>, buckets: impl IntoIterator<Item = (f64, f64)>) {
    for (bound, count) in buckets {
        match into.iter_mut().find(|(b, _)| b.to_bits() == bound.to_bits()) {
            Some(entry) => entry.1 += count,
            None => into.push((bound, count)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The `q` quantile of the observations between two readings of a cumulative histogram,
/// interpolated within its bucket as Prometheus' `histogram_quantile` does.
#[must_use]
pub fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, count)| {
            let earlier =
                before.iter().find(|(b, _)| b.to_bits() == bound.to_bits()).map_or(0.0, |(_, c)| *c);
            (*bound, (count - earlier).max(0.0))
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower_bound, mut lower_count) = (0.0, 0.0);
    for (bound, count) in counts {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower_bound);
            }
            let within = if count > lower_count { (rank - lower_count) / (count - lower_count) } else { 1.0 };
            return Some(lower_bound + (bound - lower_bound) * within);
        }
        (lower_bound, lower_count) = (bound, count);
    }
    None
}
