//! In-pod localhost latency on the migration lab, against the real MLServer (HTTP on 9000,
//! gRPC on 9500, as Seldon Core v2 runs it): node-1's cniguard counts the pod's exchanges in
//! the protocol each port speaks (the agent's gRPC calls as `http2`, its keep-alive infers
//! as `http1`), exactly one per call, each at least the model's injected delay, and checks
//! both ports healthy; blocking 127.0.0.1:9500 inside the pod shows up as a failing check
//! and timeouts there, and clears after the repair; the pod's series follow it when the
//! cutover re-creates it.

use std::process::Stdio;
use std::time::Duration;

use cniguard_lab::binaries::Binaries;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::lab::{Fault, Lab};
use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;
use cniguard_tests::lab_support::options;

const GRPC: &str = "9500";
const HTTP: &str = "9000";

fn label(lab: &Lab) -> String {
    lab.pod_netns_name("mlserver-0").unwrap()
}

/// The pod's response samples on `port` in `protocol`: all of them, or those at or under
/// the bucket bound `le`.
fn samples(scrape: &Scrape, netns: &str, port: &str, protocol: &str, le: Option<&str>) -> u64 {
    let mut labels = vec![("netns", netns), ("port", port), ("protocol", protocol)];
    match le {
        Some(le) => {
            labels.push(("le", le));
            scrape.count("cniguard_localhost_response_seconds_bucket", &labels)
        }
        None => scrape.count("cniguard_localhost_response_seconds_count", &labels),
    }
}

/// The port's samples in the protocol it speaks.
fn responses(scrape: &Scrape, netns: &str, port: &str) -> u64 {
    samples(scrape, netns, port, if port == GRPC { "http2" } else { "http1" }, None)
}

/// Connections made to the port.
fn connections(scrape: &Scrape, netns: &str, port: &str) -> u64 {
    scrape.count("cniguard_localhost_connect_seconds_count", &[("netns", netns), ("port", port)])
}

/// Samples less connections, on each port: the health check's rounds, one connection and
/// one exchange each, cancel out, and what is left moves only with calls made on
/// connections kept open (the agents').
fn kept_open(scrape: &Scrape, netns: &str) -> [i128; 2] {
    [GRPC, HTTP]
        .map(|port| i128::from(responses(scrape, netns, port)) - i128::from(connections(scrape, netns, port)))
}

fn check(scrape: &Scrape, netns: &str, port: &str) -> Option<f64> {
    scrape.value("cniguard_localhost_probe_success", &[("netns", netns), ("port", port)])
}

fn healthy(scrape: &Scrape, netns: &str) -> bool {
    check(scrape, netns, GRPC) == Some(1.0) && check(scrape, netns, HTTP) == Some(1.0)
}

fn timeouts(scrape: &Scrape, netns: &str) -> u64 {
    scrape.count(
        "cniguard_localhost_connect_failures_total",
        &[("netns", netns), ("port", GRPC), ("reason", "timeout")],
    )
}

/// The model's injected delay, and the bucket bound under it that no call may fall in.
const DELAY_MS: u32 = 7;
const UNDER_DELAY: &str = "0.005";
const STREAMS: u64 = 5;
const CALLS_PER_STREAM: u64 = 3;
const HTTP_CALLS: u64 = 7;
const ROUNDS: u64 = 3;

/// One run of Seldon's agent stand-in in the MLServer pod, next to the lab's own (paused):
/// `ROUNDS` rounds of `STREAMS` x `CALLS_PER_STREAM` gRPC calls on one new connection and
/// `HTTP_CALLS` keep-alive HTTP calls on another; its stats once it has exited.
fn agent_run(lab: &Lab) -> serde_json::Value {
    let stats = std::env::temp_dir().join(format!("cniguard-lab-localhost-{}.json", std::process::id()));
    let log = std::fs::File::create(stats.with_extension("log")).unwrap();
    let exit = NetNs::existing(&label(lab))
        .command(Binaries::beside_test_executable().workload)
        .unwrap()
        .args(["seldon-agent", "--grpc", "127.0.0.1:9500", "--http", "127.0.0.1:9000", "--skip-setup"])
        .args(["--streams", &STREAMS.to_string(), "--calls", &CALLS_PER_STREAM.to_string()])
        .args(["--http-calls", &HTTP_CALLS.to_string(), "--rounds", &ROUNDS.to_string(), "--rate", "5"])
        .arg("--stats")
        .arg(&stats)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    assert!(exit.success(), "seldon-agent: {exit}");
    let text = std::fs::read_to_string(&stats).unwrap();
    let _ = std::fs::remove_file(&stats);
    let _ = std::fs::remove_file(stats.with_extension("log"));
    serde_json::from_str(&text).unwrap()
}

/// A scrape in which no check is between its connection and its answer: two in a row that
/// agree on [`kept_open`].
fn settled(lab: &Lab, netns: &str) -> Scrape {
    let node_1 = lab.cniguard(0);
    let mut last = node_1.scrape().unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let scrape = node_1.scrape().unwrap();
        if kept_open(&scrape, netns) == kept_open(&last, netns) {
            return scrape;
        }
        last = scrape;
    }
}

