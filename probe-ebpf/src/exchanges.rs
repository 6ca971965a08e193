//! The exchanges of one loopback connection, in the protocol it speaks: HTTP/1.1 requests
//! answered in order, HTTP/2 (and so gRPC) streams. The localhost hooks hand each
//! segment's payload here as a [`Payload`]: read through the kernel for `cgroup_skb`, from
//! the linear part and the page fragments for the tracing hooks.
//!
//! HTTP/2 is walked frame header by frame header, at most
//! [`MAX_FRAMES_PER_SEGMENT`] per segment, carrying the position in the byte stream across
//! segments (a frame's rest, a header cut in two) and checking TCP sequence numbers, so a
//! retransmission is not read twice. What the walk cannot follow is counted, never
//! guessed: a segment with more frames, a segment after a gap, a stream over
//! [`MAX_OPEN_STREAMS`].

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use probe_common::{
    localhost::{
        ConnectionKey, EXCHANGES_MAX_ENTRIES, ExchangeState, FailureReason, FrameCursor, FrameEvent,
        FrameEvents, HTTP2_FRAME_HEADER_LEN, HTTP2_PREFACE_LEN, LatencyKind, MAX_FRAMES_PER_SEGMENT,
        MAX_OPEN_STREAMS, MAX_PIPELINED, MAX_SEARCH_FRAMES, Protocol, STREAMS_MAX_ENTRIES, StreamKey,
    },
    map_health::MapId,
};

use crate::map_health::record_full;

/// The exchange walk of HTTP connections; goes with the connection.
#[map]
pub static EXCHANGES: HashMap<ConnectionKey, ExchangeState> =
    HashMap::with_max_entries(EXCHANGES_MAX_ENTRIES, 0);

/// Where a fresh walk state is made: off the program's 512-byte stack.
#[map]
static SCRATCH: PerCpuArray<ExchangeState> = PerCpuArray::with_max_entries(1, 0);

/// HTTP/2 streams awaiting their response: when the client's HEADERS opened them.
#[map]
static STREAMS: HashMap<StreamKey, u64> = HashMap::with_max_entries(STREAMS_MAX_ENTRIES, 0);

const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_GOAWAY: u8 = 0x7;
/// The `code` of an error code the walk could not read (it lies in the next segment).
const CODE_UNREAD: u8 = 255;
/// One segment's payload bytes.
pub trait Payload {
    /// How many bytes can be read (less than the segment's payload where the hook could
    /// not reach them all).
    fn len(&self) -> u32;
    /// `T` at `at` bytes into the payload.
    fn read<T>(&self, at: u32) -> Option<T>;
}

/// Where a segment fits: which connection, which way, its first payload byte's sequence
/// number, its payload length, and which map the counts go to.
pub struct Context<'a> {
    pub key: &'a ConnectionKey,
    pub from_client: bool,
    pub seq: u32,
    pub payload: u32,
    pub now: u64,
}

impl Context<'_> {
    #[inline(always)]
    fn sample(&self, protocol: Protocol, nanoseconds: u64) {
        crate::localhost::sample(self.key, LatencyKind::Response, protocol, nanoseconds);
    }

    #[inline(always)]
    pub fn count(&self, reason: FailureReason, code: u8) {
        crate::localhost::count_failure(self.key, reason, code);
    }
}

/// What the client's first payload bytes say the connection speaks.
#[inline(always)]
pub fn detect(first: [u8; 4]) -> Protocol {
    match &first {
        b"PRI " => Protocol::Http2,
        b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"CONN" | b"TRAC" => {
            Protocol::Http1
        }
        _ => Protocol::Other,
    }
}

