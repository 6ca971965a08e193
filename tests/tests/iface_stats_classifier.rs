//! The `iface_stats` classifiers on crafted packets through BPF_PROG_TEST_RUN: every
//! protocol class, VLAN tags, IPv4 options, and malformed frames of every kind. Each run
//! must return the pass-through verdict and move exactly one counter by exactly one packet.

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, IpHeaders, IpNumber, Ipv4Extensions,
    Ipv4Header, Ipv6Header, PacketBuilder, VlanId,
};
use probe_common::Direction;
use probe_common::iface_stats::{IfaceCounters, ProtocolClass};

use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;
use cniguard_tests::test_run::{Classifiers, PASS_THROUGH, TEST_RUN_IFINDEX};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const V4_SRC: [u8; 4] = [10, 42, 1, 5];
const V4_DST: [u8; 4] = [10, 244, 2, 7];
const V6_SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const PAYLOAD: &[u8] = b"cniguard test payload";

/// A crafted frame, what it must be counted as, and where its headers end (the places to
/// cut it for the truncation cases).
struct Case {
    name: String,
    frame: Vec<u8>,
    class: ProtocolClass,
    header_ends: Vec<usize>,
}

fn case(name: &str, frame: Vec<u8>, class: ProtocolClass, header_ends: &[usize]) -> Case {
    Case { name: name.to_owned(), frame, class, header_ends: header_ends.to_vec() }
}

impl Case {
    /// BPF_PROG_TEST_RUN itself refuses (EINVAL) to build an skb whose untagged IPv4 or IPv6
    /// header is incomplete, so such a frame never reaches the program here. The same cuts
    /// inside a VLAN-tagged frame, which the kernel does accept, show the program's handling.
    fn kernel_refuses(&self) -> bool {
        let minimum_ip_header = match self.frame.get(12..14) {
            Some([0x08, 0x00]) => 20,
            Some([0x86, 0xdd]) => 40,
            _ => return false,
        };
        self.frame.len() < 14 + minimum_ip_header
    }
}

fn build(builder: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = Vec::new();
    builder(&mut frame);
    frame
}

fn eth() -> etherparse::PacketBuilderStep<Ethernet2Header> {
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
}

/// An Ethernet frame around a raw IPv4 header and payload (for what the builder won't make).
fn raw_ipv4(header: &Ipv4Header, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    Ethernet2Header { source: SRC_MAC, destination: DST_MAC, ether_type: EtherType::IPV4 }
        .write(&mut frame)
        .unwrap();
    header.write(&mut frame).unwrap();
    frame.extend_from_slice(payload);
    frame
}

fn raw_ipv6(header: &Ipv6Header, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    Ethernet2Header { source: SRC_MAC, destination: DST_MAC, ether_type: EtherType::IPV6 }
        .write(&mut frame)
        .unwrap();
    header.write(&mut frame).unwrap();
    frame.extend_from_slice(payload);
    frame
}

/// Frames the packet builder does not make: raw headers, odd ethertypes, padding.
fn unusual_frames() -> Vec<Case> {
    use ProtocolClass::*;
    let mut options = Ipv4Header::new(0, 64, IpNumber::UDP, V4_SRC, V4_DST).unwrap();
    options.options = [1_u8, 1, 1, 0].into(); // NOP NOP NOP EOL: a 24-byte header
    let mut gre = Ipv4Header::new(4, 64, IpNumber::GRE, V4_SRC, V4_DST).unwrap();
    gre.header_checksum = gre.calc_header_checksum();
    let mut later_fragment = Ipv4Header::new(8, 64, IpNumber::TCP, V4_SRC, V4_DST).unwrap();
    later_fragment.fragment_offset = 185.try_into().unwrap();
    let no_next = Ipv6Header {
        payload_length: 4,
        next_header: IpNumber::IPV6_NO_NEXT_HEADER,
        hop_limit: 64,
        source: V6_SRC,
        destination: V6_DST,
        ..Ipv6Header::default()
    };
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &SRC_MAC,
        &V4_SRC,
        &[0; 6],
        &V4_DST,
    )
    .unwrap();
    // A minimum-size Ethernet frame: the IP total length is shorter than the frame.
    let mut padded = build(|f| eth().ipv4(V4_SRC, V4_DST, 64).udp(5353, 53).write(f, b"q").unwrap());
    padded.resize(60, 0);
    let other_ethertype = |ether_type: u16, rest: &[u8]| {
        let mut frame = Vec::new();
        Ethernet2Header { source: SRC_MAC, destination: DST_MAC, ether_type: EtherType(ether_type) }
            .write(&mut frame)
            .unwrap();
        frame.extend_from_slice(rest);
        frame
    };
    let qinq: Vec<u8> = [0, 42, 0x81, 0x00, 0, 7, 0x08, 0x00].into_iter().chain([0x45; 20]).collect();
    vec![
        case("ipv4 gre", raw_ipv4(&gre, &[0; 4]), Ipv4Other, &[14, 34]),
        case("ipv6 no next header", raw_ipv6(&no_next, &[0; 4]), Ipv6Other, &[14, 54]),
        case("arp", build(|f| eth().arp(arp).write(f).unwrap()), Arp, &[14]),
        case(
            "ipv4 options udp",
            build(|f| {
                eth()
                    .ip(IpHeaders::Ipv4(options, Ipv4Extensions::default()))
                    .udp(179, 179)
                    .write(f, PAYLOAD)
                    .unwrap();
            }),
            Ipv4Udp,
            &[14, 34, 38, 46],
        ),
        case("ipv4 later fragment of tcp", raw_ipv4(&later_fragment, &[0; 8]), Ipv4Tcp, &[14, 34]),
        case("ethernet padding", padded, Ipv4Udp, &[]),
        case("lldp", other_ethertype(0x88cc, &[0; 32]), Other, &[]),
        case("qinq", other_ethertype(0x88a8, &qinq), Other, &[]),
    ]
}

