//! cniguard shares the tc hooks with other tools: a foreign filter survives its start,
//! restart, crash and SIGTERM; a restart never stacks a second copy of its programs; what
//! it added it removes, and nothing else.

use cniguard_lab::cniguard::Daemon;
use cniguard_lab::netns::QuietLink;
use cniguard_lab::{require_root, traffic};
use cniguard_tests::tc::{self, Hook};

const DEVICE: &str = "veth-co0";

fn foreign_filter(link: &QuietLink) -> Vec<String> {
    tc::filters(&link.a, DEVICE, Hook::Ingress)
        .unwrap()
        .into_iter()
        .filter(|line| line.contains(" u32 ") && line.contains("flowid"))
        .collect()
}

fn copies(link: &QuietLink) -> (usize, usize) {
    (
        tc::cniguard_copies(&link.a, DEVICE, Hook::Ingress, "iface_stats_ingress").unwrap(),
        tc::cniguard_copies(&link.a, DEVICE, Hook::Egress, "iface_stats_egress").unwrap(),
    )
}

fn start(link: &QuietLink, mode: &[&str]) -> Daemon {
    let daemon = Daemon::start(&link.a, mode).unwrap();
    daemon
        .wait_for("attached", |s| {
            s.value("cniguard_probe_attached", &[("interface", DEVICE), ("probe", "iface_stats")])
                == Some(1.0)
        })
        .unwrap();
    daemon
}

fn foreign_filter_survives(mode: &[&str]) {
    let link = QuietLink::new(DEVICE, "veth-co1").unwrap();
    link.a.tc(&["qdisc", "add", "dev", DEVICE, "clsact"]).unwrap();
    link.a
        .tc(&[
            "filter", "add", "dev", DEVICE, "ingress", "prio", "9", "protocol", "all", "u32", "match", "u32",
            "0", "0", "classid", "ffff:1",
        ])
        .unwrap();
    let foreign = foreign_filter(&link);
    assert_eq!(foreign.len(), 1);

    let daemon = start(&link, mode);
    assert_eq!(copies(&link), (1, 1));
    traffic::udp(&link.b, link.b_addr, &link.a, link.a_addr, 7, 64).unwrap();
    daemon
        .wait_for("counted next to the foreign filter", |s| {
            s.value(
                "cniguard_interface_packets_total",
                &[("interface", DEVICE), ("direction", "ingress"), ("protocol", "ipv4_udp")],
            ) == Some(7.0)
        })
        .unwrap();
    assert!(daemon.stop().unwrap().success());
    assert_eq!(copies(&link), (0, 0), "SIGTERM leaves none of cniguard's programs");
    assert_eq!(foreign_filter(&link), foreign, "SIGTERM keeps the foreign filter");
    assert!(tc::has_clsact(&link.a, DEVICE).unwrap(), "the clsact qdisc was not cniguard's to remove");

    // A crash leaves whatever the kernel keeps; the next start must not add a second copy.
    start(&link, mode).kill().unwrap();
    let daemon = start(&link, mode);
    assert_eq!(copies(&link), (1, 1), "restart after SIGKILL stacked a copy");
    assert_eq!(foreign_filter(&link), foreign);
    assert!(daemon.stop().unwrap().success());
    assert_eq!(copies(&link), (0, 0));
    assert_eq!(foreign_filter(&link), foreign);
    assert!(tc::has_clsact(&link.a, DEVICE).unwrap());
}

#[test]
fn foreign_filter_survives_with_tcx() {
    require_root!();
    foreign_filter_survives(&["--tc-attach", "tcx"]);
}

#[test]
fn foreign_filter_survives_with_netlink() {
    require_root!();
    foreign_filter_survives(&["--tc-attach", "netlink"]);
}

#[test]
fn clsact_added_by_cniguard_goes_with_it() {
    require_root!();
    let link = QuietLink::new(DEVICE, "veth-co1").unwrap();
    assert!(!tc::has_clsact(&link.a, DEVICE).unwrap());
    let daemon = start(&link, &["--tc-attach", "netlink"]);
    assert!(tc::has_clsact(&link.a, DEVICE).unwrap());
    assert!(daemon.stop().unwrap().success());
    assert!(!tc::has_clsact(&link.a, DEVICE).unwrap(), "cniguard added the clsact qdisc, so it removes it");
    assert!(tc::filters(&link.a, DEVICE, Hook::Ingress).unwrap().is_empty());
}