/// Starts the walk of a connection: its HTTP/2 cursors start at its first payload bytes
/// where its handshake was seen (`client_seq`, `server_seq`; 0: not seen), the client's
/// after the 24-byte preface. False if there is no room.
#[inline(always)]
pub fn start(key: &ConnectionKey, client_seq: u32, server_seq: u32) -> bool {
    let Some(state) = fresh() else { return false };
    if client_seq != 0 {
        state.cursors[0].next_seq = client_seq;
        state.cursors[0].skip = HTTP2_PREFACE_LEN;
        state.cursors[0].synced = FrameCursor::SYNCED;
    }
    if server_seq != 0 {
        state.cursors[1].next_seq = server_seq;
        state.cursors[1].synced = FrameCursor::SYNCED;
    }
    insert(key, state)
}

/// Starts the walk of a connection first seen open, whose client segment at `client_seq`
/// starts with HTTP/2 frames ([`frames_start_here`]): the client's frames start there,
/// the server's at its first segment that shows them. False if there is no room.
#[inline(always)]
pub fn start_at_frames(key: &ConnectionKey, client_seq: u32) -> bool {
    let Some(state) = fresh() else { return false };
    state.cursors[0].next_seq = client_seq;
    state.cursors[0].synced = FrameCursor::SYNCED;
    state.cursors[1].synced = FrameCursor::SEARCHING;
    insert(key, state)
}

/// This CPU's scratch walk state, reset.
#[inline(always)]
fn fresh() -> Option<&'static mut ExchangeState> {
    let state = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value, alive while this program runs.
    let state = unsafe { &mut *state };
    *state = ExchangeState::default();
    Some(state)
}

#[inline(always)]
fn insert(key: &ConnectionKey, state: &ExchangeState) -> bool {
    // The scratch value itself, not a copy of it on the stack.
    EXCHANGES.insert(key, state, 0).is_ok()
}

/// True if HTTP/2 frames start at `payload`'s first byte (`length` bytes, all readable):
/// its frame headers, read one after the other, are frame types HTTP/2 defines with the
/// flags, stream ids and lengths each allows, and either end exactly at the segment's end,
/// or run past it after at least two, or number [`MAX_SEARCH_FRAMES`]. Bytes taken from
/// the middle of a frame pass this by chance about never, so a connection first seen open
/// can start its walk at such a segment.
#[inline(never)]
pub fn frames_start_here<P: Payload>(payload: &P, length: u32) -> bool {
    let mut at = 0u32;
    for checked in 0..MAX_SEARCH_FRAMES {
        if at >= length {
            return at == length && checked > 0;
        }
        if at + HTTP2_FRAME_HEADER_LEN as u32 > length {
            return false; // a header cut: too little to tell
        }
        let Some(header) = payload.read::<[u8; HTTP2_FRAME_HEADER_LEN]>(at) else { return false };
        let Some(frame_length) = well_formed(&header) else { return false };
        at += HTTP2_FRAME_HEADER_LEN as u32 + frame_length;
        if at > length {
            return checked >= 1; // the last frame runs on into the next segment
        }
    }
    true
}

/// The payload length of a frame header that RFC 9113 allows (section 6), if it does.
#[inline(always)]
fn well_formed(header: &[u8; HTTP2_FRAME_HEADER_LEN]) -> Option<u32> {
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let (frame_type, flags) = (header[3], header[4]);
    if header[5] & 0x80 != 0 {
        return None; // the reserved bit
    }
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) != 0;
    // Per type: the flags it defines, whether it belongs to a stream, the lengths it may have.
    let ok = match frame_type {
        0x0 => flags & !0x09 == 0 && stream,           // DATA: END_STREAM, PADDED
        FRAME_HEADERS => flags & !0x2d == 0 && stream, // END_STREAM, END_HEADERS, PADDED, PRIORITY
        0x2 => flags == 0 && stream && length == 5,    // PRIORITY
        FRAME_RST_STREAM => flags == 0 && stream && length == 4,
        0x4 => flags & !0x01 == 0 && !stream && length.is_multiple_of(6) && (flags == 0 || length == 0), // SETTINGS
        0x5 => flags & !0x0c == 0 && stream && length >= 4, // PUSH_PROMISE
        0x6 => flags & !0x01 == 0 && !stream && length == 8, // PING
        FRAME_GOAWAY => flags == 0 && !stream && length >= 8,
        0x8 => flags == 0 && length == 4,    // WINDOW_UPDATE
        0x9 => flags & !0x04 == 0 && stream, // CONTINUATION
        _ => false,
    };
    ok.then_some(length)
}

