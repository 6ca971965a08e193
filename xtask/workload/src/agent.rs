//! The Seldon agent's side of `curl 127.0.0.1:9500/v2/health/ready`: HTTP/1.1 GETs at a
//! fixed rate over keep-alive connections. The client is written here rather than taken from
//! a crate because the lab needs to know exactly when a connection is opened and reused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::anyhow;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::stats::{Reporter, bump, counters};
use crate::{Failure, Shutdown, pacer, period_of};

pub const KIND: &str = "agent";

/// A response head longer than this is not from an MLServer.
const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(clap::Args)]
pub struct Args {
    /// The MLServer, as HOST:PORT (resolved once, at start); also the Host header.
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    /// The path to GET.
    #[arg(long, value_name = "PATH", default_value = "/v2/health/ready")]
    path: String,
    /// Requests per second.
    #[arg(long, value_name = "R")]
    rate: f64,
    /// Open a new connection every K requests; 0 keeps a connection until it fails.
    #[arg(long, value_name = "K", default_value_t = 0)]
    requests_per_connection: u64,
    /// Stop after N attempts and exit.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// How long a connect may take.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    connect_timeout_ms: u64,
    /// How long the answer to a request may take, once connected.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
    /// Stats file, rewritten atomically.
    #[arg(long, value_name = "FILE")]
    stats: PathBuf,
}

counters! {
    /// Every attempt ends in exactly one of the outcome counters (all but
    /// `connections_opened`), so they add up to `attempts` once the agent has stopped.
    struct Calls {
        attempts,
        /// 2xx answers.
        ok,
        /// Other statuses.
        http_errors,
        /// ECONNREFUSED on connect.
        refused,
        connect_timeouts,
        /// ECONNRESET, or the connection ended before the whole response.
        resets,
        /// Connected, but no whole answer within --timeout-ms.
        timeouts,
        /// Anything else: no route, blocked by a firewall, a response that is not HTTP/1.x.
        other_errors,
        connections_opened,
    }
}

pub async fn run(args: Args, mut shutdown: Shutdown) -> Result<(), Failure> {
    let period = period_of(args.rate).map_err(Failure::Startup)?;
    let request = request_bytes(&args.target, &args.path).map_err(Failure::Startup)?;
    let address = tokio::net::lookup_host(&args.target)
        .await
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| anyhow!("cannot resolve --target {:?} (expected HOST:PORT)", args.target))
        .map_err(Failure::Startup)?;
    let calls = Arc::new(Calls::default());
    let reporter = Reporter::start(KIND, &args.stats, Arc::clone(&calls)).map_err(Failure::Startup)?;
    let mut client = Client {
        address,
        request,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        timeout: Duration::from_millis(args.timeout_ms),
        requests_per_connection: args.requests_per_connection,
        connection: None,
        last_error: String::new(),
    };
    let mut ticker = pacer(period);
    let mut attempts = 0;
    while args.count.is_none_or(|count| attempts < count) {
        tokio::select! {
            biased;
            () = shutdown.requested() => break,
            _ = ticker.tick() => {}
        }
        // Not raced against the signal: an attempt that started is finished and counted,
        // bounded by the two timeouts.
        attempts += 1;
        bump(&calls.attempts);
        let outcome = client.attempt(&calls).await;
        bump(outcome.counter(&calls));
    }
    reporter.finish().map_err(Failure::Runtime)
}

/// `GET` as curl sends it: HTTP/1.1, so the connection stays open unless a side closes it.
fn request_bytes(target: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        path.starts_with('/')
            && !path.bytes().any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control()),
        "--path must start with / and contain no spaces or control characters, got {path:?}"
    );
    anyhow::ensure!(
        !target.bytes().any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control()),
        "--target must be HOST:PORT, got {target:?}"
    );
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: cniguard-workload\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    HttpError,
    Refused,
    ConnectTimeout,
    Reset,
    Timeout,
    Other,
}

impl Outcome {
    fn counter(self, calls: &Calls) -> &AtomicU64 {
        match self {
            Self::Ok => &calls.ok,
            Self::HttpError => &calls.http_errors,
            Self::Refused => &calls.refused,
            Self::ConnectTimeout => &calls.connect_timeouts,
            Self::Reset => &calls.resets,
            Self::Timeout => &calls.timeouts,
            Self::Other => &calls.other_errors,
        }
    }
}

struct Client {
    address: SocketAddr,
    request: Vec<u8>,
    connect_timeout: Duration,
    timeout: Duration,
    requests_per_connection: u64,
    connection: Option<Connection>,
    /// The last unexpected error printed: a lasting failure is reported once, not at the
    /// request rate.
    last_error: String,
}

