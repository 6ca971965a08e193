//! The findings: each a named cause of a failing cutover, detected from what this node's
//! kernel shows (the probes' typed totals over the window, the node's devices and routes,
//! the in-pod health checks), with its evidence and the fix in one line. One row of
//! [`DETECTORS`] per finding.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::observations::{Observations, Route};
use crate::checks::health::LocalhostStatus;
use crate::judgement::phase::Phase;
use crate::judgement::signals::VxlanFlow;
use crate::probes::cidr::Cidr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingName {
    OldServiceCidrInUse,
    FlannelLeftovers,
    VxlanOneWay,
    BgpBlocked,
    TyphaUnreachable,
    PodCidrOverlap,
    LocalhostCause,
}

impl FindingName {
    pub const ALL: [Self; 7] = [
        Self::OldServiceCidrInUse,
        Self::FlannelLeftovers,
        Self::VxlanOneWay,
        Self::BgpBlocked,
        Self::TyphaUnreachable,
        Self::PodCidrOverlap,
        Self::LocalhostCause,
    ];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::OldServiceCidrInUse => "old_service_cidr_in_use",
            Self::FlannelLeftovers => "flannel_leftovers",
            Self::VxlanOneWay => "vxlan_one_way",
            Self::BgpBlocked => "bgp_blocked",
            Self::TyphaUnreachable => "typha_unreachable",
            Self::PodCidrOverlap => "pod_cidr_overlap",
            Self::LocalhostCause => "localhost_cause",
        }
    }

    /// `critical`: the cutover fails while it lasts; `warning`: worth fixing, not the
    /// CNI's failure by itself.
    #[must_use]
    pub const fn severity(self) -> &'static str {
        match self {
            Self::FlannelLeftovers | Self::LocalhostCause => "warning",
            Self::OldServiceCidrInUse
            | Self::VxlanOneWay
            | Self::BgpBlocked
            | Self::TyphaUnreachable
            | Self::PodCidrOverlap => "critical",
        }
    }
}

/// One finding as a detector sees it now, about one subject (a peer, a pod, a route).
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    pub name: FindingName,
    /// What it is about: `192.168.10.12:4789`, `pod mlserver-0 port 9500`, a device.
    pub subject: String,
    pub evidence: String,
    /// The number behind the evidence (`cniguard_finding_evidence`).
    pub value: f64,
    pub fix: String,
}

type Detector = fn(&Observations) -> Vec<Detected>;

/// Every finding with its detector, in report order.
pub const DETECTORS: &[(FindingName, Detector)] = &[
    (FindingName::OldServiceCidrInUse, old_service_cidr_in_use),
    (FindingName::FlannelLeftovers, flannel_leftovers),
    (FindingName::VxlanOneWay, vxlan_one_way),
    (FindingName::BgpBlocked, bgp_blocked),
    (FindingName::TyphaUnreachable, typha_unreachable),
    (FindingName::PodCidrOverlap, pod_cidr_overlap),
    (FindingName::LocalhostCause, localhost_cause),
];

const FLANNEL_PORT: u16 = 8472;

/// Pods still asking the cluster DNS of before the cutover (an address in an old service
/// range) with nothing answering: they keep the resolv.conf they were created with.
fn old_service_cidr_in_use(observed: &Observations) -> Vec<Detected> {
    let mut found = Vec::new();
    for (server, now) in &observed.now.dns_servers {
        let Some(range) = observed.old_service_cidrs.iter().find(|cidr| overlaps(*server, 32, cidr)) else {
            continue;
        };
        let before = observed.before.dns_servers.get(server).cloned().unwrap_or_default();
        let (queries, answers) = (now.queries - before.queries, now.answers - before.answers);
        if queries < observed.min_attempts || answers > 0.0 {
            continue;
        }
        let interfaces: Vec<&str> = now.interfaces.iter().map(String::as_str).collect();
        found.push(Detected {
            name: FindingName::OldServiceCidrInUse,
            subject: server.to_string(),
            evidence: format!(
                "{queries:.0} DNS queries to {server} (in the old service range {}/{}) in {:.0} s, none answered, from the pods on {}",
                range.network,
                range.prefix_len,
                observed.window_seconds,
                interfaces.join(", ")
            ),
            value: queries,
            fix: format!(
                "recreate the pods on {} (they keep the resolv.conf, and the cluster DNS {server}, of before the service range moved)",
                interfaces.join(", ")
            ),
        });
    }
    found
}