/// An HTTP/1.1 segment: a request line queues its send time, a final status line answers
/// the oldest (interim `1xx` answers do not). A request or response is one whose
/// segment starts with its first line: a client writes each request at once.
#[inline(always)]
pub fn http1<P: Payload>(context: &Context, state: &mut ExchangeState, payload: &P) {
    if context.from_client {
        let Some(first) = payload.read::<[u8; 4]>(0) else { return };
        if detect(first) != Protocol::Http1 {
            return; // a request body's next segment
        }
        if usize::from(state.pipelined) >= MAX_PIPELINED {
            context.count(FailureReason::StreamsBeyondBound, 0);
            return;
        }
        let slot = (usize::from(state.head) + usize::from(state.pipelined)) % MAX_PIPELINED;
        state.requests_ns[slot] = context.now;
        state.pipelined += 1;
        return;
    }
    // "HTTP/1.1 200": the status's first digit is byte 9.
    let Some(line) = payload.read::<[u8; 10]>(0) else { return };
    if &line[..7] != b"HTTP/1." || line[9] == b'1' || state.pipelined == 0 {
        return;
    }
    let slot = usize::from(state.head) % MAX_PIPELINED;
    context.sample(Protocol::Http1, context.now.saturating_sub(state.requests_ns[slot]));
    state.head = ((usize::from(state.head) + 1) % MAX_PIPELINED) as u8;
    state.pipelined -= 1;
}

/// Walks an HTTP/2 segment, noting the frames that matter in `EVENTS`; true if
/// [`http2_act`] has them to act on. Two passes, so that the verifier's cost stays linear
/// in the bound, each a BPF subprogram of its own.
#[inline(never)]
pub fn http2_walk<P: Payload>(context: &Context, payload: &P) -> bool {
    let Some(state) = EXCHANGES.get_ptr_mut(context.key) else { return false };
    // SAFETY: a map value, alive while this program runs.
    let state = unsafe { &mut *state };
    // Read back from memory the compiler cannot see through, so that the mask stays: the
    // verifier must see the index bounded to the two cursors.
    let direction = u8::from(!context.from_client);
    // SAFETY: a local, read at once.
    let direction = usize::from(unsafe { core::ptr::read_volatile(&raw const direction) }) & 1;
    let mut cursor = state.cursors[direction];
    if cursor.lost != 0 {
        return false;
    }
    if cursor.synced == FrameCursor::SEARCHING {
        if !frames_start_here(payload, context.payload) {
            return false; // the middle of a frame, maybe: not walked
        }
        cursor.synced = FrameCursor::SYNCED;
        cursor.next_seq = context.seq;
    }
    if cursor.synced == FrameCursor::UNSYNCED {
        // Handshake not seen: the direction's first payload starts the stream.
        cursor.synced = FrameCursor::SYNCED;
        cursor.next_seq = context.seq;
        if context.from_client {
            cursor.skip = HTTP2_PREFACE_LEN;
        }
    }
    let ahead = context.seq.wrapping_sub(cursor.next_seq) as i32;
    if ahead < 0 {
        return false; // a retransmission of bytes already walked
    }
    if ahead > 0 {
        lose(context, state, FailureReason::OutOfSync);
        return false;
    }
    cursor.next_seq = context.seq.wrapping_add(context.payload);
    let Some(events) = EVENTS.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's scratch value, alive while this program runs.
    let events = unsafe { &mut *events };
    events.count = 0;
    events.frames = 0;
    if let Err(reason) = walk_frames(&mut cursor, payload, events) {
        lose(context, state, reason);
        return false;
    }
    state.cursors[direction] = cursor;
    events.count != 0
}

