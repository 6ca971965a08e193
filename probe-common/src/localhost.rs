//! `localhost`: TCP over loopback inside each namespace (the Seldon agent calling its
//! MLServer on 127.0.0.1:9000 and 9500, or on `::1`): connect latency, the latency of each
//! exchange in the protocol the connection speaks (HTTP/1.1 requests, HTTP/2 and gRPC
//! streams), and failures.

use crate::{assert_size, impl_pod};

pub const CONNECTIONS_MAX_ENTRIES: u32 = 65_536;
pub const LATENCY_MAX_ENTRIES: u32 = 4096;
pub const LOCALHOST_PORTS_MAX_ENTRIES: u32 = 64;
pub const SCOPE_MAX_ENTRIES: u32 = 4096;
/// Connections whose exchanges are followed frame by frame or request by request.
pub const EXCHANGES_MAX_ENTRIES: u32 = 16_384;
/// HTTP/2 streams awaiting their response, over all connections.
pub const STREAMS_MAX_ENTRIES: u32 = 16_384;
/// HTTP/2 frame headers read per segment; a segment with more loses the connection's
/// place in the stream (counted as [`FailureReason::FramesBeyondBound`]).
pub const MAX_FRAMES_PER_SEGMENT: usize = 24;
/// Streams one connection may have awaiting a response; one more is not measured
/// (counted as [`FailureReason::StreamsBeyondBound`]).
pub const MAX_OPEN_STREAMS: u8 = 32;
/// HTTP/1.1 requests one connection may have outstanding (pipelined); one more is not
/// measured (counted as [`FailureReason::StreamsBeyondBound`]).
pub const MAX_PIPELINED: usize = 4;
/// The HTTP/2 client connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
pub const HTTP2_PREFACE_LEN: u32 = 24;
pub const HTTP2_FRAME_HEADER_LEN: usize = 9;
/// A connection first seen open (cniguard started after it): how many of the client's
/// segments may go by before one shows where its frames start (or a request line). After
/// that it is timed turn by turn (`other`).
pub const MIDWAY_SEARCH_SEGMENTS: u8 = 8;
/// How many well-formed HTTP/2 frame headers in a row prove that a connection first seen
/// open speaks HTTP/2 and that its frames start at this segment (fewer do if they end
/// exactly at the segment's end).
pub const MAX_SEARCH_FRAMES: usize = 6;

/// One TCP connection over loopback, oriented client to server (the server's port is the
/// watched one), in one namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    /// The namespace's inode number (`ns.inum`; `stat -L -c %i /proc/<pid>/ns/net`).
    pub netns: u64,
    /// IPv4 loopback addresses (127/8; a dual-stack socket's `::ffff:127.0.0.1` goes on
    /// the wire as IPv4); zero for IPv6, whose only loopback address is `::1`.
    pub client: [u8; 4],
    pub server: [u8; 4],
    pub client_port: u16,
    pub server_port: u16,
    /// 4 or 6.
    pub ip_version: u8,
    pub _pad: [u8; 3],
}

/// Where a connection is in its life.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The client's SYN is out, unanswered.
    SynSent = 1,
    /// Established, no request outstanding.
    Open = 2,
    /// The client sent a request; the server has not answered yet.
    AwaitingResponse = 3,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionState {
    /// When the SYN, or the outstanding request, was sent (`bpf_ktime_get_ns`).
    pub since_ns: u64,
    /// The connection's last packet: idle entries are reclaimed by the daemon.
    pub last_ns: u64,
    /// The TCP sequence numbers of the first payload byte each way (the SYN's and the
    /// SYN-ACK's plus one; 0 for a connection first seen open): where the HTTP/2 walk
    /// starts.
    pub client_seq: u32,
    pub server_seq: u32,
    /// A [`Phase`] as u8.
    pub phase: u8,
    /// A [`Protocol`] as u8, read from the client's first bytes.
    pub protocol: u8,
    /// A connection first seen open: client segments left to find its protocol in
    /// ([`MIDWAY_SEARCH_SEGMENTS`] at first).
    pub search_left: u8,
    pub _pad: [u8; 5],
}

