//! The migration lab end to end: Flannel, the node-by-node cutover to Calico, a fault and
//! its repair, the rollback. At each phase, an exact burst of datagrams between pods must
//! show up on exactly the devices that phase routes it through, on exactly the nodes it
//! crosses, in cniguard's /metrics and in Prometheus.

use std::collections::BTreeSet;

use cniguard_lab::exposition::Scrape;
use cniguard_lab::lab::{Fault, Lab, NodePhase, check_programs};
use cniguard_lab::netns::{NetNs, namespaces_with_prefix};
use cniguard_lab::topology::{Cni, Workload};
use cniguard_lab::workloads::AGENT_STREAMS;
use cniguard_lab::{require_root, traffic};
use cniguard_tests::lab_support::{AGENT_CALLS, AGENT_FAILURES, AGENT_OK, options};

const BURST: u64 = 40;
const PAYLOAD: u64 = 100;

fn scrape(lab: &Lab, node: usize) -> Scrape {
    lab.cniguard(node).scrape().unwrap()
}

fn udp(scrape: &Scrape, interface: &str, direction: &str) -> u64 {
    scrape.count(
        "cniguard_interface_packets_total",
        &[("interface", interface), ("direction", direction), ("protocol", "ipv4_udp")],
    )
}

fn attached(scrape: &Scrape) -> BTreeSet<String> {
    scrape
        .series("cniguard_probe_attached", &[("probe", "iface_stats")])
        .map(|s| s.labels["interface"].clone())
        .collect()
}

/// The CNI devices a node should have in its phase, by name.
fn expected_devices(lab: &Lab, node: usize) -> BTreeSet<String> {
    let topology = lab.topology();
    let mut devices = BTreeSet::new();
    let phase = lab.phase(node);
    if phase != NodePhase::Calico {
        devices.extend(["flannel.1".to_owned(), "cni0".to_owned()]);
    }
    if phase != NodePhase::Flannel {
        devices.insert("vxlan.calico".to_owned());
    }
    for pod in topology.pods.iter().filter(|p| p.node == node) {
        devices.insert(lab.host_side(&pod.name).unwrap().1);
    }
    devices
}

/// Sends an exact burst from pod `from` to pod `to` and returns every node's scrape before
/// and after.
fn burst(lab: &Lab, from: &str, to: &str) -> (Vec<Scrape>, Vec<Scrape>) {
    let nodes = lab.topology().nodes.len();
    let before: Vec<Scrape> = (0..nodes).map(|n| scrape(lab, n)).collect();
    let from_ns = NetNs::existing(&lab.pod_netns_name(from).unwrap());
    let to_ns = NetNs::existing(&lab.pod_netns_name(to).unwrap());
    let (from_addr, to_addr) = (lab.pod_address(from).unwrap(), lab.pod_address(to).unwrap());
    traffic::udp(&from_ns, from_addr, &to_ns, to_addr, BURST, PAYLOAD).unwrap();
    let after: Vec<Scrape> = (0..nodes)
        .map(|n| {
            // Every node must have counted what crossed it before we compare.
            let expected = before[n].count_sum("cniguard_interface_packets_total", &[]);
            lab.cniguard(n)
                .wait_for("counters settle", |s| {
                    s.count_sum("cniguard_interface_packets_total", &[]) >= expected
                })
                .unwrap()
        })
        .collect();
    (before, after)
}

