//! `cniguard rollback-hook`: an Alertmanager webhook receiver that runs the rollback.
//!
//! When the named alert (`CniguardRollbackRecommended`) has been firing for `firing_for`
//! (counted from the alert's `startsAt`, so a restart of the hook loses nothing), it runs
//! the configured command once. Once means once: the run is recorded in the state
//! directory *before* the command starts, so neither a repeated notification, a flapping
//! alert nor a crash mid-run starts a second rollback; removing the state file allows
//! another. Alert fields never reach the command line: it is the operator's argv as
//! given, run without a shell. Every request needs the bearer token; every decision is
//! logged. Until `--arm`, it only logs what it would run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus::{IntCounterVec, Registry};
use serde::{Deserialize, Serialize};

use crate::judgement::phase::unix_now;
use crate::metrics::catalogue;
use crate::state_file::StateFile;

pub const FILE_NAME: &str = "rollback-hook";
pub const FORMAT: &str = "cniguard-rollback-hook";
pub const DEFAULT_ALERT: &str = "CniguardRollbackRecommended";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9466";

#[derive(Debug, Clone)]
pub struct HookSettings {
    pub listen: SocketAddr,
    pub token: String,
    pub alert: String,
    pub firing_for: Duration,
    pub command: Vec<String>,
    pub armed: bool,
    pub command_timeout: Duration,
    pub state_dir: PathBuf,
}

/// What the hook keeps across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Persisted {
    ran: Option<Ran>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ran {
    /// Unix seconds.
    at: f64,
    /// The alert's `startsAt` that led to it.
    firing_since: f64,
    /// `started` until the command returns (and forever, if the hook died meanwhile).
    result: String,
}

/// What the hook does about the alert now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    NotFiring,
    Waiting { remaining_seconds: f64 },
    Run,
    DryRun,
    AlreadyDryRun,
    AlreadyRan { at: f64 },
}

/// The decision, from what is known.
#[must_use]
pub fn decide(
    firing_since: Option<f64>,
    now: f64,
    firing_for: Duration,
    armed: bool,
    ran_at: Option<f64>,
    dry_run_for: Option<f64>,
) -> Decision {
    let Some(since) = firing_since else { return Decision::NotFiring };
    let remaining = firing_for.as_secs_f64() - (now - since);
    if remaining > 0.0 {
        return Decision::Waiting { remaining_seconds: remaining };
    }
    if let Some(at) = ran_at {
        return Decision::AlreadyRan { at };
    }
    if armed {
        Decision::Run
    } else if dry_run_for == Some(since) {
        Decision::AlreadyDryRun
    } else {
        Decision::DryRun
    }
}

/// Alertmanager's webhook payload (version 4), the fields the hook reads.
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    status: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    starts_at: String,
}

struct Metrics {
    registry: Registry,
    executions: IntCounterVec,
    requests: IntCounterVec,
}

impl Metrics {
    fn new(armed: bool) -> Result<Self> {
        let registry = Registry::new();
        let executions = catalogue::ROLLBACK_EXECUTIONS_TOTAL.int_counter_vec()?;
        let requests = catalogue::ROLLBACK_HOOK_REQUESTS_TOTAL.int_counter_vec()?;
        let armed_gauge = catalogue::ROLLBACK_HOOK_ARMED.int_gauge()?;
        armed_gauge.set(i64::from(armed));
        registry.register(Box::new(executions.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(armed_gauge))?;
        for result in ["succeeded", "failed", "dry_run"] {
            executions.with_label_values(&[result]);
        }
        for outcome in ["accepted", "unauthorized", "bad_request"] {
            requests.with_label_values(&[outcome]);
        }
        Ok(Self { registry, executions, requests })
    }
}

struct Hook {
    settings: HookSettings,
    metrics: Metrics,
    file: StateFile,
    state: Mutex<HookState>,
}

#[derive(Default)]
struct HookState {
    firing_since: Option<f64>,
    dry_run_for: Option<f64>,
    persisted: Persisted,
}

/// Runs until SIGTERM or SIGINT.
///
/// # Errors
/// If the listen address is taken or the state directory unusable.
pub async fn run(settings: HookSettings) -> Result<()> {
    std::fs::create_dir_all(&settings.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {} (choose another with --state-dir)",
            settings.state_dir.display()
        )
    })?;
    let metrics = Metrics::new(settings.armed)?;
    let rejected = crate::state_file::rejections(&metrics.registry)?;
    let file = StateFile::new(Some(&settings.state_dir), FILE_NAME, FORMAT, "rollback-hook", rejected);
    let persisted: Persisted = file.load(|_: &Persisted| Ok(())).unwrap_or_default();
    if let Some(ran) = &persisted.ran {
        tracing::warn!(
            at = ran.at,
            result = ran.result,
            "the rollback already ran; it will not run again until {} is removed",
            file.path().map_or_else(String::new, |p| p.display().to_string())
        );
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set another with --listen)", settings.listen))?;
    tracing::info!(
        listen = %settings.listen,
        alert = settings.alert,
        firing_for_seconds = settings.firing_for.as_secs(),
        armed = settings.armed,
        command = ?settings.command,
        "rollback hook ready{}",
        if settings.armed { "" } else { " (dry-run: pass --arm to run the command)" }
    );
    let hook = Arc::new(Hook {
        settings,
        metrics,
        file,
        state: Mutex::new(HookState { persisted, ..HookState::default() }),
    });
    // The alert's time may come while no notification arrives: look every second.
    let ticking = hook.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            act(&ticking, false);
        }
    });
    let app = Router::new()
        .route("/webhook", post(webhook))
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(hook);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}

