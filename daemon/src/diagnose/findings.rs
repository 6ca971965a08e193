//! The findings: each a named cause of a failing cutover, detected from what this node's
//! kernel shows (the probes' typed totals over the window, the node's devices and routes,
//! the in-pod health checks), with its evidence and the fix in one line. One row of
//! [`DETECTORS`] per finding.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::observations::{Observations, Route};
use crate::checks::health::LocalhostStatus;
use crate::judgement::phase::Phase;
use crate::judgement::signals::{Totals, VxlanFlow};
use crate::probes::bgp_codes;
use crate::probes::cidr::Cidr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingName {
    OldServiceCidrInUse,
    PodsOnOldAddresses,
    FlannelLeftovers,
    VxlanOneWay,
    VxlanChecksum,
    BgpBlocked,
    BgpNotEstablished,
    WrongNodeAddress,
    MtuMismatch,
    TyphaUnreachable,
    PodCidrOverlap,
    LocalhostCause,
}

impl FindingName {
    pub const ALL: [Self; 12] = [
        Self::OldServiceCidrInUse,
        Self::PodsOnOldAddresses,
        Self::FlannelLeftovers,
        Self::VxlanOneWay,
        Self::VxlanChecksum,
        Self::BgpBlocked,
        Self::BgpNotEstablished,
        Self::WrongNodeAddress,
        Self::MtuMismatch,
        Self::TyphaUnreachable,
        Self::PodCidrOverlap,
        Self::LocalhostCause,
    ];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::OldServiceCidrInUse => "old_service_cidr_in_use",
            Self::PodsOnOldAddresses => "pods_on_old_addresses",
            Self::FlannelLeftovers => "flannel_leftovers",
            Self::VxlanOneWay => "vxlan_one_way",
            Self::VxlanChecksum => "vxlan_checksum",
            Self::BgpBlocked => "bgp_blocked",
            Self::BgpNotEstablished => "bgp_not_established",
            Self::WrongNodeAddress => "wrong_node_address",
            Self::MtuMismatch => "mtu_mismatch",
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
            | Self::PodsOnOldAddresses
            | Self::VxlanOneWay
            | Self::VxlanChecksum
            | Self::BgpBlocked
            | Self::BgpNotEstablished
            | Self::WrongNodeAddress
            | Self::MtuMismatch
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
    (FindingName::PodsOnOldAddresses, pods_on_old_addresses),
    (FindingName::FlannelLeftovers, flannel_leftovers),
    (FindingName::VxlanOneWay, vxlan_one_way),
    (FindingName::VxlanChecksum, vxlan_checksum),
    (FindingName::BgpBlocked, bgp_blocked),
    (FindingName::BgpNotEstablished, bgp_not_established),
    (FindingName::WrongNodeAddress, wrong_node_address),
    (FindingName::MtuMismatch, mtu_mismatch),
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
    found.extend(old_service_connections(observed));
    found
}

/// Connections from this node's pods to an address of an old service range (K3s' API
/// ClusterIP 10.43.0.1:443) that fail, none established: the pods keep the
/// `KUBERNETES_SERVICE_HOST` (or a configured address) of before the service range moved.
fn old_service_connections(observed: &Observations) -> Vec<Detected> {
    // By service: failed and established in the window, and the pod devices that failed.
    let mut by_service: BTreeMap<std::net::SocketAddrV4, (f64, f64, Vec<String>)> = BTreeMap::new();
    for ((service, local), now) in &observed.now.old_service_connections {
        // Another node's pod (one kernel runs the lab's nodes) or the node itself: not here.
        let Some(device) = pod_device(&observed.routes, *local) else { continue };
        let before =
            observed.before.old_service_connections.get(&(*service, *local)).copied().unwrap_or_default();
        let entry = by_service.entry(*service).or_default();
        let failed = now.failed - before.failed;
        entry.0 += failed;
        entry.1 += now.established - before.established;
        if failed > 0.0 && !entry.2.contains(&device.to_owned()) {
            entry.2.push(device.to_owned());
        }
    }
    let mut found = Vec::new();
    for (service, (failed, established, devices)) in by_service {
        if established > 0.0 || failed < observed.min_attempts {
            continue;
        }
        let range = observed.old_service_cidrs.iter().find(|cidr| cidr.contains(*service.ip()));
        let range = range.map_or_else(String::new, |r| {
            format!(" (in the old service range {}/{})", r.network, r.prefix_len)
        });
        found.push(Detected {
            name: FindingName::OldServiceCidrInUse,
            subject: service.to_string(),
            evidence: format!(
                "{failed:.0} connections to {service}{range} failed in {:.0} s, none established, from the pods on {}",
                observed.window_seconds,
                devices.join(", ")
            ),
            value: failed,
            fix: format!(
                "recreate the pods on {} (they keep KUBERNETES_SERVICE_HOST={}, or an address they were given, of before the service range moved)",
                devices.join(", "),
                service.ip()
            ),
        });
    }
    found
}

