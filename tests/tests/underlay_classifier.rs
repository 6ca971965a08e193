//! The `underlay` classifiers on crafted packets through BPF_PROG_TEST_RUN: VXLAN on both
//! ports with and without a VLAN tag, VXLAN cut short or without its I flag, BGP segments
//! with one, three, or a partial message of each type, more messages than it walks,
//! unaligned and non-BGP payloads on port 179. Exact map deltas, pass verdict every time.

use std::collections::BTreeMap;

use etherparse::{PacketBuilder, VlanId};
use probe_common::Direction;
use probe_common::counters::PacketCount;
use probe_common::underlay::{
    BgpKey, BgpMessageKind, BgpNotificationEvent, BgpOpen, BgpOpenKey, MAX_BGP_MESSAGES_PER_SEGMENT,
    VxlanKey, VxlanMalformedKey,
};

use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;
use cniguard_tests::test_run::{Classifiers, PASS_THROUGH, TEST_RUN_IFINDEX};

const NODE_1: [u8; 4] = [192, 168, 10, 11];
const NODE_3: [u8; 4] = [192, 168, 20, 13];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// What a packet must add to the maps.
#[derive(Default)]
struct Expect {
    vxlan: Option<(u16, u32)>,
    malformed: Option<u16>,
    bgp: Vec<BgpMessageKind>,
    notification: Option<(u8, u8)>,
}

fn vxlan_header(vni: u32, flags: u8) -> Vec<u8> {
    let vni = vni.to_be_bytes();
    vec![flags, 0, 0, 0, vni[1], vni[2], vni[3], 0]
}

/// A VXLAN packet from node-3 to node-1 (as node-1 receives it) around a small inner frame.
fn vxlan(port: u16, vni: u32, vlan: bool) -> Vec<u8> {
    let mut payload = vxlan_header(vni, 0x08);
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 42, 3, 10], [10, 42, 1, 11], 64)
        .udp(40000, 7000)
        .write(&mut payload, &[0; 16])
        .unwrap();
    udp(port, &payload, vlan)
}

fn udp(port: u16, payload: &[u8], vlan: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    let eth = PacketBuilder::ethernet2(MAC_B, MAC_A);
    if vlan {
        eth.single_vlan(VlanId::try_new(100).unwrap())
            .ipv4(NODE_3, NODE_1, 64)
            .udp(51234, port)
            .write(&mut frame, payload)
            .unwrap();
    } else {
        eth.ipv4(NODE_3, NODE_1, 64).udp(51234, port).write(&mut frame, payload).unwrap();
    }
    frame
}

/// A BGP message of `message_type` with `body` (its length field covers header and body).
fn bgp_message(message_type: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![0xff; 16];
    message.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    message.push(message_type);
    message.extend_from_slice(body);
    message
}

/// A TCP segment from node-3 (port 179) to node-1 carrying `payload`.
fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(NODE_3, NODE_1, 64)
        .tcp(179, 40179, 1, 1024)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

fn open_body() -> Vec<u8> {
    // Version 4, AS 64512, hold time 9, router id, no optional parameters.
    vec![4, 0xfc, 0x00, 0, 9, 192, 168, 20, 13, 0]
}

fn cases() -> Vec<(String, Vec<u8>, Expect)> {
    vxlan_cases().into_iter().chain(bgp_cases()).collect()
}

fn vxlan_cases() -> Vec<(String, Vec<u8>, Expect)> {
    vec![
        (
            "vxlan 8472 vni 1".to_owned(),
            vxlan(8472, 1, false),
            Expect { vxlan: Some((8472, 1)), ..Expect::default() },
        ),
        (
            "vxlan 4789 vni 4096".into(),
            vxlan(4789, 4096, false),
            Expect { vxlan: Some((4789, 4096)), ..Expect::default() },
        ),
        (
            "vlan vxlan 4789".into(),
            vxlan(4789, 4096, true),
            Expect { vxlan: Some((4789, 4096)), ..Expect::default() },
        ),
        (
            "vlan vxlan 8472".into(),
            vxlan(8472, 1, true),
            Expect { vxlan: Some((8472, 1)), ..Expect::default() },
        ),
        (
            "vxlan header cut at 4".into(),
            udp(8472, &vxlan_header(1, 0x08)[..4], false),
            Expect { malformed: Some(8472), ..Expect::default() },
        ),
        (
            "vxlan without payload".into(),
            udp(4789, &[], false),
            Expect { malformed: Some(4789), ..Expect::default() },
        ),
        (
            "vxlan I flag unset".into(),
            udp(4789, &vxlan_header(4096, 0x00), false),
            Expect { malformed: Some(4789), ..Expect::default() },
        ),
        ("dns is not vxlan".into(), udp(53, &[0; 20], false), Expect::default()),
    ]
}

