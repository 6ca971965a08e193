//! A Seldon MLServer stand-in: the V2 inference protocol's health and infer endpoints, over
//! HTTP/1.1 with keep-alive, as the agent in the same pod calls them on 127.0.0.1:9500.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::stats::{Reporter, bump, counters};
use crate::{Failure, Shutdown};

pub const KIND: &str = "mlserver";

/// How long in-flight requests may take to finish after SIGTERM: a client stopped in the
/// middle of a request must not keep the server from writing its final stats.
const GRACE: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve on; repeat for several.
    #[arg(long = "listen", value_name = "ADDR", required = true)]
    listen: Vec<SocketAddr>,
    /// Milliseconds to wait before every answer (a known, injected latency).
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,
    /// Stats file, rewritten atomically.
    #[arg(long, value_name = "FILE")]
    stats: PathBuf,
}

counters! {
    /// Requests answered, by route class.
    struct Served {
        /// Server and model readiness and liveness.
        health,
        infer,
        /// Everything else, wrong methods included.
        not_found,
    }
}

#[derive(Clone)]
struct Server {
    served: Arc<Served>,
    delay: Duration,
}

impl Server {
    /// Waits the injected latency, then counts the answer in `class`.
    async fn answer(&self, class: fn(&Served) -> &AtomicU64) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        bump(class(&self.served));
    }
}

pub async fn run(args: Args, mut shutdown: Shutdown) -> Result<(), Failure> {
    let mut listeners = Vec::with_capacity(args.listen.len());
    for address in &args.listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))
            .map_err(Failure::Startup)?;
        listeners.push(listener);
    }
    let served = Arc::new(Served::default());
    let reporter = Reporter::start(KIND, &args.stats, Arc::clone(&served)).map_err(Failure::Startup)?;
    let app = router(Server { served, delay: Duration::from_millis(args.delay_ms) });

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let mut stopped = stopped.clone();
        let serve = axum::serve(listener, app.clone()).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        servers.spawn(async move { serve.await });
    }
    let failure = tokio::select! {
        () = shutdown.requested() => None,
        // axum retries failed accepts itself: a server that ends on its own is broken.
        ended = servers.join_next() => Some(match ended {
            Some(Ok(Ok(()))) | None => anyhow!("a listener stopped serving"),
            Some(Ok(Err(err))) => anyhow::Error::from(err).context("serving"),
            Some(Err(err)) => anyhow::Error::from(err).context("serving"),
        }),
    };
    let _ = stop.send(true);
    let grace = GRACE + Duration::from_millis(args.delay_ms);
    if tokio::time::timeout(grace, async { while servers.join_next().await.is_some() {} }).await.is_err() {
        servers.abort_all();
    }
    let finished = reporter.finish();
    match failure {
        Some(err) => Err(Failure::Runtime(err)),
        None => finished.map_err(Failure::Runtime),
    }
}

fn router(server: Server) -> Router {
    Router::new()
        .route("/v2/health/ready", get(health))
        .route("/v2/health/live", get(health))
        .route("/v2/models/{name}/ready", get(health))
        .route("/v2/models/{name}/infer", post(infer))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(server)
}

/// MLServer answers its health checks with an empty 200.
async fn health(State(server): State<Server>) -> StatusCode {
    server.answer(|served| &served.health).await;
    StatusCode::OK
}

async fn not_found(State(server): State<Server>) -> StatusCode {
    server.answer(|served| &served.not_found).await;
    StatusCode::NOT_FOUND
}

async fn infer(State(server): State<Server>, Path(name): Path<String>, body: Bytes) -> Response {
    server.answer(|served| &served.infer).await;
    match inference_response(&name, &body) {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(message) => json_response(StatusCode::BAD_REQUEST, &json!({ "error": message })),
    }
}

/// The V2 response to an inference request: the inputs echoed as outputs, the request's
/// `id` kept when it has one.
fn inference_response(model_name: &str, body: &[u8]) -> Result<Value, String> {
    let request: Value = serde_json::from_slice(body).map_err(|err| format!("invalid JSON: {err}"))?;
    let inputs = request.get("inputs").filter(|inputs| inputs.is_array()).ok_or("no \"inputs\" array")?;
    let mut answer = json!({ "model_name": model_name, "outputs": inputs });
    if let Some(id) = request.get("id") {
        answer["id"] = id.clone();
    }
    Ok(answer)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_echoes_the_inputs_as_outputs() {
        let body =
            br#"{"id": "r1", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}"#;
        assert_eq!(
            inference_response("iris", body).unwrap(),
            json!({
                "model_name": "iris",
                "id": "r1",
                "outputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]
            })
        );
    }

    #[test]
    fn inference_rejects_invalid_json_and_missing_inputs() {
        assert!(inference_response("iris", b"{not json").unwrap_err().starts_with("invalid JSON"));
        assert_eq!(inference_response("iris", br#"{"id": 1}"#).unwrap_err(), "no \"inputs\" array");
    }
}
