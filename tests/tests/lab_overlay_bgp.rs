//! Overlay and BGP visibility on the migration lab: which overlay carries an exact burst
//! (Flannel's port 8472 VNI 1, then Calico's 4789 VNI 4096, by remote node), which CIDRs
//! flow inside it, and the BGP sessions of real BIRD daemons: one OPEN each way per
//! session, a NOTIFICATION and the session going down when BIRD stops (a FIN close), and
//! both ends going down when a firewall tears the session down with a TCP reset.

use std::time::{Duration, Instant};

use cniguard_lab::exposition::Scrape;
use cniguard_lab::lab::{Fault, Lab};
use cniguard_lab::netns::NetNs;
use cniguard_lab::{require_root, traffic};
use cniguard_tests::lab_support::{assert_promtool_accepts, options};
use cniguard_tests::netfilter::nft;

const BURST: u64 = 30;
const PAYLOAD: u64 = 100;
/// Outer Ethernet, IPv4, UDP and VXLAN headers around the inner Ethernet, IPv4, UDP and
/// payload.
const VXLAN_FRAME: u64 = 14 + 20 + 8 + 8 + 14 + 20 + 8 + PAYLOAD;
const NODE_1: &str = "192.168.10.11";
const NODE_2: &str = "192.168.10.12";
const NODE_3: &str = "192.168.20.13";

fn scrapes(lab: &Lab) -> Vec<Scrape> {
    (0..3).map(|node| lab.cniguard(node).scrape().unwrap()).collect()
}

fn vxlan(scrape: &Scrape, metric: &str, direction: &str, port: &str, vni: &str, peer: &str) -> u64 {
    scrape.count(
        metric,
        &[("interface", "eth0"), ("direction", direction), ("port", port), ("vni", vni), ("peer", peer)],
    )
}

fn all_vxlan(scrape: &Scrape) -> u64 {
    scrape.count_sum("cniguard_vxlan_packets_total", &[])
}

/// Sends the burst from client-1 to `to` and waits until every node counted what it saw.
fn burst(lab: &Lab, to: &str) -> (Vec<Scrape>, Vec<Scrape>) {
    let before = scrapes(lab);
    let from_ns = NetNs::existing(&lab.pod_netns_name("client-1").unwrap());
    let to_ns = NetNs::existing(&lab.pod_netns_name(to).unwrap());
    let (from, to) = (lab.pod_address("client-1").unwrap(), lab.pod_address(to).unwrap());
    traffic::udp(&from_ns, from, &to_ns, to, BURST, PAYLOAD).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    (before, scrapes(lab))
}

fn wait(what: &str, condition: impl Fn() -> bool) {
    wait_or(what, condition, String::new);
}

/// Waits for `condition`; on giving up, says `what` and what `state` finds then.
fn wait_or(what: &str, condition: impl Fn() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "{what} {}", state());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn session_up(lab: &Lab, node: usize, peer: &str) -> Option<f64> {
    lab.cniguard(node).scrape().unwrap().value("cniguard_bgp_session_up", &[("peer", peer)])
}

/// Whether BIRD on `node` has its session with the node at `peer` in BGP's Established:
/// both OPENs (and a KEEPALIVE) are through. `cniguard_bgp_session_up` follows the TCP
/// socket, which is established before either side sends its OPEN.
fn bgp_established(lab: &Lab, node: usize, peer: &str) -> bool {
    let Some(name) = lab.topology().nodes.iter().find(|n| n.address.to_string() == peer).map(|n| &n.name)
    else {
        return false;
    };
    let protocol = format!("mesh_{} ", name.replace('-', "_"));
    lab.bird_protocols(node)
        .is_ok_and(|table| table.lines().any(|l| l.starts_with(&protocol) && l.contains("Established")))
}

#[test]
fn overlays_and_bgp_sessions_are_seen_per_node() {
    require_root!();
    let mut lab = Lab::up(options("overlay")).unwrap();
    flannel_carries_the_burst(&mut lab);
    lab.cutover(None).unwrap();
    calico_sessions_open_once(&lab);
    calico_carries_the_burst(&mut lab);
    stopping_bird_is_noticed(&mut lab);
    a_reset_session_goes_down(&lab);
    lab.down();
}

