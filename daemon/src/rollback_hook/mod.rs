//! `cniguard rollback-hook`: an Alertmanager webhook receiver that runs the rollback.
//!
//! When the named alert (`CniguardRollbackRecommended`) has been firing for `firing_for`
//! (counted from each alert's own `startsAt`, RFC 3339 with any offset), it runs the
//! configured command at most once:
//!
//! - **Never twice.** The run is recorded durably (`record.rs`) *before* the command
//!   starts; a record that cannot be written means no run (503, so Alertmanager retries),
//!   and one that cannot be read means "may have run": the hook refuses until an operator
//!   removes it. Removing the record allows another run.
//! - **Never halfway.** The command runs in its own process group and is not killed when
//!   the hook stops (`runner.rs`): on SIGTERM the hook waits for it up to its grace period
//!   and then exits leaving it running; a restarted hook reports a run whose end it never
//!   saw as `unknown`, and does not run again.
//! - **Never late.** Firing alerts are kept by fingerprint and persisted; a resolved notice
//!   clears only its own alerts; a restarted hook re-reads them and a once-a-second look
//!   runs the command when it is due, without waiting for Alertmanager's next notice.
//! - **Bounded** (`receiver.rs`): token before body, capped bodies, timeouts, a connection
//!   limit, a stop within seconds.
//!
//! Alert fields never reach the command line: it is the operator's argv as given, run
//! without a shell. Every decision is logged. Until `--arm`, it only logs what it would run.

mod receiver;
mod record;
mod runner;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};

pub use receiver::Limits;
use receiver::{Payload, parse_time};
use record::{Files, Firing, FiringAlert, Found, Persisted, Ran};

use crate::judgement::phase::unix_now;
use crate::metrics::catalogue;

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
    /// On SIGTERM, how long the hook waits for a running command before it exits and
    /// leaves it running.
    pub shutdown_grace: Duration,
    pub limits: Limits,
}

/// What is known of an earlier run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prior {
    Never,
    Ran {
        at: f64,
    },
    /// The record could not be read: it may have run.
    Untrusted,
}

/// What the hook does about the alert now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    NotFiring,
    Waiting {
        remaining_seconds: f64,
    },
    Run,
    DryRun,
    AlreadyDryRun,
    AlreadyRan {
        at: f64,
    },
    /// Due, but the hook cannot prove it has not run, or cannot record the run first.
    Refused {
        why: String,
    },
}

/// The decision, from what is known.
#[must_use]
pub fn decide(
    firing_since: Option<f64>,
    now: f64,
    firing_for: Duration,
    armed: bool,
    prior: Prior,
    dry_run_for: Option<f64>,
) -> Decision {
    let Some(since) = firing_since else { return Decision::NotFiring };
    let remaining = firing_for.as_secs_f64() - (now - since);
    if remaining > 0.0 {
        return Decision::Waiting { remaining_seconds: remaining };
    }
    match prior {
        Prior::Ran { at } => Decision::AlreadyRan { at },
        Prior::Untrusted => Decision::Refused { why: "the run record cannot be trusted".into() },
        Prior::Never if armed => Decision::Run,
        Prior::Never if dry_run_for == Some(since) => Decision::AlreadyDryRun,
        Prior::Never => Decision::DryRun,
    }
}

/// The values of `cniguard_rollback_hook_run_state{state}`.
const RUN_STATES: &[&str] = &["none", "started", "succeeded", "failed", "unknown", "untrusted", "unwritable"];

struct Metrics {
    registry: Registry,
    executions: IntCounterVec,
    requests: IntCounterVec,
    run_state: IntGaugeVec,
    record_errors: IntCounterVec,
    firing_alerts: IntGauge,
    rejected: IntCounterVec,
}

