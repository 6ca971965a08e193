//! The localhost probe's exchange walk on crafted loopback segments through
//! BPF_PROG_TEST_RUN (the `cgroup_skb` egress program, which sees both directions of a
//! loopback connection): the HTTP/2 preface, frames and frame headers split across
//! segments, a segment with many frames and one with more than the walk reads, more open
//! streams than the bound, control frames, RST_STREAM and GOAWAY with their codes, a
//! retransmission and a gap, garbage on the port, and HTTP/1.1 pipelined and interim
//! answers, and connections first seen already open (cniguard started after them): HTTP/2
//! picked up mid-frame, opaque bytes timed turn by turn once the search gives up, HTTP/1.1
//! picked up mid-body. Exact counts for each connection, from fresh maps.

use std::collections::BTreeMap;

use aya::maps::{HashMap, PerCpuHashMap};
use aya::programs::{CgroupSkb, TestRun as _, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use cniguard_tests::http2::{
    DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE, RST_STREAM, SETTINGS, WINDOW_UPDATE, frame,
};
use etherparse::PacketBuilder;
use probe_common::counters::Histogram;
use probe_common::localhost::{
    FailureKey, FailureReason, HTTP2_ERROR_CODES, LatencyKey, LatencyKind, MAX_FRAMES_PER_SEGMENT,
    MAX_OPEN_STREAMS, MAX_SEARCH_FRAMES, MIDWAY_SEARCH_SEGMENTS, Protocol,
};

const PORT: u16 = 9500;
const CLIENT_PORT: u16 = 40_000;
const CLIENT_ISN: u32 = 1_000;
const SERVER_ISN: u32 = 7_000_000;
/// The namespace the programs are told the test's packets come from.
const NETNS: u64 = 4_026_531_840;

fn headers(stream: u32) -> Vec<u8> {
    frame(HEADERS, END_HEADERS, stream, &[0x82, 0x86, 0x84])
}

fn data(stream: u32, length: usize) -> Vec<u8> {
    frame(DATA, END_STREAM, stream, &vec![0; length])
}

fn frames(all: &[Vec<u8>]) -> Vec<u8> {
    all.concat()
}

/// cniguard's object with `localhost_egress` loaded, watching [`PORT`] in every namespace.
struct Walk {
    ebpf: Ebpf,
    client_seq: u32,
    server_seq: u32,
}

impl Walk {
    fn new() -> Self {
        let (silent, every_namespace) = (0_u8, 1_u8);
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &silent, true)
            .override_global("COUNT_EVERY_NAMESPACE", &every_namespace, true)
            .load(cniguard::node::ebpf::OBJECT)
            .unwrap();
        let mut ports: HashMap<_, u16, u8> =
            HashMap::try_from(ebpf.map_mut("LOCALHOST_PORTS").unwrap()).unwrap();
        ports.insert(PORT, 1, 0).unwrap();
        let mut cookies: HashMap<_, u64, u64> =
            HashMap::try_from(ebpf.map_mut("NETNS_BY_COOKIE").unwrap()).unwrap();
        // The programs get the cookie of the test's own namespace for its packets.
        let cookie = cniguard::node::namespaces::own_cookie().unwrap();
        cookies.insert(cookie, NETNS, 0).unwrap();
        let program: &mut CgroupSkb = ebpf.program_mut("localhost_egress").unwrap().try_into().unwrap();
        program.load().unwrap();
        Self { ebpf, client_seq: CLIENT_ISN + 1, server_seq: SERVER_ISN + 1 }
    }

    /// A connection's handshake, as the walk first sees it.
    fn connected() -> Self {
        let mut walk = Self::new();
        walk.segment(true, CLIENT_ISN, 0x02, &[]);
        walk.segment(false, SERVER_ISN, 0x12, &[]);
        walk
    }

    /// An HTTP/2 connection: handshake, preface and both sides' SETTINGS.
    fn http2() -> Self {
        let mut walk = Self::connected();
        walk.client(&[PREFACE.to_vec(), frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])].concat());
        walk.server(&frames(&[frame(SETTINGS, 0, 0, &[]), frame(SETTINGS, 0x1, 0, &[])]));
        walk.client(&frame(SETTINGS, 0x1, 0, &[]));
        walk
    }

    fn segment(&mut self, from_client: bool, seq: u32, flags: u8, payload: &[u8]) {
        let (source, destination) = if from_client { (CLIENT_PORT, PORT) } else { (PORT, CLIENT_PORT) };
        let mut tcp = PacketBuilder::ethernet2([0; 6], [0; 6]).ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64).tcp(
            source,
            destination,
            seq,
            65_535,
        );
        if flags & 0x02 != 0 {
            tcp = tcp.syn();
        }
        if flags & 0x10 != 0 {
            tcp = tcp.ack(1);
        }
        let mut packet = Vec::new();
        tcp.write(&mut packet, payload).unwrap();
        let program: &mut CgroupSkb = self.ebpf.program_mut("localhost_egress").unwrap().try_into().unwrap();
        let result = program.test_run(TestRunOptions { data_in: Some(&packet), ..TestRunOptions::default() });
        assert_eq!(result.unwrap().return_value, 1, "cgroup_skb lets every packet through");
    }

    /// The client's next bytes in one segment.
    fn client(&mut self, payload: &[u8]) {
        self.next(true, payload);
    }

    fn server(&mut self, payload: &[u8]) {
        self.next(false, payload);
    }

    /// One side's next bytes in one segment, at its next sequence number.
    fn next(&mut self, from_client: bool, payload: &[u8]) {
        let seq = if from_client { self.client_seq } else { self.server_seq };
        self.segment(from_client, seq, 0x10, payload);
        let next = seq.wrapping_add(u32::try_from(payload.len()).unwrap());
        *(if from_client { &mut self.client_seq } else { &mut self.server_seq }) = next;
    }

    /// The client's next bytes cut into segments of these lengths.
    fn client_in_pieces(&mut self, payload: &[u8], cuts: &[usize]) {
        self.in_pieces(true, payload, cuts);
    }

    fn server_in_pieces(&mut self, payload: &[u8], cuts: &[usize]) {
        self.in_pieces(false, payload, cuts);
    }

    fn in_pieces(&mut self, from_client: bool, payload: &[u8], cuts: &[usize]) {
        let mut rest = payload;
        for cut in cuts {
            let (piece, tail) = rest.split_at(*cut);
            self.next(from_client, piece);
            rest = tail;
        }
        self.next(from_client, rest);
    }

    /// Response samples by protocol.
    fn samples(&self) -> BTreeMap<&'static str, u64> {
        let map: PerCpuHashMap<_, LatencyKey, Histogram> =
            PerCpuHashMap::try_from(self.ebpf.map("LATENCY").unwrap()).unwrap();
        let mut samples = BTreeMap::new();
        for (key, per_cpu) in map.iter().map(Result::unwrap) {
            if key.kind != LatencyKind::Response as u8 {
                continue;
            }
            let count: u64 = per_cpu.iter().map(|h| h.buckets.iter().sum::<u64>()).sum();
            *samples.entry(Protocol::from_u8(key.protocol).label()).or_default() += count;
        }
        samples
    }

    /// Failures and what the walk could not follow, as `reason` or `reason/code`.
    fn failures(&self) -> BTreeMap<String, u64> {
        let map: PerCpuHashMap<_, FailureKey, u64> =
            PerCpuHashMap::try_from(self.ebpf.map("FAILURES").unwrap()).unwrap();
        let mut failures = BTreeMap::new();
        for (key, per_cpu) in map.iter().map(Result::unwrap) {
            let reason = FailureReason::from_u8(key.reason).unwrap();
            let label = if FailureReason::STREAM.contains(&reason) {
                let code = HTTP2_ERROR_CODES.get(usize::from(key.code)).copied().unwrap_or("unknown");
                format!("{}/{code}", reason.label())
            } else {
                reason.label().to_owned()
            };
            *failures.entry(label).or_default() += per_cpu.iter().sum::<u64>();
        }
        failures
    }

    fn assert(&self, samples: &[(&'static str, u64)], failures: &[(&str, u64)]) {
        assert_eq!(self.samples(), samples.iter().copied().collect::<BTreeMap<_, _>>(), "samples");
        let failures: BTreeMap<String, u64> = failures.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        assert_eq!(self.failures(), failures, "failures and unmeasured");
    }
}

#[test]
fn one_call_is_one_sample_and_control_frames_are_none() {
    cniguard_lab::require_root!();
    let mut walk = Walk::http2();
    walk.client(&frames(&[frame(PING, 0, 0, &[1; 8]), frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0])]));
    walk.server(&frame(PING, 0x1, 0, &[1; 8]));
    walk.assert(&[], &[]);
    walk.client(&frames(&[headers(1), data(1, 20)]));
    walk.server(&frames(&[headers(1), data(1, 12), headers(1)]));
    walk.assert(&[("http2", 1)], &[]);
}