/// Flannel: node-1 to node-3 across the router, in flannel.1's VXLAN.
fn flannel_carries_the_burst(lab: &mut Lab) {
    lab.pause_traffic().unwrap();
    let (before, after) = burst(lab, "sink-3");
    let delta = |node: usize, metric: &str, direction: &str, peer: &str| {
        vxlan(&after[node], metric, direction, "8472", "1", peer)
            - vxlan(&before[node], metric, direction, "8472", "1", peer)
    };
    assert_eq!(delta(0, "cniguard_vxlan_packets_total", "egress", NODE_3), BURST);
    assert_eq!(delta(0, "cniguard_vxlan_bytes_total", "egress", NODE_3), BURST * VXLAN_FRAME);
    assert_eq!(delta(2, "cniguard_vxlan_packets_total", "ingress", NODE_1), BURST);
    assert_eq!(delta(2, "cniguard_vxlan_bytes_total", "ingress", NODE_1), BURST * VXLAN_FRAME);
    for node in 0..3 {
        assert_eq!(
            all_vxlan(&after[node]) - all_vxlan(&before[node]),
            if node == 1 { 0 } else { BURST },
            "node-{}",
            node + 1
        );
    }
    let old = [("src_cidr", "old_pods"), ("dst_cidr", "old_pods")];
    for node in [0, 2] {
        let overlay = |s: &Scrape| {
            s.count("cniguard_overlay_packets_total", &[("device", "flannel.1"), old[0], old[1]])
        };
        assert_eq!(
            overlay(&after[node]) - overlay(&before[node]),
            BURST,
            "node-{} flannel.1 old_pods",
            node + 1
        );
    }
    assert!(after[0].series("cniguard_bgp_messages_total", &[]).next().is_none(), "no BGP under Flannel");
    lab.resume_traffic().unwrap();
}

/// Calico: BIRD meshes every node, one OPEN each way per session, seen by each node alone.
fn calico_sessions_open_once(lab: &Lab) {
    for (node, peer) in [(0, NODE_2), (0, NODE_3), (1, NODE_1), (1, NODE_3), (2, NODE_1), (2, NODE_2)] {
        wait(&format!("node-{} session to {peer}", node + 1), || {
            session_up(lab, node, peer) == Some(1.0) && bgp_established(lab, node, peer)
        });
    }
    for (node, peer) in [(0, NODE_2), (0, NODE_3), (1, NODE_1), (2, NODE_2)] {
        let scrape = lab.cniguard(node).scrape().unwrap();
        for direction in ["ingress", "egress"] {
            let open = scrape.count(
                "cniguard_bgp_messages_total",
                &[("peer", peer), ("direction", direction), ("type", "open")],
            );
            assert_eq!(open, 1, "node-{} {direction} OPEN with {peer}", node + 1);
        }
        let established = scrape
            .count("cniguard_bgp_session_transitions_total", &[("peer", peer), ("state", "established")]);
        assert_eq!(established, 1, "node-{} established once with {peer}", node + 1);
        let age = scrape.value("cniguard_bgp_last_message_age_seconds", &[("peer", peer)]).unwrap();
        assert!(age < 9.0, "node-{}: last message from {peer} {age}s ago, beyond the hold time", node + 1);
    }
    // Each node reports its own sessions only, though one kernel runs all three BIRDs.
    let node_1 = lab.cniguard(0).scrape().unwrap();
    let peers: Vec<&str> =
        node_1.series("cniguard_bgp_session_up", &[]).map(|s| s.labels["peer"].as_str()).collect();
    assert_eq!(peers, vec![NODE_2, NODE_3]);
}

/// Calico: node-1 to node-3 crosses in vxlan.calico, node-1 to node-2 natively.
fn calico_carries_the_burst(lab: &mut Lab) {
    lab.pause_traffic().unwrap();
    let (before, after) = burst(lab, "sink-3");
    let delta = |node: usize, direction: &str, peer: &str| {
        let metric = "cniguard_vxlan_packets_total";
        vxlan(&after[node], metric, direction, "4789", "4096", peer)
            - vxlan(&before[node], metric, direction, "4789", "4096", peer)
    };
    assert_eq!(delta(0, "egress", NODE_3), BURST);
    assert_eq!(delta(2, "ingress", NODE_1), BURST);
    let new = [("src_cidr", "new_pods"), ("dst_cidr", "new_pods")];
    for node in [0, 2] {
        let overlay = |s: &Scrape| {
            s.count("cniguard_overlay_packets_total", &[("device", "vxlan.calico"), new[0], new[1]])
        };
        assert_eq!(
            overlay(&after[node]) - overlay(&before[node]),
            BURST,
            "node-{} vxlan.calico new_pods",
            node + 1
        );
    }
    // Within the subnet Calico routes natively on BGP routes: no VXLAN at all.
    let (before, after) = burst(lab, "sink-2");
    for node in 0..3 {
        assert_eq!(all_vxlan(&after[node]), all_vxlan(&before[node]), "node-{}", node + 1);
    }
    lab.resume_traffic().unwrap();
}