async fn webhook(
    State(hook): State<Arc<Hook>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|token| same(token.as_bytes(), hook.settings.token.as_bytes())) {
        hook.metrics.requests.with_label_values(&["unauthorized"]).inc();
        tracing::warn!(%peer, "refused a webhook request: {} bearer token; nothing runs", if presented.is_some() { "wrong" } else { "no" });
        return (StatusCode::UNAUTHORIZED, "a bearer token is required\n".into());
    }
    let payload: Payload = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(err) => {
            hook.metrics.requests.with_label_values(&["bad_request"]).inc();
            tracing::warn!(%peer, "refused a webhook request that is not an Alertmanager payload: {err}");
            return (StatusCode::BAD_REQUEST, format!("not an Alertmanager webhook payload: {err}\n"));
        }
    };
    hook.metrics.requests.with_label_values(&["accepted"]).inc();
    let ours: Vec<&Alert> = payload
        .alerts
        .iter()
        .filter(|alert| alert.labels.get("alertname") == Some(&hook.settings.alert))
        .collect();
    if ours.is_empty() {
        let names: Vec<&str> = payload
            .alerts
            .iter()
            .filter_map(|alert| alert.labels.get("alertname").map(String::as_str))
            .collect();
        tracing::info!(%peer, ?names, "webhook without {}: nothing to decide", hook.settings.alert);
        return (StatusCode::OK, "not the rollback alert\n".into());
    }
    let firing_since = ours
        .iter()
        .filter(|alert| alert.status == "firing")
        .filter_map(|alert| match humantime::parse_rfc3339_weak(&alert.starts_at) {
            Ok(time) => Some(unix(time)),
            Err(err) => {
                tracing::warn!(
                    "ignoring a firing alert with an unreadable startsAt `{}`: {err}",
                    alert.starts_at
                );
                None
            }
        })
        .min_by(f64::total_cmp);
    {
        let mut state = hook.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.firing_since.is_some() && firing_since.is_none() {
            tracing::info!("{} resolved", hook.settings.alert);
        }
        state.firing_since = firing_since;
    }
    let decision = act(&hook, true);
    (StatusCode::OK, format!("{decision:?}\n"))
}

/// Decides, and runs the command if it is time. `notified`: a webhook asked (always logged);
/// otherwise the once-a-second look, which logs only when it acts.
fn act(hook: &Arc<Hook>, notified: bool) -> Decision {
    let settings = &hook.settings;
    let mut state = hook.state.lock().unwrap_or_else(PoisonError::into_inner);
    let ran_at = state.persisted.ran.as_ref().map(|ran| ran.at);
    let decision = decide(
        state.firing_since,
        unix_now(),
        settings.firing_for,
        settings.armed,
        ran_at,
        state.dry_run_for,
    );
    let log = |what: &str| tracing::info!(alert = settings.alert, "{what}");
    match &decision {
        Decision::NotFiring if notified => log("not firing: nothing to do"),
        Decision::Waiting { remaining_seconds } if notified => {
            log(&format!(
                "firing, {remaining_seconds:.0}s short of the {}s it must fire before the rollback",
                settings.firing_for.as_secs()
            ));
        }
        Decision::AlreadyRan { at } if notified => {
            log(&format!("firing, but the rollback already ran (at Unix time {at:.0}): not again"));
        }
        Decision::AlreadyDryRun if notified => log("firing; dry-run already logged for this alert"),
        Decision::DryRun => {
            tracing::warn!(alert = settings.alert, command = ?settings.command, "DRY RUN: would run the rollback now; pass --arm to run it");
            state.dry_run_for = state.firing_since;
            hook.metrics.executions.with_label_values(&["dry_run"]).inc();
        }
        // Once the run is recorded, the decision is AlreadyRan: never a second one.
        Decision::Run => {
            let firing_since = state.firing_since.unwrap_or_default();
            // Recorded before it starts: a crash mid-run must not lead to a second run.
            state.persisted.ran = Some(Ran { at: unix_now(), firing_since, result: "started".into() });
            hook.file.save(&state.persisted);
            tracing::warn!(alert = settings.alert, command = ?settings.command, "running the rollback");
            let hook = hook.clone();
            tokio::spawn(async move {
                let result = execute(&hook.settings.command, hook.settings.command_timeout).await;
                hook.metrics.executions.with_label_values(&[result]).inc();
                let mut state = hook.state.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(ran) = &mut state.persisted.ran {
                    result.clone_into(&mut ran.result);
                }
                hook.file.save(&state.persisted);
            });
        }
        _ => {}
    }
    decision
}

