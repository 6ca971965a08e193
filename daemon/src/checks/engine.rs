//! The one check engine: how cniguard talks to something from inside a pod's network
//! namespace. Both the active checks (`checks::targets`, other nodes' pods, services, DNS)
//! and the localhost health check (`checks::health`, the runbook's
//! `curl 127.0.0.1:9000/v2/health/ready` and its gRPC twin on 9500) are built from these
//! pieces: enter the namespace, connect with a deadline, speak HTTP/1, gRPC (HTTP/2, through
//! the `h2` crate) or DNS, and name the failure.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Why a check failed: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Refused,
    Unreachable,
    Reset,
    HttpStatus,
    /// A gRPC answer with a non-zero `grpc-status`, or not ready.
    GrpcStatus,
    /// An answer in another protocol than the one spoken (HTTP/1 to an HTTP/2-only port).
    Protocol,
    Resolve,
    DnsRcode,
    DnsEmpty,
    Other,
}

impl Failure {
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::Reset => "reset",
            Self::HttpStatus => "http_status",
            Self::GrpcStatus => "grpc_status",
            Self::Protocol => "protocol",
            Self::Resolve => "resolve",
            Self::DnsRcode => "dns_rcode",
            Self::DnsEmpty => "dns_empty",
            Self::Other => "other",
        }
    }

    #[must_use]
    pub fn of(err: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match err.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Self::Timeout,
            ErrorKind::ConnectionRefused => Self::Refused,
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Self::Unreachable,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::UnexpectedEof => {
                Self::Reset
            }
            _ => Self::Other,
        }
    }
}

/// Runs `f` on a thread of its own inside the network namespace at `netns`, without
/// blocking the runtime: entering a namespace changes only the thread that enters it.
/// `None` if the namespace cannot be entered (the pod went away).
pub async fn in_pod<R: Send + 'static>(netns: PathBuf, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    tokio::task::spawn_blocking(move || crate::node::namespaces::in_namespace(&netns, f)).await.ok().flatten()
}

/// The time left until `deadline`, at least a millisecond (a zero timeout means "none" to
/// the socket calls).
fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

/// A TCP connection to `address`, opened before `deadline`, with its reads and writes
/// bounded by the same deadline.
pub fn connect(address: SocketAddr, deadline: Instant) -> Result<TcpStream, Failure> {
    let stream =
        TcpStream::connect_timeout(&address, remaining(deadline)).map_err(|err| Failure::of(&err))?;
    stream.set_read_timeout(Some(remaining(deadline))).map_err(|err| Failure::of(&err))?;
    stream.set_write_timeout(Some(remaining(deadline))).map_err(|err| Failure::of(&err))?;
    Ok(stream)
}

/// A one-shot HTTP/1.0 `GET` (the server closes once it has answered).
pub struct HttpGet<'a> {
    /// The `Host` header.
    pub host: &'a str,
    pub path: &'a str,
    pub user_agent: &'a str,
}

impl HttpGet<'_> {
    /// Sends the request on `stream` and reads the status line: success on 2xx.
    pub fn status(&self, stream: &mut TcpStream) -> Result<(), Failure> {
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: {}\r\n\r\n",
            self.path, self.host, self.user_agent
        );
        stream.write_all(request.as_bytes()).map_err(|err| Failure::of(&err))?;
        let mut head = [0_u8; 64];
        let mut read = 0;
        while read < 12 {
            match stream.read(&mut head[read..]) {
                Ok(0) => return Err(Failure::Reset),
                Ok(n) => read += n,
                Err(err) => return Err(Failure::of(&err)),
            }
        }
        // "HTTP/1.x 2.."
        if !head.starts_with(b"HTTP/1.") {
            return Err(Failure::Protocol);
        }
        if head[9] == b'2' { Ok(()) } else { Err(Failure::HttpStatus) }
    }

    /// [`Self::status`], then the rest of the answer until the server closes: the time
    /// taken is then connect to the end of the answer.
    pub fn whole_answer(&self, stream: &mut TcpStream) -> Result<(), Failure> {
        let status = self.status(stream);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).map_err(|err| Failure::of(&err))?;
        status
    }
}

/// One gRPC unary call over HTTP/2 with prior knowledge (how gRPC clients talk to a
/// plaintext port; the Seldon agent to MLServer's 9500), through the `h2` crate: `message`
/// is the request's protobuf encoding; the answer is the response message's, once
/// `grpc-status` said 0. `stream` is connected already (inside the pod's namespace: a socket
/// stays in the namespace it was made in, whichever thread uses it).
pub async fn grpc_unary(
    stream: TcpStream,
    authority: &str,
    method: &str,
    message: &[u8],
    deadline: Instant,
) -> Result<bytes::Bytes, Failure> {
    let call = async {
        stream.set_nonblocking(true).map_err(|err| Failure::of(&err))?;
        let stream = tokio::net::TcpStream::from_std(stream).map_err(|err| Failure::of(&err))?;
        let (client, connection) = h2::client::handshake(stream).await.map_err(|err| h2_failure(&err))?;
        let driver = tokio::spawn(connection);
        let answer = grpc_exchange(client, authority, method, message).await;
        driver.abort();
        answer
    };
    tokio::time::timeout_at(deadline.into(), call).await.unwrap_or(Err(Failure::Timeout))
}

