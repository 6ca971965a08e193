//! The HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and
//! `/status` (JSON, read by `cniguard status`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct Endpoints {
    pub registry: Registry,
    /// Set once the eBPF programs are loaded and the first attach pass is done.
    pub ready: Arc<AtomicBool>,
    /// Rewrites what is gathered before it is encoded (cluster mode adds pod labels there).
    pub rewriter: Rewriter,
    pub status: crate::judgement::status::SharedSources,
}

/// A rewrite of the gathered families, set at most once, after the server has started.
pub type Rewriter = Arc<OnceLock<Box<dyn Fn(&mut [MetricFamily]) + Send + Sync>>>;

/// Serves until `shutdown` completes.
///
/// # Errors
/// If accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(endpoints);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let mut families = endpoints.registry.gather();
    if let Some(rewrite) = endpoints.rewriter.get() {
        rewrite(&mut families);
    }
    exposition(&families)
}

/// The families in Prometheus' text format, as a `/metrics` answer (also the rollback
/// hook's).
#[must_use]
pub fn exposition(
    families: &[prometheus::proto::MetricFamily],
) -> (StatusCode, [(header::HeaderName, String); 1], Vec<u8>) {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(families, &mut body) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, encoder.format_type().to_owned())], body),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            format!("encoding metrics failed: {err}\n").into_bytes(),
        ),
    }
}

async fn readyz(State(endpoints): State<Endpoints>) -> (StatusCode, &'static str) {
    if endpoints.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading eBPF programs\n")
    }
}

async fn status(State(endpoints): State<Endpoints>) -> axum::response::Response {
    match endpoints.status.get() {
        Some(sources) => match serde_json::to_vec(&sources.snapshot()) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the status failed: {err}\n"))
                .into_response(),
        },
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting: the probes are loading\n").into_response(),
    }
}
