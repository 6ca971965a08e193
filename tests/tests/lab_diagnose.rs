//! Findings end to end in the lab on Calico: the clean cutover raises none; each fault the
//! lab can reproduce raises its finding on the node(s) that see it, with its evidence, and
//! no other finding anywhere; its repair clears it. Hold and clear times are the lab's
//! seconds (`LAB_JUDGEMENT_CONFIG`'s `[diagnose]`).
//!
//! The same lab shows the live page in a real browser (headless Chromium in the node's
//! namespace): drawn, with no console error, the phase `calico` after the cutover, and the
//! VXLAN fault's trigger and finding red; and at the end the demo report of the whole run.
//! Screenshots go to `target/browser/`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cniguard::diagnose::{FindingReport, Report};
use cniguard_lab::lab::{
    Fault, LAB_CNIGUARD_CONFIG, LAB_JUDGEMENT_CONFIG, Lab, OLD_API_SERVICE, OLD_CLUSTER_DNS,
    OVERLAPPING_ROUTE, WRONG_ROUTER_ID, WRONG_ROUTER_ID_DEVICE,
};
use cniguard_lab::require_root;
use cniguard_tests::browser::{Browser, screenshot_dir, tag_with, tags_with, text_of};
use cniguard_tests::lab_support::options;

const NODES: [usize; 3] = [0, 1, 2];

/// Every finding on `node`, pending ones included, from `GET /diagnose`.
fn findings(lab: &Lab, node: usize) -> Vec<FindingReport> {
    let endpoint = lab.cniguard(node);
    let (code, body) = endpoint.netns.http_get(endpoint.address, "/diagnose").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Report>(&body).unwrap().findings
}

/// The raised findings of every node, as `(node, finding, subject)`.
fn raised(lab: &Lab) -> BTreeSet<(usize, String, String)> {
    NODES
        .iter()
        .flat_map(|&node| {
            findings(lab, node)
                .into_iter()
                .filter(|f| f.state != "pending")
                .map(move |f| (node, f.finding, f.subject))
        })
        .collect()
}

