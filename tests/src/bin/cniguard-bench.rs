//! `cargo xtask bench`: the per-packet cost of each classifier next to an empty classifier,
//! measured side by side in one run through BPF_PROG_TEST_RUN (the kernel times the runs
//! itself). Prints ratios; asserts nothing.

use std::time::Duration;

use anyhow::Result;
use cniguard_lab::netns::NetNs;
use cniguard_tests::test_run::Classifiers;
use etherparse::{PacketBuilder, VlanId};

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 7;

fn frame(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = Vec::new();
    build(&mut frame);
    frame
}

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
}

/// (program, packet name, packet): each row is timed against `baseline_noop` on the same
/// packet.
fn rows() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let v4 = ([10, 42, 0, 5], [10, 244, 1, 9]);
    let nodes = ([192, 168, 20, 13], [192, 168, 10, 11]);
    let v6 = ([0xfd; 16], [0xfe; 16]);
    let payload = [0_u8; 64];
    let mut truncated = frame(|f| {
        eth()
            .single_vlan(VlanId::try_new(7).unwrap())
            .ipv4(v4.0, v4.1, 64)
            .udp(1, 2)
            .write(f, &payload)
            .unwrap();
    });
    truncated.truncate(30);
    let inner = frame(|f| eth().ipv4(v4.0, v4.1, 64).udp(40000, 7000).write(f, &payload).unwrap());
    let vxlan_payload: Vec<u8> =
        [0x08, 0, 0, 0, 0, 0x10, 0, 0].into_iter().chain(inner.iter().copied()).collect();
    let vxlan =
        frame(|f| eth().ipv4(nodes.0, nodes.1, 64).udp(51234, 4789).write(f, &vxlan_payload).unwrap());
    let keepalive: Vec<u8> = [0xff; 16].into_iter().chain([0, 19, 4]).collect();
    let bgp =
        frame(|f| eth().ipv4(nodes.0, nodes.1, 64).tcp(179, 40179, 1, 1024).write(f, &keepalive).unwrap());
    let plain =
        frame(|f| eth().ipv4(nodes.0, nodes.1, 64).tcp(40000, 443, 1, 1024).write(f, &payload).unwrap());
    vec![
        ("iface_stats_ingress", "ipv4/tcp 64B payload", plain.clone()),
        ("iface_stats_ingress", "ipv4/udp 64B payload", inner.clone()),
        (
            "iface_stats_ingress",
            "ipv6/tcp 64B payload",
            frame(|f| eth().ipv6(v6.0, v6.1, 64).tcp(1, 2, 1, 512).write(f, &payload).unwrap()),
        ),
        ("iface_stats_ingress", "malformed (cut in IP)", truncated),
        ("underlay_ingress", "neither VXLAN nor BGP", plain),
        ("underlay_ingress", "VXLAN 4789", vxlan),
        ("underlay_ingress", "BGP KEEPALIVE", bgp),
        ("overlay_ingress", "inner ipv4/udp", inner),
    ]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the benchmark loads eBPF programs: run it as root");
    let ns = NetNs::new("bench")?;
    ns.run(|| -> Result<()> {
        let mut classifiers = Classifiers::load(&[
            "baseline_noop",
            "iface_stats_ingress",
            "underlay_ingress",
            "overlay_ingress",
        ])?;
        classifiers.set_vxlan_ports(&[8472, 4789])?;
        classifiers.set_cidr_classes(&[([10, 42, 0, 0], 16), ([10, 244, 0, 0], 16), ([10, 96, 0, 0], 12)])?;
        println!("BPF_PROG_TEST_RUN, {REPEAT} runs per measurement, median of {ROUNDS} interleaved rounds");
        println!(
            "{:<20} {:<24} {:>12} {:>12} {:>10} {:>8}",
            "program", "packet", "noop ns/pkt", "probe ns/pkt", "extra ns", "ratio"
        );
        for (program, name, packet) in rows() {
            let (mut noop, mut probe) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                noop.push(classifiers.time("baseline_noop", &packet, REPEAT)?);
                probe.push(classifiers.time(program, &packet, REPEAT)?);
            }
            let (noop, probe) = (median(noop).as_nanos(), median(probe).as_nanos());
            #[allow(clippy::cast_precision_loss, reason = "nanoseconds per packet are small")]
            let ratio = probe as f64 / noop.max(1) as f64;
            println!(
                "{program:<20} {name:<24} {noop:>12} {probe:>12} {:>10} {ratio:>8.2}",
                probe.saturating_sub(noop)
            );
        }
        Ok(())
    })
}
