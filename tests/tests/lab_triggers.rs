//! From a fault to a rollback, end to end in the lab on Calico: each injected fault raises
//! its trigger on the nodes it hurts; for the rollback-severity ones, the real Prometheus
//! fires CniguardRollbackRecommended from the shipped rules, the real Alertmanager
//! delivers it with the bearer token to `cniguard rollback-hook`, which runs the stand-in
//! rollback exactly once; after the repair every trigger clears and nothing runs again. A
//! request without the token is refused and runs nothing. `for` and clear times are
//! shortened to seconds by the lab's configuration.

use std::time::{Duration, Instant};

use cniguard_lab::binaries::Binaries;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::lab::{Fault, LAB_CNIGUARD_CONFIG, LAB_JUDGEMENT_CONFIG, Lab};
use cniguard_lab::require_root;
use cniguard_lab::topology::HOOK_ADDRESS;
use cniguard_tests::lab_support::options;

const NODES: [usize; 3] = [0, 1, 2];

fn scrape(lab: &Lab, node: usize) -> Scrape {
    lab.cniguard(node).scrape().unwrap()
}

fn trigger(lab: &Lab, node: usize, name: &str, metric: &str) -> Option<f64> {
    scrape(lab, node).value(metric, &[("trigger", name)])
}

fn active(lab: &Lab, node: usize, name: &str) -> bool {
    trigger(lab, node, name, "cniguard_rollback_trigger_active") == Some(1.0)
}

fn recommended(lab: &Lab, node: usize) -> Option<f64> {
    scrape(lab, node).value("cniguard_rollback_recommended", &[])
}

fn firing_rollback_alerts(lab: &Lab) -> usize {
    lab.prometheus()
        .query("ALERTS{alertname=\"CniguardRollbackRecommended\",alertstate=\"firing\"}", None)
        .map_or(0, |samples| samples.len())
}