/// Waits until exactly `expected` is raised across the nodes; on giving up, says what is.
fn wait_for(lab: &Lab, what: &str, expected: &BTreeSet<(usize, String, String)>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = raised(lab);
        if now == *expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: raised {now:?}, expected {expected:?}\n{}",
            diagnose_all(lab)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `cniguard diagnose` on every node, run in its namespace as an operator would.
fn diagnose_all(lab: &Lab) -> String {
    NODES.iter().map(|&node| diagnose(lab, node)).collect()
}

fn diagnose(lab: &Lab, node: usize) -> String {
    lab.diagnose(node).unwrap()
}

fn finding(node: usize, name: &str, subject: &str) -> (usize, String, String) {
    (node, name.to_owned(), subject.to_owned())
}

/// The nodes' underlay addresses.
fn addresses(lab: &Lab) -> [String; 3] {
    NODES.map(|node| lab.topology().nodes[node].address.to_string())
}

/// The finding's report on `node`, raised.
fn report(lab: &Lab, node: usize, name: &str) -> FindingReport {
    findings(lab, node).into_iter().find(|f| f.finding == name && f.state == "raised").unwrap()
}

#[test]
fn each_fault_is_diagnosed_by_name_on_the_nodes_that_see_it_and_clears_on_repair() {
    require_root!();
    let mut options = options("diagnose");
    options.cniguard_config = format!("{LAB_CNIGUARD_CONFIG}{LAB_JUDGEMENT_CONFIG}");
    let mut lab = Lab::up(options).unwrap();
    lab.cutover(None).unwrap();
    let [_, node_2, node_3] = addresses(&lab);
    let none = BTreeSet::new();

    // The cutover is done: once its last window has passed, nothing is raised, and for a
    // while after that nothing is.
    wait_for(&lab, "no finding after the cutover", &none);
    let quiet_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < quiet_until {
        assert_eq!(raised(&lab), none, "a finding on a clean cutover\n{}", diagnose_all(&lab));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(diagnose(&lab, 0).contains("no finding raised"), "{}", diagnose(&lab, 0));
    let page = live_page(&lab, 0, "live-after-cutover");
    assert_eq!(text_of(&page, "phase").map(|p| p.starts_with("calico")), Some(true), "{page}");

    // VXLAN blocked on node-3 (across the router, the only VXLAN peer of the others): the
    // other two send to it and hear nothing back. node-3 itself sends nothing out.
    let fault = Fault::BlockVxlan { node: "node-3".into() };
    lab.inject(&fault).unwrap();
    let one_way = format!("{node_3}:4789");
    wait_for(
        &lab,
        "vxlan_one_way on node-1 and node-2",
        &[finding(0, "vxlan_one_way", &one_way), finding(1, "vxlan_one_way", &one_way)].into(),
    );
    let found = report(&lab, 0, "vxlan_one_way");
    assert_eq!(found.severity, "critical");
    assert!(found.evidence.contains("none came back"), "{}", found.evidence);
    assert!(found.fix.contains("open 4789/udp") && found.fix.contains(&node_3), "{}", found.fix);
    let scrape = lab.cniguard(0).scrape().unwrap();
    assert_eq!(scrape.value("cniguard_finding", &[("finding", "vxlan_one_way")]), Some(1.0));
    assert!(scrape.value("cniguard_finding_evidence", &[("finding", "vxlan_one_way")]).unwrap() >= 5.0);
    assert!(diagnose(&lab, 1).contains("vxlan_one_way"), "{}", diagnose(&lab, 1));
    a_fault_turns_its_trigger_and_finding_red(&lab);
    lab.repair(&fault).unwrap();
    wait_for(&lab, "vxlan_one_way cleared", &none);

    // node-1's firewall answers node-2's BGP with resets: node-1's connections to node-2
    // fail, with no session up. (node-2 is the passive end of that session in the lab's
    // mesh: it opens no connection of its own, so its sockets only show the session gone.)
    // node-3's sessions are untouched.
    let fault = Fault::RejectBgp { node: "node-1".into(), peer: "node-2".into() };
    lab.inject(&fault).unwrap();
    wait_for(&lab, "bgp_blocked on node-1 for node-2", &[finding(0, "bgp_blocked", &node_2)].into());
    let found = report(&lab, 0, "bgp_blocked");
    assert!(found.evidence.contains(&format!("{node_2}:179 failed")), "{}", found.evidence);
    assert!(found.fix.contains("allow TCP 179"), "{}", found.fix);
    lab.repair(&fault).unwrap();
    wait_for(&lab, "bgp_blocked cleared", &none);

    bgp_wrong_as_is_not_established_on_both_ends(&mut lab);
    a_wrong_router_id_is_a_wrong_node_address(&mut lab);
    a_vxlan_source_on_another_interface_is_a_wrong_node_address(&mut lab);
    a_narrower_underlay_is_an_mtu_mismatch(&mut lab);

    // Flannel's flannel.1 left behind on node-2 after its cutover.
    let fault = Fault::FlannelLeftover { node: "node-2".into() };
    lab.inject(&fault).unwrap();
    wait_for(&lab, "flannel_leftovers on node-2", &[finding(1, "flannel_leftovers", "flannel.1")].into());
    assert!(report(&lab, 1, "flannel_leftovers").fix.contains("ip link delete flannel.1"));
    lab.repair(&fault).unwrap();
    wait_for(&lab, "flannel_leftovers cleared", &none);

    // A route of node-1's own network into Calico's pod range.
    let fault = Fault::RouteOverlap { node: "node-1".into() };
    lab.inject(&fault).unwrap();
    let route = format!("{OVERLAPPING_ROUTE} dev eth0");
    wait_for(&lab, "pod_cidr_overlap on node-1", &[finding(0, "pod_cidr_overlap", &route)].into());
    assert!(report(&lab, 0, "pod_cidr_overlap").evidence.contains("new_pods"));
    lab.repair(&fault).unwrap();
    wait_for(&lab, "pod_cidr_overlap cleared", &none);

    // 127.0.0.1:9500 filtered inside the MLServer pod: named on its node, as the pod's
    // problem, not the CNI's.
    let mlserver_node = lab.topology().pod("mlserver-0").map(|pod| pod.node).unwrap();
    let pod = lab.pod_netns_name("mlserver-0").unwrap();
    let fault = Fault::BlockMlserver;
    lab.inject(&fault).unwrap();
    wait_for(
        &lab,
        "localhost_cause on the MLServer's node",
        &[finding(mlserver_node, "localhost_cause", &format!("{pod} port 9500"))].into(),
    );
    let found = report(&lab, mlserver_node, "localhost_cause");
    assert!(found.evidence.contains("not the cutover's fault"), "{}", found.evidence);
    assert!(found.fix.contains("nft list ruleset"), "{}", found.fix);
    lab.repair(&fault).unwrap();
    wait_for(&lab, "localhost_cause cleared", &none);

    // client-3 keeps asking K3s' old cluster DNS, as a pod created before the service range
    // moved does: named on its node, with the pod's interface to recreate.
    let fault = Fault::StaleDns { pod: "client-3".into() };
    lab.inject(&fault).unwrap();
    wait_for(
        &lab,
        "old_service_cidr_in_use on client-3's node",
        &[finding(2, "old_service_cidr_in_use", OLD_CLUSTER_DNS)].into(),
    );
    let found = report(&lab, 2, "old_service_cidr_in_use");
    assert_eq!(found.severity, "critical");
    assert!(
        found.evidence.contains("10.43.0.0/16") && found.evidence.contains("none answered"),
        "{}",
        found.evidence
    );
    let interface = lab.host_side("client-3").unwrap().1;
    assert!(found.fix.contains(&format!("recreate the pods on {interface}")), "{}", found.fix);
    lab.repair(&fault).unwrap();
    wait_for(&lab, "old_service_cidr_in_use cleared", &none);
    stale_service_is_the_old_service_range_in_use(&mut lab);
    a_pod_left_on_its_old_address_is_named(&mut lab);
    the_report_shows_every_node(&lab);
    lab.down();
}

fn bgp_wrong_as_is_not_established_on_both_ends(lab: &mut Lab) {
    let [node_1, node_2, _] = addresses(lab);
    let none = BTreeSet::new();
    // node-1's BIRD expects the wrong AS of node-2: TCP 179 connects, and node-1 refuses
    // node-2's OPEN on every attempt. Both ends' sessions never come up: node-1 sends the
    // NOTIFICATION, node-2 receives it. No firewall in the way: not bgp_blocked.
    let fault = Fault::BgpWrongAs { node: "node-1".into(), peer: "node-2".into() };
    lab.inject(&fault).unwrap();
    wait_for(
        lab,
        "bgp_not_established on node-1 and node-2",
        &[finding(0, "bgp_not_established", &node_2), finding(1, "bgp_not_established", &node_1)].into(),
    );
    let refusing = report(lab, 0, "bgp_not_established");
    let refused = report(lab, 1, "bgp_not_established");
    println!("bgp_not_established:\n{}{}", diagnose(lab, 0), diagnose(lab, 1));
    assert_eq!(refusing.severity, "critical");
    let reason = "open message error / bad peer as (code 2, subcode 2)";
    assert!(
        refusing.evidence.contains(&format!("sent to {node_2}: {reason}, refused by this node")),
        "{}",
        refusing.evidence
    );
    assert!(
        refused.evidence.contains(&format!("received from {node_1}: {reason}, refused by the peer")),
        "{}",
        refused.evidence
    );
    assert!(refusing.fix.contains(&format!("the AS this node expects of {node_2}")), "{}", refusing.fix);
    assert!(refused.fix.contains(&format!("{node_1} expects another AS of this node")), "{}", refused.fix);
    let scrape = lab.cniguard(0).scrape().unwrap();
    let evidence = scrape.value("cniguard_finding_evidence", &[("finding", "bgp_not_established")]).unwrap();
    assert!(evidence >= 2.0, "at least two sessions refused in the window: {evidence}");
    lab.repair(&fault).unwrap();
    wait_for(lab, "bgp_not_established cleared", &none);
}

fn a_wrong_router_id_is_a_wrong_node_address(lab: &mut Lab) {
    let [node_1, node_2, node_3] = addresses(lab);
    let none = BTreeSet::new();
    // node-1 gets a second interface and its BIRD announces that one's address as router
    // id, as Calico's first-found does when it picks the wrong interface. The sessions come
    // up (peers accept any identifier but their own): only node-1's OPENs say it.
    let fault = Fault::WrongRouterId { node: "node-1".into() };
    lab.inject(&fault).unwrap();
    let subject = format!("router id {WRONG_ROUTER_ID}");
    wait_for(lab, "wrong_node_address on node-1", &[finding(0, "wrong_node_address", &subject)].into());
    let found = report(lab, 0, "wrong_node_address");
    println!("wrong_node_address:\n{}", diagnose(lab, 0));
    assert!(
        found.evidence.contains(&format!(
            "OPENs to {node_2}, {node_3} announce the identifier {WRONG_ROUTER_ID} ({WRONG_ROUTER_ID_DEVICE}), but it peers from {node_1} (eth0)"
        )),
        "{}",
        found.evidence
    );
    assert!(
        found.fix.contains("nodeAddressAutodetectionV4") && found.fix.contains("interface: eth0"),
        "{}",
        found.fix
    );
    let scrape = lab.cniguard(0).scrape().unwrap();
    assert_eq!(scrape.value("cniguard_finding_evidence", &[("finding", "wrong_node_address")]), Some(2.0));
    lab.repair(&fault).unwrap();
    wait_for(lab, "wrong_node_address cleared", &none);
}

fn a_vxlan_source_on_another_interface_is_a_wrong_node_address(lab: &mut Lab) {
    let [node_1, _, _] = addresses(lab);
    let none = BTreeSet::new();
    // node-1's vxlan.calico is re-made sending from a second interface's address, as Felix
    // does when first-found picked that interface (with VXLAN and no BGP, the only trace).
    // What it sends gets nowhere, so node-3 (its one VXLAN peer, across the router) sends
    // to node-1 with nothing back: vxlan_one_way there, the consequence, named too.
    let fault = Fault::WrongVxlanAddress { node: "node-1".into() };
    lab.inject(&fault).unwrap();
    let subject = format!("vxlan.calico source {WRONG_ROUTER_ID}");
    wait_for(
        lab,
        "wrong_node_address on node-1, vxlan_one_way to it on node-3",
        &[finding(0, "wrong_node_address", &subject), finding(2, "vxlan_one_way", &format!("{node_1}:4789"))]
            .into(),
    );
    let found = report(lab, 0, "wrong_node_address");
    println!("wrong_node_address (VXLAN):\n{}{}", diagnose(lab, 0), diagnose(lab, 2));
    assert!(
        found.evidence.contains(&format!(
            "vxlan.calico sends from {WRONG_ROUTER_ID} ({WRONG_ROUTER_ID_DEVICE}), but its peers"
        )) && found.evidence.contains(&format!("are reached through {node_1} (eth0)")),
        "{}",
        found.evidence
    );
    assert!(found.fix.contains("interface: eth0"), "{}", found.fix);
    lab.repair(&fault).unwrap();
    wait_for(lab, "wrong_node_address (VXLAN) cleared", &none);
}

fn a_narrower_underlay_is_an_mtu_mismatch(lab: &mut Lab) {
    let none = BTreeSet::new();
    // node-3's underlay link narrows to 1400 while its vxlan.calico keeps 1450: VXLAN's 50
    // bytes no longer fit. Named on node-3 with the MTU to set.
    let fault = Fault::LowUnderlayMtu { node: "node-3".into(), mtu: 1400 };
    lab.inject(&fault).unwrap();
    wait_for(lab, "mtu_mismatch on node-3", &[finding(2, "mtu_mismatch", "vxlan.calico")].into());
    let found = report(lab, 2, "mtu_mismatch");
    println!("mtu_mismatch:\n{}", diagnose(lab, 2));
    assert!(
        found.evidence.starts_with("vxlan.calico has MTU 1450, but its underlay eth0 has 1400"),
        "{}",
        found.evidence
    );
    assert!(
        found.fix.starts_with("set Calico's MTU to 1350 (1400 on eth0 less 50 for VXLAN)"),
        "{}",
        found.fix
    );
    let scrape = lab.cniguard(2).scrape().unwrap();
    assert_eq!(scrape.value("cniguard_finding_evidence", &[("finding", "mtu_mismatch")]), Some(100.0));
    lab.repair(&fault).unwrap();
    wait_for(lab, "mtu_mismatch cleared", &none);
}

fn stale_service_is_the_old_service_range_in_use(lab: &mut Lab) {
    let none = BTreeSet::new();
    // client-1 keeps calling K3s' old API ClusterIP, as a pod whose KUBERNETES_SERVICE_HOST
    // is of before the service range moved: named on client-1's node only (the sockets'
    // events reach every node's cniguard on the lab's one kernel; the routes tell whose
    // pod it is).
    let fault = Fault::StaleService { pod: "client-1".into() };
    lab.inject(&fault).unwrap();
    wait_for(
        lab,
        "old_service_cidr_in_use for the old API address on client-1's node",
        &[finding(0, "old_service_cidr_in_use", OLD_API_SERVICE)].into(),
    );
    let found = report(lab, 0, "old_service_cidr_in_use");
    println!("old_service_cidr_in_use (connections):\n{}", diagnose(lab, 0));
    assert!(
        found.evidence.contains(&format!(
            "connections to {OLD_API_SERVICE} (in the old service range 10.43.0.0/16) failed"
        )) && found.evidence.contains("none established"),
        "{}",
        found.evidence
    );
    let interface = lab.host_side("client-1").unwrap().1;
    assert!(found.fix.contains(&format!("recreate the pods on {interface}")), "{}", found.fix);
    lab.repair(&fault).unwrap();
    wait_for(lab, "old_service_cidr_in_use (connections) cleared", &none);
}

fn a_pod_left_on_its_old_address_is_named(lab: &mut Lab) {
    let none = BTreeSet::new();
    // A copy of client-1 stays on its Flannel address and veth after node-1's cutover, as
    // a pod the playbook never re-created does, sending 20 datagrams a second: named on
    // node-1 only, with its address, its veth and the old range.
    let fault = Fault::OldAddressPod { pod: "client-1".into() };
    let spec = lab.topology().pod("client-1").unwrap().clone();
    let (netns, veth) = (lab.topology().left_behind_netns(&spec), lab.topology().left_behind_veth(&spec));
    let address =
        lab.topology().nodes[spec.node].pod_address(cniguard_lab::topology::Cni::Flannel, spec.host);
    lab.inject(&fault).unwrap();
    let subject = format!("pod {netns}");
    wait_for(lab, "pods_on_old_addresses on node-1", &[finding(0, "pods_on_old_addresses", &subject)].into());
    let found = report(lab, 0, "pods_on_old_addresses");
    println!("pods_on_old_addresses:\n{}", diagnose(lab, 0));
    assert_eq!(found.severity, "critical");
    assert!(
        found.evidence.contains(&format!("still has {address} (in the old pod range 10.42.0.0/16)"))
            && found.evidence.contains(&veth)
            && found.evidence.contains("while the node is on Calico"),
        "{}",
        found.evidence
    );
    assert!(found.fix.contains(&format!("recreate pod {netns}")), "{}", found.fix);
    lab.repair(&fault).unwrap();
    wait_for(lab, "pods_on_old_addresses cleared", &none);
}

/// The live page's charts, each drawn on every node's part of the page.
const CHARTS: [&str; 5] = ["vxlan", "pods", "localhost", "drops", "bgp"];

/// The page in `dom` ran to the end in `mode` with no console error, and every chart of
/// its `nodes` drew.
fn assert_drawn(dom: &str, mode: &str, nodes: usize) {
    let body = tag_with(dom, "data-ready=").unwrap_or_else(|| panic!("the page never got ready:\n{dom}"));
    assert!(
        body.contains("data-ready=\"true\"") && body.contains(&format!("data-mode=\"{mode}\"")),
        "{body}"
    );
    assert!(body.contains("data-errors=\"0\""), "console errors: {:?}", text_of(dom, "errors"));
    for chart in CHARTS {
        let drawn = tags_with(dom, &format!("data-chart=\"{chart}\""));
        assert_eq!(drawn.len(), nodes, "{chart}: {drawn:?}");
        assert!(drawn.iter().all(|tag| tag.contains("data-drawn=\"true\"")), "{chart} not drawn: {drawn:?}");
    }
}

/// What a person sees on `node`'s live page, from a browser on that node; screenshots at a
/// laptop's and a phone's size as `target/browser/<name>-*.png`.
fn live_page(lab: &Lab, node: usize, name: &str) -> String {
    let endpoint = lab.cniguard(node);
    let browser = Browser::new(Some(endpoint.netns.name())).unwrap();
    let url = format!("http://{}/", endpoint.address);
    let dom = browser.dom(&url).unwrap();
    assert_drawn(&dom, "live", 1);
    for (size, device) in [((1280, 800), "desktop"), ((390, 844), "phone")] {
        browser.screenshot(&url, size, &screenshot_dir().join(format!("{name}-{device}.png"))).unwrap();
    }
    dom
}

/// VXLAN blocked on node-3: node-1's `connectivity_lost` trigger goes active and its
/// `vxlan_one_way` finding is raised; its page shows both red.
fn a_fault_turns_its_trigger_and_finding_red(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_mins(1);
    let state = |lab: &Lab| {
        let (_, body) = lab.cniguard(0).get("/status").unwrap();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let triggers = status["triggers"].as_array().cloned().unwrap_or_default();
        let trigger = triggers.into_iter().find(|t| t["trigger"] == "connectivity_lost")?;
        trigger["state"].as_str().map(str::to_owned)
    };
    while state(lab).as_deref() != Some("active") {
        assert!(Instant::now() < deadline, "connectivity_lost never active on node-1: {:?}", state(lab));
        std::thread::sleep(Duration::from_millis(500));
    }
    let page = live_page(lab, 0, "live-vxlan-blocked");
    let trigger = tag_with(&page, "data-trigger=\"connectivity_lost\"").unwrap();
    assert!(trigger.contains("state-active"), "{trigger}");
    let finding = tag_with(&page, "data-finding=\"vxlan_one_way\"").unwrap();
    assert!(finding.contains("severity-critical") && finding.contains("state-raised"), "{finding}");
}

/// The demo's report of this run, opened from its file: every node's charts drawn.
fn the_report_shows_every_node(lab: &Lab) {
    let path = screenshot_dir().join("report.html");
    cniguard_lab::report::write(lab, &path).unwrap();
    let url = format!("file://{}", path.canonicalize().unwrap().display());
    let browser = Browser::new(None).unwrap();
    let dom = browser.dom(&url).unwrap();
    assert_drawn(&dom, "report", NODES.len());
    browser.screenshot(&url, (1280, 2400), &screenshot_dir().join("report.png")).unwrap();
}