/// Flannel's devices on a node whose pods have all moved to Calico, or Flannel's VXLAN
/// still flowing there.
fn flannel_leftovers(observed: &Observations) -> Vec<Detected> {
    let Some(phase) = observed.phase else { return Vec::new() };
    let cut_over =
        (phase.calico_pod_interfaces > 0 || phase.calico_vxlan) && phase.flannel_pod_interfaces == 0;
    if !cut_over {
        return Vec::new();
    }
    let mut found = Vec::new();
    let devices: Vec<&str> = [(phase.flannel_vxlan, "flannel.1"), (phase.flannel_bridge, "cni0")]
        .into_iter()
        .filter_map(|(present, name)| present.then_some(name))
        .collect();
    if !devices.is_empty() {
        let deletes: Vec<String> = devices.iter().map(|d| format!("ip link delete {d}")).collect();
        found.push(Detected {
            name: FindingName::FlannelLeftovers,
            subject: devices.join(" "),
            evidence: format!(
                "{} still present while all {} pods run on Calico",
                devices.join(" and "),
                phase.calico_pod_interfaces
            ),
            value: devices.len() as f64,
            fix: format!(
                "remove Flannel's devices on this node: {}; rm -f /run/flannel/subnet.env",
                deletes.join("; ")
            ),
        });
    }
    // Flannel's VXLAN counts once the node has been on Calico for a whole window, and only
    // while it still flows (the phase is read every few seconds: a window that began just
    // before the move may hold the node's own traffic from before its cutover).
    let calico_all_window = observed
        .phase_age
        .is_some_and(|(phase, age)| phase == Phase::Calico && age >= observed.window_seconds);
    let latest = observed.vxlan_latest();
    let flowing = |flow: &VxlanFlow| latest.iter().any(|(f, n)| f == flow && *n > 0.0);
    for (flow, packets) in observed.vxlan_window() {
        if calico_all_window && flow.port == FLANNEL_PORT && packets >= observed.min_packets && flowing(&flow)
        {
            let direction = if flow.egress { "sent to" } else { "received from" };
            found.push(Detected {
                name: FindingName::FlannelLeftovers,
                subject: format!("{}:{FLANNEL_PORT}", flow.peer),
                evidence: format!(
                    "{packets:.0} Flannel VXLAN packets (UDP {FLANNEL_PORT}) {direction} {} in {:.0} s after the cutover",
                    flow.peer, observed.window_seconds
                ),
                value: packets,
                fix: format!(
                    "stop Flannel where it still runs ({} or this node), and flush flannel.1's FDB entries",
                    flow.peer
                ),
            });
        }
    }
    found
}

/// VXLAN sent to a peer on a port with nothing coming back from it on that port. A peer
/// that sends VXLAN on another port runs the other overlay (a node mid-cutover, whose
/// cross-node traffic the runbook expects to break), not a firewall: left out.
fn vxlan_one_way(observed: &Observations) -> Vec<Detected> {
    let window = observed.vxlan_window();
    // From the flow's peer: on the flow's port (`true`), or on any other.
    let received = |flow: &VxlanFlow, same_port: bool| {
        window
            .iter()
            .filter(|(f, _)| f.peer == flow.peer && !f.egress && (f.port == flow.port) == same_port)
            .map(|(_, n)| *n)
            .sum::<f64>()
    };
    window
        .iter()
        .filter(|(flow, sent)| {
            flow.egress
                && *sent >= observed.min_packets
                && received(flow, true) == 0.0
                && received(flow, false) == 0.0
        })
        .map(|(flow, sent)| Detected {
            name: FindingName::VxlanOneWay,
            subject: format!("{}:{}", flow.peer, flow.port),
            evidence: format!(
                "{sent:.0} VXLAN packets sent to {} on UDP {} in {:.0} s, none came back",
                flow.peer, flow.port, observed.window_seconds
            ),
            value: *sent,
            fix: format!(
                "open {}/udp between this node and {} in both directions (host firewall, security groups)",
                flow.port, flow.peer
            ),
        })
        .collect()
}

