//! HTTP/2 frames as the localhost probe's tests and the bench write them by hand (RFC 9113
//! section 4.1): what the frame walk reads is the 9-byte headers, so payloads are filler.

/// What an HTTP/2 client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;

/// DATA and HEADERS: the last frame of the stream from this side.
pub const END_STREAM: u8 = 0x1;
/// SETTINGS and PING: an acknowledgement.
pub const ACK: u8 = 0x1;
/// HEADERS: no CONTINUATION follows.
pub const END_HEADERS: u8 = 0x4;

/// One frame: its header and `payload`.
///
/// # Panics
/// If the payload is longer than a frame can say (16 MiB).
#[must_use]
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length =
        u32::try_from(payload.len()).ok().filter(|l| *l < 1 << 24).expect("a frame payload under 16 MiB");
    let length = length.to_be_bytes();
    let mut bytes = vec![length[1], length[2], length[3], kind, flags];
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}