/// A segment whose payload the hook could not read whole (spread over page fragments, or
/// with the direct map unknown): the walk loses its place, and counts it.
#[inline(never)]
pub fn http2_unreadable(context: &Context) {
    let Some(state) = EXCHANGES.get_ptr_mut(context.key) else { return };
    // SAFETY: a map value, alive while this program runs.
    let state = unsafe { &mut *state };
    if state.cursors[0].lost == 0 {
        lose(context, state, FailureReason::FramesBeyondBound);
    }
}

/// Frames of one segment noted while walking it.
#[map]
static EVENTS: PerCpuArray<FrameEvents> = PerCpuArray::with_max_entries(1, 0);

/// Reads the frame headers in one segment, noting the ones [`http2_act`] acts on.
#[inline(always)]
fn walk_frames<P: Payload>(
    cursor: &mut FrameCursor,
    payload: &P,
    events: &mut FrameEvents,
) -> Result<(), FailureReason> {
    let length = payload.len();
    let mut at = 0u32;
    if cursor.partial_len != 0 {
        // Finish the header the previous segment cut.
        at = finish_header(cursor, payload, length)?;
        if usize::from(cursor.partial_len) < HTTP2_FRAME_HEADER_LEN {
            return Ok(());
        }
        cursor.partial_len = 0;
        let header = cursor.partial;
        cursor.skip = note(events, &header, error_code(payload, &header, at, length))?;
    }
    let mut cut = false;
    for _ in 0..=MAX_FRAMES_PER_SEGMENT {
        let left = length - at.min(length);
        if cursor.skip >= left {
            cursor.skip -= left;
            return Ok(());
        }
        at += cursor.skip;
        cursor.skip = 0;
        if length - at < HTTP2_FRAME_HEADER_LEN as u32 {
            cut = true;
            break;
        }
        let header =
            payload.read::<[u8; HTTP2_FRAME_HEADER_LEN]>(at).ok_or(FailureReason::FramesBeyondBound)?;
        at += HTTP2_FRAME_HEADER_LEN as u32;
        cursor.skip = note(events, &header, error_code(payload, &header, at, length))?;
    }
    if !cut {
        return Err(FailureReason::FramesBeyondBound);
    }
    // A header the next segment finishes: keep its first bytes.
    let left = length - at;
    for index in 0..HTTP2_FRAME_HEADER_LEN - 1 {
        if index as u32 >= left {
            break;
        }
        cursor.partial[index] =
            payload.read::<u8>(at + index as u32).ok_or(FailureReason::FramesBeyondBound)?;
    }
    cursor.partial_len = left as u8;
    Ok(())
}

/// Completes a cut header from the start of `payload`; returns where the bytes after it are.
#[inline(always)]
fn finish_header<P: Payload>(
    cursor: &mut FrameCursor,
    payload: &P,
    length: u32,
) -> Result<u32, FailureReason> {
    let mut at = 0u32;
    for index in 1..HTTP2_FRAME_HEADER_LEN {
        if index < usize::from(cursor.partial_len) {
            continue;
        }
        if at >= length {
            break;
        }
        cursor.partial[index] = payload.read::<u8>(at).ok_or(FailureReason::FramesBeyondBound)?;
        at += 1;
    }
    cursor.partial_len = (usize::from(cursor.partial_len) + at as usize) as u8;
    Ok(at)
}

/// Counts one frame header against the bound and notes it if [`http2_act`] needs it; returns
/// the frame's payload length, to skip.
#[inline(always)]
fn note(
    events: &mut FrameEvents,
    header: &[u8; HTTP2_FRAME_HEADER_LEN],
    code: u8,
) -> Result<u32, FailureReason> {
    if events.frames as usize >= MAX_FRAMES_PER_SEGMENT {
        return Err(FailureReason::FramesBeyondBound);
    }
    events.frames += 1;
    let frame_type = header[3];
    if matches!(frame_type, FRAME_HEADERS | FRAME_RST_STREAM | FRAME_GOAWAY) {
        let index = events.count as usize;
        if index < MAX_FRAMES_PER_SEGMENT {
            events.events[index] = FrameEvent {
                frame_type,
                code,
                _pad: [0; 2],
                stream_id: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            };
            events.count += 1;
        }
    }
    Ok(u32::from_be_bytes([0, header[0], header[1], header[2]]))
}

