//! What Seldon Core v2's agent does to its MLServer on the pod's loopback, against the real
//! MLServer: over gRPC (HTTP/2, through the `h2` crate, one connection as the agent keeps
//! one) `ServerReady`, then `RepositoryModelLoad` of the model, then rounds of M concurrent
//! `ModelInfer` streams of K calls each, multiplexed on that one connection; and over
//! HTTP/1.1 keep-alive on the HTTP port, N `POST /v2/models/<model>/infer` per round. Every
//! call is counted in exactly one outcome.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use tokio::net::TcpStream;

use crate::agent::{KeepAlive, post_bytes};
use crate::stats::{Reporter, bump, counters};
use crate::{Failure, Shutdown, pacer, period_of};

pub const KIND: &str = "seldon-agent";

const SERVICE: &str = "/inference.GRPCInferenceService";

#[derive(clap::Args)]
pub struct Args {
    /// MLServer's gRPC port, HOST:PORT (Seldon v2: 127.0.0.1:9500).
    #[arg(long, value_name = "HOST:PORT")]
    grpc: SocketAddr,
    /// MLServer's HTTP port (Seldon v2: 127.0.0.1:9000); none: no HTTP calls.
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<SocketAddr>,
    /// The model to load and call.
    #[arg(long, default_value = "slow")]
    model: String,
    /// Concurrent ModelInfer streams per round, on the one connection.
    #[arg(long, value_name = "M", default_value_t = 1)]
    streams: u64,
    /// Sequential ModelInfer calls per stream per round.
    #[arg(long, value_name = "K", default_value_t = 1)]
    calls: u64,
    /// HTTP/1.1 infer calls per round, one after another on one keep-alive connection.
    #[arg(long, value_name = "N", default_value_t = 0)]
    http_calls: u64,
    /// Rounds per second.
    #[arg(long, value_name = "R", default_value_t = 1.0)]
    rate: f64,
    /// Stop after this many rounds and exit; none: until stopped.
    #[arg(long, value_name = "N")]
    rounds: Option<u64>,
    /// How long one call may take.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
    /// No ServerReady and model load first (another agent did them): only the calls.
    #[arg(long)]
    skip_setup: bool,
    /// After the first round, keep the connections open and make no call until FILE
    /// exists (a test restarts cniguard meanwhile, so that it meets them already open).
    #[arg(long, value_name = "FILE")]
    resume_file: Option<PathBuf>,
    /// Stats file, rewritten atomically.
    #[arg(long, value_name = "FILE")]
    stats: PathBuf,
}

counters! {
    /// Every call ends in exactly one of its protocol's `_ok`, `_errors` or `_failures`.
    struct Tally {
        /// ServerReady calls that said ready.
        server_ready,
        /// RepositoryModelLoad calls that succeeded.
        model_loads,
        grpc_calls,
        /// grpc-status 0.
        grpc_ok,
        /// Another grpc-status (the model not loaded, say).
        grpc_errors,
        /// No answer: refused, reset, timed out, not HTTP/2.
        grpc_failures,
        grpc_connections_opened,
        http_calls,
        /// 2xx.
        http_ok,
        /// Other statuses.
        http_errors,
        /// No answer: refused, reset, timed out.
        http_failures,
        http_connections_opened,
        rounds,
    }
}