#[test]
fn frames_and_frame_headers_split_across_segments() {
    cniguard_lab::require_root!();
    let mut walk = Walk::http2();
    // A header block and a body in five segments, one cut inside a frame header (4 of its
    // 9 bytes), one inside the body.
    let request = frames(&[headers(3), data(3, 3000)]);
    walk.client_in_pieces(&request, &[4, 8, 1000, 1500]);
    // The answer's HEADERS header cut after 7 bytes, then its trailers in a later segment.
    let response = frames(&[headers(3), data(3, 700)]);
    walk.server_in_pieces(&response, &[7, 300]);
    walk.server(&headers(3));
    walk.assert(&[("http2", 1)], &[]);
    // A retransmission of bytes already walked changes nothing.
    walk.segment(false, walk.server_seq - 12, 0x10, &headers(3));
    walk.assert(&[("http2", 1)], &[]);
}

#[test]
fn many_frames_in_a_segment_and_more_than_the_walk_reads() {
    cniguard_lab::require_root!();
    let streams: Vec<u32> = (0..19).map(|i| 2 * i + 1).collect();
    let mut walk = Walk::http2();
    walk.client(&frames(&streams.iter().map(|s| headers(*s)).collect::<Vec<_>>()));
    walk.server(&frames(&streams.iter().map(|s| headers(*s)).collect::<Vec<_>>()));
    walk.assert(&[("http2", 19)], &[]);
    // One frame more than the walk reads: the connection is no longer measured.
    let beyond: Vec<Vec<u8>> =
        (0..=MAX_FRAMES_PER_SEGMENT).map(|i| frame(PING, 0, 0, &i.to_be_bytes())).collect();
    walk.client(&frames(&beyond));
    walk.client(&headers(99));
    walk.server(&headers(99));
    walk.assert(&[("http2", 19)], &[("frames_beyond_bound", 1)]);
}

