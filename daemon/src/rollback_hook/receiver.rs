//! The hook's HTTP side, bounded against slow and hostile clients: the bearer token is
//! checked on the headers before a byte of the body is read; the body is capped
//! (`--max-body-bytes`, 413 above it); headers and body each have `--request-timeout-seconds`
//! to arrive; at most `--max-connections` are served at once (more wait in the listen
//! backlog); on stop, connections get a few seconds to finish and are then dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tower::ServiceExt as _;

use super::{Decision, Hook};

/// The limits on clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// How long open connections get to finish once the hook stops.
    pub drain: Duration,
}

/// Alertmanager's webhook payload (version 4), the fields the hook reads.
#[derive(Debug, Deserialize)]
pub(super) struct Payload {
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: Option<String>,
    /// Alertmanager's; absent in hand-made payloads, where the labels stand in for it.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl Alert {
    pub fn key(&self) -> String {
        match &self.fingerprint {
            Some(fingerprint) if !fingerprint.is_empty() => fingerprint.clone(),
            _ => format!("labels:{}", serde_json::to_string(&self.labels).unwrap_or_default()),
        }
    }
}

/// RFC 3339 with any offset (`Z`, `-05:00`, `+05:30`) as Unix seconds; Alertmanager's zero
/// time (`0001-01-01T00:00:00Z`, an `endsAt` not yet known) reads too.
pub(super) fn parse_time(text: &str) -> Result<f64, String> {
    let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|err| format!("not RFC 3339: {err}"))?;
    Ok(time.timestamp() as f64 + f64::from(time.timestamp_subsec_nanos()) / 1e9)
}

pub(super) fn router(hook: Arc<Hook>) -> Router {
    Router::new()
        .route(
            "/webhook",
            post(webhook).layer(axum::middleware::from_fn_with_state(hook.clone(), require_token)),
        )
        .route("/metrics", get(metrics_page))
        .route("/status", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(hook)
}

/// Rejects on the headers alone: the body of a request without the token is never read.
async fn require_token(
    State(hook): State<Arc<Hook>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|token| same(token.as_bytes(), hook.settings.token.as_bytes())) {
        return next.run(request).await;
    }
    hook.metrics.requests.with_label_values(&["unauthorized"]).inc();
    tracing::warn!(%peer, "refused a webhook request: {} bearer token; nothing runs", if presented.is_some() { "wrong" } else { "no" });
    let mut response = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
    // The body stays unread: tell the client the connection goes with it.
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

async fn webhook(
    State(hook): State<Arc<Hook>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let limits = hook.settings.limits;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let too_large = || {
        hook.metrics.requests.with_label_values(&["too_large"]).inc();
        tracing::warn!(%peer, "refused a webhook request over {} bytes (--max-body-bytes)", limits.max_body_bytes);
        (StatusCode::PAYLOAD_TOO_LARGE, format!("the body is limited to {} bytes\n", limits.max_body_bytes))
    };
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(limits.request_timeout, read_capped(body, limits.max_body_bytes))
        .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Broken(err))) => {
            hook.metrics.requests.with_label_values(&["bad_request"]).inc();
            return (StatusCode::BAD_REQUEST, format!("cannot read the body: {err}\n"));
        }
        Err(_) => {
            hook.metrics.requests.with_label_values(&["timeout"]).inc();
            tracing::warn!(%peer, "a webhook body took over {}s: dropped", limits.request_timeout.as_secs());
            return (StatusCode::REQUEST_TIMEOUT, "the body came too slowly\n".into());
        }
    };
    let payload: Payload = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(err) => {
            hook.metrics.requests.with_label_values(&["bad_request"]).inc();
            tracing::warn!(%peer, "refused a webhook request that is not an Alertmanager payload: {err}");
            return (StatusCode::BAD_REQUEST, format!("not an Alertmanager webhook payload: {err}\n"));
        }
    };
    match hook.notice(&peer, &payload) {
        None => {
            hook.metrics.requests.with_label_values(&["accepted"]).inc();
            (StatusCode::OK, "not the rollback alert\n".into())
        }
        Some(decision @ Decision::Refused { .. }) => {
            // Alertmanager retries a 5xx: the run happens once the hook can record it.
            hook.metrics.requests.with_label_values(&["refused"]).inc();
            (StatusCode::SERVICE_UNAVAILABLE, format!("{decision:?}\n"))
        }
        Some(decision) => {
            hook.metrics.requests.with_label_values(&["accepted"]).inc();
            (StatusCode::OK, format!("{decision:?}\n"))
        }
    }
}

/// Why a body was not read whole.
enum BodyError {
    TooLarge,
    Broken(axum::Error),
}

/// Reads at most `limit` bytes: over it, stops reading.
async fn read_capped(body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Broken)?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn metrics_page(State(hook): State<Arc<Hook>>) -> impl IntoResponse {
    crate::server::exposition(&hook.metrics.registry.gather())
}

async fn status_page(State(hook): State<Arc<Hook>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&hook.status()).unwrap_or_default() + "\n",
    )
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Serves until `stop` turns true, then gives open connections `limits.drain` and drops
/// the rest.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            () = stopped(&mut stop) => break,
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: wait, do not spin.
                    tracing::error!("cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let router = router.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request)
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.request_timeout);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, "connection ended: {err}");
                    }
                }
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "stopping: open connections get {}s to finish", limits.drain.as_secs());
    }
    let drained =
        tokio::time::timeout(limits.drain, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "dropping connections still open after {}s",
            limits.drain.as_secs()
        );
        connections.abort_all();
    }
}

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "the values compared are exact")]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
    }

    #[test]
    fn times_read_with_their_offsets() {
        let utc = parse_time("2026-11-25T12:00:00Z").unwrap();
        assert_eq!(utc, 1_795_608_000.0);
        // The same instant written by senders in other zones.
        assert_eq!(parse_time("2026-11-25T07:00:00-05:00").unwrap(), utc);
        assert_eq!(parse_time("2026-11-25T17:30:00+05:30").unwrap(), utc);
        assert_eq!(parse_time("2026-11-25T12:00:00.5Z").unwrap(), utc + 0.5);
        // Alertmanager's zero time.
        assert_eq!(parse_time("0001-01-01T00:00:00Z").unwrap(), -62_135_596_800.0);
        assert!(parse_time("2026-11-25 12:00").is_err());
    }

    #[test]
    fn payloads_are_read_like_alertmanager_sends_them() {
        let payload: Payload = serde_json::from_str(
            r#"{"version":"4","status":"firing","receiver":"rollback","groupKey":"{}:{}","alerts":[
                {"status":"firing","labels":{"alertname":"CniguardRollbackRecommended","node":"node-1"},
                 "annotations":{},"startsAt":"2026-11-25T12:00:00.123456789Z","endsAt":"0001-01-01T00:00:00Z",
                 "generatorURL":"http://x","fingerprint":"abc"}]}"#,
        )
        .unwrap();
        let alert = &payload.alerts[0];
        assert_eq!(parse_time(&alert.starts_at).unwrap().floor(), 1_795_608_000.0);
        assert!(parse_time(alert.ends_at.as_deref().unwrap()).is_ok());
        assert_eq!(alert.key(), "abc");
    }
}