pub async fn run(args: Args, mut shutdown: Shutdown) -> Result<(), Failure> {
    let period = period_of(args.rate).map_err(Failure::Startup)?;
    if args.streams == 0 || args.calls == 0 {
        return Err(Failure::Startup(anyhow!("--streams and --calls must be at least 1")));
    }
    let tally = Arc::new(Tally::default());
    let reporter = Reporter::start(KIND, &args.stats, Arc::clone(&tally)).map_err(Failure::Startup)?;
    let mut agent = Agent {
        timeout: Duration::from_millis(args.timeout_ms),
        infer: Bytes::from(model_infer_request(&args.model)),
        http_request: args.http.map(|address| {
            let body = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.0]}]}"#;
            post_bytes(&address.to_string(), &format!("/v2/models/{}/infer", args.model), body)
        }),
        grpc: None,
        http: None,
        started: args.skip_setup,
        tally,
    };
    let mut ticker = pacer(period);
    let mut rounds = 0;
    while args.rounds.is_none_or(|limit| rounds < limit) {
        tokio::select! {
            biased;
            () = shutdown.requested() => break,
            _ = ticker.tick() => {}
        }
        agent.connect(&args).await;
        agent.grpc_round(args.streams, args.calls).await;
        if let Some(address) = args.http {
            agent.http_round(address, args.http_calls).await;
        }
        rounds += 1;
        bump(&agent.tally.rounds);
        if rounds == 1
            && let Some(file) = &args.resume_file
        {
            while !file.exists() {
                tokio::select! {
                    biased;
                    () = shutdown.requested() => return reporter.finish().map_err(Failure::Runtime),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    }
    reporter.finish().map_err(Failure::Runtime)
}

struct Agent {
    timeout: Duration,
    infer: Bytes,
    http_request: Option<Vec<u8>>,
    grpc: Option<Grpc>,
    http: Option<KeepAlive>,
    /// ServerReady and the model load done (once, on the first connection).
    started: bool,
    tally: Arc<Tally>,
}

impl Agent {
    /// The gRPC connection, and before the first round what the agent does before it
    /// serves: is the server up, then load the model.
    async fn connect(&mut self, args: &Args) {
        if self.grpc.is_none() {
            // Bounded as a call is: a connect whose SYNs are dropped would otherwise wait
            // out the kernel's retries (minutes), and the HTTP calls with it.
            match tokio::time::timeout(self.timeout, Grpc::open(args.grpc)).await {
                Ok(Ok(client)) => {
                    bump(&self.tally.grpc_connections_opened);
                    self.grpc = Some(client);
                }
                Ok(Err(err)) => eprintln!("seldon-agent: gRPC connect to {}: {err:#}", args.grpc),
                Err(_) => eprintln!("seldon-agent: gRPC connect to {}: timed out", args.grpc),
            }
        }
        let Some(client) = self.grpc.as_ref().filter(|_| !self.started) else { return };
        let ready = client.unary("ServerReady", Bytes::new(), self.timeout).await;
        if matches!(&ready, Ok(Some(message)) if message.as_ref() == [0x08, 0x01]) {
            bump(&self.tally.server_ready);
        }
        let load = Bytes::from(load_request(&args.model));
        if matches!(client.unary("RepositoryModelLoad", load, self.timeout).await, Ok(Some(_))) {
            bump(&self.tally.model_loads);
        }
        self.started = true;
    }

    /// `streams` concurrent streams of `calls` ModelInfer each, on the one connection.
    async fn grpc_round(&mut self, streams: u64, calls: u64) {
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..streams {
            let (client, tally, infer, timeout) =
                (self.grpc.clone(), Arc::clone(&self.tally), self.infer.clone(), self.timeout);
            running.spawn(async move {
                let mut broken = false;
                for _ in 0..calls {
                    bump(&tally.grpc_calls);
                    let outcome = match &client {
                        Some(client) => client.unary("ModelInfer", infer.clone(), timeout).await,
                        None => Err(anyhow!("no connection")),
                    };
                    match outcome {
                        Ok(Some(_)) => bump(&tally.grpc_ok),
                        Ok(None) => bump(&tally.grpc_errors),
                        Err(_) => {
                            bump(&tally.grpc_failures);
                            broken = true;
                        }
                    }
                }
                broken
            });
        }
        let mut broken = false;
        while let Some(ended) = running.join_next().await {
            broken |= ended.unwrap_or(true);
        }
        if broken {
            // Reconnect next round, as the agent's gRPC client does.
            self.grpc = None;
        }
    }

    /// `calls` infer POSTs one after another on the keep-alive connection.
    async fn http_round(&mut self, address: SocketAddr, calls: u64) {
        let Some(request) = self.http_request.as_deref() else { return };
        for _ in 0..calls {
            bump(&self.tally.http_calls);
            if self.http.is_none() {
                let Ok(Ok(connection)) = tokio::time::timeout(self.timeout, KeepAlive::open(address)).await
                else {
                    bump(&self.tally.http_failures);
                    continue;
                };
                bump(&self.tally.http_connections_opened);
                self.http = Some(connection);
            }
            let Some(connection) = self.http.as_mut() else { continue };
            let Ok(Ok((status, keep_alive))) =
                tokio::time::timeout(self.timeout, connection.call(request)).await
            else {
                bump(&self.tally.http_failures);
                self.http = None;
                continue;
            };
            bump(if (200..300).contains(&status) { &self.tally.http_ok } else { &self.tally.http_errors });
            if !keep_alive {
                self.http = None;
            }
        }
    }
}

/// One HTTP/2 connection to MLServer's gRPC port; clones share it (streams multiplexed).
#[derive(Clone)]
struct Grpc {
    client: h2::client::SendRequest<Bytes>,
    authority: String,
}

impl Grpc {
    async fn open(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (client, connection) = h2::client::handshake(stream).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { client, authority: address.to_string() })
    }

    /// One unary call: `Ok(Some(message))` on grpc-status 0, `Ok(None)` on another status,
    /// `Err` when no answer came.
    async fn unary(&self, method: &str, message: Bytes, timeout: Duration) -> anyhow::Result<Option<Bytes>> {
        tokio::time::timeout(timeout, self.exchange(method, message)).await.context("timed out")?
    }

    async fn exchange(&self, method: &str, message: Bytes) -> anyhow::Result<Option<Bytes>> {
        let mut client = self.client.clone().ready().await?;
        let request = http::Request::post(format!("http://{}{SERVICE}/{method}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let (response, mut send) = client.send_request(request, false)?;
        let mut framed = Vec::with_capacity(5 + message.len());
        framed.push(0);
        framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        framed.extend_from_slice(&message);
        send.send_data(framed.into(), true)?;
        let response = response.await?;
        let status_ok = |value: Option<&http::HeaderValue>| value.is_some_and(|status| status == "0");
        if let Some(status) = response.headers().get("grpc-status") {
            // Trailers-only: an error answered in the headers.
            return Ok(status_ok(Some(status)).then(Bytes::new));
        }
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?;
        if !status_ok(trailers.as_ref().and_then(|t| t.get("grpc-status"))) {
            return Ok(None);
        }
        Ok(Some(Bytes::from(data.split_off(5.min(data.len())))))
    }
}

/// Appends protobuf field `number` (length-delimited) holding `bytes`.
fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    out.push(number << 3 | 2);
    let mut length = bytes.len();
    while length >= 0x80 {
        out.push(u8::try_from(length & 0x7f).unwrap_or(0) | 0x80);
        length >>= 7;
    }
    out.push(u8::try_from(length).unwrap_or(0));
    out.extend_from_slice(bytes);
}

/// `RepositoryModelLoadRequest { model_name = 2 }`.
fn load_request(model: &str) -> Vec<u8> {
    let mut message = Vec::new();
    field(&mut message, 2, model.as_bytes());
    message
}

/// `ModelInferRequest { model_name, inputs: [x: FP32 [1] = 1.0] }`.
fn model_infer_request(model: &str) -> Vec<u8> {
    let mut contents = Vec::new();
    field(&mut contents, 6, &1.0_f32.to_le_bytes()); // fp32_contents, packed
    let mut input = Vec::new();
    field(&mut input, 1, b"x");
    field(&mut input, 2, b"FP32");
    field(&mut input, 3, &[1]); // shape, packed int64
    field(&mut input, 5, &contents);
    let mut message = Vec::new();
    field(&mut message, 1, model.as_bytes());
    field(&mut message, 5, &input);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_encode_as_protobuf_does() {
        // From the Python protobuf runtime MLServer ships (dataplane_pb2.ModelInferRequest).
        let expected = [
            0x0a, 0x04, b's', b'l', b'o', b'w', 0x2a, 0x14, 0x0a, 0x01, b'x', 0x12, 0x04, b'F', b'P', b'3',
            b'2', 0x1a, 0x01, 0x01, 0x2a, 0x06, 0x32, 0x04, 0x00, 0x00, 0x80, 0x3f,
        ];
        assert_eq!(model_infer_request("slow"), expected);
        assert_eq!(load_request("slow"), b"\x12\x04slow");
    }
}
