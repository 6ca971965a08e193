//! The HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, `/readyz`,
//! `/status` (JSON, read by `cniguard status`), `/diagnose`, and the live page (`/`, its
//! files, and `/live.json`: see `crate::live`). Every one is read-only (GET and HEAD).
//!
//! Bounded against slow or many clients: at most [`MAX_CONNECTIONS`] at once (more are
//! closed at once and counted in `cniguard_http_connections_refused_total`), request
//! headers within [`HEADER_TIMEOUT`] (also the idle limit between keep-alive requests), and
//! a connection lives at most [`CONNECTION_LIFETIME`], then gets [`GRACE`] to finish its
//! answer. The endpoints read no request body.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::live::page;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this, and so must the next request's.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is asked to close after this long, answer in flight or not.
pub const CONNECTION_LIFETIME: Duration = Duration::from_mins(2);
/// What a closing connection (at its lifetime's end, or on shutdown) gets to finish.
pub const GRACE: Duration = Duration::from_secs(5);

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
    let refused = crate::metrics::catalogue::HTTP_CONNECTIONS_REFUSED_TOTAL
        .int_counter_vec()
        .map_err(std::io::Error::other)?;
    let _ = endpoints.registry.register(Box::new(refused.clone()));
    let refused = refused.with_label_values::<&str>(&[]);
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/diagnose", get(diagnose))
        .route("/live.json", get(live))
        .route("/report-template.html", get(report_template));
    for asset in std::iter::once(&page::INDEX).chain(page::FILES) {
        let asset = *asset;
        app = app.route(asset.path, get(move || async move { page_file(asset.content_type, asset.body) }));
    }
    let app = app.with_state(endpoints);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, most likely: wait, never spin or give up.
                    tracing::warn!("accepting an HTTP connection failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused.inc();
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stopping.wait_for(|stop| *stop) => {}
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACE, connection).await;
        });
    }
    let _ = stop.send(true);
    #[allow(clippy::cast_possible_truncation, reason = "MAX_CONNECTIONS is 64")]
    let all = MAX_CONNECTIONS as u32;
    let _ = tokio::time::timeout(GRACE + Duration::from_secs(1), permits.acquire_many(all)).await;
    Ok(())
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

async fn diagnose(State(endpoints): State<Endpoints>) -> axum::response::Response {
    match endpoints.status.get() {
        Some(sources) => {
            let report = crate::diagnose::Report { node: sources.node.clone(), findings: sources.findings() };
            match serde_json::to_vec(&report) {
                Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
                Err(err) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the findings failed: {err}\n"))
                        .into_response()
                }
            }
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting: the probes are loading\n").into_response(),
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

/// The headers every file of the live page is served with.
fn page_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, page::CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ]
}

fn page_file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (page_headers(content_type), body)
}

/// The page in one file, to save: an attachment, never run in the daemon's origin.
async fn report_template() -> impl IntoResponse {
    (
        page_headers("text/html; charset=utf-8"),
        [(header::CONTENT_DISPOSITION, "attachment; filename=\"cniguard-report.html\"")],
        page::report_template(),
    )
}

async fn live(State(endpoints): State<Endpoints>) -> axum::response::Response {
    let Some(sources) = endpoints.status.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting: the probes are loading\n").into_response();
    };
    match serde_json::to_vec(&crate::live::snapshot(sources.snapshot(), &sources.history)) {
        Ok(body) => (page_headers("application/json"), body).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the live data failed: {err}\n"))
            .into_response(),
    }
}
