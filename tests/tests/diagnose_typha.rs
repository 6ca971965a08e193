//! `typha_unreachable` on the real kernel: the lab runs no Calico Typha, so a namespace
//! pair stands in. The node's connections to the peer's TCP 5473 are refused (nothing
//! listens): the finding is raised with the exact count of failures in its window; a
//! Typha that answers clears it. Hold and clear times are seconds here.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cniguard::diagnose::Report;
use cniguard_lab::cniguard::Daemon;
use cniguard_lab::netns::QuietLink;
use cniguard_lab::require_root;

const TYPHA_PORT: u16 = 5473;
const REFUSED: u64 = 5;
const CONFIG: &str = "[diagnose]\nevaluate_seconds = 1\nwindow_seconds = 30\nfor_seconds = 2\nclear_seconds = 2\nmin_attempts = 3\n";

fn typha(daemon: &Daemon) -> Option<cniguard::diagnose::FindingReport> {
    let (code, body) = daemon.get("/diagnose").unwrap();
    assert_eq!(code, 200, "{body}");
    let report: Report = serde_json::from_str(&body).unwrap();
    report.findings.into_iter().find(|f| f.finding == "typha_unreachable")
}

fn wait(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_mins(1);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn refused_typha_connections_are_diagnosed_and_an_answering_typha_clears_it() {
    require_root!();
    let link = QuietLink::new("veth-ty0", "veth-ty1").unwrap();
    let config = std::env::temp_dir().join(format!("cgt-{}-typha.toml", std::process::id()));
    std::fs::write(&config, CONFIG).unwrap();
    let daemon =
        Daemon::start(&link.a, &["--netns-scope", "node", "--config", config.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&config);

    // Five refused connects, well inside one window.
    for _ in 0..REFUSED {
        assert!(
            link.a.run(|| TcpStream::connect((link.b_addr, TYPHA_PORT))).is_err(),
            "something listens on 5473"
        );
    }
    // The kernel's view first: every connect seen failing.
    let scrape = daemon
        .wait_for("the refused connects counted", |s| {
            s.value("cniguard_tcp_connections_total", &[("port", "5473"), ("result", "failed")])
                == Some(REFUSED as f64)
        })
        .unwrap();
    assert_eq!(
        scrape.value("cniguard_tcp_connections_total", &[("port", "5473"), ("result", "established")]),
        None
    );
    wait("typha_unreachable raised", || typha(&daemon).is_some_and(|f| f.state == "raised"));
    let found = typha(&daemon).unwrap();
    assert_eq!(found.severity, "critical");
    assert!(
        found.evidence.starts_with(&format!("{REFUSED} connections to Typha (TCP 5473) failed")),
        "{}",
        found.evidence
    );
    assert!(found.fix.contains("allow TCP 5473"), "{}", found.fix);
    let scrape = daemon.scrape().unwrap();
    assert_eq!(scrape.value("cniguard_finding", &[("finding", "typha_unreachable")]), Some(1.0));
    assert_eq!(
        scrape.value("cniguard_finding_evidence", &[("finding", "typha_unreachable")]),
        Some(REFUSED as f64)
    );
    assert_eq!(scrape.value("cniguard_finding", &[("finding", "bgp_blocked")]), Some(0.0), "nothing else");

    // Typha answers: one established connection in the window clears it.
    let listener = link.b.run(|| TcpListener::bind((link.b_addr, TYPHA_PORT))).unwrap();
    let _connected = link.a.run(|| TcpStream::connect((link.b_addr, TYPHA_PORT))).unwrap();
    let _accepted = listener.accept().unwrap();
    wait("typha_unreachable cleared", || typha(&daemon).is_none());
}