async fn grpc_exchange(
    client: h2::client::SendRequest<bytes::Bytes>,
    authority: &str,
    method: &str,
    message: &[u8],
) -> Result<bytes::Bytes, Failure> {
    let mut client = client.ready().await.map_err(|err| h2_failure(&err))?;
    let request = http::Request::post(format!("http://{authority}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "cniguard")
        .body(())
        .map_err(|_| Failure::Other)?;
    let (response, mut body) = client.send_request(request, false).map_err(|err| h2_failure(&err))?;
    body.send_data(grpc_frame(message), true).map_err(|err| h2_failure(&err))?;
    let response = response.await.map_err(|err| h2_failure(&err))?;
    if response.status() != http::StatusCode::OK {
        return Err(Failure::Protocol);
    }
    // A trailers-only answer (an error) carries grpc-status in its headers.
    if response.headers().get("grpc-status").is_some_and(|status| status != "0") {
        return Err(Failure::GrpcStatus);
    }
    let mut answer = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.map_err(|err| h2_failure(&err))?;
        let _ = answer.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = answer.trailers().await.map_err(|err| h2_failure(&err))?;
    if trailers.as_ref().and_then(|t| t.get("grpc-status")).is_none_or(|status| status != "0") {
        return Err(Failure::GrpcStatus);
    }
    grpc_message(&data).ok_or(Failure::Protocol)
}

/// A message as gRPC frames it: uncompressed, its length, the bytes.
#[must_use]
pub fn grpc_frame(message: &[u8]) -> bytes::Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

/// The one message of a unary answer's framed body.
fn grpc_message(body: &[u8]) -> Option<bytes::Bytes> {
    let (head, rest) = body.split_at_checked(5)?;
    let length = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]])).ok()?;
    (head[0] == 0 && rest.len() == length).then(|| bytes::Bytes::copy_from_slice(rest))
}

fn h2_failure(err: &h2::Error) -> Failure {
    match err.get_io() {
        Some(io) => Failure::of(io),
        // Not HTTP/2 from the other end (an HTTP/1 server answering the preface), or a
        // stream reset: the port does not speak gRPC, or not now.
        None if err.is_go_away() || err.is_reset() => Failure::Reset,
        None => Failure::Protocol,
    }
}

/// The A records of `name`, asked of `resolver` over UDP.
pub fn resolve(resolver: SocketAddrV4, name: &str, deadline: Instant) -> Result<Vec<Ipv4Addr>, Failure> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|err| Failure::of(&err))?;
    socket.connect(resolver).map_err(|err| Failure::of(&err))?;
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(1) ^ 0x5a5a;
    let query = dns_query(id, name).ok_or(Failure::Resolve)?;
    socket.send(&query).map_err(|err| Failure::of(&err))?;
    let mut answer = [0_u8; 1500];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Failure::Timeout);
        }
        socket.set_read_timeout(Some(remaining)).map_err(|err| Failure::of(&err))?;
        let len = socket.recv(&mut answer).map_err(|err| Failure::of(&err))?;
        // Not the answer to this query: keep waiting for it.
        if len < 12 || answer[..2] != id.to_be_bytes() || answer[2] & 0x80 == 0 {
            continue;
        }
        if answer[3] & 0x0f != 0 {
            return Err(Failure::DnsRcode);
        }
        return Ok(a_records(&answer[..len]));
    }
}

/// A standard query for the A record of `name`, recursion desired.
pub(crate) fn dns_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut query = Vec::with_capacity(18 + name.len());
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        query.push(u8::try_from(label.len()).ok().filter(|len| (1..=63).contains(len))?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    Some(query)
}

/// The IPv4 addresses in an answer's answer section (names compressed or not).
pub(crate) fn a_records(message: &[u8]) -> Vec<Ipv4Addr> {
    let count =
        |at: usize| message.get(at..at + 2).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let (questions, answers) = (count(4), count(6));
    let mut at = 12;
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *message.get(at)?;
            if len & 0xc0 == 0xc0 {
                return Some(at + 2);
            }
            if len == 0 {
                return Some(at + 1);
            }
            at += 1 + usize::from(len);
        }
    };
    for _ in 0..questions {
        let Some(end) = skip_name(at) else { return Vec::new() };
        at = end + 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        let Some(end) = skip_name(at) else { break };
        let (Some(kind), Some(len)) = (message.get(end..end + 2), message.get(end + 8..end + 10)) else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let data = end + 10;
        if kind == [0, 1]
            && len == 4
            && let Some(bytes) = message.get(data..data + 4)
        {
            addresses.push(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]));
        }
        at = data + len;
    }
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_frames_are_length_prefixed() {
        assert_eq!(&grpc_frame(&[8, 1])[..], &[0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(grpc_message(&[0, 0, 0, 0, 2, 8, 1]).as_deref(), Some(&[8_u8, 1][..]));
        assert_eq!(grpc_message(&[0, 0, 0, 0, 0]).as_deref(), Some(&[][..]));
        // Compressed, short or long: not a message this client asked for.
        assert_eq!(grpc_message(&[1, 0, 0, 0, 0]), None);
        assert_eq!(grpc_message(&[0, 0, 0, 0, 3, 8, 1]), None);
        assert_eq!(grpc_message(&[0, 0, 0]), None);
    }

    #[test]
    fn answers_are_read_for_their_a_records() {
        let mut answer = dns_query(7, "sink-2.default.svc.cluster.local").unwrap();
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer[7] = 1; // one answer
        // The name as a pointer to the question, type A, class IN, TTL, 4 bytes of data.
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 244, 2, 11]);
        assert_eq!(a_records(&answer), vec![Ipv4Addr::new(10, 244, 2, 11)]);
        assert!(dns_query(1, "bad..name").is_none());
    }
}
