//! Every fault the lab can inject does what it says on the running Calico cluster, and its
//! repair brings the cluster back, as seen by the pods' own workloads, BIRD and tc.

use std::time::{Duration, Instant};

use cniguard_lab::lab::{Fault, Lab};
use cniguard_lab::require_root;
use cniguard_tests::lab_support::{AGENT_FAILURES, AGENT_OK, DNS_FAILURES, options, watch};

const WINDOW: u64 = 3;

/// Injects `fault`, then lets requests in flight finish and the workloads' stats (written
/// every 500 ms) catch up, so that the next window only sees the fault.
fn inject(lab: &mut Lab, fault: &Fault) {
    lab.inject(fault).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
}

fn session_established(lab: &Lab, node: usize, peer: &str) -> bool {
    lab.bird_protocols(node).is_ok_and(|table| {
        table.lines().any(|l| l.starts_with(&format!("mesh_{peer} ")) && l.contains("Established"))
    })
}

fn wait(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// After a repair, the next window must be clean: wait until one is.
fn recovered(
    lab: &Lab,
    workloads: &[(&str, &str)],
    clean: impl Fn(&[cniguard_tests::lab_support::Window]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let windows = watch(lab, workloads, WINDOW);
        if clean(&windows) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {}",
            windows.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        );
    }
}

#[test]
fn every_fault_takes_effect_and_its_repair_restores_the_cluster() {
    require_root!();
    let mut lab = Lab::up(options("faults")).unwrap();
    lab.cutover(None).unwrap();
    wait("BGP mesh within the subnet", || session_established(&lab, 0, "node_2"));
    let agent = [("mlserver-0", "agent")];
    let dns = [("client-1", "dns-client")];
    let to_sink3 = [("client-1", "udp-send-sink-3"), ("sink-3", "udp-sink")];
    recovered(&lab, &agent, |w| w[0].delta(AGENT_FAILURES) == 0);
    recovered(&lab, &dns, |w| w[0].delta(DNS_FAILURES) == 0);

    // 127.0.0.1:9500 blocked inside the MLServer pod: not one gRPC call is answered (they
    // time out, and so do the agent's reconnects); its HTTP port, 9000, is not blocked.
    let fault = Fault::BlockMlserver;
    inject(&mut lab, &fault);
    let window = &watch(&lab, &agent, WINDOW)[0];
    assert_eq!(window.delta(&["grpc_ok"]), 0, "{window}");
    assert!(window.delta(&["grpc_failures"]) > 0, "{window}");
    lab.repair(&fault).unwrap();
    recovered(&lab, &agent, |w| w[0].delta(AGENT_FAILURES) == 0 && w[0].delta(AGENT_OK) >= 20);

    // The cluster DNS stops: not one query is answered.
    let fault = Fault::StopDns;
    inject(&mut lab, &fault);
    let window = &watch(&lab, &dns, WINDOW)[0];
    assert_eq!(window.delta(&["noerror", "nxdomain"]), 0, "{window}");
    lab.repair(&fault).unwrap();
    recovered(&lab, &dns, |w| w[0].delta(DNS_FAILURES) == 0 && w[0].delta(&["noerror", "nxdomain"]) >= 8);

    // VXLAN dropped on node-3: nothing from node-1 reaches sink-3 across the router.
    let fault = Fault::BlockVxlan { node: "node-3".into() };
    inject(&mut lab, &fault);
    let windows = watch(&lab, &to_sink3, WINDOW);
    assert!(windows[0].delta(&["sent"]) >= 40, "{}", windows[0]);
    assert_eq!(windows[1].delta(&["received"]), 0, "{}", windows[1]);
    lab.repair(&fault).unwrap();
    recovered(&lab, &to_sink3, |w| w[0].delta(&["sent"]).abs_diff(w[1].delta(&["received"])) <= 1);

    // All of sink-3's packets lost on its veth: the same silence, for a pod.
    let fault = Fault::VethLoss { pod: "sink-3".into(), percent: 100 };
    inject(&mut lab, &fault);
    let windows = watch(&lab, &to_sink3, WINDOW);
    assert_eq!(windows[1].delta(&["received"]), 0, "{}", windows[1]);
    lab.repair(&fault).unwrap();
    recovered(&lab, &to_sink3, |w| w[0].delta(&["sent"]).abs_diff(w[1].delta(&["received"])) <= 1);

    // BIRD stops on node-2: node-1's session to it goes down, and comes back.
    let fault = Fault::StopBird { node: "node-2".into() };
    inject(&mut lab, &fault);
    wait("session to node-2 down", || !session_established(&lab, 0, "node_2"));
    lab.repair(&fault).unwrap();
    wait("session to node-2 back", || session_established(&lab, 0, "node_2"));

    // The MLServer's model answers late (it restarts with the delay): the agent keeps
    // succeeding, only slower (lab_localhost measures how much); 50 ms per call at 10
    // rounds/s (the gRPC streams concurrent, then the HTTP call) still leaves room.
    let fault = Fault::SlowMlserver { ms: 50 };
    inject(&mut lab, &fault);
    let window = &watch(&lab, &agent, WINDOW)[0];
    assert_eq!(window.delta(AGENT_FAILURES), 0, "{window}");
    assert!(window.delta(AGENT_OK) >= 20, "{window}");
    lab.repair(&fault).unwrap();
    recovered(&lab, &agent, |w| w[0].delta(AGENT_FAILURES) == 0 && w[0].delta(AGENT_OK) >= 20);
    assert!(lab.faults().is_empty());
    lab.down();
}