struct Connection {
    stream: TcpStream,
    /// Bytes read but not yet consumed.
    buffer: Vec<u8>,
    requests: u64,
}

impl Client {
    async fn attempt(&mut self, calls: &Calls) -> Outcome {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.address)).await {
                    Err(_) => return Outcome::ConnectTimeout,
                    Ok(Err(err)) => {
                        return match err.kind() {
                            std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
                            std::io::ErrorKind::TimedOut => Outcome::ConnectTimeout,
                            _ => self.unexpected(format!("connecting to {}: {err}", self.address)),
                        };
                    }
                    Ok(Ok(stream)) => {
                        bump(&calls.connections_opened);
                        Connection { stream, buffer: Vec::with_capacity(4096), requests: 0 }
                    }
                }
            }
        };
        let response = match tokio::time::timeout(self.timeout, connection.exchange(&self.request)).await {
            Err(_) => return Outcome::Timeout,
            Ok(Err(ExchangeError::Reset)) => return Outcome::Reset,
            Ok(Err(ExchangeError::Other(message))) => return self.unexpected(message),
            Ok(Ok(response)) => response,
        };
        connection.requests += 1;
        let used_up = self.requests_per_connection > 0 && connection.requests >= self.requests_per_connection;
        if response.keep_alive && !used_up {
            self.connection = Some(connection);
        }
        if (200..300).contains(&response.status) { Outcome::Ok } else { Outcome::HttpError }
    }

    fn unexpected(&mut self, message: String) -> Outcome {
        if message != self.last_error {
            eprintln!("agent: {message}");
            self.last_error = message;
        }
        Outcome::Other
    }
}

/// One HTTP/1.1 keep-alive connection of the Seldon agent's (`seldon_agent`): the same
/// client as the health-check loop's, one request at a time.
pub(crate) struct KeepAlive(Connection);

impl KeepAlive {
    pub(crate) async fn open(address: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        Ok(Self(Connection { stream, buffer: Vec::with_capacity(4096), requests: 0 }))
    }

    /// Sends `request` and reads the whole response: its status, and whether the
    /// connection stays open. `Err(true)` when the peer reset or closed it.
    pub(crate) async fn call(&mut self, request: &[u8]) -> Result<(u16, bool), (bool, String)> {
        match self.0.exchange(request).await {
            Ok(response) => Ok((response.status, response.keep_alive)),
            Err(ExchangeError::Reset) => Err((true, "reset".into())),
            Err(ExchangeError::Other(message)) => Err((false, message)),
        }
    }
}

/// A V2 inference `POST` with a JSON body, keep-alive.
pub(crate) fn post_bytes(target: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: cniguard-workload\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

enum ExchangeError {
    /// The peer reset or closed the connection before the whole response.
    Reset,
    Other(String),
}

impl From<std::io::Error> for ExchangeError {
    fn from(err: std::io::Error) -> Self {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match err.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Self::Reset,
            _ => Self::Other(err.to_string()),
        }
    }
}

struct Response {
    status: u16,
    keep_alive: bool,
}

impl Connection {
    /// Sends one request and reads its whole response.
    async fn exchange(&mut self, request: &[u8]) -> Result<Response, ExchangeError> {
        self.stream.write_all(request).await?;
        let head = loop {
            match parse_head(&self.buffer) {
                Err(err) => return Err(ExchangeError::Other(format!("bad response: {err:?}"))),
                Ok(None) => self.fill().await?,
                Ok(Some(head)) => {
                    self.buffer.drain(..head.length);
                    if !head.is_interim() {
                        break head;
                    }
                }
            }
        };
        match head.body {
            BodyLength::Known(length) => {
                let mut remaining = length;
                loop {
                    let available = usize::try_from(remaining).unwrap_or(usize::MAX).min(self.buffer.len());
                    self.buffer.drain(..available);
                    remaining -= available as u64;
                    if remaining == 0 {
                        break;
                    }
                    self.fill().await?;
                }
            }
            BodyLength::UntilClose => {
                while self.stream.read_buf(&mut self.buffer).await? > 0 {
                    self.buffer.clear();
                }
            }
        }
        Ok(Response { status: head.status, keep_alive: head.keep_alive })
    }

