//! UDP datagrams at a fixed rate, and a sink that counts the ones that arrive: the lab's
//! known amounts of traffic between pods.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, anyhow};
use tokio::net::UdpSocket;

use crate::stats::{Reporter, bump, counters};
use crate::{Failure, Shutdown, pacer, period_of};

pub const SEND_KIND: &str = "udp-send";
pub const SINK_KIND: &str = "udp-sink";

/// The largest UDP payload over IPv4 (65535 - 20 - 8).
const MAX_PAYLOAD: i64 = 65_507;

#[derive(clap::Args)]
pub struct SendArgs {
    /// Where to send.
    #[arg(long, value_name = "IP:PORT")]
    to: SocketAddr,
    /// Source address to bind (default: chosen by the route to --to).
    #[arg(long, value_name = "IP")]
    from: Option<IpAddr>,
    /// Datagrams per second.
    #[arg(long, value_name = "R")]
    rate: f64,
    /// Stop after N datagrams and exit.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Payload bytes per datagram.
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = clap::value_parser!(u16).range(0..=MAX_PAYLOAD))]
    size: u16,
    /// Stats file, rewritten atomically.
    #[arg(long, value_name = "FILE")]
    stats: PathBuf,
}

#[derive(clap::Args)]
pub struct SinkArgs {
    /// Address to receive on.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Stats file, rewritten atomically.
    #[arg(long, value_name = "FILE")]
    stats: PathBuf,
}

counters! {
    /// `sent + send_errors` datagrams were attempted.
    struct Sent {
        sent,
        /// Refused by the local kernel (no route, firewall, full buffer).
        send_errors,
    }
}

counters! {
    struct Received {
        received,
        /// Payload bytes.
        bytes,
    }
}

pub async fn send(args: SendArgs, mut shutdown: Shutdown) -> Result<(), Failure> {
    let period = period_of(args.rate).map_err(Failure::Startup)?;
    let from = match (args.from, args.to) {
        (Some(from), to) if from.is_ipv4() != to.is_ipv4() => {
            return Err(Failure::Startup(anyhow!("--from {from} and --to {to} are not the same IP version")));
        }
        (Some(from), _) => from,
        (None, SocketAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
        (None, SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
    };
    // Not connected: an ICMP error for one datagram must not fail the next send.
    let socket = UdpSocket::bind((from, 0))
        .await
        .with_context(|| format!("cannot bind a UDP socket to {from}"))
        .map_err(Failure::Startup)?;
    let counts = Arc::new(Sent::default());
    let reporter = Reporter::start(SEND_KIND, &args.stats, Arc::clone(&counts)).map_err(Failure::Startup)?;
    let payload = vec![0x5a; usize::from(args.size)];
    let mut last_error = String::new();
    let mut ticker = pacer(period);
    let mut attempts = 0;
    while args.count.is_none_or(|count| attempts < count) {
        tokio::select! {
            biased;
            () = shutdown.requested() => break,
            _ = ticker.tick() => {}
        }
        attempts += 1;
        match socket.send_to(&payload, args.to).await {
            Ok(_) => bump(&counts.sent),
            Err(err) => {
                bump(&counts.send_errors);
                let message = err.to_string();
                if message != last_error {
                    eprintln!("udp-send: to {}: {message}", args.to);
                    last_error = message;
                }
            }
        }
    }
    reporter.finish().map_err(Failure::Runtime)
}

pub async fn sink(args: SinkArgs, mut shutdown: Shutdown) -> Result<(), Failure> {
    let socket = UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on UDP {}", args.listen))
        .map_err(Failure::Startup)?;
    let counts = Arc::new(Received::default());
    let reporter = Reporter::start(SINK_KIND, &args.stats, Arc::clone(&counts)).map_err(Failure::Startup)?;
    // Room for the largest datagram, so that `bytes` is never a truncated length.
    let mut buffer = vec![0; 65_536];
    let record = |length: usize| {
        bump(&counts.received);
        counts.bytes.fetch_add(length as u64, Ordering::Relaxed);
    };
    loop {
        tokio::select! {
            biased;
            () = shutdown.requested() => break,
            received = socket.recv_from(&mut buffer) => match received {
                Ok((length, _)) => record(length),
                Err(err) => eprintln!("udp-sink: {err}"),
            },
        }
    }
    // What is queued on the socket arrived before the signal: it counts too.
    while let Ok((length, _)) = socket.try_recv_from(&mut buffer) {
        record(length);
    }
    reporter.finish().map_err(Failure::Runtime)
}
