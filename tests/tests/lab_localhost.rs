//! In-pod localhost latency on the migration lab: node-1's cniguard measures the MLServer
//! pod's agent-to-server path and runs the runbook's health check in it; blocking
//! 127.0.0.1:9500 inside the pod shows up as failures and a failing check, and clears
//! after the repair; the pod's series follow it when the cutover re-creates it.

use cniguard_lab::exposition::Scrape;
use cniguard_lab::lab::{Fault, Lab};
use cniguard_lab::require_root;
use cniguard_tests::lab_support::options;

fn label(lab: &Lab) -> String {
    lab.pod_netns_name("mlserver-0").unwrap()
}

fn responses(scrape: &Scrape, netns: &str) -> u64 {
    scrape.count("cniguard_localhost_response_seconds_count", &[("netns", netns), ("port", "9500")])
}

fn check(scrape: &Scrape, netns: &str) -> Option<f64> {
    scrape.value("cniguard_localhost_probe_success", &[("netns", netns), ("port", "9500")])
}

fn timeouts(scrape: &Scrape, netns: &str) -> u64 {
    scrape.count(
        "cniguard_localhost_connect_failures_total",
        &[("netns", netns), ("port", "9500"), ("reason", "timeout")],
    )
}

#[test]
fn the_mlserver_path_is_measured_checked_and_its_failure_seen() {
    require_root!();
    let mut lab = Lab::up(options("localhost")).unwrap();
    let node_1 = lab.cniguard(0);
    let netns = label(&lab);
    let scrape = node_1
        .wait_for("the agent's requests and a passing check", |s| {
            responses(s, &netns) >= 20 && check(s, &netns) == Some(1.0)
        })
        .unwrap();
    // The agent's health checks are answered well under the runbook's 1 ms, mostly.
    let fast = scrape.count(
        "cniguard_localhost_response_seconds_bucket",
        &[("netns", &netns), ("port", "9500"), ("le", "0.001")],
    );
    assert!(fast * 2 >= responses(&scrape, &netns), "{}", scrape.text);
    // Only node-1 watches this pod: the other nodes' scopes do not include it.
    for node in [1, 2] {
        let other = lab.cniguard(node).scrape().unwrap();
        assert_eq!(responses(&other, &netns), 0, "node-{} counted node-1's pod", node + 1);
    }

    let fault = Fault::BlockMlserver;
    lab.inject(&fault).unwrap();
    let blocked = node_1
        .wait_for("a failing check and timeouts", |s| {
            check(s, &netns) == Some(0.0) && timeouts(s, &netns) > 0
        })
        .unwrap();
    let answered = responses(&blocked, &netns);
    lab.repair(&fault).unwrap();
    let repaired = node_1
        .wait_for("the check passes again", |s| {
            check(s, &netns) == Some(1.0) && responses(s, &netns) > answered
        })
        .unwrap();
    assert!(timeouts(&repaired, &netns) >= timeouts(&blocked, &netns));

    // The cutover re-creates the pod in a new namespace: the series follow it.
    lab.cutover(Some("node-1")).unwrap();
    let moved = label(&lab);
    assert_ne!(moved, netns);
    node_1
        .wait_for("the new pod measured, the old one gone", |s| {
            responses(s, &moved) > 0 && check(s, &moved) == Some(1.0) && check(s, &netns).is_none()
        })
        .unwrap();
    lab.down();
}