    /// Reads more of the response; the end of the stream here is the middle of a response.
    async fn fill(&mut self) -> Result<(), ExchangeError> {
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(ExchangeError::Reset);
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    body: BodyLength,
    keep_alive: bool,
    /// Bytes of the status line and headers, the blank line included.
    length: usize,
}

impl ResponseHead {
    /// 1xx answers come before the real one (101 is refused while parsing: never asked for).
    fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum BodyLength {
    Known(u64),
    /// No Content-Length: the body ends when the server closes the connection.
    UntilClose,
}

#[derive(Debug, PartialEq, Eq)]
enum HttpError {
    HeadTooLong,
    NotText,
    StatusLine,
    Header,
    ContentLength,
    /// Chunked bodies and protocol switches: never sent by MLServer to this client.
    Unsupported(&'static str),
}

/// Parses a response's status line and headers from the start of `buffer`; `None` while
/// they are incomplete.
fn parse_head(buffer: &[u8]) -> Result<Option<ResponseHead>, HttpError> {
    let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") else {
        return if buffer.len() > MAX_HEAD_BYTES { Err(HttpError::HeadTooLong) } else { Ok(None) };
    };
    if end > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLong);
    }
    let text = std::str::from_utf8(&buffer[..end]).map_err(|_| HttpError::NotText)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, rest) = status_line.split_once(' ').ok_or(HttpError::StatusLine)?;
    let http_1_0 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(HttpError::StatusLine),
    };
    let code = rest.split_once(' ').map_or(rest, |(code, _reason)| code);
    if code.len() != 3 || !code.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(HttpError::StatusLine);
    }
    let status: u16 = code.parse().map_err(|_| HttpError::StatusLine)?;
    if status == 101 {
        return Err(HttpError::Unsupported("101 Switching Protocols"));
    }

    let mut content_length = None;
    let mut close = false;
    let mut keep_alive_asked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HttpError::Header)?;
        if name.is_empty() || name.bytes().any(|byte| byte.is_ascii_whitespace()) {
            return Err(HttpError::Header);
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length: u64 = value.parse().map_err(|_| HttpError::ContentLength)?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(HttpError::ContentLength);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Unsupported("Transfer-Encoding"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_asked |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyLength::Known(0)
    } else {
        content_length.map_or(BodyLength::UntilClose, BodyLength::Known)
    };
    let keep_alive = !close && (!http_1_0 || keep_alive_asked) && !matches!(body, BodyLength::UntilClose);
    Ok(Some(ResponseHead { status, body, keep_alive, length: end + 4 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<ResponseHead>, HttpError> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn parses_mlserver_ready_answer() {
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        assert_eq!(
            head(text),
            Ok(Some(ResponseHead {
                status: 200,
                body: BodyLength::Known(0),
                keep_alive: true,
                length: text.len()
            }))
        );
    }

    #[test]
    fn head_length_excludes_the_body_that_follows() {
        let parsed = head("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found").unwrap().unwrap();
        assert_eq!((parsed.status, parsed.body, parsed.length), (404, BodyLength::Known(9), 45));
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        assert_eq!(head(""), Ok(None));
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"), Ok(None));
    }

    #[test]
    fn connection_close_and_http_1_0_end_the_connection() {
        let close =
            head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n").unwrap().unwrap();
        assert!(!close.keep_alive);
        let old = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive);
        let old_kept = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n");
        assert!(old_kept.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn no_content_length_reads_until_close() {
        let parsed = head("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((parsed.body, parsed.keep_alive), (BodyLength::UntilClose, false));
        let no_content = head("HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!((no_content.body, no_content.keep_alive), (BodyLength::Known(0), true));
    }

    #[test]
    fn interim_answers_are_recognised() {
        assert!(head("HTTP/1.1 100 Continue\r\n\r\n").unwrap().unwrap().is_interim());
        assert!(head("HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
    }

    #[test]
    fn rejects_what_is_not_an_http_1_response() {
        for text in [
            "SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "HTTP/2 200\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(head(text).is_err(), "{text:?} was accepted");
        }
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n"), Err(HttpError::NotText));
        assert_eq!(parse_head(&vec![b'a'; MAX_HEAD_BYTES + 1]), Err(HttpError::HeadTooLong));
    }

    #[test]
    fn status_line_without_reason_is_fine() {
        assert_eq!(head("HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap().status, 503);
    }

    #[test]
    fn request_is_what_curl_sends() {
        let request = request_bytes("127.0.0.1:9500", "/v2/health/ready").unwrap();
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1:9500\r\nUser-Agent: cniguard-workload\r\n\
             Accept: */*\r\n\r\n"
        );
        assert!(request_bytes("127.0.0.1:9500", "v2/health").is_err());
        assert!(request_bytes("127.0.0.1:9500", "/v2/health ready").is_err());
        assert!(request_bytes("127.0.0.1:9500", "/a\r\nX: y").is_err());
    }
}
