//! Bounded `peer` labels: each metric keeps up to `max_peers` distinct peers as their own
//! label value, in order of appearance; the rest share `peer="other"`, and
//! `cniguard_label_overflow_total{metric}` counts the peers folded that way.
//!
//! Peers with an established BGP socket on this node (`sock_state` reports them) are real
//! and always get their own value, beyond the cap: a flood of other sources cannot take
//! their slots. The address 0.0.0.0 stands for sources the kernel side would not key by
//! address (unsolicited DNS answers, BGP segments from sources without an established
//! socket): its value is `unknown`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError};

use prometheus::{IntCounterVec, Registry};

/// The label value of peers beyond the cap.
pub const OTHER: &str = "other";
/// The label value of 0.0.0.0: every source that is not keyed by its address.
pub const UNKNOWN: &str = "unknown";
/// Folded peers remembered per metric (to count each once); beyond it, folds go uncounted.
const FOLDED_MEMORY: usize = 65_536;

pub struct PeerLabels {
    max_peers: usize,
    seen: Mutex<HashMap<&'static str, Seen>>,
    overflow: IntCounterVec,
    /// Peers with an established BGP socket.
    established: Mutex<BTreeSet<Ipv4Addr>>,
}

#[derive(Default)]
struct Seen {
    admitted: HashSet<Ipv4Addr>,
    folded: HashSet<Ipv4Addr>,
}

impl PeerLabels {
    /// # Panics
    /// Only on a programming error: a duplicate metric name in `registry`.
    #[must_use]
    pub fn new(max_peers: usize, registry: &Registry) -> Self {
        let overflow = super::catalogue::LABEL_OVERFLOW_TOTAL.int_counter_vec().expect("valid metric");
        registry.register(Box::new(overflow.clone())).expect("metric names are unique");
        Self { max_peers, seen: Mutex::new(HashMap::new()), overflow, established: Mutex::default() }
    }

    /// The label value for `peer` in `metric`: the address, or `other` once the metric holds
    /// `max_peers` others (never for an established BGP peer), `unknown` for 0.0.0.0. A
    /// peer keeps its value for as long as the daemon runs.
    pub fn label(&self, metric: &'static str, peer: Ipv4Addr) -> String {
        if peer.is_unspecified() {
            return UNKNOWN.to_owned();
        }
        let real = self.is_established(peer);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = seen.entry(metric).or_default();
        if seen.admitted.contains(&peer) {
            return peer.to_string();
        }
        if real || seen.admitted.len() < self.max_peers {
            seen.admitted.insert(peer);
            seen.folded.remove(&peer);
            return peer.to_string();
        }
        if seen.folded.len() < FOLDED_MEMORY && seen.folded.insert(peer) {
            self.overflow.with_label_values(&[metric]).inc();
        }
        OTHER.to_owned()
    }

    /// Whether `peer` has an established BGP socket on this node.
    #[must_use]
    pub fn is_established(&self, peer: Ipv4Addr) -> bool {
        self.established.lock().unwrap_or_else(PoisonError::into_inner).contains(&peer)
    }

    /// `peer`'s BGP session came up (`up`) or went down (it keeps the value it was given).
    pub fn set_established(&self, peer: Ipv4Addr, up: bool) {
        let mut established = self.established.lock().unwrap_or_else(PoisonError::into_inner);
        if up {
            established.insert(peer);
        } else {
            established.remove(&peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_beyond_the_cap_are_other_and_counted_once() {
        let registry = Registry::new();
        let labels = PeerLabels::new(2, &registry);
        let peer = |last: u8| Ipv4Addr::new(192, 168, 10, last);
        assert_eq!(labels.label("m", peer(1)), "192.168.10.1");
        assert_eq!(labels.label("m", peer(2)), "192.168.10.2");
        assert_eq!(labels.label("m", peer(3)), OTHER);
        assert_eq!(labels.label("m", peer(3)), OTHER);
        assert_eq!(labels.label("m", peer(1)), "192.168.10.1", "admitted peers keep their label");
        assert_eq!(labels.label("n", peer(3)), "192.168.10.3", "each metric has its own cap");
        assert_eq!(labels.overflow.with_label_values(&["m"]).get(), 1);
        assert_eq!(labels.label("m", Ipv4Addr::UNSPECIFIED), UNKNOWN);
    }

    #[test]
    fn established_peers_get_a_slot_even_when_the_cap_is_taken() {
        let registry = Registry::new();
        let labels = PeerLabels::new(2, &registry);
        let peer = |last: u8| Ipv4Addr::new(10, 0, 0, last);
        for last in 1..=200 {
            labels.label("m", peer(last));
        }
        assert_eq!(labels.label("m", Ipv4Addr::new(192, 168, 10, 12)), OTHER);
        labels.set_established(Ipv4Addr::new(192, 168, 10, 12), true);
        assert_eq!(labels.label("m", Ipv4Addr::new(192, 168, 10, 12)), "192.168.10.12");
    }
}
