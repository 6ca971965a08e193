//! The whole chain on the real kernel: `cniguard run` in a namespace attaches to its veth,
//! counts exactly the traffic sent across it, and serves it on /metrics.

use cniguard_lab::cniguard::Daemon;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::netns::QuietLink;
use cniguard_lab::{require_root, traffic};
use cniguard_tests::lab_support::assert_promtool_accepts;

const PACKETS: &str = "cniguard_interface_packets_total";
const BYTES: &str = "cniguard_interface_bytes_total";
/// Ethernet + IPv4 + UDP headers.
const UDP_OVERHEAD: u64 = 14 + 20 + 8;
/// Ethernet + IPv4 + TCP headers without options.
const TCP_OVERHEAD: u64 = 14 + 20 + 20;
/// The MSS option, the only option left on SYN and SYN-ACK with timestamps, SACK and window
/// scaling turned off.
const MSS_OPTION: u64 = 4;

const SENT: u64 = 37;
const RECEIVED: u64 = 23;
const PAYLOAD: u64 = 300;
const TCP_BYTES: u64 = 1_000_000;

fn count(scrape: &Scrape, metric: &str, device: &str, direction: &str, protocol: &str) -> u64 {
    scrape.count(metric, &[("interface", device), ("direction", direction), ("protocol", protocol)])
}

#[test]
fn udp_and_tcp_are_counted_exactly_and_match_the_kernel_counters() {
    require_root!();
    let link = QuietLink::new("veth-cg0", "veth-cg1").unwrap();
    // Fixed-size TCP headers, so frame bytes follow from payload and segment counts.
    for key in ["net.ipv4.tcp_timestamps", "net.ipv4.tcp_sack", "net.ipv4.tcp_window_scaling"] {
        link.a.sysctl(key, "0").unwrap();
        link.b.sysctl(key, "0").unwrap();
    }
    let daemon = Daemon::start(&link.a, &[]).unwrap();
    let before = link.a.link_stats(&link.a_dev).unwrap();
    daemon
        .wait_for("veth-cg0 attached", |s| {
            s.value("cniguard_probe_attached", &[("interface", "veth-cg0"), ("probe", "iface_stats")])
                == Some(1.0)
        })
        .unwrap();

    traffic::udp(&link.a, link.a_addr, &link.b, link.b_addr, SENT, PAYLOAD).unwrap();
    traffic::udp(&link.b, link.b_addr, &link.a, link.a_addr, RECEIVED, PAYLOAD).unwrap();
    traffic::tcp(&link.a, &link.b, link.b_addr, TCP_BYTES).unwrap();

    let kernel = link.a.link_stats(&link.a_dev).unwrap() - before;
    let scrape = daemon
        .wait_for("counters caught up with the kernel's", |s| {
            s.count_sum(PACKETS, &[("interface", "veth-cg0")]) == kernel.rx_packets + kernel.tx_packets
        })
        .unwrap();
    let get = |metric, direction, protocol| count(&scrape, metric, "veth-cg0", direction, protocol);

    // UDP: exactly the datagrams sent each way, each a frame of payload plus headers.
    assert_eq!(get(PACKETS, "egress", "ipv4_udp"), SENT);
    assert_eq!(get(BYTES, "egress", "ipv4_udp"), SENT * (PAYLOAD + UDP_OVERHEAD));
    assert_eq!(get(PACKETS, "ingress", "ipv4_udp"), RECEIVED);
    assert_eq!(get(BYTES, "ingress", "ipv4_udp"), RECEIVED * (PAYLOAD + UDP_OVERHEAD));

    // TCP: however the stack segmented the stream, every byte sent is in the egress frames,
    // with fixed headers around it (and the MSS option on the SYN); the answers carry none.
    let tcp_out = get(PACKETS, "egress", "ipv4_tcp");
    let tcp_in = get(PACKETS, "ingress", "ipv4_tcp");
    assert!(tcp_out >= 3 && tcp_in >= 3, "a handshake and a close each way: {tcp_out} out, {tcp_in} in");
    assert_eq!(get(BYTES, "egress", "ipv4_tcp"), TCP_BYTES + tcp_out * TCP_OVERHEAD + MSS_OPTION);
    assert_eq!(get(BYTES, "ingress", "ipv4_tcp"), tcp_in * TCP_OVERHEAD + MSS_OPTION);

    // Nothing else crossed the quiet link, and the kernel agrees to the packet and byte.
    let total =
        |metric, direction| scrape.count_sum(metric, &[("interface", "veth-cg0"), ("direction", direction)]);
    assert_eq!(total(PACKETS, "egress"), SENT + tcp_out);
    assert_eq!(total(PACKETS, "ingress"), RECEIVED + tcp_in);
    assert_eq!(total(PACKETS, "egress"), kernel.tx_packets);
    assert_eq!(total(BYTES, "egress"), kernel.tx_bytes);
    assert_eq!(total(PACKETS, "ingress"), kernel.rx_packets);
    assert_eq!(total(BYTES, "ingress"), kernel.rx_bytes);
    assert_eq!(scrape.value("cniguard_map_full_total", &[("map", "iface_stats")]), Some(0.0));
}

#[test]
fn endpoints_and_exposition_are_valid() {
    require_root!();
    let link = QuietLink::new("veth-cg0", "veth-cg1").unwrap();
    let daemon = Daemon::start(&link.a, &[]).unwrap();
    traffic::udp(&link.a, link.a_addr, &link.b, link.b_addr, 5, 10).unwrap();
    let scrape =
        daemon.wait_for("udp counted", |s| s.count_sum(PACKETS, &[("protocol", "ipv4_udp")]) == 5).unwrap();

    assert_eq!(daemon.get("/healthz").unwrap().0, 200);
    assert_eq!(daemon.get("/readyz").unwrap().0, 200);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        scrape.value(
            "cniguard_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("kernel", kernel.trim())]
        ),
        Some(1.0)
    );

    assert_promtool_accepts(&scrape.text);
}