/// BIRD stops on node-2: it says goodbye with a NOTIFICATION, node-1 sees the session go,
/// and come back with a second OPEN each way.
fn stopping_bird_is_noticed(lab: &mut Lab) {
    lab.inject(&Fault::StopBird { node: "node-2".into() }).unwrap();
    wait("session to node-2 down", || session_up(lab, 0, NODE_2) == Some(0.0));
    let scrape = lab.cniguard(0).scrape().unwrap();
    let notifications: Vec<_> =
        scrape.series("cniguard_bgp_notifications_total", &[("peer", NODE_2)]).collect();
    assert_eq!(notifications.len(), 1, "{}", scrape.text);
    assert_eq!(notifications[0].labels["code"], "cease");
    assert_eq!(scrape.count("cniguard_bgp_notifications_total", &[("peer", NODE_2)]), 1);
    assert_eq!(
        scrape.count(
            "cniguard_bgp_messages_total",
            &[("peer", NODE_2), ("direction", "ingress"), ("type", "notification")]
        ),
        1
    );
    assert_eq!(session_up(lab, 0, NODE_3), Some(1.0), "the other session is untouched");
    lab.repair(&Fault::StopBird { node: "node-2".into() }).unwrap();
    wait("session to node-2 back", || session_up(lab, 0, NODE_2) == Some(1.0));
    let scrape = lab.cniguard(0).scrape().unwrap();
    assert_eq!(
        scrape.count(
            "cniguard_bgp_messages_total",
            &[("peer", NODE_2), ("direction", "ingress"), ("type", "open")]
        ),
        2
    );
    // Every family of a node in full use passes Prometheus' own checks.
    assert_promtool_accepts(&scrape.text);
}

/// A firewall on node-1 answers node-2's BGP segments with a TCP reset: node-2's end (the
/// passive one, local port 179) is torn down by the RST that answers its next KEEPALIVE,
/// and node-1's end (the active one) closes when its hold timer expires (its FIN meets the
/// same firewall). Both nodes report the session down; their sessions with node-3 stay up.
fn a_reset_session_goes_down(lab: &Lab) {
    let ruleset = format!(
        "table inet cgt_bgp_reset {{\n  chain input {{\n    type filter hook input priority 0;\n\
         \x20   ip saddr {NODE_2} tcp sport 179 reject with tcp reset\n\
         \x20   ip saddr {NODE_2} tcp dport 179 reject with tcp reset\n  }}\n}}\n"
    );
    nft(&lab.node_netns(0), &ruleset).unwrap();
    let sessions = |node: usize| {
        let sockets = lab.node_netns(node).command("ss").and_then(|mut ss| {
            cniguard_lab::netns::run(ss.args(["-tn", "( sport = :179 or dport = :179 )"]))
        });
        format!(
            "cniguard_bgp_session_up: {:?}; sockets: {sockets:?}",
            session_up(lab, node, [NODE_1, NODE_2][1 - node])
        )
    };
    wait_or(
        "node-2's session to node-1 down after the reset",
        || session_up(lab, 1, NODE_1) == Some(0.0),
        || sessions(1),
    );
    wait_or(
        "node-1's session to node-2 down after the reset",
        || session_up(lab, 0, NODE_2) == Some(0.0),
        || sessions(0),
    );
    assert_eq!(session_up(lab, 1, NODE_1), Some(0.0));
    assert_eq!(session_up(lab, 0, NODE_2), Some(0.0));
    assert_eq!(session_up(lab, 0, NODE_3), Some(1.0), "node-1's other session is untouched");
    assert_eq!(session_up(lab, 1, NODE_3), Some(1.0), "node-2's other session is untouched");
}