/// Runs the argv without a shell; returns the `result` label.
async fn execute(command: &[String], timeout: Duration) -> &'static str {
    let Some((program, args)) = command.split_first() else { return "failed" };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Ok(Ok(output)) => {
            let tail = |bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes);
                let start = text.len().saturating_sub(2000);
                text.get(start..).unwrap_or_default().trim().to_owned()
            };
            let (stdout, stderr) = (tail(&output.stdout), tail(&output.stderr));
            if output.status.success() {
                tracing::warn!(%stdout, %stderr, "the rollback command succeeded");
                "succeeded"
            } else {
                tracing::error!(status = %output.status, %stdout, %stderr, "the rollback command failed");
                "failed"
            }
        }
        Ok(Err(err)) => {
            tracing::error!("the rollback command could not start: {err} (check the path to {program})");
            "failed"
        }
        Err(_) => {
            tracing::error!("the rollback command ran over {}s and was killed", timeout.as_secs());
            "failed"
        }
    }
}

async fn metrics_page(State(hook): State<Arc<Hook>>) -> impl IntoResponse {
    crate::server::exposition(&hook.metrics.registry.gather())
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn unix(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Reads the bearer token: the file's content without surrounding whitespace.
///
/// # Errors
/// If the file cannot be read or holds no token.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read the token file {}: {err}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "the token file {} is empty: put the bearer token Alertmanager sends in it",
            path.display()
        ));
    }
    if token.chars().any(char::is_whitespace) {
        return Err(format!(
            "the token file {} holds more than one word: a bearer token has no spaces",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "the values compared are exact")]
mod tests {
    use super::*;

    const FOR: Duration = Duration::from_mins(5);

    #[test]
    fn runs_only_after_firing_long_enough_and_only_once() {
        assert_eq!(decide(None, 1000.0, FOR, true, None, None), Decision::NotFiring);
        assert_eq!(
            decide(Some(1000.0), 1299.0, FOR, true, None, None),
            Decision::Waiting { remaining_seconds: 1.0 }
        );
        assert_eq!(decide(Some(1000.0), 1300.0, FOR, true, None, None), Decision::Run);
        assert_eq!(
            decide(Some(1000.0), 1400.0, FOR, true, Some(1300.0), None),
            Decision::AlreadyRan { at: 1300.0 }
        );
        // A new episode after a run still does not run again.
        assert_eq!(
            decide(Some(5000.0), 9000.0, FOR, true, Some(1300.0), None),
            Decision::AlreadyRan { at: 1300.0 }
        );
    }

    #[test]
    fn dry_run_logs_once_per_alert() {
        assert_eq!(decide(Some(1000.0), 1300.0, FOR, false, None, None), Decision::DryRun);
        assert_eq!(decide(Some(1000.0), 1301.0, FOR, false, None, Some(1000.0)), Decision::AlreadyDryRun);
        assert_eq!(decide(Some(2000.0), 2300.0, FOR, false, None, Some(1000.0)), Decision::DryRun);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
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
        let started = humantime::parse_rfc3339_weak(&payload.alerts[0].starts_at).unwrap();
        assert_eq!(unix(started).floor(), 1_795_608_000.0);
    }

    #[test]
    fn the_hooks_metrics_are_catalogued() {
        let families = Metrics::new(true).unwrap().registry.gather();
        assert_eq!(families.len(), 3);
        families.iter().for_each(crate::metrics::catalogue::assert_catalogued);
    }
}