fn bgp_cases() -> Vec<(String, Vec<u8>, Expect)> {
    use BgpMessageKind::*;
    let mut cases = vec![
        (
            "bgp keepalive".into(),
            tcp(&bgp_message(4, &[])),
            Expect { bgp: vec![Keepalive], ..Expect::default() },
        ),
        (
            "bgp open, update, keepalive".into(),
            tcp(&[bgp_message(1, &open_body()), bgp_message(2, &[0, 0, 0, 0]), bgp_message(4, &[])].concat()),
            Expect { bgp: vec![Open, Update, Keepalive], ..Expect::default() },
        ),
        (
            "bgp notification cease".into(),
            tcp(&bgp_message(3, &[6, 2])),
            Expect { bgp: vec![Notification], notification: Some((6, 2)), ..Expect::default() },
        ),
        (
            "bgp route refresh".into(),
            tcp(&bgp_message(5, &[0, 1, 0, 1])),
            Expect { bgp: vec![RouteRefresh], ..Expect::default() },
        ),
        (
            "bgp header cut".into(),
            tcp(&bgp_message(4, &[])[..10]),
            Expect { bgp: vec![Unaligned], ..Expect::default() },
        ),
        ("mid-message bytes".into(), tcp(&[0x12; 40]), Expect { bgp: vec![Unaligned], ..Expect::default() }),
        (
            "http on port 179".into(),
            tcp(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect { bgp: vec![Unaligned], ..Expect::default() },
        ),
        ("bare ack on port 179".into(), tcp(&[]), Expect::default()),
        (
            "length below header".into(),
            tcp(&{
                let mut m = bgp_message(4, &[]);
                m[17] = 5;
                m
            }),
            Expect { bgp: vec![Invalid], ..Expect::default() },
        ),
        (
            "unknown type 9".into(),
            tcp(&bgp_message(9, &[])),
            Expect { bgp: vec![Invalid], ..Expect::default() },
        ),
        (
            "more messages than walked".into(),
            tcp(&bgp_message(4, &[]).repeat(MAX_BGP_MESSAGES_PER_SEGMENT + 3)),
            Expect { bgp: vec![Keepalive; MAX_BGP_MESSAGES_PER_SEGMENT], ..Expect::default() },
        ),
    ];
    // A message of each type whose body continues in the next segment: its header is here,
    // so it counts; the segment that carries the rest starts mid-message: unaligned.
    for (message_type, kind) in [(1, Open), (2, Update), (3, Notification), (4, Keepalive), (5, RouteRefresh)]
    {
        let whole = bgp_message(message_type, &[6, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let notification = (message_type == 3).then_some((6, 4));
        cases.push((
            format!("partial {}", kind.label()),
            tcp(&whole[..23]),
            Expect { bgp: vec![kind], notification, ..Expect::default() },
        ));
        cases.push((
            format!("rest of {}", kind.label()),
            tcp(&whole[23..]),
            Expect { bgp: vec![Unaligned], ..Expect::default() },
        ));
    }
    cases
}

#[test]
fn vxlan_and_bgp_are_counted_exactly_and_every_packet_passes() {
    require_root!();
    let ns = NetNs::new("underlay").unwrap();
    ns.run(|| {
        let mut classifiers = Classifiers::load(&["underlay_ingress", "underlay_egress"]).unwrap();
        classifiers.set_vxlan_ports(&[8472, 4789]).unwrap();
        let mut expected_vxlan: BTreeMap<(u16, u32), PacketCount> = BTreeMap::new();
        let mut expected_malformed: BTreeMap<u16, u64> = BTreeMap::new();
        let mut expected_bgp: BTreeMap<u8, u64> = BTreeMap::new();
        let mut expected_notifications = Vec::new();
        for (name, frame, expect) in cases() {
            let verdict =
                classifiers.run("underlay_ingress", &frame).unwrap_or_else(|err| panic!("{name}: {err:#}"));
            assert_eq!(verdict, PASS_THROUGH, "{name}");
            if let Some(key) = expect.vxlan {
                let count = expected_vxlan.entry(key).or_default();
                count.packets += 1;
                count.bytes += frame.len() as u64;
            }
            if let Some(port) = expect.malformed {
                *expected_malformed.entry(port).or_default() += 1;
            }
            for kind in &expect.bgp {
                *expected_bgp.entry(*kind as u8).or_default() += 1;
            }
            expected_notifications.extend(expect.notification);
            // After every packet, every map holds exactly what the cases so far should have.
            for ((port, vni), expected) in &expected_vxlan {
                let key = VxlanKey {
                    ifindex: TEST_RUN_IFINDEX,
                    peer: NODE_3,
                    vni: *vni,
                    port: *port,
                    direction: Direction::Ingress as u8,
                    _pad: 0,
                };
                assert_eq!(
                    classifiers.packets("VXLAN_STATS", &key).unwrap(),
                    *expected,
                    "{name}: vxlan {port}/{vni}"
                );
            }
            let malformed: Vec<(VxlanMalformedKey, u64)> = classifiers.all_counts("VXLAN_MALFORMED").unwrap();
            let malformed: BTreeMap<u16, u64> = malformed.into_iter().map(|(k, v)| (k.port, v)).collect();
            assert_eq!(malformed, expected_malformed, "{name}: malformed VXLAN");
            let bgp: Vec<(BgpKey, u64)> = classifiers.all_counts("BGP_STATS").unwrap();
            assert!(
                bgp.iter().all(|(k, _)| k.peer == NODE_3 && k.direction == Direction::Ingress as u8),
                "{name}"
            );
            let bgp: BTreeMap<u8, u64> = bgp.into_iter().map(|(k, v)| (k.kind, v)).collect();
            assert_eq!(bgp, expected_bgp, "{name}: BGP messages by kind");
        }
        let notifications: Vec<BgpNotificationEvent> = classifiers.drain("BGP_EVENTS").unwrap();
        let seen: Vec<(u8, u8)> = notifications.iter().map(|n| (n.code, n.subcode)).collect();
        assert_eq!(seen, expected_notifications);
        assert!(notifications.iter().all(|n| n.peer == NODE_3 && n.direction == Direction::Ingress as u8));
    });
}

#[test]
fn egress_counts_the_destination_as_peer() {
    require_root!();
    let ns = NetNs::new("underlay-egress").unwrap();
    ns.run(|| {
        let mut classifiers = Classifiers::load(&["underlay_egress"]).unwrap();
        classifiers.set_vxlan_ports(&[4789]).unwrap();
        let frame = vxlan(4789, 4096, false);
        for _ in 0..3 {
            assert_eq!(classifiers.run("underlay_egress", &frame).unwrap(), PASS_THROUGH);
        }
        // The frame goes from NODE_3 to NODE_1: on egress, the peer is its destination.
        let key = VxlanKey {
            ifindex: TEST_RUN_IFINDEX,
            peer: NODE_1,
            vni: 4096,
            port: 4789,
            direction: Direction::Egress as u8,
            _pad: 0,
        };
        assert_eq!(
            classifiers.packets("VXLAN_STATS", &key).unwrap(),
            PacketCount { packets: 3, bytes: 3 * frame.len() as u64 }
        );
        assert_eq!(
            classifiers
                .count(
                    "BGP_STATS",
                    &BgpKey { peer: NODE_1, direction: Direction::Egress as u8, kind: 4, _pad: [0; 2] }
                )
                .unwrap(),
            0
        );
    });
}

/// With the daemon's socket filter on, a segment that belongs to no socket of the namespace
/// (as every spoofed one) is counted, but under peer 0.0.0.0, leaves no last-seen time,
/// and its NOTIFICATION is reported as not established.
#[test]
fn segments_of_no_socket_share_the_unknown_peer() {
    require_root!();
    let ns = NetNs::new("underlay-filter").unwrap();
    ns.run(|| {
        let mut classifiers = Classifiers::load(&["underlay_ingress"]).unwrap();
        classifiers.set_bgp_filter().unwrap();
        let mut payload = bgp_message(4, &[]);
        payload.extend(bgp_message(3, &[6, 2]));
        let frame = tcp(&payload);
        for _ in 0..3 {
            assert_eq!(classifiers.run("underlay_ingress", &frame).unwrap(), PASS_THROUGH);
        }
        let bgp: Vec<(BgpKey, u64)> = classifiers.all_counts("BGP_STATS").unwrap();
        let bgp: BTreeMap<([u8; 4], u8), u64> = bgp.into_iter().map(|(k, v)| ((k.peer, k.kind), v)).collect();
        assert_eq!(bgp, BTreeMap::from([(([0; 4], 3), 3), (([0; 4], 4), 3)]));
        let last_seen: Vec<([u8; 4], u64)> = classifiers.all_counts("BGP_LAST_SEEN").unwrap();
        assert!(last_seen.is_empty(), "{last_seen:?}");
        let notifications: Vec<BgpNotificationEvent> = classifiers.drain("BGP_EVENTS").unwrap();
        assert_eq!(notifications.len(), 3);
        assert!(
            notifications
                .iter()
                .all(|n| n.peer == NODE_3 && n.established == 0 && (n.code, n.subcode) == (6, 2))
        );
    });
}

/// An OPEN keeps what it says of its sender (identifier, AS, hold time) under its peer and
/// direction, with this node's address on the segment; the latest wins. One cut short
/// before its identifier, or of no socket of this namespace (the filter on), is left out.
#[test]
fn opens_keep_the_senders_identifier_and_the_local_address() {
    require_root!();
    let ns = NetNs::new("underlay-opens").unwrap();
    ns.run(|| {
        let mut classifiers = Classifiers::load(&["underlay_ingress", "underlay_egress"]).unwrap();
        let opens = |classifiers: &Classifiers| -> BTreeMap<([u8; 4], u8), BgpOpen> {
            let all: Vec<(BgpOpenKey, BgpOpen)> = classifiers.all_values("BGP_OPENS").unwrap();
            all.into_iter().map(|(k, v)| ((k.peer, k.direction), v)).collect()
        };
        // Cut short: the header and four bytes of the body, no identifier.
        let short = bgp_message(1, &open_body());
        assert_eq!(classifiers.run("underlay_ingress", &tcp(&short[..23])).unwrap(), PASS_THROUGH);
        assert!(opens(&classifiers).is_empty());
        let mut body = open_body();
        body[5..9].copy_from_slice(&[10, 0, 2, 15]);
        for frame in [tcp(&bgp_message(1, &open_body())), tcp(&bgp_message(1, &body))] {
            assert_eq!(classifiers.run("underlay_ingress", &frame).unwrap(), PASS_THROUGH);
            assert_eq!(classifiers.run("underlay_egress", &frame).unwrap(), PASS_THROUGH);
        }
        let open = |local, identifier| BgpOpen { local, identifier, my_as: 64512, hold_time: 9 };
        // The frame goes from NODE_3 to NODE_1: coming in, NODE_3 is the peer and NODE_1 this
        // node; going out, the other way round.
        assert_eq!(
            opens(&classifiers),
            BTreeMap::from([
                ((NODE_3, Direction::Ingress as u8), open(NODE_1, [10, 0, 2, 15])),
                ((NODE_1, Direction::Egress as u8), open(NODE_3, [10, 0, 2, 15])),
            ])
        );
    });
    let ns = NetNs::new("underlay-opens-filter").unwrap();
    ns.run(|| {
        let mut classifiers = Classifiers::load(&["underlay_ingress"]).unwrap();
        classifiers.set_bgp_filter().unwrap();
        let frame = tcp(&bgp_message(1, &open_body()));
        assert_eq!(classifiers.run("underlay_ingress", &frame).unwrap(), PASS_THROUGH);
        let all: Vec<(BgpOpenKey, BgpOpen)> = classifiers.all_values("BGP_OPENS").unwrap();
        assert!(all.is_empty(), "{all:?}");
    });
}