/// Connections to a BGP peer's port 179 failing, with no session up.
fn bgp_blocked(observed: &Observations) -> Vec<Detected> {
    let mut found = Vec::new();
    for (peer, session) in &observed.now.bgp {
        let before = observed.before.bgp.get(peer).map(|s| s.attempts).unwrap_or_default();
        let failed = session.attempts.failed - before.failed;
        let established = session.attempts.established - before.established;
        if session.up || established > 0.0 || failed < observed.min_attempts {
            continue;
        }
        found.push(Detected {
            name: FindingName::BgpBlocked,
            subject: peer.to_string(),
            evidence: format!(
                "{failed:.0} connections to {peer}:179 failed in {:.0} s and no BGP session is up",
                observed.window_seconds
            ),
            value: failed,
            fix: format!("allow TCP 179 between this node and {peer} (host firewall, security groups), then `calicoctl node status`"),
        });
    }
    found
}

/// Connections to Calico Typha failing, none succeeding.
fn typha_unreachable(observed: &Observations) -> Vec<Detected> {
    let failed = observed.now.typha.failed - observed.before.typha.failed;
    let established = observed.now.typha.established - observed.before.typha.established;
    if established > 0.0 || failed < observed.min_attempts {
        return Vec::new();
    }
    let port = observed.typha_port;
    vec![Detected {
        name: FindingName::TyphaUnreachable,
        subject: format!("port {port}"),
        evidence: format!(
            "{failed:.0} connections to Typha (TCP {port}) failed in {:.0} s, none succeeded",
            observed.window_seconds
        ),
        value: failed,
        fix: format!(
            "allow TCP {port} from this node to the calico-typha pods, and check they run (kubectl -n calico-system get pods -l k8s-app=calico-typha)"
        ),
    }]
}

/// A route of the node's own network into a pod or service range (runbook Common Issue 4).
fn pod_cidr_overlap(observed: &Observations) -> Vec<Detected> {
    let mut found = Vec::new();
    // A default route covers every range, and is where the node's traffic goes anyway.
    for route in observed.routes.iter().filter(|r| r.prefix_len > 0 && !r.owned_by_a_cni()) {
        for cidr in &observed.cidrs {
            if overlaps(route.destination, route.prefix_len, cidr) {
                found.push(Detected {
                    name: FindingName::PodCidrOverlap,
                    subject: format!("{}/{} dev {}", route.destination, route.prefix_len, route.device),
                    evidence: format!(
                        "the node routes {}/{} through {}, inside {} {}/{}",
                        route.destination,
                        route.prefix_len,
                        route.device,
                        cidr.name,
                        cidr.network,
                        cidr.prefix_len
                    ),
                    value: 1.0,
                    fix: format!(
                        "choose a {} range outside the node's network, or remove the route {}/{} dev {}",
                        cidr.name, route.destination, route.prefix_len, route.device
                    ),
                });
            }
        }
    }
    found
}

fn overlaps(address: Ipv4Addr, prefix_len: u8, cidr: &Cidr) -> bool {
    let shorter = prefix_len.min(cidr.prefix_len);
    let mask = if shorter == 0 { 0 } else { u32::MAX << (32 - u32::from(shorter)) };
    u32::from(address) & mask == u32::from(cidr.network) & mask
}

/// Why an in-pod loopback call fails: loopback never crosses the CNI, so the cause is the
/// server's or the pod's, and it is named.
fn localhost_cause(observed: &Observations) -> Vec<Detected> {
    observed
        .localhost
        .iter()
        .filter(|status| !status.healthy)
        .map(|status| Detected {
            name: FindingName::LocalhostCause,
            subject: format!("{} port {}", status.netns, status.port),
            evidence: format!(
                "127.0.0.1:{} in {}: {}{} (loopback never crosses the CNI: not the cutover's fault)",
                status.port,
                status.netns,
                status.explanation,
                if status.listening_on.is_empty() {
                    String::new()
                } else {
                    format!("; listening on {}", status.listening_on.join(", "))
                }
            ),
            value: 1.0,
            fix: localhost_fix(status),
        })
        .collect()
}