#[test]
fn the_mlserver_path_is_measured_checked_and_its_failure_seen() {
    require_root!();
    let started = std::time::Instant::now();
    let mut lab = Lab::up(options("localhost")).unwrap();
    println!("lab_localhost: the lab is up after {:.1}s", started.elapsed().as_secs_f64());
    let node_1 = lab.cniguard(0);
    let netns = label(&lab);
    let scrape = node_1
        .wait_for("the agent's calls on both ports and passing checks", |s| {
            responses(s, &netns, GRPC) >= 21 && responses(s, &netns, HTTP) >= 7 && healthy(s, &netns)
        })
        .unwrap();
    // Each port in its own protocol only: gRPC on 9500 is HTTP/2, 9000 HTTP/1.1.
    for (port, other) in [(GRPC, "http1"), (GRPC, "other"), (HTTP, "http2"), (HTTP, "other")] {
        assert_eq!(samples(&scrape, &netns, port, other, None), 0, "{port} {other}:\n{}", scrape.text);
    }
    // Only node-1 watches this pod: the other nodes' scopes do not include it.
    for node in [1, 2] {
        let other = lab.cniguard(node).scrape().unwrap();
        assert_eq!(responses(&other, &netns, GRPC) + responses(&other, &netns, HTTP), 0, "node-{}", node + 1);
    }

    // The model answers 7 ms late (MLServer restarts with it). With the lab's agent paused,
    // every call of an agent run is one sample in its protocol, and none is under 5 ms.
    let fault = Fault::SlowMlserver { ms: DELAY_MS };
    lab.inject(&fault).unwrap();
    lab.pause_traffic().unwrap();
    let before = settled(&lab, &netns);
    let run = agent_run(&lab);
    let (grpc_calls, http_calls) = (STREAMS * CALLS_PER_STREAM * ROUNDS, HTTP_CALLS * ROUNDS);
    for (field, expected) in [
        ("grpc_calls", grpc_calls),
        ("grpc_ok", grpc_calls),
        ("grpc_connections_opened", 1),
        ("http_calls", http_calls),
        ("http_ok", http_calls),
        ("http_connections_opened", 1),
    ] {
        assert_eq!(run[field].as_u64(), Some(expected), "{field}: {run}");
    }
    // The run's own connections count once each, its calls once each.
    let [grpc_before, http_before] = kept_open(&before, &netns);
    let expected = [grpc_before + i128::from(grpc_calls) - 1, http_before + i128::from(http_calls) - 1];
    let after =
        node_1.wait_for("every call of the run counted once", |s| kept_open(s, &netns) == expected).unwrap();
    for (port, protocol, calls) in [(GRPC, "http2", grpc_calls), (HTTP, "http1", http_calls)] {
        let delta = |count: fn(&Scrape, &str, &str) -> u64| {
            count(&after, &netns, port) - count(&before, &netns, port)
        };
        println!(
            "lab_localhost: port {port}: {calls} calls of the run, {} {protocol} samples and {} connections meanwhile",
            delta(responses),
            delta(connections)
        );
        let above = |s: &Scrape| {
            samples(s, &netns, port, protocol, None) - samples(s, &netns, port, protocol, Some(UNDER_DELAY))
        };
        assert!(above(&after) - above(&before) >= calls, "{port}: {calls} calls:\n{}", after.text);
    }
    // Nothing beyond the walk's bounds, and no stream failed. (MLServer's restart for the
    // delay said GOAWAY to the connections it had, before `before`.)
    for metric in ["cniguard_localhost_unmeasured_total", "cniguard_localhost_stream_failures_total"] {
        assert_eq!(after.count_sum(metric, &[]), before.count_sum(metric, &[]), "{metric}:\n{}", after.text);
    }
    lab.resume_traffic().unwrap();
    lab.repair(&fault).unwrap();

    // 127.0.0.1:9500 blocked inside the pod: its check fails on timeouts, 9000's passes.
    let fault = Fault::BlockMlserver;
    lab.inject(&fault).unwrap();
    let blocked = node_1
        .wait_for("a failing check on 9500 and timeouts", |s| {
            check(s, &netns, GRPC) == Some(0.0)
                && timeouts(s, &netns) > 0
                && check(s, &netns, HTTP) == Some(1.0)
        })
        .unwrap();
    let answered = responses(&blocked, &netns, GRPC);
    lab.repair(&fault).unwrap();
    let repaired = node_1
        .wait_for("the check passes again", |s| healthy(s, &netns) && responses(s, &netns, GRPC) > answered)
        .unwrap();
    assert!(timeouts(&repaired, &netns) >= timeouts(&blocked, &netns));

    // The cutover re-creates the pod in a new namespace: the series follow it.
    lab.cutover(Some("node-1")).unwrap();
    let moved = label(&lab);
    assert_ne!(moved, netns);
    node_1
        .wait_for("the new pod measured, the old one gone", |s| {
            responses(s, &moved, GRPC) > 0
                && responses(s, &moved, HTTP) > 0
                && healthy(s, &moved)
                && check(s, &netns, GRPC).is_none()
                && check(s, &netns, HTTP).is_none()
        })
        .unwrap();
    lab.down();
}