impl Metrics {
    fn new(armed: bool) -> Result<Self> {
        let registry = Registry::new();
        let executions = catalogue::ROLLBACK_EXECUTIONS_TOTAL.int_counter_vec()?;
        let requests = catalogue::ROLLBACK_HOOK_REQUESTS_TOTAL.int_counter_vec()?;
        let armed_gauge = catalogue::ROLLBACK_HOOK_ARMED.int_gauge()?;
        let run_state = catalogue::ROLLBACK_HOOK_RUN_STATE.int_gauge_vec()?;
        let record_errors = catalogue::ROLLBACK_HOOK_RECORD_ERRORS_TOTAL.int_counter_vec()?;
        let firing_alerts = catalogue::ROLLBACK_HOOK_FIRING_ALERTS.int_gauge()?;
        armed_gauge.set(i64::from(armed));
        registry.register(Box::new(executions.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(armed_gauge))?;
        registry.register(Box::new(run_state.clone()))?;
        registry.register(Box::new(record_errors.clone()))?;
        registry.register(Box::new(firing_alerts.clone()))?;
        let rejected = crate::state_file::rejections(&registry)?;
        for result in ["succeeded", "failed", "dry_run", "unknown"] {
            executions.with_label_values(&[result]);
        }
        for outcome in ["accepted", "unauthorized", "bad_request", "too_large", "timeout", "refused"] {
            requests.with_label_values(&[outcome]);
        }
        for operation in ["read", "write"] {
            record_errors.with_label_values(&[operation]);
        }
        for state in RUN_STATES {
            run_state.with_label_values(&[state]);
        }
        Ok(Self { registry, executions, requests, run_state, record_errors, firing_alerts, rejected })
    }
}

/// The run record as the hook holds it.
#[derive(Debug, Clone)]
enum Record {
    Never,
    Ran(Ran),
    /// Why it cannot be trusted.
    Untrusted(String),
}

struct HookState {
    record: Record,
    firing: Firing,
    dry_run_for: Option<f64>,
    /// The latest attempt to record a due run failed.
    write_failing: bool,
}

impl HookState {
    fn run_state(&self) -> &'static str {
        if self.write_failing {
            return "unwritable";
        }
        match &self.record {
            Record::Never => "none",
            Record::Untrusted(_) => "untrusted",
            Record::Ran(ran) => match ran.result.as_str() {
                "started" => "started",
                "succeeded" => "succeeded",
                "failed" => "failed",
                _ => "unknown",
            },
        }
    }

    /// The earliest `startsAt` of the firing alerts, and that alert's fingerprint.
    fn firing_since(&self) -> Option<(&str, f64)> {
        self.firing
            .alerts
            .iter()
            .map(|(key, alert)| (key.as_str(), alert.starts_at))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

struct Hook {
    settings: HookSettings,
    metrics: Metrics,
    files: Files,
    state: Mutex<HookState>,
    /// Set on SIGTERM: nothing new starts.
    stopping: AtomicBool,
    /// The command's task, while it runs.
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Runs until SIGTERM or SIGINT.
///
/// # Errors
/// If the listen address is taken or the state directory unusable.
pub async fn run(settings: HookSettings) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    std::fs::create_dir_all(&settings.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {} (choose another with --state-dir)",
            settings.state_dir.display()
        )
    })?;
    let metrics = Metrics::new(settings.armed)?;
    let files = Files::new(&settings.state_dir);
    let record = load_record(&files, &metrics);
    let firing = load_firing(&files, &metrics);
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
    let state = HookState { record, firing, dry_run_for: None, write_failing: false };
    let hook = Arc::new(Hook {
        settings,
        metrics,
        files,
        state: Mutex::new(state),
        stopping: AtomicBool::new(false),
        running: Mutex::new(None),
    });
    hook.update_gauges(&hook.lock());
    // An alert's time comes while no notice arrives (and right after a restart, from the
    // persisted alerts): look every second.
    let ticking = hook.clone();
    let tick = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            ticking.act(false);
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let limits = hook.settings.limits;
    let server = tokio::spawn(receiver::serve(listener, receiver::router(hook.clone()), limits, stopped));
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let deadline = tokio::time::Instant::now() + hook.settings.shutdown_grace;
    tracing::info!("stopping: no new rollback starts");
    hook.stopping.store(true, Ordering::SeqCst);
    tick.abort();
    let _ = stop.send(true);
    let _ = server.await;
    let running = hook.running.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(running) = running.filter(|task| !task.is_finished()) {
        let pid = hook.lock_record_pid();
        tracing::warn!(
            pid,
            "waiting up to {}s for the rollback command to end",
            hook.settings.shutdown_grace.as_secs()
        );
        if tokio::time::timeout_at(deadline, running).await.is_err() {
            tracing::error!(
                pid,
                "leaving the rollback command running (process group {pid:?}): the hook stops now; \
                 a restarted hook reports this run as unknown and does not run it again"
            );
        }
    }
    Ok(())
}