/// Asserts that exactly `hops` (node, device, direction) saw the burst, and no other device
/// on any node counted a single packet more.
fn assert_path((before, after): &(Vec<Scrape>, Vec<Scrape>), hops: &[(usize, &str, &str)]) {
    for node in 0..before.len() {
        for device in attached(&after[node]) {
            for direction in ["ingress", "egress"] {
                let delta = udp(&after[node], &device, direction) - udp(&before[node], &device, direction);
                let expected = if hops.contains(&(node, device.as_str(), direction)) { BURST } else { 0 };
                assert_eq!(
                    delta,
                    expected,
                    "node-{} {device} {direction}: udp packets counted for the burst",
                    node + 1
                );
            }
            let total =
                |s: &Scrape| s.count_sum("cniguard_interface_packets_total", &[("interface", &device)]);
            let expected_total =
                hops.iter().filter(|(n, d, _)| *n == node && *d == device).count() as u64 * BURST;
            // What else crossed it, by direction and protocol, if anything did.
            let breakdown = || {
                let labels = [("interface", device.as_str())];
                let before: Vec<_> =
                    before[node].series("cniguard_interface_packets_total", &labels).collect();
                after[node]
                    .series("cniguard_interface_packets_total", &labels)
                    .filter_map(|s| {
                        let earlier = before.iter().find(|b| b.labels == s.labels).map_or(0.0, |b| b.value);
                        (s.value > earlier).then(|| {
                            format!(
                                "{}/{}: +{}",
                                s.labels["direction"],
                                s.labels["protocol"],
                                s.value - earlier
                            )
                        })
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            assert_eq!(
                total(&after[node]) - total(&before[node]),
                expected_total,
                "node-{} {device}: nothing but the burst ({})",
                node + 1,
                breakdown()
            );
        }
    }
}

fn check_phase(lab: &Lab, phase: NodePhase) {
    for node in 0..lab.topology().nodes.len() {
        assert_eq!(lab.phase(node), phase);
        // Only this node's devices, and all of them: nothing from another node's namespaces.
        let expected = expected_devices(lab, node);
        let settled =
            lab.cniguard(node).wait_for("attachments follow the phase", |s| attached(s) == expected);
        if let Err(err) = settled {
            panic!("node-{}: expected exactly {expected:?}: {err:#}", node + 1);
        }
    }
}

/// Over a few seconds of a settled cluster, the workloads see no failure at all: every
/// inference call to the MLServer and every DNS query is answered. (Right after a cutover
/// some fail, as in the real migration: a moved server is unreachable until BGP has
/// converged.)
fn check_workloads(lab: &Lab) {
    let names = vec!["mlserver-0".to_owned(), "sink-2".to_owned(), "missing".to_owned()];
    let agent = Workload::Agent { rate: 10 };
    let dns = Workload::DnsClient { rate: 4, names };
    let read =
        || (lab.workload_stats("mlserver-0", &agent).unwrap(), lab.workload_stats("client-1", &dns).unwrap());
    // A query in flight when traffic was paused (or sent while routes converged) resolves
    // or times out first: wait out the client's 2 s timeout before the window opens.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (agent_before, dns_before) = read();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (agent_after, dns_after) = read();
    let delta = |before: &serde_json::Value, after: &serde_json::Value, name: &str| {
        let field = |stats: &serde_json::Value| {
            stats[name].as_u64().unwrap_or_else(|| panic!("no {name} in {stats}"))
        };
        field(after) - field(before)
    };
    for failure in AGENT_FAILURES {
        assert_eq!(
            delta(&agent_before, &agent_after, failure),
            0,
            "agent {failure}: {agent_before} -> {agent_after}"
        );
    }
    let sum =
        |fields: &[&str]| fields.iter().map(|field| delta(&agent_before, &agent_after, field)).sum::<u64>();
    let (calls, ok) = (sum(AGENT_CALLS), sum(AGENT_OK));
    assert!(calls >= 20, "the agent keeps its rate: {agent_before} -> {agent_after}");
    // A stats snapshot may be written in the middle of a round: its concurrent gRPC calls
    // made, not yet answered.
    assert!(calls.abs_diff(ok) <= AGENT_STREAMS, "{agent_before} -> {agent_after}");
    for failure in ["servfail", "refused", "other_rcode", "timeouts", "malformed", "socket_errors"] {
        assert_eq!(
            delta(&dns_before, &dns_after, failure),
            0,
            "dns-client {failure}: {dns_before} -> {dns_after}"
        );
    }
    let queries = delta(&dns_before, &dns_after, "queries");
    let answered = delta(&dns_before, &dns_after, "noerror") + delta(&dns_before, &dns_after, "nxdomain");
    assert!(queries >= 8 && queries.abs_diff(answered) <= 1, "{dns_before} -> {dns_after}");
}

/// Under Flannel, a burst from client-1 (node-1) to sink-3 (node-3, across the router)
/// takes the pod's veth, cni0 and flannel.1 on both nodes, and nothing else.
fn assert_flannel_across_subnets(lab: &Lab) {
    let client = lab.host_side("client-1").unwrap().1;
    let sink3 = lab.host_side("sink-3").unwrap().1;
    assert_path(
        &burst(lab, "client-1", "sink-3"),
        &[
            (0, &client, "ingress"),
            (0, "cni0", "ingress"),
            (0, "flannel.1", "egress"),
            (2, "flannel.1", "ingress"),
            (2, "cni0", "egress"),
            (2, &sink3, "egress"),
        ],
    );
}

/// Waits until BIRD on `node` has its session to `peer` established.
fn wait_bgp(lab: &Lab, node: usize, peer: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let table = lab.bird_protocols(node).unwrap();
        if table.lines().any(|l| l.starts_with(&format!("mesh_{peer} ")) && l.contains("Established")) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "node-{}: no session to {peer}:\n{table}", node + 1);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn flannel_to_calico_and_back() {
    require_root!();
    let options = options("story");
    let prefix = options.topology.prefix.clone();
    let mut lab = Lab::up(options.clone()).unwrap();
    // Up again is a no-op on the running lab.
    drop(Lab::up(options).unwrap());

    // Flannel: pods on veth* under cni0, flannel.1 between nodes, across subnets too.
    check_phase(&lab, NodePhase::Flannel);
    let prometheus = lab.prometheus();
    assert!(prometheus.all_targets_up(3));
    lab.pause_traffic().unwrap();
    assert_flannel_across_subnets(&lab);
    let client = lab.host_side("client-1").unwrap().1;
    let sink2 = lab.host_side("sink-2").unwrap().1;
    let within = burst(&lab, "client-1", "sink-2");
    assert_path(
        &within,
        &[
            (0, &client, "ingress"),
            (0, "cni0", "ingress"),
            (0, "flannel.1", "egress"),
            (1, "flannel.1", "ingress"),
            (1, "cni0", "egress"),
            (1, &sink2, "egress"),
        ],
    );
    // Prometheus scrapes the same numbers cniguard serves.
    let served = udp(&within.1[0], "flannel.1", "egress");
    let query = "cniguard_interface_packets_total{node=\"node-1\",interface=\"flannel.1\",direction=\"egress\",protocol=\"ipv4_udp\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while prometheus.scalar(query, None).unwrap() != Some(served as f64) {
        assert!(std::time::Instant::now() < deadline, "Prometheus never saw {served}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    lab.resume_traffic().unwrap();
    check_workloads(&lab);

    // Cutover, node by node, and each step again is a no-op.
    for node in ["node-1", "node-2", "node-3"] {
        lab.cutover(Some(node)).unwrap();
        lab.cutover(Some(node)).unwrap();
    }
    check_phase(&lab, NodePhase::Calico);
    // Calico's node-to-node mesh: BGP sessions within the subnet and across the router.
    wait_bgp(&lab, 0, "node_2");
    wait_bgp(&lab, 1, "node_1");
    wait_bgp(&lab, 2, "node_1");
    assert_eq!(lab.pod_cni("client-1"), Some(Cni::Calico));
    lab.pause_traffic().unwrap();
    let client = lab.host_side("client-1").unwrap().1;
    let sink3 = lab.host_side("sink-3").unwrap().1;
    let sink2 = lab.host_side("sink-2").unwrap().1;
    assert!(client.starts_with("cali") && sink3.starts_with("cali"));
    // Across the router: VXLAN (VXLANCrossSubnet).
    let across = burst(&lab, "client-1", "sink-3");
    assert_path(
        &across,
        &[
            (0, &client, "ingress"),
            (0, "vxlan.calico", "egress"),
            (2, "vxlan.calico", "ingress"),
            (2, &sink3, "egress"),
        ],
    );
    // Within the subnet: routed natively on the BGP route, no overlay.
    let within = burst(&lab, "client-1", "sink-2");
    assert_path(&within, &[(0, &client, "ingress"), (1, &sink2, "egress")]);
    lab.resume_traffic().unwrap();
    // The re-created pods are served again: DNS answers their new addresses.
    check_workloads(&lab);

    // A fault and its repair; both repeatable.
    let fault = Fault::BlockVxlan { node: "node-3".into() };
    lab.inject(&fault).unwrap();
    lab.inject(&fault).unwrap();
    assert_eq!(lab.faults(), std::slice::from_ref(&fault));
    lab.repair(&fault).unwrap();
    lab.repair(&fault).unwrap();
    assert!(lab.faults().is_empty());

    // The runbook's rollback: back to Flannel everywhere.
    lab.rollback(None).unwrap();
    check_phase(&lab, NodePhase::Flannel);
    lab.pause_traffic().unwrap();
    assert_flannel_across_subnets(&lab);
    lab.down();
    assert!(namespaces_with_prefix(&prefix).is_empty(), "down leaves nothing behind");
}

#[test]
fn a_failed_up_leaves_nothing_behind() {
    require_root!();
    let mut options = options("broken");
    // An interface name the kernel refuses (more than 15 characters): up fails midway.
    options.topology.subnets[1].bridge = "a-bridge-name-too-long".into();
    let prefix = options.topology.prefix.clone();
    let state_dir = options.state_dir.clone();
    let error = Lab::up(options).err().expect("up must fail");
    assert!(format!("{error:#}").contains("a-bridge-name-too-long"), "{error:#}");
    assert!(namespaces_with_prefix(&prefix).is_empty(), "a failed up leaves no namespace");
    assert!(!state_dir.exists(), "a failed up leaves no state");
}

#[test]
fn missing_programs_are_named_with_their_package() {
    let dir = std::env::temp_dir().join(format!("cgt-{}-path", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for program in ["ip", "tc", "bridge", "dnsmasq", "prometheus", "nft"] {
        std::fs::write(dir.join(program), "").unwrap();
    }
    let error = check_programs(dir.as_os_str()).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(error.contains("bird (Debian package bird2), birdc (Debian package bird2)"), "{error}");
    assert!(error.contains("cargo xtask setup"), "{error}");
    assert!(!error.contains("dnsmasq"), "{error}");
}