/// Pods of a node already on Calico that still hold an address of an old pod range and
/// send from it: never re-created by the cutover, they keep Flannel's address, and no
/// route of Calico's leads back to it.
fn pods_on_old_addresses(observed: &Observations) -> Vec<Detected> {
    if !observed.phase_age.is_some_and(|(phase, _)| phase == Phase::Calico) {
        return Vec::new();
    }
    let received = |totals: &Totals, device: &str| totals.interface_packets_received.get(device).copied();
    let mut found = Vec::new();
    for pod in &observed.pods {
        let Some((address, range)) = pod
            .addresses
            .iter()
            .find_map(|a| observed.old_pod_cidrs.iter().find(|range| range.contains(*a)).map(|r| (*a, r)))
        else {
            continue;
        };
        let sent: f64 = pod
            .devices
            .iter()
            .map(|device| {
                let now = received(&observed.now, device).unwrap_or(0.0);
                (now - received(&observed.before, device).unwrap_or(0.0)).max(0.0)
            })
            .sum();
        if sent < observed.min_packets {
            continue;
        }
        found.push(Detected {
            name: FindingName::PodsOnOldAddresses,
            subject: format!("pod {}", pod.netns),
            evidence: format!(
                "pod {} still has {address} (in the old pod range {}/{}) and sent {sent:.0} packets on {} in {:.0} s, while the node is on Calico",
                pod.netns,
                range.network,
                range.prefix_len,
                pod.devices.join(", "),
                observed.window_seconds
            ),
            value: sent,
            fix: format!(
                "recreate pod {} (kubectl delete pod): Calico gives it an address of its own pool; nothing routes {}/{} to it any more",
                pod.netns, range.network, range.prefix_len
            ),
        });
    }
    found
}

