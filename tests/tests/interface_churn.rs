//! Interfaces that come and go: 50 veth pairs appear and vanish while the daemon runs.
//! Every one is attached and later detached; afterwards nothing of cniguard's is left and
//! the daemon holds exactly the file descriptors it started with.

use cniguard_lab::cniguard::Daemon;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;
use cniguard_tests::tc::{self, Hook};

const PAIRS: usize = 50;

fn attached(scrape: &Scrape) -> usize {
    scrape
        .series("cniguard_probe_attached", &[("probe", "iface_stats")])
        .filter(|s| s.labels["interface"].starts_with("vethc") && s.value > 0.0)
        .count()
}

fn churn(mode: &[&str]) {
    let node = NetNs::new("churn").unwrap();
    let daemon = Daemon::start(&node, mode).unwrap();
    let fds_at_start = daemon.open_fds().unwrap();

    for i in 0..PAIRS {
        node.ip(&[
            "link",
            "add",
            &format!("vethc{i}a"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("vethc{i}b"),
        ])
        .unwrap();
    }
    let scrape = daemon.wait_for("all 100 ends attached", |s| attached(s) == 2 * PAIRS).unwrap();
    assert_eq!(scrape.count_sum("cniguard_probe_attach_errors_total", &[]), 0, "{}", scrape.text);
    for device in ["vethc0a", "vethc49b"] {
        for (hook, function) in [(Hook::Ingress, "iface_stats_ingress"), (Hook::Egress, "iface_stats_egress")]
        {
            assert_eq!(tc::cniguard_copies(&node, device, hook, function).unwrap(), 1, "{device} {hook:?}");
        }
    }

    for i in 0..PAIRS {
        node.ip(&["link", "del", &format!("vethc{i}a")]).unwrap();
    }
    daemon.wait_for("all detached", |s| attached(s) == 0).unwrap();

    // Appear and vanish at once: some are gone before the daemon gets to them. Those are
    // counted as `interface_gone`, never as anything worse, and nothing stays attached.
    for i in 0..PAIRS {
        let name = format!("vethc{i}a");
        node.ip(&["link", "add", &name, "type", "veth", "peer", "name", &format!("vethc{i}b")]).unwrap();
        node.ip(&["link", "del", &name]).unwrap();
    }
    let scrape = daemon.wait_for("rapid churn settled", |s| attached(s) == 0).unwrap();
    let errors = scrape.count_sum("cniguard_probe_attach_errors_total", &[]);
    assert_eq!(
        errors,
        scrape.count_sum("cniguard_probe_attach_errors_total", &[("reason", "interface_gone")]),
        "{}",
        scrape.text
    );
    assert!(
        scrape
            .series("cniguard_interface_packets_total", &[])
            .all(|s| !s.labels["interface"].starts_with("vethc")),
        "series of vanished interfaces remain:\n{}",
        scrape.text
    );

    // Give a detach in flight a moment, then compare: no fd may leak per interface.
    let fds = (0..100)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            daemon.open_fds().unwrap()
        })
        .find(|&fds| fds == fds_at_start);
    assert_eq!(fds, Some(fds_at_start), "the daemon's open fds did not return to {fds_at_start}");
    let links = node.ip(&["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo should remain:\n{links}");
    daemon.stop().unwrap();
}

#[test]
fn fifty_pairs_come_and_go_with_tcx() {
    require_root!();
    churn(&["--tc-attach", "tcx"]);
}

#[test]
fn fifty_pairs_come_and_go_with_netlink() {
    require_root!();
    churn(&["--tc-attach", "netlink"]);
}