#[test]
fn streams_beyond_the_bound_are_counted_not_measured() {
    cniguard_lab::require_root!();
    let open = u32::from(MAX_OPEN_STREAMS) + 3;
    let streams: Vec<u32> = (0..open).map(|i| 2 * i + 1).collect();
    let mut walk = Walk::http2();
    for batch in streams.chunks(MAX_FRAMES_PER_SEGMENT - 1) {
        walk.client(&frames(&batch.iter().map(|s| headers(*s)).collect::<Vec<_>>()));
    }
    for batch in streams.chunks(MAX_FRAMES_PER_SEGMENT - 1) {
        walk.server(&frames(&batch.iter().map(|s| headers(*s)).collect::<Vec<_>>()));
    }
    walk.assert(&[("http2", u64::from(MAX_OPEN_STREAMS))], &[("streams_beyond_bound", 3)]);
}

#[test]
fn rst_stream_and_goaway_are_failures_with_their_code() {
    cniguard_lab::require_root!();
    let mut walk = Walk::http2();
    walk.client(&frames(&[headers(1), headers(3)]));
    // The client cancels stream 1; the server refuses stream 3.
    walk.client(&frame(RST_STREAM, 0, 1, &8_u32.to_be_bytes()));
    walk.server(&frame(RST_STREAM, 0, 3, &7_u32.to_be_bytes()));
    // A reset of a stream already answered is not a failed exchange.
    walk.client(&headers(5));
    walk.server(&headers(5));
    walk.client(&frame(RST_STREAM, 0, 5, &8_u32.to_be_bytes()));
    walk.server(&frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]));
    walk.assert(
        &[("http2", 1)],
        &[("rst_stream/cancel", 1), ("rst_stream/refused_stream", 1), ("goaway/no_error", 1)],
    );
}