/// What a connection speaks, from the client's first payload bytes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// No payload yet.
    Unknown = 0,
    /// A request line (`GET `, `POST `...): one exchange per request, answered in order.
    Http1 = 1,
    /// The HTTP/2 preface: one exchange per stream (gRPC calls are streams).
    Http2 = 2,
    /// Anything else: the client's first byte to the server's first byte, turn by turn.
    Other = 3,
}

impl Protocol {
    pub const ALL: [Self; 3] = [Self::Http1, Self::Http2, Self::Other];

    /// The `protocol` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Other => "other",
        }
    }

    #[must_use]
    pub const fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Http1,
            2 => Self::Http2,
            3 => Self::Other,
            _ => Self::Unknown,
        }
    }
}

/// Where the frame walk of one direction of an HTTP/2 connection is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCursor {
    /// The TCP sequence number the next segment must start at; a retransmission (before
    /// it) is skipped, a gap (after it) loses the place.
    pub next_seq: u32,
    /// Bytes of the current frame still to come, before the next frame header.
    pub skip: u32,
    /// A frame header cut by the segment's end: its first `partial_len` bytes.
    pub partial: [u8; HTTP2_FRAME_HEADER_LEN],
    pub partial_len: u8,
    /// Where the direction's frames start: [`FrameCursor::UNSYNCED`],
    /// [`FrameCursor::SYNCED`] or [`FrameCursor::SEARCHING`].
    pub synced: u8,
    /// 1 once the place is lost: nothing more is measured on this connection.
    pub lost: u8,
}

impl FrameCursor {
    /// The direction's first payload starts its frames (its handshake was seen).
    pub const UNSYNCED: u8 = 0;
    /// `next_seq` is known.
    pub const SYNCED: u8 = 1;
    /// A connection first seen open: the frames start at the direction's first segment
    /// that starts with frames (until then its segments are not walked).
    pub const SEARCHING: u8 = 2;
}

/// What a connection's exchanges need beyond [`ConnectionState`]: for HTTP/2 both
/// directions' frame cursors and the count of streams awaiting a response (the streams
/// themselves are in `STREAMS`); for HTTP/1.1 the send times of outstanding requests.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeState {
    /// Client to server, server to client.
    pub cursors: [FrameCursor; 2],
    pub open_streams: u8,
    /// HTTP/1.1: requests outstanding, oldest at `head`.
    pub pipelined: u8,
    pub head: u8,
    pub _pad: [u8; 5],
    pub requests_ns: [u64; MAX_PIPELINED],
}

/// A frame header the HTTP/2 walk acts on (HEADERS, RST_STREAM, GOAWAY), noted while
/// one segment is walked and acted on after it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameEvent {
    pub frame_type: u8,
    /// The error code of a RST_STREAM or GOAWAY.
    pub code: u8,
    pub _pad: [u8; 2],
    pub stream_id: u32,
}

/// The frames of one segment, in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEvents {
    pub events: [FrameEvent; MAX_FRAMES_PER_SEGMENT],
    pub count: u32,
    /// Frame headers read in the segment (all types), against the bound.
    pub frames: u32,
    /// Where the stream keys are made: off the program's stack.
    pub key: StreamKey,
}

/// One HTTP/2 stream awaiting its response: the connection and the stream id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub connection: ConnectionKey,
    pub stream_id: u32,
    pub _pad: [u8; 4],
}

/// What a latency sample measures.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LatencyKind {
    /// SYN sent to SYN-ACK sent back.
    Connect = 0,
    /// One exchange: an HTTP/1.1 request line to its response's status line; an HTTP/2
    /// stream's first client HEADERS frame to the server's first HEADERS frame on it.
    Response = 1,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LatencyKey {
    pub netns: u64,
    pub port: u16,
    /// A [`LatencyKind`] as u8.
    pub kind: u8,
    /// A [`Protocol`] as u8 (0 for connects).
    pub protocol: u8,
    pub _pad: [u8; 4],
}