fn load_record(files: &Files, metrics: &Metrics) -> Record {
    let path = files.record.display();
    match files.load_record() {
        Found::Missing | Found::Trusted(Persisted { ran: None }) => Record::Never,
        Found::Trusted(Persisted { ran: Some(ran) }) if ran.result == "untrusted" => {
            let why = ran.note.unwrap_or_default();
            tracing::error!(
                path = %path,
                "REFUSING TO RUN: {why}; the rollback may have run. Check what happened (the \
                 rejected copy is beside it), then remove {path} to allow a run"
            );
            Record::Untrusted(why)
        }
        Found::Trusted(Persisted { ran: Some(mut ran) }) if ran.result == "started" => {
            tracing::error!(
                path = %path,
                at = ran.at,
                pid = ran.pid,
                "a rollback started at Unix time {:.0} and this hook never saw it end: its result is \
                 unknown, and it does not run again. Check what the command did (its output is in {}, \
                 its process group was {:?}), then remove {path} to allow another run",
                ran.at,
                files.record.with_file_name(runner::LOG_FILE).display(),
                ran.pid,
            );
            "unknown".clone_into(&mut ran.result);
            ran.note = Some("started; the hook stopped before it saw the end".into());
            metrics.executions.with_label_values(&["unknown"]).inc();
            if let Err(err) = files.save_record(&Persisted { ran: Some(ran.clone()) }) {
                // Still `started` on disk: the next start says `unknown` again, never "never ran".
                metrics.record_errors.with_label_values(&["write"]).inc();
                tracing::error!(path = %path, "cannot mark the run unknown: {err:#}");
            }
            Record::Ran(ran)
        }
        Found::Trusted(Persisted { ran: Some(ran) }) => {
            tracing::warn!(
                at = ran.at,
                result = ran.result,
                "the rollback already ran; it will not run again until {path} is removed"
            );
            Record::Ran(ran)
        }
        Found::Untrusted { reason, why, aside } => {
            metrics.rejected.with_label_values(&[reason]).inc();
            metrics.record_errors.with_label_values(&["read"]).inc();
            let aside =
                aside.map_or_else(|| "left in place".to_owned(), |p| format!("copied to {}", p.display()));
            tracing::error!(
                path = %path,
                "REFUSING TO RUN: cannot trust the run record ({why}; {aside}): the rollback may \
                 have run. Check what happened, then remove {path} to allow a run"
            );
            Record::Untrusted(why)
        }
    }
}

fn load_firing(files: &Files, metrics: &Metrics) -> Firing {
    match files.load_firing() {
        Found::Missing => Firing::default(),
        Found::Trusted(firing) => {
            for (fingerprint, alert) in &firing.alerts {
                tracing::info!(
                    fingerprint,
                    starts_at = alert.starts_at_text,
                    "still firing (from before the restart)"
                );
            }
            firing
        }
        Found::Untrusted { reason, why, aside } => {
            metrics.rejected.with_label_values(&[reason]).inc();
            metrics.record_errors.with_label_values(&["read"]).inc();
            tracing::warn!(
                path = %files.firing.display(),
                aside = ?aside,
                "the firing alerts file is not trusted ({why}): set aside; alerts count as firing \
                 again from Alertmanager's next notice"
            );
            Firing::default()
        }
    }
}