fn localhost_fix(status: &LocalhostStatus) -> String {
    let port = status.port;
    match status.cause.as_str() {
        "nothing_listens" => format!(
            "start the server on {port} in the pod (its container's logs and restarts say why it is down)"
        ),
        "pod_address_only" => {
            format!("bind the server to 0.0.0.0 or 127.0.0.1:{port}, not only the pod's address")
        }
        "ipv6_loopback_only" => {
            format!("bind the server to 127.0.0.1:{port} too, or have the client call [::1]:{port}")
        }
        "ipv4_loopback_only" => {
            format!("bind the server to [::1]:{port} too, or have the client call 127.0.0.1:{port}")
        }
        "slow" => "the server is up but slow: look at its load and the model, not the network".to_owned(),
        "filtered" => format!(
            "remove the rule inside the pod that drops loopback to {port} (nft list ruleset), or check its accept queue (ss -ltn)"
        ),
        "not_ready" => {
            "the server answers not ready: load the model (check the model repository and the agent)"
                .to_owned()
        }
        _ => format!("check what answers on {port} in the pod: the call failed in another way"),
    }
}

impl Route {
    /// Devices a CNI owns: their routes into pod ranges are the point.
    fn owned_by_a_cni(&self) -> bool {
        const CNI_DEVICES: &[&str] = &["cali", "veth", "cni0", "flannel", "vxlan.calico", "tunl0", "lo"];
        self.from_bird
            || self.device.is_empty()
            || CNI_DEVICES.iter().any(|prefix| self.device.starts_with(prefix))
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "the values compared are small whole numbers, exact in f64")]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::judgement::phase::Signals;
    use crate::judgement::signals::{Attempts, Session, Totals};

    fn observations() -> Observations {
        Observations {
            before: Totals::default(),
            previous: Totals::default(),
            now: Totals::default(),
            window_seconds: 60.0,
            min_packets: 10.0,
            min_attempts: 3.0,
            typha_port: 5473,
            phase: None,
            phase_age: None,
            localhost: Vec::new(),
            routes: Vec::new(),
            old_service_cidrs: vec![
                crate::probes::cidr::Cidr::parse(&crate::probes::cidr::CidrConfig {
                    name: "old_services".to_owned(),
                    cidr: "10.43.0.0/16".to_owned(),
                })
                .unwrap(),
            ],
            cidrs: crate::probes::cidr::parse_all(
                &crate::probes::cidr::DEFAULT_CIDRS
                    .iter()
                    .map(|(name, cidr)| crate::probes::cidr::CidrConfig {
                        name: (*name).to_owned(),
                        cidr: (*cidr).to_owned(),
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap(),
        }
    }

    fn peer() -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 10, 12)
    }

    fn flow(egress: bool, port: u16) -> VxlanFlow {
        VxlanFlow { peer: peer(), port, egress }
    }

    #[test]
    fn vxlan_sent_with_nothing_back_is_one_way_and_an_answer_clears_it() {
        let mut observed = observations();
        observed.now.vxlan = BTreeMap::from([(flow(true, 4789), 40.0)]);
        let found = vxlan_one_way(&observed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].subject, "192.168.10.12:4789");
        assert_eq!(found[0].value, 40.0);
        // Below min_packets: not enough to say.
        observed.now.vxlan = BTreeMap::from([(flow(true, 4789), 9.0)]);
        assert!(vxlan_one_way(&observed).is_empty());
        // One packet back on the port is an answer; on another port it is not.
        observed.now.vxlan = BTreeMap::from([(flow(true, 4789), 40.0), (flow(false, 4789), 1.0)]);
        assert!(vxlan_one_way(&observed).is_empty());
        // The peer still speaks Flannel's VXLAN: a node mid-cutover, not a firewall.
        observed.now.vxlan = BTreeMap::from([(flow(true, 4789), 40.0), (flow(false, 8472), 5.0)]);
        assert!(vxlan_one_way(&observed).is_empty());
        // Counts before the window do not count.
        observed.before.vxlan = BTreeMap::from([(flow(true, 4789), 40.0)]);
        observed.now.vxlan = BTreeMap::from([(flow(true, 4789), 40.0)]);
        assert!(vxlan_one_way(&observed).is_empty());
    }

    #[test]
    fn unanswered_queries_to_the_old_cluster_dns_are_named_with_their_pods() {
        use crate::judgement::signals::DnsServer;
        let mut observed = observations();
        let old = Ipv4Addr::new(10, 43, 0, 10);
        let server = |queries, answers| DnsServer {
            queries,
            answers,
            interfaces: ["cali1234".to_owned()].into_iter().collect(),
        };
        observed.now.dns_servers = BTreeMap::from([(old, server(8.0, 0.0))]);
        let found = old_service_cidr_in_use(&observed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].value, 8.0);
        assert!(found[0].evidence.contains("10.43.0.0/16") && found[0].evidence.contains("cali1234"));
        // Answered: the old range is still the cluster's, nothing wrong.
        observed.now.dns_servers = BTreeMap::from([(old, server(8.0, 8.0))]);
        assert!(old_service_cidr_in_use(&observed).is_empty());
        // Another server's silence is another story (the dns_failing trigger's).
        observed.now.dns_servers = BTreeMap::from([(Ipv4Addr::new(10, 96, 0, 10), server(8.0, 0.0))]);
        assert!(old_service_cidr_in_use(&observed).is_empty());
    }

    #[test]
    fn failed_bgp_connections_without_a_session_are_blocked() {
        let mut observed = observations();
        let session = |up, failed| Session { up, attempts: Attempts { established: 0.0, failed } };
        observed.now.bgp = BTreeMap::from([(peer(), session(false, 5.0))]);
        assert_eq!(bgp_blocked(&observed)[0].value, 5.0);
        observed.now.bgp = BTreeMap::from([(peer(), session(true, 5.0))]);
        assert!(bgp_blocked(&observed).is_empty(), "a session is up: a lost race, not a block");
        observed.now.bgp = BTreeMap::from([(peer(), session(false, 2.0))]);
        assert!(bgp_blocked(&observed).is_empty(), "below min_attempts");
    }

    #[test]
    fn flannel_devices_after_the_cutover_are_leftovers_and_not_before() {
        let mut observed = observations();
        let mut phase = Signals { flannel_vxlan: true, calico_pod_interfaces: 3, ..Signals::default() };
        observed.phase = Some(phase);
        let found = flannel_leftovers(&observed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].subject, "flannel.1");
        assert!(found[0].fix.contains("ip link delete flannel.1"), "{}", found[0].fix);
        // Flannel's VXLAN still flowing, once the whole window is after the move to Calico.
        observed.now.vxlan = BTreeMap::from([(flow(true, 8472), 30.0)]);
        observed.phase_age = Some((Phase::Calico, 30.0));
        assert_eq!(flannel_leftovers(&observed).len(), 1, "the window began before the move");
        observed.phase_age = Some((Phase::Calico, 90.0));
        let found = flannel_leftovers(&observed);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].subject, "192.168.10.12:8472");
        // In the window, but no longer flowing: what the node sent before its move.
        observed.previous.vxlan = observed.now.vxlan.clone();
        assert_eq!(flannel_leftovers(&observed).len(), 1);
        // Mid-cutover, with pods still on Flannel: not a leftover.
        phase.flannel_pod_interfaces = 1;
        observed.phase = Some(phase);
        assert!(flannel_leftovers(&observed).is_empty());
    }

    #[test]
    fn a_node_route_into_a_pod_range_overlaps_and_cni_routes_do_not() {
        let mut observed = observations();
        let route = |destination: [u8; 4], prefix_len, device: &str| Route {
            destination: Ipv4Addr::from(destination),
            prefix_len,
            device: device.to_owned(),
            from_bird: false,
        };
        observed.routes = vec![
            route([10, 244, 200, 0], 24, "eth0"),
            route([10, 42, 1, 0], 24, "cni0"),
            route([10, 244, 5, 3], 32, "cali1234"),
            route([192, 168, 10, 0], 24, "eth0"),
        ];
        let found = pod_cidr_overlap(&observed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].subject, "10.244.200.0/24 dev eth0");
        assert!(found[0].evidence.contains("new_pods"), "{}", found[0].evidence);
        // A default route covers everything, but it is where the node's traffic goes, not an overlap.
        observed.routes = vec![route([0, 0, 0, 0], 0, "eth0")];
        assert!(pod_cidr_overlap(&observed).is_empty());
    }
}