/// Why a connection failed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// A RST answered the SYN: nothing listens on the port.
    Refused = 1,
    /// The SYN was never answered (counted by the daemon when the state times out).
    Timeout = 2,
    /// An established connection was reset.
    Reset = 3,
    /// An HTTP/2 stream awaiting its response was reset (`RST_STREAM`, with its code).
    RstStream = 4,
    /// An HTTP/2 connection was told to go away (`GOAWAY`, with its code).
    GoAway = 5,
    /// A segment held more HTTP/2 frames than the walk reads: the connection is no
    /// longer measured.
    FramesBeyondBound = 6,
    /// A stream (or a pipelined HTTP/1.1 request) beyond what one connection may have
    /// outstanding: that one exchange is not measured.
    StreamsBeyondBound = 7,
    /// A segment past the one expected (one the walk missed): the connection is no longer
    /// measured.
    OutOfSync = 8,
    /// No room for the connection's walk state: it is not measured.
    NoRoom = 9,
}

impl FailureReason {
    /// What `cniguard_localhost_stream_failures_total` counts.
    pub const STREAM: [Self; 2] = [Self::RstStream, Self::GoAway];
    /// What `cniguard_localhost_unmeasured_total` counts.
    pub const UNMEASURED: [Self; 4] =
        [Self::FramesBeyondBound, Self::StreamsBeyondBound, Self::OutOfSync, Self::NoRoom];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::RstStream => "rst_stream",
            Self::GoAway => "goaway",
            Self::FramesBeyondBound => "frames_beyond_bound",
            Self::StreamsBeyondBound => "streams_beyond_bound",
            Self::OutOfSync => "out_of_sync",
            Self::NoRoom => "no_room",
        }
    }

    #[must_use]
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Refused),
            2 => Some(Self::Timeout),
            3 => Some(Self::Reset),
            4 => Some(Self::RstStream),
            5 => Some(Self::GoAway),
            6 => Some(Self::FramesBeyondBound),
            7 => Some(Self::StreamsBeyondBound),
            8 => Some(Self::OutOfSync),
            9 => Some(Self::NoRoom),
            _ => None,
        }
    }
}

/// The HTTP/2 error code names (RFC 9113 section 7), the `code` label; larger codes are
/// `unknown`.
pub const HTTP2_ERROR_CODES: [&str; 14] = [
    "no_error",
    "protocol_error",
    "internal_error",
    "flow_control_error",
    "settings_timeout",
    "stream_closed",
    "frame_size_error",
    "refused_stream",
    "cancel",
    "compression_error",
    "connect_error",
    "enhance_your_calm",
    "inadequate_security",
    "http_1_1_required",
];

/// The `code` label of an HTTP/2 error code.
#[must_use]
pub fn http2_error_code(code: u8) -> &'static str {
    HTTP2_ERROR_CODES.get(usize::from(code)).copied().unwrap_or("unknown")
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailureKey {
    pub netns: u64,
    pub port: u16,
    /// A [`FailureReason`] as u8.
    pub reason: u8,
    /// The HTTP/2 error code of a `RST_STREAM` or `GOAWAY` (14 and above: unknown).
    pub code: u8,
    pub _pad: [u8; 4],
}

assert_size!(ConnectionKey, 24);
assert_size!(ConnectionState, 32);
assert_size!(LatencyKey, 16);
assert_size!(FailureKey, 16);
assert_size!(FrameCursor, 20);
assert_size!(ExchangeState, 80);
assert_size!(StreamKey, 32);
assert_size!(FrameEvent, 8);
assert_size!(FrameEvents, 8 * MAX_FRAMES_PER_SEGMENT + 8 + 32);
impl_pod!(ConnectionKey, ConnectionState, LatencyKey, FailureKey, ExchangeState, StreamKey);