impl Hook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HookState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_record_pid(&self) -> Option<u32> {
        match &self.lock().record {
            Record::Ran(ran) => ran.pid,
            _ => None,
        }
    }

    fn update_gauges(&self, state: &HookState) {
        let current = state.run_state();
        for name in RUN_STATES {
            self.metrics.run_state.with_label_values(&[name]).set(i64::from(*name == current));
        }
        self.metrics.firing_alerts.set(i64::try_from(state.firing.alerts.len()).unwrap_or(i64::MAX));
    }

    /// A notice from Alertmanager: updates the firing alerts (by fingerprint) and decides.
    /// `None`: the notice holds none of the rollback alerts.
    fn notice(self: &Arc<Self>, peer: &SocketAddr, payload: &Payload) -> Option<Decision> {
        let alert_name = &self.settings.alert;
        let ours: Vec<_> =
            payload.alerts.iter().filter(|alert| alert.labels.get("alertname") == Some(alert_name)).collect();
        if ours.is_empty() {
            let names: Vec<&str> = payload
                .alerts
                .iter()
                .filter_map(|alert| alert.labels.get("alertname").map(String::as_str))
                .collect();
            tracing::info!(%peer, ?names, "webhook without {alert_name}: nothing to decide");
            return None;
        }
        let mut state = self.lock();
        let mut changed = false;
        for alert in ours {
            let fingerprint = alert.key();
            if alert.status == "firing" {
                let starts_at = match parse_time(&alert.starts_at) {
                    Ok(starts_at) => starts_at,
                    Err(err) => {
                        tracing::warn!(
                            fingerprint,
                            "ignoring a firing alert with an unreadable startsAt `{}`: {err}",
                            alert.starts_at
                        );
                        continue;
                    }
                };
                if state.firing.alerts.get(&fingerprint).map(|known| known.starts_at) != Some(starts_at) {
                    tracing::info!(fingerprint, starts_at = alert.starts_at, "{alert_name} firing");
                    let first_notified_at = unix_now();
                    let entry =
                        FiringAlert { starts_at, starts_at_text: alert.starts_at.clone(), first_notified_at };
                    state.firing.alerts.insert(fingerprint, entry);
                    changed = true;
                }
            } else if state.firing.alerts.remove(&fingerprint).is_some() {
                tracing::info!(fingerprint, ends_at = alert.ends_at, "{alert_name} resolved");
                changed = true;
            }
        }
        if changed {
            if let Err(err) = self.files.save_firing(&state.firing) {
                self.metrics.record_errors.with_label_values(&["write"]).inc();
                tracing::error!(
                    path = %self.files.firing.display(),
                    "cannot save the firing alerts: {err:#}; a restart forgets them until \
                     Alertmanager's next notice (fix the state directory)"
                );
            }
            self.update_gauges(&state);
        }
        drop(state);
        Some(self.act(true))
    }

    /// Decides, and runs the command if it is time. `notified`: a webhook asked (always
    /// logged); otherwise the once-a-second look, which logs only when it acts.
    fn act(self: &Arc<Self>, notified: bool) -> Decision {
        let settings = &self.settings;
        let mut state = self.lock();
        let prior = match &state.record {
            Record::Never => Prior::Never,
            Record::Ran(ran) => Prior::Ran { at: ran.at },
            Record::Untrusted(_) => Prior::Untrusted,
        };
        let firing = state.firing_since().map(|(key, since)| (key.to_owned(), since));
        let decision = decide(
            firing.as_ref().map(|(_, since)| *since),
            unix_now(),
            settings.firing_for,
            settings.armed,
            prior,
            state.dry_run_for,
        );
        let log = |what: &str| tracing::info!(alert = settings.alert, "{what}");
        match decision {
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
            Decision::Refused { ref why } if notified => tracing::error!(
                alert = settings.alert,
                path = %self.files.record.display(),
                "REFUSING TO RUN the due rollback: {why}; remove the record once you know the rollback did not run"
            ),
            Decision::DryRun => {
                tracing::warn!(alert = settings.alert, command = ?settings.command, "DRY RUN: would run the rollback now; pass --arm to run it");
                state.dry_run_for = firing.map(|(_, since)| since);
                self.metrics.executions.with_label_values(&["dry_run"]).inc();
            }
            Decision::Run if self.stopping.load(Ordering::SeqCst) => {
                return Decision::Refused { why: "the hook is stopping".into() };
            }
            Decision::Run => {
                let (fingerprint, since) = firing.unwrap_or_default();
                return self.start(&mut state, fingerprint, since, notified);
            }
            _ => {}
        }
        decision
    }

    /// Records the run durably, then starts the command; without the record, nothing runs.
    fn start(
        self: &Arc<Self>,
        state: &mut HookState,
        fingerprint: String,
        since: f64,
        notified: bool,
    ) -> Decision {
        let settings = &self.settings;
        let mut ran = Ran {
            at: unix_now(),
            firing_since: since,
            result: "started".into(),
            fingerprint: Some(fingerprint),
            pid: None,
            ended_at: None,
            note: None,
        };
        if let Err(err) = self.files.save_record(&Persisted { ran: Some(ran.clone()) }) {
            self.metrics.record_errors.with_label_values(&["write"]).inc();
            if notified || !state.write_failing {
                tracing::error!(
                    path = %self.files.record.display(),
                    "NOT RUNNING the due rollback: it must be recorded first, and the record cannot be \
                     written ({err:#}). Fix the state directory {} (space, permissions, a stray \
                     rollback-hook.json.tmp); it runs as soon as the record can be written",
                    settings.state_dir.display()
                );
            }
            state.write_failing = true;
            self.update_gauges(state);
            return Decision::Refused { why: format!("cannot write the run record: {err:#}") };
        }
        state.write_failing = false;
        tracing::warn!(alert = settings.alert, command = ?settings.command, "running the rollback");
        match runner::start(&settings.command, &settings.state_dir) {
            Err(err) => {
                tracing::error!(
                    "the rollback command could not start: {err} (check the path to {:?})",
                    settings.command.first()
                );
                self.metrics.executions.with_label_values(&["failed"]).inc();
                "failed".clone_into(&mut ran.result);
                ran.ended_at = Some(unix_now());
                self.save_end(&ran);
                state.record = Record::Ran(ran);
            }
            Ok(running) => {
                ran.pid = Some(running.pid);
                // Best effort: the pid helps the operator if the end is never seen.
                self.save_end(&ran);
                state.record = Record::Ran(ran);
                let hook = self.clone();
                let task = tokio::spawn(async move {
                    let result = running.finish(hook.settings.command_timeout).await;
                    hook.metrics.executions.with_label_values(&[result]).inc();
                    let mut state = hook.lock();
                    if let Record::Ran(ran) = &mut state.record {
                        result.clone_into(&mut ran.result);
                        ran.ended_at = Some(unix_now());
                        hook.save_end(ran);
                    }
                    hook.update_gauges(&state);
                });
                *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
            }
        }
        self.update_gauges(state);
        Decision::Run
    }

    /// Saves a later state of a recorded run; a failure leaves `started` on disk, which a
    /// restart reports as `unknown`: loud, never a second run.
    fn save_end(&self, ran: &Ran) {
        if let Err(err) = self.files.save_record(&Persisted { ran: Some(ran.clone()) }) {
            self.metrics.record_errors.with_label_values(&["write"]).inc();
            tracing::error!(path = %self.files.record.display(), result = ran.result, "cannot update the run record: {err:#}");
        }
    }

    /// What `GET /status` answers.
    fn status(&self) -> serde_json::Value {
        let state = self.lock();
        let now = unix_now();
        let (record, why) = match &state.record {
            Record::Never => (None, None),
            Record::Ran(ran) => (Some(ran.clone()), None),
            Record::Untrusted(why) => (None, Some(why.clone())),
        };
        let firing: Vec<_> = state
            .firing
            .alerts
            .iter()
            .map(|(fingerprint, alert)| {
                serde_json::json!({
                    "fingerprint": fingerprint,
                    "starts_at": alert.starts_at_text,
                    "fired_for_seconds": (now - alert.starts_at).max(0.0).floor(),
                })
            })
            .collect();
        serde_json::json!({
            "alert": self.settings.alert,
            "armed": self.settings.armed,
            "firing_for_seconds": self.settings.firing_for.as_secs(),
            "run": { "state": state.run_state(), "record": record, "untrusted": why },
            "firing": firing,
        })
    }
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
        let never = Prior::Never;
        assert_eq!(decide(None, 1000.0, FOR, true, never, None), Decision::NotFiring);
        assert_eq!(
            decide(Some(1000.0), 1299.0, FOR, true, never, None),
            Decision::Waiting { remaining_seconds: 1.0 }
        );
        assert_eq!(decide(Some(1000.0), 1300.0, FOR, true, never, None), Decision::Run);
        let ran = Prior::Ran { at: 1300.0 };
        assert_eq!(decide(Some(1000.0), 1400.0, FOR, true, ran, None), Decision::AlreadyRan { at: 1300.0 });
        // A new episode after a run still does not run again.
        assert_eq!(decide(Some(5000.0), 9000.0, FOR, true, ran, None), Decision::AlreadyRan { at: 1300.0 });
    }

    #[test]
    fn an_untrusted_record_refuses_when_due_and_only_then() {
        let untrusted = Prior::Untrusted;
        assert_eq!(decide(None, 1000.0, FOR, true, untrusted, None), Decision::NotFiring);
        assert!(matches!(decide(Some(1000.0), 1100.0, FOR, true, untrusted, None), Decision::Waiting { .. }));
        assert!(matches!(decide(Some(1000.0), 1300.0, FOR, true, untrusted, None), Decision::Refused { .. }));
        assert!(matches!(
            decide(Some(1000.0), 1300.0, FOR, false, untrusted, None),
            Decision::Refused { .. }
        ));
    }

    #[test]
    fn dry_run_logs_once_per_alert() {
        let never = Prior::Never;
        assert_eq!(decide(Some(1000.0), 1300.0, FOR, false, never, None), Decision::DryRun);
        assert_eq!(decide(Some(1000.0), 1301.0, FOR, false, never, Some(1000.0)), Decision::AlreadyDryRun);
        assert_eq!(decide(Some(2000.0), 2300.0, FOR, false, never, Some(1000.0)), Decision::DryRun);
    }

    #[test]
    fn the_hooks_metrics_are_catalogued() {
        let metrics = Metrics::new(true).unwrap();
        metrics.rejected.with_label_values(&["corrupt"]).inc();
        let families = metrics.registry.gather();
        assert_eq!(families.len(), 7);
        families.iter().for_each(crate::metrics::catalogue::assert_catalogued);
    }
}