/// The pod device of this node that `address` is routed to (the most specific route that
/// holds it, on a `cali*` or `veth*` device or Flannel's `cni0`).
fn pod_device(routes: &[Route], address: Ipv4Addr) -> Option<&str> {
    const POD_DEVICES: &[&str] = &["cali", "veth", "cni0"];
    let route = best_route(routes, address).filter(|r| r.prefix_len > 0)?;
    POD_DEVICES.iter().any(|prefix| route.device.starts_with(prefix)).then_some(route.device.as_str())
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

/// The kernel's drop reasons for a bad TCP or UDP checksum (6.0 and later).
const CHECKSUM_DROPS: &[&str] = &["TCP_CSUM", "UDP_CSUM"];

/// VXLAN arriving while the kernel drops TCP and UDP for bad checksums: the senders' tx
/// checksum offload on the VXLAN device leaves the inner checksum unfilled (calico#3145,
/// #9433; Felix works around it only on kernels up to 5.7). ICMP still works, which is
/// how it looks from a pod.
fn vxlan_checksum(observed: &Observations) -> Vec<Detected> {
    let dropped: f64 = CHECKSUM_DROPS
        .iter()
        .map(|reason| {
            observed.now.drops.get(*reason).copied().unwrap_or(0.0)
                - observed.before.drops.get(*reason).copied().unwrap_or(0.0)
        })
        .sum();
    let mut senders: Vec<Ipv4Addr> = observed
        .vxlan_window()
        .into_iter()
        .filter(|(flow, packets)| !flow.egress && *packets > 0.0 && flow.port != FLANNEL_PORT)
        .map(|(flow, _)| flow.peer)
        .collect();
    senders.dedup();
    if dropped < observed.min_packets || senders.is_empty() {
        return Vec::new();
    }
    let listed: Vec<String> = senders.iter().map(ToString::to_string).collect();
    vec![Detected {
        name: FindingName::VxlanChecksum,
        subject: "checksum drops".to_owned(),
        evidence: format!(
            "{dropped:.0} packets dropped for a bad TCP or UDP checksum ({}) in {:.0} s while VXLAN arrives from {}",
            CHECKSUM_DROPS.join(", "),
            observed.window_seconds,
            listed.join(", ")
        ),
        value: dropped,
        fix: format!(
            "turn off tx checksum offload on the VXLAN device of the sending nodes ({}): ethtool -K vxlan.calico tx-checksum-ip-generic off (persist it, e.g. FelixConfiguration featureDetectOverride ChecksumOffloadBroken=true)",
            listed.join(", ")
        ),
    }]
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

/// BGP sessions with a peer that TCP opens but BGP closes before they are established:
/// NOTIFICATIONs that refuse the OPEN (or the connection), with no session up for a whole
/// evaluation. A firewall shows as `bgp_blocked` instead (no BGP message gets through), and
/// a peer nobody configured as one never speaks BGP at all: neither is raised here, nor is
/// a VXLAN-only cluster (no BGP, no NOTIFICATION).
fn bgp_not_established(observed: &Observations) -> Vec<Detected> {
    // One refused OPEN may be a configuration change caught between its two ends; two in a
    // window are a session that cannot come up. (BIRD waits `error wait time` between
    // attempts, 60 s growing to 300 s by default: the window must span two of them.)
    const MIN_REFUSED: f64 = 2.0;
    let mut found = Vec::new();
    let up = |totals: &Totals, peer: &Ipv4Addr| totals.bgp.get(peer).is_some_and(|s| s.up);
    for (peer, now) in &observed.now.bgp_rejections {
        let before = observed.before.bgp_rejections.get(peer).copied().unwrap_or_default();
        let rejected = (now.sent - before.sent) + (now.received - before.received);
        // A failing session is up for a few milliseconds per attempt: only one up at both
        // readings is a session that came up.
        let came_up = up(&observed.now, peer) && up(&observed.previous, peer);
        let Some((sent_by_us, code, subcode)) = now.latest else { continue };
        if came_up || rejected < MIN_REFUSED {
            continue;
        }
        let (direction, by) =
            if sent_by_us { ("sent to", "this node") } else { ("received from", "the peer") };
        found.push(Detected {
            name: FindingName::BgpNotEstablished,
            subject: peer.to_string(),
            evidence: format!(
                "{rejected:.0} BGP sessions with {peer} closed by a NOTIFICATION before they were established in {:.0} s (TCP 179 connects: not a firewall); the latest {direction} {peer}: {} (code {code}, subcode {subcode}), refused by {by}",
                observed.window_seconds,
                bgp_codes::describe(code, subcode),
            ),
            value: rejected,
            fix: bgp_not_established_fix(*peer, sent_by_us, code, subcode),
        });
    }
    found
}

/// The fix for the refusal's reason; `sent_by_us`: this node refused (its expectation of
/// the peer is what disagrees), else the peer refused this node.
fn bgp_not_established_fix(peer: Ipv4Addr, sent_by_us: bool, code: u8, subcode: u8) -> String {
    let check = "calicoctl get bgpconfig default -o yaml; calicoctl get nodes,bgppeers -o yaml";
    match (code, subcode) {
        (2, 2) if sent_by_us => format!(
            "make the AS numbers agree: the AS this node expects of {peer} (the mesh's or its BGPPeer's asNumber) is not the one {peer} runs ({check}), then calicoctl node status"
        ),
        (2, 2) => format!(
            "make the AS numbers agree: {peer} expects another AS of this node than the one it runs (the mesh's, this node's or {peer}'s BGPPeer asNumber: {check}), then calicoctl node status"
        ),
        (2, 3) => format!(
            "this node and {peer} announce the same or an invalid BGP router id: give each node its own address (nodeAddressAutodetectionV4) or router id"
        ),
        (6, 5) => format!(
            "{peer} rejects this node's connections: add this node to its peers (node-to-node mesh on, or a BGPPeer for it) and check its BIRD log"
        ),
        _ => format!(
            "compare both ends' BGP configuration (AS numbers, peer addresses, hold time, capabilities): calicoctl node status on this node and on {peer}, and calico-node's BIRD log"
        ),
    }
}

/// This node announcing, in its BGP OPENs, a router id that is another of its own addresses
/// than the one it peers from: Calico took the node's address from another interface
/// (`first-found`). An identifier that is none of the node's addresses (a hashed router id)
/// is a choice, not a wrong pick. Or a VXLAN device sending from such an address
/// (`wrong_vxlan_source`): with VXLAN and no BGP, the only trace.
fn wrong_node_address(observed: &Observations) -> Vec<Detected> {
    let device = |address: Ipv4Addr| {
        observed.addresses.iter().find(|(a, _)| *a == address).map(|(_, device)| device.as_str())
    };
    let mut wrong: BTreeMap<(Ipv4Addr, Ipv4Addr), Vec<Ipv4Addr>> = BTreeMap::new();
    for (peer, open) in &observed.now.bgp_opens_sent {
        if open.identifier != open.local && device(open.identifier).is_some() {
            wrong.entry((open.identifier, open.local)).or_default().push(*peer);
        }
    }
    wrong
        .into_iter()
        .map(|((identifier, local), peers)| {
            let (wrong_device, right_device) =
                (device(identifier).unwrap_or_default(), device(local).unwrap_or("its underlay device"));
            let listed: Vec<String> = peers.iter().map(ToString::to_string).collect();
            let count = peers.len() as f64;
            Detected {
                name: FindingName::WrongNodeAddress,
                subject: format!("router id {identifier}"),
                evidence: format!(
                    "this node's BGP OPENs to {} announce the identifier {identifier} ({wrong_device}), but it peers from {local} ({right_device}): Calico took the node's address from {wrong_device}",
                    listed.join(", ")
                ),
                value: count,
                fix: format!(
                    "set nodeAddressAutodetectionV4 in the Installation so Calico picks {local}: interface: {right_device} (IP_AUTODETECTION_METHOD=interface={right_device}) or canReach: {}, then restart calico-node on this node",
                    peers[0]
                ),
            }
        })
        .chain(wrong_vxlan_source(observed))
        .collect()
}

/// A VXLAN device that sends from an address of the node on another interface than the
/// one its peers (the other ends of the node's VXLAN and BGP) are reached through: Calico
/// set `vxlan.calico`'s source from the interface it detected, so the peers' VXLAN to this
/// node goes to an address they cannot reach, and what it sends leaves the wrong way.
fn wrong_vxlan_source(observed: &Observations) -> Vec<Detected> {
    let device_of = |address: Ipv4Addr| {
        observed.addresses.iter().find(|(a, _)| *a == address).map(|(_, device)| device.as_str())
    };
    let peers: std::collections::BTreeSet<Ipv4Addr> =
        observed.now.vxlan.keys().map(|flow| flow.peer).chain(observed.now.bgp.keys().copied()).collect();
    let mut found = Vec::new();
    for tunnel in observed.links.iter().filter(|link| link.kind.as_deref() == Some("vxlan")) {
        let Some(local) = tunnel.local else { continue };
        // Not an address of the node: another problem, not this one.
        let Some(local_device) = device_of(local) else { continue };
        let mut elsewhere: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
        for peer in &peers {
            let Some(route) = best_route(&observed.routes, *peer) else { continue };
            if !route.device.is_empty() && route.device != local_device {
                elsewhere.entry(route.device.as_str()).or_default().push(*peer);
            }
        }
        // The device most peers are reached through is the node's underlay.
        let Some((right_device, reached)) = elsewhere.into_iter().max_by_key(|(_, peers)| peers.len()) else {
            continue;
        };
        let right = observed.addresses.iter().find(|(_, d)| d == right_device).map(|(a, _)| *a);
        let right = right.map_or_else(|| right_device.to_owned(), |a| format!("{a} ({right_device})"));
        let listed: Vec<String> = reached.iter().map(ToString::to_string).collect();
        found.push(Detected {
            name: FindingName::WrongNodeAddress,
            subject: format!("{} source {local}", tunnel.name),
            evidence: format!(
                "{} sends from {local} ({local_device}), but its peers {} are reached through {right}: Calico took the node's address from {local_device}",
                tunnel.name,
                listed.join(", ")
            ),
            value: reached.len() as f64,
            fix: format!(
                "set nodeAddressAutodetectionV4 in the Installation so Calico picks the node's address on {right_device}: interface: {right_device} (IP_AUTODETECTION_METHOD=interface={right_device}) or canReach: {}, then restart calico-node on this node",
                reached[0]
            ),
        });
    }
    found
}

/// The most specific route of the node that holds `address`.
fn best_route(routes: &[Route], address: Ipv4Addr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| {
            overlaps(
                address,
                32,
                &Cidr { name: String::new(), network: r.destination, prefix_len: r.prefix_len },
            )
        })
        .max_by_key(|r| r.prefix_len)
}

/// What an encapsulation adds to each packet: a tunnel's MTU must leave it free of its
/// underlay's (outer Ethernet is not counted: MTUs are IP sizes).
const VXLAN_OVERHEAD: u32 = 50;
const IPIP_OVERHEAD: u32 = 20;
/// The kernel's drop reason where it forwards a packet larger than the way out with DF set
/// and answers ICMP fragmentation-needed (`ip_forward`, 6.0 and later).
const TOO_BIG: &str = "PKT_TOO_BIG";

/// A tunnel device (VXLAN, IPIP) whose MTU does not fit in its underlay's less the
/// encapsulation, so full-size packets are fragmented or dropped; or, with no such device,
/// packets the kernel dropped as too big (it answered ICMP fragmentation-needed): the path
/// is narrower than the pods think.
fn mtu_mismatch(observed: &Observations) -> Vec<Detected> {
    let before = observed.before.drops.get(TOO_BIG).copied().unwrap_or(0.0);
    let too_big = observed.now.drops.get(TOO_BIG).copied().unwrap_or(0.0) - before;
    let dropped = if too_big > 0.0 {
        format!("; {too_big:.0} packets dropped as too big ({TOO_BIG}) in {:.0} s", observed.window_seconds)
    } else {
        String::new()
    };
    // Calico's tunl0 names no underlay: the node's traffic leaves by the default route.
    let default_device = observed.routes.iter().find(|r| r.prefix_len == 0).map(|r| r.device.as_str());
    let mut found = Vec::new();
    for tunnel in &observed.links {
        let (encapsulation, overhead) = match tunnel.kind.as_deref() {
            Some("vxlan") => ("VXLAN", VXLAN_OVERHEAD),
            Some("ipip") => ("IPIP", IPIP_OVERHEAD),
            _ => continue,
        };
        let underlay = tunnel
            .underlay
            .and_then(|index| observed.links.iter().find(|l| l.index == index))
            .or_else(|| default_device.and_then(|name| observed.links.iter().find(|l| l.name == name)));
        let Some(underlay) = underlay else { continue };
        let fits = underlay.mtu.saturating_sub(overhead);
        if tunnel.mtu <= fits {
            continue;
        }
        found.push(Detected {
            name: FindingName::MtuMismatch,
            subject: tunnel.name.clone(),
            evidence: format!(
                "{} has MTU {}, but its underlay {} has {}: less {encapsulation}'s {overhead} bytes that leaves {fits}, so full-size packets through {} are fragmented or dropped{dropped}",
                tunnel.name, tunnel.mtu, underlay.name, underlay.mtu, tunnel.name
            ),
            value: f64::from(tunnel.mtu - fits),
            fix: format!(
                "set Calico's MTU to {fits} ({} on {} less {overhead} for {encapsulation}): the Installation's spec.calicoNetwork.mtu (or FelixConfiguration {}), then recreate the pods on this node (a pod's MTU is set when it is created)",
                underlay.mtu,
                underlay.name,
                if overhead == VXLAN_OVERHEAD { "vxlanMTU" } else { "ipipMTU" }
            ),
        });
    }
    if found.is_empty() && too_big >= observed.min_packets {
        found.push(Detected {
            name: FindingName::MtuMismatch,
            subject: "packets too big".to_owned(),
            evidence: format!(
                "{too_big:.0} packets dropped as too big ({TOO_BIG}: the node answered ICMP fragmentation-needed) in {:.0} s, though its devices' MTUs agree: the path is narrower than they say",
                observed.window_seconds
            ),
            value: too_big,
            fix: format!(
                "find the narrowest MTU on the path between the nodes (ping -M do -s <size> <peer>) and set Calico's MTU to it less {VXLAN_OVERHEAD} for VXLAN or {IPIP_OVERHEAD} for IPIP (spec.calicoNetwork.mtu)"
            ),
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
            links: Vec::new(),
            addresses: vec![
                (Ipv4Addr::new(192, 168, 10, 11), "eth0".to_owned()),
                (Ipv4Addr::new(10, 0, 2, 15), "eth1".to_owned()),
            ],
            old_service_cidrs: vec![
                crate::probes::cidr::Cidr::parse(&crate::probes::cidr::CidrConfig {
                    name: "old_services".to_owned(),
                    cidr: "10.43.0.0/16".to_owned(),
                })
                .unwrap(),
            ],
            old_pod_cidrs: vec![
                crate::probes::cidr::Cidr::parse(&crate::probes::cidr::CidrConfig {
                    name: "old_pods".to_owned(),
                    cidr: "10.42.0.0/16".to_owned(),
                })
                .unwrap(),
            ],
            pods: Vec::new(),
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

    /// A route of the node's own (not BIRD's) to `destination`/`prefix_len` via `device`.
    fn route(destination: [u8; 4], prefix_len: u8, device: &str) -> Route {
        Route {
            destination: Ipv4Addr::from(destination),
            prefix_len,
            device: device.to_owned(),
            from_bird: false,
        }
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
    fn a_pod_sending_from_an_old_address_on_a_calico_node_is_named_and_only_there() {
        use super::super::observations::PodAddresses;
        let mut observed = observations();
        observed.phase_age = Some((Phase::Calico, 300.0));
        observed.pods = vec![
            PodAddresses {
                netns: "cni-old".to_owned(),
                addresses: vec![Ipv4Addr::new(10, 42, 1, 5)],
                devices: vec!["veth1a2b3c4d".to_owned()],
            },
            PodAddresses {
                netns: "cni-new".to_owned(),
                addresses: vec![Ipv4Addr::new(10, 244, 1, 7)],
                devices: vec!["cali0c0ffee".to_owned()],
            },
        ];
        let sent = |totals: &mut Totals, old: f64, new: f64| {
            totals.interface_packets_received =
                BTreeMap::from([("veth1a2b3c4d".to_owned(), old), ("cali0c0ffee".to_owned(), new)]);
        };
        sent(&mut observed.before, 100.0, 100.0);
        sent(&mut observed.now, 1_300.0, 5_000.0);
        let found = pods_on_old_addresses(&observed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].subject, "pod cni-old");
        assert_eq!(found[0].value, 1_200.0);
        assert!(
            found[0].evidence.contains("10.42.1.5 (in the old pod range 10.42.0.0/16)"),
            "{}",
            found[0].evidence
        );
        assert!(found[0].evidence.contains("veth1a2b3c4d"), "{}", found[0].evidence);
        // Quiet (below min_packets in the window): not carrying traffic.
        sent(&mut observed.now, 109.0, 5_000.0);
        assert!(pods_on_old_addresses(&observed).is_empty());
        // Mid-cutover, old addresses are where pods are meant to be.
        sent(&mut observed.now, 1_300.0, 5_000.0);
        observed.phase_age = Some((Phase::Mixed, 300.0));
        assert!(pods_on_old_addresses(&observed).is_empty());
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
    fn failed_connections_from_this_nodes_pods_to_the_old_api_address_are_named() {
        use std::net::SocketAddrV4;
        let mut observed = observations();
        let api = SocketAddrV4::new(Ipv4Addr::new(10, 43, 0, 1), 443);
        let (pod, elsewhere) = (Ipv4Addr::new(10, 244, 3, 11), Ipv4Addr::new(10, 244, 1, 11));
        observed.routes = vec![
            Route { destination: pod, prefix_len: 32, device: "cali1234".to_owned(), from_bird: false },
            Route {
                destination: Ipv4Addr::new(10, 244, 1, 0),
                prefix_len: 26,
                device: "vxlan.calico".to_owned(),
                from_bird: false,
            },
        ];
        let attempts = |established, failed| Attempts { established, failed };
        observed.now.old_service_connections =
            BTreeMap::from([((api, pod), attempts(0.0, 5.0)), ((api, elsewhere), attempts(0.0, 9.0))]);
        let found = old_service_cidr_in_use(&observed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].subject.as_str(), found[0].value),
            ("10.43.0.1:443", 5.0),
            "another node's pod left out"
        );
        assert!(
            found[0].evidence.contains("(in the old service range 10.43.0.0/16)"),
            "{}",
            found[0].evidence
        );
        assert!(found[0].fix.contains("recreate the pods on cali1234"), "{}", found[0].fix);
        // One established: the address still answers (the range has not moved yet).
        observed.now.old_service_connections.insert((api, pod), attempts(1.0, 5.0));
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
    fn bgp_sessions_refused_before_they_are_up_are_not_established_and_a_session_up_clears_it() {
        use crate::judgement::signals::BgpRejections;
        let mut observed = observations();
        let rejections = |sent, received| BgpRejections { sent, received, latest: Some((true, 2, 2)) };
        observed.now.bgp_rejections = BTreeMap::from([(peer(), rejections(2.0, 1.0))]);
        let found = bgp_not_established(&observed);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].subject.as_str(), found[0].value), ("192.168.10.12", 3.0));
        assert!(found[0].evidence.contains("open message error / bad peer as"), "{}", found[0].evidence);
        assert!(found[0].evidence.contains("sent to 192.168.10.12"), "{}", found[0].evidence);
        assert!(found[0].fix.contains("AS numbers agree"), "{}", found[0].fix);
        // One in the window: earlier ones do not count.
        observed.before.bgp_rejections = BTreeMap::from([(peer(), rejections(2.0, 0.0))]);
        assert!(bgp_not_established(&observed).is_empty());
        observed.before.bgp_rejections.clear();
        // Up at this reading only: an attempt caught between its OPEN and its NOTIFICATION.
        let up = Session { up: true, attempts: Attempts::default() };
        observed.now.bgp = BTreeMap::from([(peer(), up)]);
        assert_eq!(bgp_not_established(&observed).len(), 1);
        // Up at two readings: the session came up.
        observed.previous.bgp = observed.now.bgp.clone();
        assert!(bgp_not_established(&observed).is_empty());
    }

    #[test]
    fn a_router_id_from_another_interface_of_the_node_is_a_wrong_node_address() {
        use crate::judgement::signals::OpenSent;
        let mut observed = observations();
        let open = |identifier: [u8; 4]| OpenSent {
            local: Ipv4Addr::new(192, 168, 10, 11),
            identifier: Ipv4Addr::from(identifier),
        };
        let other = Ipv4Addr::new(192, 168, 20, 13);
        observed.now.bgp_opens_sent =
            BTreeMap::from([(peer(), open([10, 0, 2, 15])), (other, open([10, 0, 2, 15]))]);
        let found = wrong_node_address(&observed);
        assert_eq!(found.len(), 1, "one finding for the node, not one per peer");
        assert_eq!((found[0].subject.as_str(), found[0].value), ("router id 10.0.2.15", 2.0));
        assert!(found[0].evidence.contains("192.168.10.12, 192.168.20.13 announce the identifier 10.0.2.15 (eth1), but it peers from 192.168.10.11 (eth0)"), "{}", found[0].evidence);
        assert!(
            found[0].fix.contains("nodeAddressAutodetectionV4") && found[0].fix.contains("interface: eth0"),
            "{}",
            found[0].fix
        );
        // The address it peers from: right. None of the node's addresses: a hashed router id.
        observed.now.bgp_opens_sent =
            BTreeMap::from([(peer(), open([192, 168, 10, 11])), (other, open([1, 2, 3, 4]))]);
        assert!(wrong_node_address(&observed).is_empty());
    }

    #[test]
    fn a_vxlan_device_sending_from_another_interfaces_address_is_a_wrong_node_address() {
        use super::super::observations::Link;
        let mut observed = observations();
        observed.routes = vec![
            route([0, 0, 0, 0], 0, "eth0"),
            route([192, 168, 10, 0], 24, "eth0"),
            route([10, 0, 2, 0], 24, "eth1"),
        ];
        let vxlan = |local: [u8; 4]| Link {
            index: 5,
            name: "vxlan.calico".to_owned(),
            kind: Some("vxlan".to_owned()),
            mtu: 1450,
            underlay: None,
            local: Some(Ipv4Addr::from(local)),
        };
        observed.links = vec![vxlan([10, 0, 2, 15])];
        let node_3 = Ipv4Addr::new(192, 168, 20, 13);
        observed.now.vxlan = BTreeMap::from([(VxlanFlow { peer: node_3, port: 4789, egress: false }, 40.0)]);
        observed.now.bgp = BTreeMap::from([(peer(), Session::default())]);
        let found = wrong_node_address(&observed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].subject.as_str(), found[0].value), ("vxlan.calico source 10.0.2.15", 2.0));
        assert!(
            found[0].evidence.contains("sends from 10.0.2.15 (eth1), but its peers 192.168.10.12, 192.168.20.13 are reached through 192.168.10.11 (eth0)"),
            "{}",
            found[0].evidence
        );
        assert!(found[0].fix.contains("interface: eth0"), "{}", found[0].fix);
        // From the node's underlay address: right.
        observed.links = vec![vxlan([192, 168, 10, 11])];
        assert!(wrong_node_address(&observed).is_empty());
        // Not an address of the node at all: not this finding.
        observed.links = vec![vxlan([172, 16, 0, 1])];
        assert!(wrong_node_address(&observed).is_empty());
    }

    #[test]
    fn a_tunnel_wider_than_its_underlay_less_the_encapsulation_is_an_mtu_mismatch() {
        use super::super::observations::Link;
        let mut observed = observations();
        let link = |index, name: &str, kind: Option<&str>, mtu, underlay| Link {
            index,
            name: name.to_owned(),
            kind: kind.map(str::to_owned),
            mtu,
            underlay,
            local: None,
        };
        observed.links = vec![
            link(2, "eth0", None, 1400, None),
            link(3, "vxlan.calico", Some("vxlan"), 1450, Some(2)),
            link(4, "cali1234", Some("veth"), 1500, None),
        ];
        let found = mtu_mismatch(&observed);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].subject.as_str(), found[0].value), ("vxlan.calico", 100.0));
        assert!(
            found[0].fix.starts_with("set Calico's MTU to 1350 (1400 on eth0 less 50 for VXLAN)"),
            "{}",
            found[0].fix
        );
        // Fits: 1350 + 50 = 1400.
        observed.links[1].mtu = 1350;
        assert!(mtu_mismatch(&observed).is_empty());
        // IPIP's tunl0 names no underlay: the default route's device is.
        observed.routes = vec![Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            device: "eth0".to_owned(),
            from_bird: false,
        }];
        observed.links.push(link(5, "tunl0", Some("ipip"), 1440, None));
        let found = mtu_mismatch(&observed);
        assert_eq!((found.len(), found[0].value), (1, 60.0));
        assert!(found[0].fix.contains("to 1380 (1400 on eth0 less 20 for IPIP)"), "{}", found[0].fix);
        // Devices that agree, and the kernel dropping packets as too big: the path is narrower.
        observed.links.truncate(3);
        observed.now.drops = BTreeMap::from([(TOO_BIG.to_owned(), 12.0)]);
        let found = mtu_mismatch(&observed);
        assert_eq!((found[0].subject.as_str(), found[0].value), ("packets too big", 12.0));
        observed.before.drops = BTreeMap::from([(TOO_BIG.to_owned(), 8.0)]);
        assert!(mtu_mismatch(&observed).is_empty(), "4 in the window, below min_packets");
    }

    #[test]
    fn checksum_drops_while_vxlan_arrives_name_the_senders() {
        let mut observed = observations();
        observed.now.drops = BTreeMap::from([("TCP_CSUM".to_owned(), 7.0), ("UDP_CSUM".to_owned(), 5.0)]);
        // No VXLAN arriving: a checksum problem, not the overlay's.
        assert!(vxlan_checksum(&observed).is_empty());
        observed.now.vxlan = BTreeMap::from([(flow(false, 4789), 30.0), (flow(true, 4789), 30.0)]);
        let found = vxlan_checksum(&observed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].value, 12.0);
        assert!(
            found[0].evidence.contains("while VXLAN arrives from 192.168.10.12"),
            "{}",
            found[0].evidence
        );
        assert!(
            found[0].fix.contains("ethtool -K vxlan.calico tx-checksum-ip-generic off"),
            "{}",
            found[0].fix
        );
        observed.before.drops = BTreeMap::from([("TCP_CSUM".to_owned(), 7.0)]);
        assert!(vxlan_checksum(&observed).is_empty(), "5 in the window, below min_packets");
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