#[test]
fn a_gap_in_the_byte_stream_stops_the_walk() {
    cniguard_lab::require_root!();
    let mut walk = Walk::http2();
    walk.client_seq += 100;
    walk.client(&headers(1));
    walk.server(&headers(1));
    walk.assert(&[], &[("out_of_sync", 1)]);
}

#[test]
fn garbage_on_the_port_is_timed_turn_by_turn() {
    cniguard_lab::require_root!();
    let mut walk = Walk::connected();
    walk.client(&[0x16, 0x03, 0x01, 0x00, 0x2a, 0x01]);
    walk.server(&[0x16, 0x03, 0x03, 0x00, 0x31]);
    walk.client(b"\x00\x00\x00\x00\x00\x00\x00\x00\x00 more");
    walk.server(b"\x01 answer");
    walk.assert(&[("other", 2)], &[]);
}

#[test]
fn http1_pipelined_requests_are_answered_in_order_and_interim_answers_are_not() {
    cniguard_lab::require_root!();
    let mut walk = Walk::connected();
    walk.client(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    walk.server(b"HTTP/1.1 100 Continue\r\n\r\n");
    walk.client(b"body");
    walk.client(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n");
    walk.client(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    walk.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    walk.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    walk.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    walk.assert(&[("http1", 3)], &[]);
}

/// A connection already open when cniguard started: no handshake, no preface. Its client
/// segments wait until one starts with frames, the server's likewise; streams opened
/// before then are not answered into samples, later ones each are.
#[test]
fn a_connection_first_seen_open_is_walked_from_its_first_segment_of_frames() {
    cniguard_lab::require_root!();
    let mut walk = Walk::new();
    // The tail of a request body and of a response body: the middle of frames.
    walk.client(&[0_u8; 700]);
    walk.server(&[0x2a_u8; 300]);
    walk.assert(&[], &[]);
    // Seven streams open at once: more frame headers than the search reads.
    let streams: Vec<u32> = (0..7).map(|i| 2 * i + 11).collect();
    let requests: Vec<Vec<u8>> = streams.iter().flat_map(|s| [headers(*s), data(*s, 5)]).collect();
    assert!(requests.len() > MAX_SEARCH_FRAMES);
    walk.client(&frames(&requests));
    // The server answers stream 5, opened before the walk began: no sample.
    walk.server(&frames(&[headers(5), data(5, 12), headers(5)]));
    walk.assert(&[], &[]);
    // The seven answers, cut mid-frame into three segments; then one stream more.
    let answers: Vec<Vec<u8>> =
        streams.iter().flat_map(|s| [headers(*s), data(*s, 400), headers(*s)]).collect();
    walk.server_in_pieces(&frames(&answers), &[1000, 1000]);
    walk.assert(&[("http2", 7)], &[]);
    walk.client(&frames(&[headers(99), data(99, 20)]));
    walk.server(&frames(&[headers(99), data(99, 12), headers(99)]));
    walk.assert(&[("http2", 8)], &[]);
}

/// A connection first seen open that never shows HTTP/2 frames nor a request line: after
/// [`MIDWAY_SEARCH_SEGMENTS`] client segments it is timed turn by turn.
#[test]
fn a_connection_first_seen_open_without_frames_is_timed_turn_by_turn_after_the_search() {
    cniguard_lab::require_root!();
    let mut walk = Walk::new();
    for turn in 0..u32::from(MIDWAY_SEARCH_SEGMENTS) + 2 {
        walk.client(&[0x16, 0x03, 0x01, 0x00, turn.to_be_bytes()[3], 0x01, 0x00]);
        walk.server(b"\x17\x03\x03\x00\x05hello");
    }
    // The search's last segment and the two after it, each answered.
    walk.assert(&[("other", 3)], &[]);
}

/// A keep-alive HTTP/1.1 connection first seen open, in the middle of a request body: its
/// next request line starts its exchanges.
#[test]
fn an_http1_connection_first_seen_open_is_timed_from_its_next_request() {
    cniguard_lab::require_root!();
    let mut walk = Walk::new();
    walk.client(br#"{"inputs":[]}"#);
    walk.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    walk.client(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    walk.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    walk.assert(&[("http1", 1)], &[]);
}
