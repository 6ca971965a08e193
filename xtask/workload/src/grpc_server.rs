//! A gRPC server stand-in for where the real MLServer cannot run (the kernel matrix's
//! virtual machines have no Python): HTTP/2 with prior knowledge, every stream answered
//! after a known delay as a unary gRPC call is (response HEADERS, one empty message,
//! trailers with `grpc-status: 0`), with the count of what it answered.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::net::TcpStream;

use crate::stats::{Reporter, bump, counters};
use crate::{Failure, Shutdown};

pub const KIND: &str = "grpc-server";

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve on.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Milliseconds to wait before every answer (a known, injected latency).
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,
    /// Stats file, rewritten atomically.
    #[arg(long, value_name = "FILE")]
    stats: PathBuf,
}

counters! {
    struct Served {
        connections,
        /// Streams answered with grpc-status 0.
        calls,
        /// Streams that broke before their answer went out.
        broken,
    }
}

pub async fn run(args: Args, mut shutdown: Shutdown) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))
        .map_err(Failure::Startup)?;
    let served = Arc::new(Served::default());
    let reporter = Reporter::start(KIND, &args.stats, Arc::clone(&served)).map_err(Failure::Startup)?;
    let delay = Duration::from_millis(args.delay_ms);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.requested() => break,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                bump(&served.connections);
                connections.spawn(serve(socket, delay, Arc::clone(&served)));
            }
        }
    }
    connections.abort_all();
    reporter.finish().map_err(Failure::Runtime)
}

/// One connection: each stream answered in a task of its own, so that streams multiplexed
/// on it are answered concurrently, as a gRPC server does.
async fn serve(socket: TcpStream, delay: Duration, served: Arc<Served>) {
    let Ok(mut connection) = h2::server::handshake(socket).await else { return };
    while let Some(Ok((request, respond))) = connection.accept().await {
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let answered = answer(request, respond, delay).await;
            bump(if answered.is_ok() { &served.calls } else { &served.broken });
        });
    }
}

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    delay: Duration,
) -> anyhow::Result<()> {
    let mut body = request.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    tokio::time::sleep(delay).await;
    let response =
        http::Response::builder().status(200).header("content-type", "application/grpc").body(())?;
    let mut send = respond.send_response(response, false)?;
    // One length-prefixed message, empty: what a response with all fields unset encodes to.
    send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    send.send_trailers(trailers)?;
    Ok(())
}
