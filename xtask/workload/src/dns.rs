//! A pod's resolver: type A queries over UDP at a fixed rate, each answer classified by its
//! RCODE once it is certain to be the answer to that query.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use tokio::net::UdpSocket;

use crate::stats::{Reporter, bump, counters};
use crate::{Failure, Shutdown, pacer, period_of};

pub const KIND: &str = "dns-client";

const HEADER_BYTES: usize = 12;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
/// Flags of a standard query with recursion desired.
const FLAGS_RD: u16 = 0x0100;

#[derive(clap::Args)]
pub struct Args {
    /// The DNS server.
    #[arg(long, value_name = "IP:PORT")]
    server: SocketAddr,
    /// A name to resolve; repeat for several, queried in turn.
    #[arg(long = "name", value_name = "NAME", required = true)]
    names: Vec<String>,
    /// Queries per second.
    #[arg(long, value_name = "R")]
    rate: f64,
    /// Stop after N queries and exit.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// How long to wait for each answer.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
    /// Stats file, rewritten atomically.
    #[arg(long, value_name = "FILE")]
    stats: PathBuf,
}

counters! {
    /// Every query ends in exactly one of the other counters, so they add up to `queries`
    /// once the client has stopped.
    struct Resolutions {
        queries,
        noerror,
        nxdomain,
        servfail,
        refused,
        other_rcode,
        /// No answer within --timeout-ms.
        timeouts,
        /// An answer too short, or not to this query (id, flags or question differ).
        malformed,
        /// The kernel refused to send, or reported an ICMP error (port or host
        /// unreachable) for the query.
        socket_errors,
    }
}

pub async fn run(args: Args, mut shutdown: Shutdown) -> Result<(), Failure> {
    let period = period_of(args.rate).map_err(Failure::Startup)?;
    let queries: Vec<Vec<u8>> = args
        .names
        .iter()
        .map(|name| encode_query(0, name).map_err(|err| anyhow!("--name {name:?}: {err}")))
        .collect::<Result<_, _>>()
        .map_err(Failure::Startup)?;
    let counts = Arc::new(Resolutions::default());
    let reporter = Reporter::start(KIND, &args.stats, Arc::clone(&counts)).map_err(Failure::Startup)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut id = initial_id();
    let mut last_error = String::new();
    let mut ticker = pacer(period);
    let mut templates = queries.iter().cycle();
    let mut sent = 0;
    while args.count.is_none_or(|count| sent < count) {
        tokio::select! {
            biased;
            () = shutdown.requested() => break,
            _ = ticker.tick() => {}
        }
        sent += 1;
        bump(&counts.queries);
        id = id.wrapping_add(1);
        let mut query = templates.next().expect("cycling over at least one name").clone();
        query[..2].copy_from_slice(&id.to_be_bytes());
        let outcome = match resolve(args.server, &query, timeout).await {
            Ok(Some(answer)) => classify(&query, &answer),
            Ok(None) => Outcome::Timeout,
            Err(err) => {
                let message = err.to_string();
                if message != last_error {
                    eprintln!("dns-client: query to {}: {message}", args.server);
                    last_error = message;
                }
                Outcome::SocketError
            }
        };
        bump(outcome.counter(&counts));
    }
    reporter.finish().map_err(Failure::Runtime)
}

/// A different starting id per run, so that two runs' queries are not identical.
fn initial_id() -> u16 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let [low, high, ..] = (nanos ^ std::process::id()).to_le_bytes();
    u16::from_le_bytes([low, high])
}

/// Sends one query from a fresh socket and waits for one answer. A fresh socket (a new
/// source port, as glibc's resolver uses) means a late answer to an earlier query lands on
/// a closed port and can never be taken for the answer to this one.
async fn resolve(server: SocketAddr, query: &[u8], timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
    let local: SocketAddr =
        if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone but the server, and reports the
    // server's ICMP errors.
    socket.connect(server).await?;
    socket.send(query).await?;
    // Only the header and the question are read; a longer answer may be cut off here.
    let mut answer = vec![0; 4096];
    match tokio::time::timeout(timeout, socket.recv(&mut answer)).await {
        Err(_) => {
            // The lab pauses clients with SIGSTOP: on SIGCONT the timer may fire before the
            // runtime has seen the answer that arrived meanwhile. Ask the socket itself.
            let socket = socket.into_std()?;
            socket.set_nonblocking(true)?;
            match socket.recv(&mut answer) {
                Ok(received) => {
                    answer.truncate(received);
                    Ok(Some(answer))
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(err) => Err(err),
            }
        }
        Ok(received) => {
            answer.truncate(received?);
            Ok(Some(answer))
        }
    }
}

/// The query for the A record of `name`, with recursion desired.
fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("empty name".into());
    }
    let mut query = Vec::with_capacity(HEADER_BYTES + name.len() + 6);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&FLAGS_RD.to_be_bytes());
    // One question, no answer, authority or additional records.
    query.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        let length = u8::try_from(label.len()).ok().filter(|&length| (1..=63).contains(&length));
        let length = length.ok_or_else(|| format!("label {label:?} must have 1 to 63 bytes"))?;
        query.push(length);
        query.extend_from_slice(label.as_bytes());
    }
    query.push(0);
    if query.len() - HEADER_BYTES > 255 {
        return Err("longer than 255 bytes".into());
    }
    query.extend_from_slice(&TYPE_A.to_be_bytes());
    query.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(query)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    NoError,
    NxDomain,
    ServFail,
    Refused,
    OtherRcode,
    Timeout,
    Malformed,
    SocketError,
}

