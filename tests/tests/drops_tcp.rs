//! Kernel drops and TCP health on the real kernel: exact drop counts by the kernel's own
//! reason names, retransmissions equal to the kernel's own counter, resets sent and
//! received, all attributed to the namespaces in the daemon's scope.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use cniguard_lab::cniguard::Daemon;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::netns::{NetNs, QuietLink};
use cniguard_lab::require_root;
use cniguard_tests::lab_support::assert_promtool_accepts;
use cniguard_tests::netfilter::nft;

fn drops(scrape: &Scrape, labels: &[(&str, &str)]) -> u64 {
    scrape.count_sum("cniguard_drops_total", labels)
}

/// Sends `count` datagrams from `from` to `to`:`port`, without waiting for any answer.
fn spray(from: &NetNs, to: Ipv4Addr, port: u16, count: u64) {
    let socket = from.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
    for _ in 0..count {
        // An ICMP error from an earlier datagram may surface here: it is not ours to count.
        let _ = socket.send_to(&[0x42; 32], (to, port));
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn drops_are_counted_by_the_kernels_reason_in_the_right_namespace() {
    require_root!();
    let link = QuietLink::new("veth-dr0", "veth-dr1").unwrap();
    let daemon = Daemon::start(&link.a, &["--netns-scope", "node"]).unwrap();
    let b = link.b.name().to_owned();

    // nftables drops exactly these datagrams as they arrive in b.
    nft(
        &link.b,
        "table inet cgt_drop {\n chain input { type filter hook input priority 0; udp dport 7777 drop; }\n}\n",
    ).unwrap();
    let dropped: u64 = 25;
    spray(&link.a, link.b_addr, 7777, dropped);
    let netfilter = [
        ("reason", "NETFILTER_DROP"),
        ("interface", "veth-dr1"),
        ("netns", b.as_str()),
        ("protocol", "ipv4"),
    ];
    let scrape = daemon.wait_for("netfilter drops", |s| drops(s, &netfilter) >= dropped).unwrap();
    assert_eq!(drops(&scrape, &netfilter), dropped);
    assert_eq!(drops(&scrape, &[("reason", "NETFILTER_DROP")]), dropped, "{}", scrape.text);

    // b forwards, but has no route for 10.250.0.0/24: the kernel's no-route reason.
    link.b.sysctl("net.ipv4.ip_forward", "1").unwrap();
    link.a.ip(&["route", "add", "10.250.0.0/24", "via", &link.b_addr.to_string()]).unwrap();
    let unroutable: u64 = 7;
    spray(&link.a, Ipv4Addr::new(10, 250, 0, 1), 9, unroutable);
    let no_route = [("reason", "IP_INNOROUTES"), ("netns", b.as_str())];
    let scrape = daemon.wait_for("no-route drops", |s| drops(s, &no_route) >= unroutable).unwrap();
    assert_eq!(drops(&scrape, &no_route), unroutable, "{}", scrape.text);
    assert_promtool_accepts(&scrape.text);
}

/// The kernel's own count of retransmitted segments in `ns` (`/proc/net/snmp`).
fn retrans_segs(ns: &NetNs) -> u64 {
    let snmp = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp")).unwrap();
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let index = names.split_whitespace().position(|n| n == "RetransSegs").unwrap();
    values.split_whitespace().nth(index).unwrap().parse().unwrap()
}

#[test]
fn retransmits_match_the_kernels_counter_and_resets_are_seen_both_ways() {
    require_root!();
    let link = QuietLink::new("veth-tc0", "veth-tc1").unwrap();
    let daemon = Daemon::start(&link.a, &["--netns-scope", "node"]).unwrap();
    let retransmits = |s: &Scrape| s.count_sum("cniguard_tcp_retransmits_total", &[]);
    let before = (retrans_segs(&link.a), retrans_segs(&link.b), retransmits(&daemon.scrape().unwrap()));

    // Lose one in ten segments on their way into b: the sender in a retransmits them. The
    // veth's TSO lets one retransmitted skb carry several segments, as the kernel counts.
    nft(
        &link.b,
        "table inet cgt_loss {\n chain input { type filter hook input priority 0; tcp dport 5201 numgen random mod 100 < 10 drop; }\n}\n",
    ).unwrap();
    let listener = link.b.run(|| TcpListener::bind((link.b_addr, 5201))).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        received.len()
    });
    let mut client = link.a.run(|| TcpStream::connect((link.b_addr, 5201))).unwrap();
    client.write_all(&vec![7; 2_000_000]).unwrap();
    drop(client);
    assert_eq!(server.join().unwrap(), 2_000_000);
    let (in_a, in_b) = (retrans_segs(&link.a) - before.0, retrans_segs(&link.b) - before.1);
    let kernel = in_a + in_b;
    assert!(kernel > 0, "the loss caused retransmissions");
    let counted = match daemon.wait_for("every retransmit counted", |s| retransmits(s) - before.2 >= kernel) {
        Ok(scrape) => retransmits(&scrape),
        Err(_) => retransmits(&daemon.scrape().unwrap()),
    } - before.2;
    assert_eq!(counted, kernel, "cniguard and /proc/net/snmp agree (a {in_a}, b {in_b})");

    // A connect to a port nothing listens on: b sends one reset, a receives it.
    let resets =
        |s: &Scrape, direction: &str| s.count_sum("cniguard_tcp_resets_total", &[("direction", direction)]);
    let before = daemon.scrape().unwrap();
    let refused = link.a.run(|| TcpStream::connect((link.b_addr, 5999)));
    assert!(refused.is_err());
    let scrape =
        daemon.wait_for("the reset", |s| resets(s, "received") > resets(&before, "received")).unwrap();
    assert_eq!(resets(&scrape, "received") - resets(&before, "received"), 1);
    assert_eq!(resets(&scrape, "sent") - resets(&before, "sent"), 1);
}