/// Waits for `condition`; on timeout, fails with every node's trigger lines and the hook's log.
fn wait(lab: &Lab, what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !condition() {
        if Instant::now() > deadline {
            let mut report = String::new();
            for node in NODES {
                report.push_str(&status(lab, node));
            }
            panic!(
                "timed out waiting for {what}\n{report}\n--- rollback hook ---\n{}",
                lab.rollback_hook_log()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `cniguard status` of a node, run in the node's namespace as an operator would.
fn status(lab: &Lab, node: usize) -> String {
    let endpoint = lab.cniguard(node);
    let output = endpoint
        .netns
        .command(Binaries::beside_test_executable().cniguard)
        .unwrap()
        .args(["status", "--address", &endpoint.address.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "cniguard status: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The status line of one trigger.
fn status_row(lab: &Lab, node: usize, name: &str) -> String {
    status(lab, node).lines().find(|line| line.starts_with(name)).unwrap_or_default().to_owned()
}

#[test]
fn each_fault_raises_its_trigger_and_the_rollback_runs_once() {
    require_root!();
    let mut options = options("triggers");
    options.cniguard_config = format!("{LAB_CNIGUARD_CONFIG}{LAB_JUDGEMENT_CONFIG}");
    let mut lab = Lab::up(options).unwrap();
    lab.cutover(None).unwrap();

    // Healthy: every node's five checks succeed (two peers, the MLServer, the cluster DNS
    // by TCP and by lookup), no rollback recommended anywhere.
    wait(&lab, "every check passing on every node", || {
        NODES.iter().all(|&node| {
            let scrape = scrape(&lab, node);
            let checks: Vec<f64> = scrape.series("cniguard_check_success", &[]).map(|s| s.value).collect();
            checks.len() == 5
                && checks.iter().all(|v| v.total_cmp(&1.0).is_eq())
                && recommended(&lab, node) == Some(0.0)
        })
    });
    assert_eq!(lab.rollback_runs(), 0);

    // The cluster DNS stops: on every node, DNS fails and the critical service is gone.
    lab.inject(&Fault::StopDns).unwrap();
    wait(&lab, "dns_failing and critical_service_unavailable on every node", || {
        NODES.iter().all(|&node| {
            active(&lab, node, "dns_failing")
                && active(&lab, node, "critical_service_unavailable")
                && recommended(&lab, node) == Some(1.0)
        })
    });
    let row = status_row(&lab, 0, "dns_failing");
    assert!(row.contains("rollback") && row.contains("active"), "{row}");
    assert!(status(&lab, 0).contains("ROLLBACK RECOMMENDED"));
    wait(&lab, "Prometheus firing the alert for all three nodes", || firing_rollback_alerts(&lab) == 3);
    wait(&lab, "the hook running the rollback", || lab.rollback_runs() == 1);

    lab.repair(&Fault::StopDns).unwrap();
    wait(&lab, "every trigger clearing", || {
        NODES.iter().all(|&node| {
            !active(&lab, node, "dns_failing")
                && !active(&lab, node, "critical_service_unavailable")
                && recommended(&lab, node) == Some(0.0)
        })
    });
    wait(&lab, "the alert resolving", || firing_rollback_alerts(&lab) == 0);
    wait(&lab, "the hook hearing it resolved", || lab.rollback_hook_log().contains("resolved"));
    assert_eq!(lab.rollback_runs(), 1, "the rollback ran once");

    // Without the token: refused, nothing runs.
    let body = r#"{"alerts":[{"status":"firing","labels":{"alertname":"CniguardRollbackRecommended"},"startsAt":"2020-01-01T00:00:00Z"}]}"#;
    let (code, answer) = lab.rollback_hook_netns().http(HOOK_ADDRESS, "POST", "/webhook", &[], body).unwrap();
    assert_eq!(code, 401, "{answer}");

    // VXLAN blocked on node-3, the node across the router: its pods reach neither peer,
    // and the others lose it. The alert fires again; the hook does not run again.
    let vxlan = Fault::BlockVxlan { node: "node-3".into() };
    lab.inject(&vxlan).unwrap();
    wait(&lab, "connectivity_lost on node-3 for both peers", || {
        trigger(&lab, 2, "connectivity_lost", "cniguard_rollback_trigger_value") == Some(2.0)
            && active(&lab, 2, "connectivity_lost")
    });
    wait(&lab, "connectivity_lost on node-1 and node-2 (node-3 lost)", || {
        [0, 1].iter().all(|&node| {
            active(&lab, node, "connectivity_lost")
                && trigger(&lab, node, "connectivity_lost", "cniguard_rollback_trigger_value") == Some(1.0)
        })
    });
    assert!(status_row(&lab, 2, "connectivity_lost").contains("node-1, node-2"), "{}", status(&lab, 2));
    // Long after the cutover (the lab's restore deadline is 30 s), pod-to-pod from node-3
    // fails outright: "pod-to-pod communication cannot be restored".
    wait(&lab, "pod_to_pod_not_restored on node-3", || active(&lab, 2, "pod_to_pod_not_restored"));
    wait(&lab, "the hook declining a second run", || lab.rollback_hook_log().contains("already ran"));
    lab.repair(&vxlan).unwrap();
    wait(&lab, "connectivity restored everywhere", || {
        NODES.iter().all(|&node| {
            !active(&lab, node, "connectivity_lost")
                && !active(&lab, node, "pod_to_pod_not_restored")
                && recommended(&lab, node) == Some(0.0)
        })
    });

    // The MLServer's model answering 60 ms late: the success criterion on intra-pod
    // latency fails on node-1, its node (the lab's SLO is 50 ms, above the real MLServer's
    // own milliseconds: see LAB_JUDGEMENT_CONFIG). A warning: no rollback is recommended.
    // Before it, a clean run's p99 raises nothing.
    assert!(!active(&lab, 0, "localhost_latency_slo"), "{}", status(&lab, 0));
    let clean = trigger(&lab, 0, "localhost_latency_slo", "cniguard_rollback_trigger_value");
    println!("lab_triggers: a clean run's localhost p99 {clean:?}s");
    let slow = Fault::SlowMlserver { ms: 60 };
    lab.inject(&slow).unwrap();
    wait(&lab, "localhost_latency_slo on node-1", || active(&lab, 0, "localhost_latency_slo"));
    let p99 = trigger(&lab, 0, "localhost_latency_slo", "cniguard_rollback_trigger_value").unwrap();
    assert!(p99 >= 0.06, "p99 {p99}s below the injected 60 ms");
    println!("lab_triggers: localhost p99 {p99}s with 60 ms injected");
    assert_eq!(recommended(&lab, 0), Some(0.0), "a success criterion warns, it does not call for a rollback");
    lab.repair(&slow).unwrap();
    wait(&lab, "localhost_latency_slo clearing", || !active(&lab, 0, "localhost_latency_slo"));

    assert_eq!(lab.rollback_runs(), 1, "nothing ran again");
    lab.down();
}