fn well_formed() -> Vec<Case> {
    use ProtocolClass::*;
    let tcp = |b: etherparse::PacketBuilderStep<IpHeaders>| b.tcp(40000, 9500, 1, 512);
    let ipv4 = || eth().ipv4(V4_SRC, V4_DST, 64);
    let ipv6 = || eth().ipv6(V6_SRC, V6_DST, 64);
    let vlan = || eth().single_vlan(VlanId::try_new(42).unwrap());
    let mut cases = vec![
        case("ipv4 tcp", build(|f| tcp(ipv4()).write(f, PAYLOAD).unwrap()), Ipv4Tcp, &[14, 34, 54]),
        case(
            "ipv4 udp",
            build(|f| ipv4().udp(8472, 8472).write(f, PAYLOAD).unwrap()),
            Ipv4Udp,
            &[14, 34, 42],
        ),
        case(
            "ipv4 icmp",
            build(|f| ipv4().icmpv4_echo_request(1, 1).write(f, PAYLOAD).unwrap()),
            Ipv4Icmp,
            &[14, 34],
        ),
        case("ipv6 tcp", build(|f| tcp(ipv6()).write(f, PAYLOAD).unwrap()), Ipv6Tcp, &[14, 54, 74]),
        case(
            "ipv6 udp",
            build(|f| ipv6().udp(4789, 4789).write(f, PAYLOAD).unwrap()),
            Ipv6Udp,
            &[14, 54, 62],
        ),
        case(
            "ipv6 icmp",
            build(|f| ipv6().icmpv6_echo_request(1, 1).write(f, PAYLOAD).unwrap()),
            Ipv6Icmp,
            &[14, 54],
        ),
        case(
            "vlan ipv4 udp",
            build(|f| vlan().ipv4(V4_SRC, V4_DST, 64).udp(53, 53).write(f, PAYLOAD).unwrap()),
            Ipv4Udp,
            &[14, 18, 38, 46],
        ),
        case(
            "vlan ipv6 tcp",
            build(|f| tcp(vlan().ipv6(V6_SRC, V6_DST, 64)).write(f, PAYLOAD).unwrap()),
            Ipv6Tcp,
            &[14, 18, 58, 78],
        ),
    ];
    cases.extend(unusual_frames());
    cases
}

/// Frames whose headers lie about themselves: counted as `malformed`, never misread.
fn lying_headers() -> Vec<Case> {
    let udp = build(|f| eth().ipv4(V4_SRC, V4_DST, 64).udp(53, 53).write(f, PAYLOAD).unwrap());
    let tcp = build(|f| eth().ipv4(V4_SRC, V4_DST, 64).tcp(1, 2, 3, 4).write(f, PAYLOAD).unwrap());
    let v6 = build(|f| eth().ipv6(V6_SRC, V6_DST, 64).udp(53, 53).write(f, PAYLOAD).unwrap());
    let edit = |frame: &Vec<u8>, at: usize, bytes: &[u8]| {
        let mut frame = frame.clone();
        frame[at..at + bytes.len()].copy_from_slice(bytes);
        frame
    };
    let total = u16::try_from(udp.len() - 14).unwrap();
    let m = ProtocolClass::Malformed;
    vec![
        case("ipv4 ihl 4", edit(&udp, 14, &[0x44]), m, &[]),
        case("ipv4 ihl 0", edit(&udp, 14, &[0x40]), m, &[]),
        case("ipv4 ihl beyond frame", edit(&udp, 14, &[0x4f]), m, &[]),
        case("ipv4 version 6", edit(&udp, 14, &[0x65]), m, &[]),
        case("ipv4 total length beyond frame", edit(&udp, 16, &(total + 1).to_be_bytes()), m, &[]),
        case("ipv4 total length below header", edit(&udp, 16, &10_u16.to_be_bytes()), m, &[]),
        case("udp length below 8", edit(&udp, 38, &3_u16.to_be_bytes()), m, &[]),
        case("udp length beyond ip payload", edit(&udp, 38, &(total - 19).to_be_bytes()), m, &[]),
        case("tcp data offset 4", edit(&tcp, 46, &[0x40]), m, &[]),
        case("tcp data offset beyond frame", edit(&tcp, 46, &[0xf0]), m, &[]),
        case("ipv6 version 4", edit(&v6, 14, &[0x40]), m, &[]),
        case("ipv6 payload length beyond frame", edit(&v6, 18, &500_u16.to_be_bytes()), m, &[]),
    ]
}