/// The error code of a `RST_STREAM` (first word of its payload) or `GOAWAY` (second) whose
/// payload starts at `at`, if it is in this segment.
#[inline(always)]
fn error_code<P: Payload>(payload: &P, header: &[u8; HTTP2_FRAME_HEADER_LEN], at: u32, length: u32) -> u8 {
    let at = match header[3] {
        FRAME_RST_STREAM => at,
        FRAME_GOAWAY => at + 4,
        _ => return 0,
    };
    if at + 4 > length {
        return CODE_UNREAD;
    }
    match payload.read::<[u8; 4]>(at) {
        Some(code) => u32::from_be_bytes(code).min(u32::from(CODE_UNREAD - 1)) as u8,
        None => CODE_UNREAD,
    }
}

/// The frames [`http2_walk`] noted, in order: a client's HEADERS opens a stream, the
/// server's first HEADERS on it answers it (one sample), a RST_STREAM fails it, a GOAWAY
/// is counted.
#[inline(never)]
pub fn http2_act(context: &Context) {
    let (Some(state), Some(events)) = (EXCHANGES.get_ptr_mut(context.key), EVENTS.get_ptr_mut(0)) else {
        return;
    };
    // SAFETY: map values, alive while this program runs.
    let (state, events) = unsafe { (&mut *state, &mut *events) };
    events.key.connection = *context.key;
    // A bound the compiler cannot unroll (one copy of the body, which keeps the stack
    // small); the verifier still sees it end.
    let count = (events.count as usize).min(MAX_FRAMES_PER_SEGMENT);
    for index in 0..count {
        let event = events.events[index % MAX_FRAMES_PER_SEGMENT];
        events.key.stream_id = event.stream_id;
        let key = &events.key;
        match event.frame_type {
            FRAME_HEADERS if event.stream_id != 0 => {
                if context.from_client {
                    // A client's HEADERS on a stream already open is its trailers.
                    if STREAMS.get_ptr(key).is_some() {
                        continue;
                    }
                    if state.open_streams >= MAX_OPEN_STREAMS {
                        context.count(FailureReason::StreamsBeyondBound, 0);
                    } else if STREAMS.insert(key, context.now, 0).is_ok() {
                        state.open_streams += 1;
                    } else {
                        record_full(MapId::LocalhostStreams);
                        context.count(FailureReason::NoRoom, 0);
                    }
                } else if let Some(opened) = STREAMS.get_ptr(key) {
                    // SAFETY: a map value, read at once.
                    let opened = unsafe { *opened };
                    context.sample(Protocol::Http2, context.now.saturating_sub(opened));
                    close_stream(state, key);
                }
            }
            FRAME_RST_STREAM if STREAMS.get_ptr(key).is_some() => {
                context.count(FailureReason::RstStream, event.code);
                close_stream(state, key);
            }
            FRAME_GOAWAY => context.count(FailureReason::GoAway, event.code),
            _ => {}
        }
    }
}

#[inline(always)]
fn close_stream(state: &mut ExchangeState, key: &StreamKey) {
    if STREAMS.remove(key).is_ok() {
        state.open_streams = state.open_streams.saturating_sub(1);
    }
}

/// The walk cannot follow the byte stream any more: counted once, and nothing more is
/// measured on the connection (its open streams are reclaimed with it).
#[inline(always)]
fn lose(context: &Context, state: &mut ExchangeState, reason: FailureReason) {
    context.count(reason, 0);
    state.cursors[0].lost = 1;
    state.cursors[1].lost = 1;
}
