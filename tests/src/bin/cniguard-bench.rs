//! `cargo xtask bench`: the per-packet cost of cniguard's classifiers next to an empty
//! classifier, measured side by side in one run through BPF_PROG_TEST_RUN (the kernel times
//! the runs itself). Prints ratios; asserts nothing.

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

fn packets() -> Vec<(&'static str, Vec<u8>)> {
    let eth = || PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let v4 = ([10, 42, 0, 5], [10, 244, 1, 9]);
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
    vec![
        (
            "ipv4/tcp 64B payload",
            frame(|f| eth().ipv4(v4.0, v4.1, 64).tcp(40000, 9500, 1, 512).write(f, &payload).unwrap()),
        ),
        (
            "ipv4/udp 64B payload",
            frame(|f| eth().ipv4(v4.0, v4.1, 64).udp(8472, 8472).write(f, &payload).unwrap()),
        ),
        (
            "ipv6/tcp 64B payload",
            frame(|f| eth().ipv6(v6.0, v6.1, 64).tcp(40000, 9500, 1, 512).write(f, &payload).unwrap()),
        ),
        (
            "vlan ipv4/udp",
            frame(|f| {
                eth()
                    .single_vlan(VlanId::try_new(7).unwrap())
                    .ipv4(v4.0, v4.1, 64)
                    .udp(53, 53)
                    .write(f, &payload)
                    .unwrap();
            }),
        ),
        ("malformed (cut in IP)", truncated),
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
        let mut classifiers = Classifiers::load(&["baseline_noop", "iface_stats_ingress"])?;
        println!("BPF_PROG_TEST_RUN, {REPEAT} runs per measurement, median of {ROUNDS} interleaved rounds");
        println!(
            "{:<24} {:>12} {:>16} {:>10} {:>8}",
            "packet", "noop ns/pkt", "iface_stats ns/pkt", "extra ns", "ratio"
        );
        for (name, packet) in packets() {
            let (mut noop, mut probe) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                noop.push(classifiers.time("baseline_noop", &packet, REPEAT)?);
                probe.push(classifiers.time("iface_stats_ingress", &packet, REPEAT)?);
            }
            let (noop, probe) = (median(noop).as_nanos(), median(probe).as_nanos());
            #[allow(clippy::cast_precision_loss, reason = "nanoseconds per packet are small")]
            let ratio = probe as f64 / noop.max(1) as f64;
            println!("{name:<24} {noop:>12} {probe:>16} {:>10} {ratio:>8.2}", probe.saturating_sub(noop));
        }
        Ok(())
    })
}