/// Every well-formed frame cut at each of its header boundaries, and in the middle of each
/// header: always `malformed`.
fn truncated() -> Vec<Case> {
    let mut cases = Vec::new();
    for whole in well_formed() {
        let mut cuts: Vec<usize> = whole.header_ends.clone();
        cuts.extend(whole.header_ends.windows(2).map(|w| usize::midpoint(w[0], w[1])));
        for cut in cuts.into_iter().filter(|&cut| cut < whole.frame.len()) {
            cases.push(Case {
                name: format!("{} cut at {cut}", whole.name),
                frame: whole.frame[..cut].to_vec(),
                class: ProtocolClass::Malformed,
                header_ends: Vec::new(),
            });
        }
    }
    cases
}

/// Runs `case` through `program` and checks the verdict and the exact counter change.
fn check(classifiers: &mut Classifiers, program: &str, direction: Direction, case: &Case) {
    let before = classifiers.iface_counters(TEST_RUN_IFINDEX, direction).unwrap();
    if case.kernel_refuses() {
        let err = classifiers.run(program, &case.frame).expect_err(&case.name);
        let errno = err.chain().find_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error());
        assert_eq!(errno, Some(libc::EINVAL), "{}: {err:#}", case.name);
        assert_eq!(classifiers.iface_counters(TEST_RUN_IFINDEX, direction).unwrap(), before, "{}", case.name);
        return;
    }
    let verdict = classifiers
        .run(program, &case.frame)
        .unwrap_or_else(|err| panic!("{program} on {}: {err:#}", case.name));
    assert_eq!(verdict, PASS_THROUGH, "{program} on {}: verdict", case.name);
    let after = classifiers.iface_counters(TEST_RUN_IFINDEX, direction).unwrap();
    let mut expected = before;
    let slot = &mut expected.by_class[case.class as usize];
    slot.packets += 1;
    slot.bytes += case.frame.len() as u64;
    assert_eq!(
        after,
        expected,
        "{program} on {} ({} bytes): expected one {} packet",
        case.name,
        case.frame.len(),
        case.class.label()
    );
}

#[test]
fn every_frame_is_counted_once_in_its_class_and_passed() {
    require_root!();
    let ns = NetNs::new("testrun").unwrap();
    ns.run(|| {
        let mut classifiers = Classifiers::load(&["iface_stats_ingress", "iface_stats_egress"]).unwrap();
        let cases: Vec<Case> = well_formed().into_iter().chain(lying_headers()).chain(truncated()).collect();
        assert!(cases.len() > 60, "the truncation table was generated: {} cases", cases.len());
        for case in &cases {
            check(&mut classifiers, "iface_stats_ingress", Direction::Ingress, case);
            check(&mut classifiers, "iface_stats_egress", Direction::Egress, case);
        }
        // Both directions saw the same frames, and nothing else was counted anywhere.
        let ingress = classifiers.iface_counters(TEST_RUN_IFINDEX, Direction::Ingress).unwrap();
        let egress = classifiers.iface_counters(TEST_RUN_IFINDEX, Direction::Egress).unwrap();
        assert_eq!(ingress, egress);
        let delivered: Vec<&Case> = cases.iter().filter(|c| !c.kernel_refuses()).collect();
        let total: u64 = ingress.by_class.iter().map(|c| c.packets).sum();
        assert_eq!(total, delivered.len() as u64);
        for class in ProtocolClass::ALL {
            let expected = delivered.iter().filter(|c| c.class == class).count() as u64;
            assert_eq!(ingress.by_class[class as usize].packets, expected, "{}", class.label());
        }
        // Truncated IP headers did reach the program, through the VLAN-tagged frames.
        assert!(delivered.iter().any(|c| c.name == "vlan ipv4 udp cut at 28"));
        assert!(delivered.iter().any(|c| c.name == "vlan ipv6 tcp cut at 38"));
        assert_eq!(IfaceCounters::default().by_class.len(), ProtocolClass::COUNT);
    });
}
