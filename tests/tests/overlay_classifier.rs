//! The `overlay` classifiers on crafted inner frames through BPF_PROG_TEST_RUN: each IPv4
//! packet is counted once under the configured CIDRs of its source and destination (the
//! longest prefix wins), everything else under `other`, non-IPv4 not at all.

use std::collections::BTreeMap;

use etherparse::PacketBuilder;
use probe_common::counters::PacketCount;
use probe_common::overlay::{OTHER_CIDR, OverlayKey};

use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;
use cniguard_tests::test_run::{Classifiers, PASS_THROUGH, TEST_RUN_IFINDEX};

/// (source class, destination class).
type Classes = (u8, u8);

const OLD_PODS: u8 = 0;
const NEW_PODS: u8 = 1;
const SERVICES: u8 = 2;
const NODE_1_BLOCK: u8 = 3;

fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(1, 2)
        .write(&mut frame, &[0; 32])
        .unwrap();
    frame
}

#[test]
fn inner_packets_are_counted_by_the_cidrs_of_their_ends() {
    require_root!();
    let ns = NetNs::new("overlay").unwrap();
    ns.run(|| {
        let mut classifiers = Classifiers::load(&["overlay_ingress", "overlay_egress"]).unwrap();
        classifiers
            .set_cidr_classes(&[
                ([10, 42, 0, 0], 16),
                ([10, 244, 0, 0], 16),
                ([10, 96, 0, 0], 12),
                ([10, 244, 1, 0], 26),
            ])
            .unwrap();
        let mut ipv6 = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(1, 2)
            .write(&mut ipv6, &[0; 8])
            .unwrap();
        let cases: Vec<(&str, Vec<u8>, Option<Classes>)> = vec![
            ("old pod to old pod", ipv4([10, 42, 1, 11], [10, 42, 3, 10]), Some((OLD_PODS, OLD_PODS))),
            ("new pod to service", ipv4([10, 244, 2, 10], [10, 96, 0, 10]), Some((NEW_PODS, SERVICES))),
            ("longest prefix wins", ipv4([10, 244, 1, 10], [10, 244, 3, 10]), Some((NODE_1_BLOCK, NEW_PODS))),
            ("outside every cidr", ipv4([8, 8, 8, 8], [10, 42, 1, 11]), Some((OTHER_CIDR, OLD_PODS))),
            (
                "services /12 upper end",
                ipv4([10, 111, 255, 1], [192, 168, 1, 1]),
                Some((SERVICES, OTHER_CIDR)),
            ),
            ("ipv6 is not classified", ipv6, None),
            (
                "arp is not classified",
                vec![0xff; 12].into_iter().chain([0x08, 0x06]).chain([0; 28]).collect(),
                None,
            ),
        ];
        let mut expected: BTreeMap<(u8, u8), PacketCount> = BTreeMap::new();
        for (round, program) in ["overlay_ingress", "overlay_egress"].into_iter().enumerate() {
            for (name, frame, classes) in &cases {
                assert_eq!(classifiers.run(program, frame).unwrap(), PASS_THROUGH, "{program} {name}");
                if let Some(classes) = classes {
                    let count = expected.entry(*classes).or_default();
                    count.packets += 1;
                    count.bytes += frame.len() as u64;
                }
                for ((src_class, dst_class), count) in &expected {
                    let key = OverlayKey {
                        ifindex: TEST_RUN_IFINDEX,
                        src_class: *src_class,
                        dst_class: *dst_class,
                        _pad: [0; 2],
                    };
                    assert_eq!(
                        classifiers.overlay_counts().unwrap().get(&key),
                        Some(count),
                        "{program} {name}"
                    );
                }
            }
            // Both hooks count into the same entries: a packet crosses the device one way.
            let per_round: u64 = expected.values().map(|c| c.packets).sum();
            assert_eq!(per_round, 5 * (round as u64 + 1));
        }
    });
}

/// Two VXLAN devices whose ifindexes share a block (`ifindex % OVERLAY_DEVICE_SLOTS`): the
/// first to count holds it, the second counts in the overflow map, and each device's
/// counts come out exactly, neither in the other's series.
#[test]
fn devices_sharing_a_block_are_counted_apart() {
    require_root!();
    let ns = NetNs::new("overlay-share").unwrap();
    // lo is 1; three veth pairs take 2..=7, so 2 and 6 share block 2.
    for pair in 0..3 {
        ns.ip(&[
            "link",
            "add",
            &format!("ovs{pair}a"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("ovs{pair}b"),
        ])
        .unwrap();
    }
    let (first, second) = (2_u32, 2 + probe_common::overlay::OVERLAY_DEVICE_SLOTS);
    ns.run(|| {
        let mut classifiers = Classifiers::load(&["overlay_ingress"]).unwrap();
        classifiers.set_cidr_classes(&[([10, 42, 0, 0], 16), ([10, 244, 0, 0], 16)]).unwrap();
        let frame = ipv4([10, 42, 0, 5], [10, 244, 1, 9]);
        for (ifindex, packets) in [(first, 3_u64), (second, 5)] {
            for _ in 0..packets {
                assert_eq!(classifiers.run_on("overlay_ingress", &frame, ifindex).unwrap(), PASS_THROUGH);
            }
        }
        let counts = classifiers.overlay_counts().unwrap();
        let key = |ifindex| OverlayKey { ifindex, src_class: OLD_PODS, dst_class: NEW_PODS, _pad: [0; 2] };
        let count = |packets: u64| PacketCount { packets, bytes: packets * frame.len() as u64 };
        assert_eq!(counts.get(&key(first)), Some(&count(3)), "{counts:?}");
        assert_eq!(counts.get(&key(second)), Some(&count(5)), "{counts:?}");
        assert_eq!(counts.len(), 2, "{counts:?}");
        let overflow = classifiers.packets("OVERLAY_STATS", &key(second)).unwrap();
        assert_eq!(overflow, count(5), "the second device counts in the overflow map");
    });
}