impl Outcome {
    fn counter(self, counts: &Resolutions) -> &AtomicU64 {
        match self {
            Self::NoError => &counts.noerror,
            Self::NxDomain => &counts.nxdomain,
            Self::ServFail => &counts.servfail,
            Self::Refused => &counts.refused,
            Self::OtherRcode => &counts.other_rcode,
            Self::Timeout => &counts.timeouts,
            Self::Malformed => &counts.malformed,
            Self::SocketError => &counts.socket_errors,
        }
    }
}

/// Classifies `answer` as the answer to `query` (one built by [`encode_query`]): only a
/// response with the query's id, opcode and question is read for its RCODE.
fn classify(query: &[u8], answer: &[u8]) -> Outcome {
    let question = &query[HEADER_BYTES..];
    if answer.len() < HEADER_BYTES + question.len() {
        return Outcome::Malformed;
    }
    let is_response = answer[2] & 0x80 != 0;
    let opcode = (answer[2] >> 3) & 0x0f;
    let question_count = u16::from_be_bytes([answer[4], answer[5]]);
    // Servers may change the case of the name (0x20 encoding). Only the name's letters can
    // differ in case: label lengths (< 64), type and class (1) are never ASCII letters.
    let same_question = answer[HEADER_BYTES..HEADER_BYTES + question.len()].eq_ignore_ascii_case(question);
    if answer[..2] != query[..2] || !is_response || opcode != 0 || question_count != 1 || !same_question {
        return Outcome::Malformed;
    }
    match answer[3] & 0x0f {
        0 => Outcome::NoError,
        2 => Outcome::ServFail,
        3 => Outcome::NxDomain,
        5 => Outcome::Refused,
        _ => Outcome::OtherRcode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "mlserver.financial-ml.svc.cluster.local";

    /// The answer a server gives to `query`: same id and question, QR set, `rcode`, plus one
    /// A record (which the client does not read).
    fn answer_to(query: &[u8], rcode: u8) -> Vec<u8> {
        let mut answer = query.to_vec();
        answer[2] = 0x81; // QR, RD
        answer[3] = 0x80 | rcode; // RA
        answer[7] = 1; // one answer record
        answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 244, 1, 10]);
        answer
    }

    #[test]
    fn query_encoding_matches_the_wire_format() {
        let query = encode_query(0xbeef, "a.svc.").unwrap();
        assert_eq!(
            query,
            [
                0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, // header: id, RD, one question
                1, b'a', 3, b's', b'v', b'c', 0, // name
                0, 1, 0, 1, // type A, class IN
            ]
        );
        assert_eq!(encode_query(7, NAME).unwrap().len(), HEADER_BYTES + NAME.len() + 2 + 4);
    }

    #[test]
    fn query_encoding_rejects_bad_names() {
        assert!(encode_query(1, "").is_err());
        assert!(encode_query(1, ".").is_err());
        assert!(encode_query(1, "a..b").is_err());
        assert!(encode_query(1, &"x".repeat(64)).is_err());
        assert!(encode_query(1, &"x".repeat(63)).is_ok());
        let long = vec!["x".repeat(63); 4].join(".");
        assert!(encode_query(1, &long).is_err());
        assert!(encode_query(1, &long[2..]).is_ok());
    }

    #[test]
    fn rcodes_are_classified() {
        let query = encode_query(0x1234, NAME).unwrap();
        for (rcode, outcome) in [
            (0, Outcome::NoError),
            (2, Outcome::ServFail),
            (3, Outcome::NxDomain),
            (5, Outcome::Refused),
            (1, Outcome::OtherRcode),
            (4, Outcome::OtherRcode),
        ] {
            assert_eq!(classify(&query, &answer_to(&query, rcode)), outcome, "rcode {rcode}");
        }
    }

    #[test]
    fn a_question_in_another_case_still_matches() {
        let query = encode_query(0x1234, NAME).unwrap();
        let mut answer = answer_to(&query, 0);
        answer[HEADER_BYTES + 1..HEADER_BYTES + 9].make_ascii_uppercase();
        assert_eq!(classify(&query, &answer), Outcome::NoError);
    }

    #[test]
    fn short_garbage_and_foreign_answers_are_malformed() {
        let query = encode_query(0x1234, NAME).unwrap();
        let good = answer_to(&query, 3);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("header only", good[..HEADER_BYTES].to_vec()),
            ("question cut short", good[..query.len() - 1].to_vec()),
            ("garbage", b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
        ];
        let mut edit = |what: &'static str, change: fn(&mut Vec<u8>)| {
            let mut answer = good.clone();
            change(&mut answer);
            cases.push((what, answer));
        };
        edit("other id", |answer| answer[1] ^= 1);
        edit("a query, not a response", |answer| answer[2] &= 0x7f);
        edit("other opcode", |answer| answer[2] |= 2 << 3);
        edit("no question", |answer| answer[5] = 0);
        edit("two questions", |answer| answer[5] = 2);
        edit("other name", |answer| answer[HEADER_BYTES + 1] = b'n');
        edit("other type", |answer| answer[query_type_offset()] = 28);
        for (what, answer) in cases {
            assert_eq!(classify(&query, &answer), Outcome::Malformed, "{what}");
        }
    }

    fn query_type_offset() -> usize {
        HEADER_BYTES + NAME.len() + 2 + 1
    }

    #[test]
    fn the_id_only_changes_the_first_two_bytes() {
        let a = encode_query(1, NAME).unwrap();
        let b = encode_query(2, NAME).unwrap();
        assert_eq!(a[2..], b[2..]);
    }
}
