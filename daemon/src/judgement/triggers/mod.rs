//! The runbook's rollback triggers and success criteria, evaluated on this node.
//!
//! Each trigger has a condition over cniguard's own measurements (the active checks, the
//! latest baseline window, the ratios to the pre-cutover baselines), a value and two
//! thresholds: it starts *holding* when the value exceeds `threshold`, becomes *active*
//! once it has held for `for_seconds`, and clears only after the value has stayed at or
//! below `clear_threshold` for `clear_seconds` (hysteresis: a flapping check neither fires
//! nor clears on one result). Since when each trigger holds, and whether it is active, is
//! kept in `<state dir>/triggers.json`: a restart never forgets a failure that has lasted
//! 29 minutes.
//!
//! No data (no check results yet, or only stale ones; no baseline window yet) is not a
//! reading: the trigger's state is left exactly as it is, neither advanced nor cleared, and
//! the trigger shows `no_data` and does not recommend a rollback, even if it was active,
//! until fresh inputs judge it again. So a state carried over a restart waits for the first
//! fresh inputs, and a state read at start-up must be plausible (no time in the future or
//! before the node's phase record) or the file is set aside.
//!
//! | trigger | runbook | value |
//! |---|---|---|
//! | `connectivity_lost` | network connectivity failures lasting more than 30 minutes | peer nodes whose every pod-to-pod check fails |
//! | `pod_to_pod_not_restored` | pod-to-pod communication cannot be restored | pod-to-pod failure ratio over the window, once the restore deadline after a phase change has passed |
//! | `critical_service_unavailable` | critical service unavailability | service checks failing |
//! | `dns_failing` | DNS resolution failures | DNS failure + timeout ratio of the pods' queries, or the share of DNS checks failing |
//! | `localhost_latency_slo` | intra-pod latency under 1 ms | localhost response p99 over the window |
//! | `regression` | no degradation | highest ratio of drops or retransmits to their pre-cutover baseline |

pub mod settings;

use std::collections::BTreeMap;
use std::time::Instant;

use prometheus::Registry;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};

use crate::checks::{CheckKind, SharedResults};
use crate::judgement::baseline::{self, SharedBaselines, Signal};
use crate::judgement::phase::{SharedPhase, unix_now};
use crate::metrics::{FamilyBuilder, catalogue};
use crate::state_file::StateFile;

pub const FILE_NAME: &str = "triggers";
pub const FORMAT: &str = "cniguard-triggers";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerName {
    ConnectivityLost,
    PodToPodNotRestored,
    CriticalServiceUnavailable,
    DnsFailing,
    LocalhostLatencySlo,
    Regression,
}

impl TriggerName {
    pub const ALL: [Self; 6] = [
        Self::ConnectivityLost,
        Self::PodToPodNotRestored,
        Self::CriticalServiceUnavailable,
        Self::DnsFailing,
        Self::LocalhostLatencySlo,
        Self::Regression,
    ];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::ConnectivityLost => "connectivity_lost",
            Self::PodToPodNotRestored => "pod_to_pod_not_restored",
            Self::CriticalServiceUnavailable => "critical_service_unavailable",
            Self::DnsFailing => "dns_failing",
            Self::LocalhostLatencySlo => "localhost_latency_slo",
            Self::Regression => "regression",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Calls for the runbook's rollback: counts in `cniguard_rollback_recommended`.
    Rollback,
    /// A success criterion missed: worth a look, not a rollback by itself.
    Warning,
}

impl Severity {
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Rollback => "rollback",
            Self::Warning => "warning",
        }
    }
}

/// One trigger's rule, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: TriggerName,
    pub severity: Severity,
    pub threshold: f64,
    pub clear_threshold: f64,
    pub for_seconds: f64,
    pub clear_seconds: f64,
    /// `pod_to_pod_not_restored`: how long after a phase change pod-to-pod may fail.
    pub restore_deadline_seconds: f64,
    /// `pod_to_pod_not_restored`: the window its failure ratio is computed over.
    pub window_seconds: f64,
}

/// The hold and clear discipline triggers and findings share: a value above `threshold`
/// holds, and activates once it has held `for_seconds`; an active one clears once the value
/// has stayed at or below `clear_threshold` for `clear_seconds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    pub threshold: f64,
    pub clear_threshold: f64,
    pub for_seconds: f64,
    pub clear_seconds: f64,
}

impl Rule {
    #[must_use]
    pub fn hysteresis(&self) -> Hysteresis {
        Hysteresis {
            threshold: self.threshold,
            clear_threshold: self.clear_threshold,
            for_seconds: self.for_seconds,
            clear_seconds: self.clear_seconds,
        }
    }
}

/// What a trigger's condition looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub value: f64,
    /// The numbers behind it, for `cniguard status` and the logs.
    pub detail: String,
}

/// What is measured, gathered once per evaluation.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Per pod-to-pod peer: (latest results all failed, targets).
    pub peers: BTreeMap<String, bool>,
    /// Pod-to-pod failure ratio over each rule's window: (failures, results).
    pub pod_to_pod_window: Option<(f64, f64)>,
    /// Service targets whose latest check failed, of all service targets.
    pub services_failing: Vec<String>,
    pub services: usize,
    /// DNS checks failing, of all.
    pub dns_checks_failing: usize,
    pub dns_checks: usize,
    /// The latest baseline window's signals and, once frozen, the ratios to the baselines.
    pub window: BTreeMap<Signal, f64>,
    pub ratios: BTreeMap<Signal, f64>,
    /// Seconds since the phase last changed, if it ever did while cniguard watched.
    pub since_phase_change: Option<f64>,
}

impl Rule {
    /// Whether the rule applies at all now: `pod_to_pod_not_restored` only once its restore
    /// deadline after a phase change has passed. A rule that does not apply reads as a
    /// value at zero (it clears); one that applies but has no reading has no data.
    #[must_use]
    pub fn applies(&self, inputs: &Inputs) -> bool {
        match self.name {
            TriggerName::PodToPodNotRestored => {
                inputs.since_phase_change.is_some_and(|since| since >= self.restore_deadline_seconds)
            }
            _ => true,
        }
    }

    /// The rule's value now, or `None` when it does not apply ([`Rule::applies`]) or there
    /// is nothing to judge it on (no checks configured or fresh, no DNS queries in the
    /// window...): then it does not hold.
    #[must_use]
    pub fn read(&self, inputs: &Inputs) -> Option<Reading> {
        match self.name {
            TriggerName::ConnectivityLost => {
                if inputs.peers.is_empty() {
                    return None;
                }
                let lost: Vec<&str> =
                    inputs.peers.iter().filter(|(_, lost)| **lost).map(|(peer, _)| peer.as_str()).collect();
                Some(Reading {
                    value: count(lost.len()),
                    detail: if lost.is_empty() {
                        format!("all {} peers reachable", inputs.peers.len())
                    } else {
                        format!("every pod-to-pod check failing to {}", lost.join(", "))
                    },
                })
            }
            TriggerName::PodToPodNotRestored => {
                let since = inputs.since_phase_change?;
                if since < self.restore_deadline_seconds {
                    return None;
                }
                let (failures, results) = inputs.pod_to_pod_window?;
                Some(Reading {
                    value: failures / results,
                    detail: format!(
                        "{failures} of {results} pod-to-pod checks failed in the last {}s, {since:.0}s after the phase changed",
                        self.window_seconds
                    ),
                })
            }
            TriggerName::CriticalServiceUnavailable => (inputs.services > 0).then(|| Reading {
                value: count(inputs.services_failing.len()),
                detail: if inputs.services_failing.is_empty() {
                    format!("all {} services answer", inputs.services)
                } else {
                    format!("failing: {}", inputs.services_failing.join(", "))
                },
            }),
            TriggerName::DnsFailing => {
                let queries = match (
                    inputs.window.get(&baseline::DNS_FAILURE_RATIO),
                    inputs.window.get(&baseline::DNS_TIMEOUT_RATIO),
                ) {
                    (Some(failures), Some(timeouts)) => Some(failures + timeouts),
                    _ => None,
                };
                let checks = (inputs.dns_checks > 0)
                    .then(|| count(inputs.dns_checks_failing) / count(inputs.dns_checks));
                let value = match (queries, checks) {
                    (None, None) => return None,
                    (a, b) => a.unwrap_or(0.0).max(b.unwrap_or(0.0)),
                };
                Some(Reading {
                    value,
                    detail: format!(
                        "pods' queries failing or timing out: {}; DNS checks failing: {} of {}",
                        queries.map_or_else(|| "none asked".to_owned(), |r| format!("{:.1}%", r * 100.0)),
                        inputs.dns_checks_failing,
                        inputs.dns_checks
                    ),
                })
            }
            TriggerName::LocalhostLatencySlo => {
                inputs.window.get(&baseline::LOCALHOST_P99).map(|p99| Reading {
                    value: *p99,
                    detail: format!("localhost p99 {:.3} ms (SLO {:.3} ms)", p99 * 1e3, self.threshold * 1e3),
                })
            }
            TriggerName::Regression => {
                let worst = [baseline::DROPS_PER_SECOND, baseline::RETRANSMITS_PER_SEGMENT]
                    .into_iter()
                    .filter_map(|signal| inputs.ratios.get(&signal).map(|ratio| (signal, *ratio)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))?;
                Some(Reading {
                    value: worst.1,
                    detail: format!("{} at {:.2}x its pre-cutover baseline", worst.0, worst.1),
                })
            }
        }
    }
}

#[allow(clippy::cast_precision_loss, reason = "counts of peers and checks are small")]
fn count(n: usize) -> f64 {
    n as f64
}

/// A trigger's state, as kept across restarts. Times are Unix seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerState {
    /// Since when the condition holds (value above the threshold).
    pub holding_since: Option<f64>,
    /// Since when the trigger is active; `None` while it is not.
    pub active_since: Option<f64>,
    /// Since when an active trigger's value is back at or below the clear threshold.
    pub clearing_since: Option<f64>,
}

/// A change worth telling (logs, Kubernetes Events).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub trigger: TriggerName,
    pub active: bool,
    pub detail: String,
}

impl TriggerState {
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.active_since.is_some()
    }

    /// Advances the state to `now` given the value (`None`: the rule does not apply,
    /// which clears like a value at zero); returns whether it became active (`Some(true)`)
    /// or cleared (`Some(false)`). No data is never stepped: see [`Triggers::evaluate`].
    pub fn step(&mut self, rule: Hysteresis, value: Option<f64>, now: f64) -> Option<bool> {
        let holds = value.is_some_and(|v| v > rule.threshold);
        let clears = value.is_none_or(|v| v <= rule.clear_threshold);
        if holds {
            let since = *self.holding_since.get_or_insert(now);
            self.clearing_since = None;
            if !self.is_active() && now - since >= rule.for_seconds {
                self.active_since = Some(now);
                return Some(true);
            }
        } else {
            self.holding_since = None;
        }
        if self.is_active() {
            if clears {
                let since = *self.clearing_since.get_or_insert(now);
                if now - since >= rule.clear_seconds {
                    *self = Self::default();
                    return Some(false);
                }
            } else if !holds {
                // Between the two thresholds: neither holding nor clearing.
                self.clearing_since = None;
            }
        }
        None
    }

    /// How long the condition has held at `now`.
    #[must_use]
    pub fn pending_seconds(&self, now: f64) -> f64 {
        self.holding_since.map_or(0.0, |since| (now - since).max(0.0))
    }

    /// Whether a state read from disk can be true at `now`, for a node whose phase record
    /// starts at `not_before`: every time finite, not in the future, not before the record;
    /// clearing only while active, and not before it became active.
    fn plausible(&self, now: f64, not_before: Option<f64>) -> Result<(), String> {
        for (field, time) in [
            ("holding_since", self.holding_since),
            ("active_since", self.active_since),
            ("clearing_since", self.clearing_since),
        ] {
            let Some(time) = time else { continue };
            if !time.is_finite() || time > now + CLOCK_SKEW_SECONDS {
                return Err(format!("{field} {time} is in the future (now {now:.0})"));
            }
            if let Some(not_before) = not_before
                && time < not_before
            {
                return Err(format!("{field} {time} is before the node's phase record ({not_before:.0})"));
            }
        }
        match (self.active_since, self.clearing_since) {
            (None, Some(_)) => Err("clearing_since without active_since".into()),
            (Some(active), Some(clearing)) if clearing < active => {
                Err(format!("clearing_since {clearing} is before active_since {active}"))
            }
            _ => Ok(()),
        }
    }
}

/// How far ahead of this node's clock a carried time may be (a clock stepped back by NTP).
const CLOCK_SKEW_SECONDS: f64 = 60.0;

/// Everything `cniguard status` shows about one trigger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerReport {
    pub trigger: String,
    pub severity: String,
    pub state: String,
    pub pending_seconds: f64,
    pub active_seconds: f64,
    pub value: Option<f64>,
    pub threshold: f64,
    pub clear_threshold: f64,
    pub for_seconds: f64,
    pub detail: String,
}

pub struct Triggers {
    rules: Vec<Rule>,
    states: BTreeMap<TriggerName, TriggerState>,
    readings: BTreeMap<TriggerName, Option<Reading>>,
    /// The rules the latest evaluation had no data for (all of them before the first): their
    /// states are kept as they are, and none of them recommends a rollback.
    no_data: std::collections::BTreeSet<TriggerName>,
    file: StateFile,
    evaluated_at: f64,
}

/// Shared by the evaluator, the collector and `/status`.
pub type SharedTriggers = std::sync::Arc<std::sync::Mutex<Triggers>>;

impl Triggers {
    /// Loads the states kept from before a restart (see `state_file`), if plausible for a
    /// node whose phase record starts at `not_before`.
    #[must_use]
    pub fn load(rules: Vec<Rule>, file: StateFile, not_before: Option<f64>) -> Self {
        Self::load_at(rules, file, unix_now(), not_before)
    }

    /// [`Triggers::load`] at `now`.
    #[must_use]
    pub fn load_at(rules: Vec<Rule>, file: StateFile, now: f64, not_before: Option<f64>) -> Self {
        let states: BTreeMap<TriggerName, TriggerState> = file
            .load(|states: &BTreeMap<TriggerName, TriggerState>| {
                states.iter().try_for_each(|(trigger, state)| {
                    state.plausible(now, not_before).map_err(|why| format!("{}: {why}", trigger.label()))
                })
            })
            .unwrap_or_default();
        for (trigger, state) in &states {
            if state.holding_since.is_some() || state.is_active() {
                tracing::info!(
                    trigger = trigger.label(),
                    active = state.is_active(),
                    "trigger state carried over the restart"
                );
            }
        }
        let no_data = rules.iter().map(|rule| rule.name).collect();
        Self { rules, states, readings: BTreeMap::new(), no_data, file, evaluated_at: now }
    }

    /// Evaluates every rule at `now`; returns what became active or cleared.
    pub fn evaluate(&mut self, inputs: &Inputs, now: f64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let before = self.states.clone();
        for rule in &self.rules {
            let reading = rule.read(inputs);
            if reading.is_none() && rule.applies(inputs) {
                // No data: nothing to judge on, so the state (carried over a restart, or
                // kept through a gap) is left as it is, neither advanced nor cleared.
                self.no_data.insert(rule.name);
                self.readings.insert(rule.name, None);
                continue;
            }
            self.no_data.remove(&rule.name);
            let state = self.states.entry(rule.name).or_default();
            if let Some(active) = state.step(rule.hysteresis(), reading.as_ref().map(|r| r.value), now) {
                let detail = reading.as_ref().map_or_else(|| "no data".to_owned(), |r| r.detail.clone());
                transitions.push(Transition { trigger: rule.name, active, detail });
            }
            self.readings.insert(rule.name, reading);
        }
        self.evaluated_at = now;
        // Saved when something started or stopped holding, not on every evaluation.
        if self.states != before {
            self.file.save(&self.states);
        }
        transitions
    }

    #[must_use]
    pub fn rollback_recommended(&self) -> bool {
        self.rules.iter().any(|rule| {
            rule.severity == Severity::Rollback
                && !self.no_data.contains(&rule.name)
                && self.states.get(&rule.name).is_some_and(TriggerState::is_active)
        })
    }

    #[must_use]
    pub fn report(&self) -> Vec<TriggerReport> {
        let now = self.evaluated_at;
        self.rules
            .iter()
            .map(|rule| {
                let state = self.states.get(&rule.name).copied().unwrap_or_default();
                let reading = self.readings.get(&rule.name).cloned().flatten();
                let no_data = self.no_data.contains(&rule.name) && state != TriggerState::default();
                let label = match (state.is_active(), state.holding_since, state.clearing_since) {
                    _ if no_data => "no_data",
                    (true, _, Some(_)) => "clearing",
                    (true, _, None) => "active",
                    (false, Some(_), _) => "pending",
                    (false, None, _) => "ok",
                };
                TriggerReport {
                    trigger: rule.name.label().to_owned(),
                    severity: rule.severity.label().to_owned(),
                    state: label.to_owned(),
                    pending_seconds: state.pending_seconds(now),
                    active_seconds: state.active_since.map_or(0.0, |since| (now - since).max(0.0)),
                    value: reading.as_ref().map(|r| r.value),
                    threshold: rule.threshold,
                    clear_threshold: rule.clear_threshold,
                    for_seconds: rule.for_seconds,
                    detail: reading.map_or_else(|| "no data".to_owned(), |r| r.detail),
                }
            })
            .collect()
    }
}

/// Gathers the inputs from the checks, the baselines and the phase.
#[must_use]
pub fn gather(
    rules: &[Rule],
    checks: &SharedResults,
    baselines: &SharedBaselines,
    phase: &SharedPhase,
) -> Inputs {
    gather_at(rules, checks, baselines, phase, Instant::now())
}

/// [`gather`] at `now`. A target whose latest result is stale (the `from` pod vanished,
/// rounds stopped) is left out, as if it had no result: no data, never a failure.
#[must_use]
pub fn gather_at(
    rules: &[Rule],
    checks: &SharedResults,
    baselines: &SharedBaselines,
    phase: &SharedPhase,
    now: Instant,
) -> Inputs {
    let mut inputs = Inputs::default();
    let window = rules
        .iter()
        .find(|rule| rule.name == TriggerName::PodToPodNotRestored)
        .map_or(300.0, |rule| rule.window_seconds);
    let window_start = now.checked_sub(std::time::Duration::from_secs_f64(window)).unwrap_or(now);
    {
        let results = checks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut failures, mut total) = (0.0, 0.0);
        for (name, state) in results.iter().filter(|(_, state)| !state.is_stale(now)) {
            let failed = state.latest() == Some(false);
            match state.check {
                CheckKind::PodToPod => {
                    let lost = inputs.peers.entry(state.peer.clone()).or_insert(true);
                    *lost &= failed;
                    for (at, ok) in &state.history {
                        if *at >= window_start {
                            total += 1.0;
                            failures += f64::from(u8::from(!ok));
                        }
                    }
                }
                CheckKind::Service => {
                    inputs.services += 1;
                    if failed {
                        inputs.services_failing.push(name.clone());
                    }
                }
                CheckKind::Dns => {
                    inputs.dns_checks += 1;
                    inputs.dns_checks_failing += usize::from(failed);
                }
            }
        }
        inputs.pod_to_pod_window = (total > 0.0).then_some((failures, total));
    }
    {
        let baselines = baselines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inputs.window = baselines.latest_window();
        inputs.ratios = baselines.ratios();
    }
    if let Some((record, _)) = *phase.read().unwrap_or_else(std::sync::PoisonError::into_inner) {
        inputs.since_phase_change = (record.changes > 0).then(|| (unix_now() - record.since).max(0.0));
    }
    inputs
}

/// Exports the triggers' states.
pub struct TriggerCollector {
    triggers: SharedTriggers,
    active: Desc,
    pending: Desc,
    value: Desc,
    recommended: Desc,
}

impl TriggerCollector {
    #[must_use]
    pub fn new(triggers: SharedTriggers) -> Self {
        Self {
            triggers,
            active: catalogue::ROLLBACK_TRIGGER_ACTIVE.desc(),
            pending: catalogue::ROLLBACK_TRIGGER_PENDING_SECONDS.desc(),
            value: catalogue::ROLLBACK_TRIGGER_VALUE.desc(),
            recommended: catalogue::ROLLBACK_RECOMMENDED.desc(),
        }
    }
}

impl Collector for TriggerCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.active, &self.pending, &self.value, &self.recommended]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let triggers = self.triggers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let labels = &["trigger", "severity"];
        let (mut active, mut pending, mut value) = (
            FamilyBuilder::gauge(&self.active, labels),
            FamilyBuilder::gauge(&self.pending, labels),
            FamilyBuilder::gauge(&self.value, labels),
        );
        for report in triggers.report() {
            let series = [report.trigger.as_str(), report.severity.as_str()];
            active
                .sample(&series, f64::from(u8::from(matches!(report.state.as_str(), "active" | "clearing"))));
            pending.sample(&series, report.pending_seconds);
            if let Some(reading) = report.value {
                value.sample(&series, reading);
            }
        }
        let mut recommended = FamilyBuilder::gauge(&self.recommended, &[]);
        recommended.sample(&[], f64::from(u8::from(triggers.rollback_recommended())));
        [active.build(), pending.build(), value.build(), recommended.build()].into_iter().flatten().collect()
    }
}

/// Registers the collector and evaluates every `every` until the daemon stops; each
/// transition is logged and handed to `notify` (Kubernetes Events in a cluster).
///
/// # Errors
/// On a duplicate metric name.
pub fn start(
    triggers: SharedTriggers,
    registry: &Registry,
    every: std::time::Duration,
    inputs: impl Fn(&[Rule]) -> Inputs + Send + 'static,
    notify: impl Fn(&Transition) + Send + 'static,
) -> anyhow::Result<()> {
    registry.register(Box::new(TriggerCollector::new(triggers.clone())))?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let rules = triggers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).rules.clone();
            let gathered = inputs(&rules);
            let transitions = triggers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .evaluate(&gathered, unix_now());
            for transition in transitions {
                if transition.active {
                    tracing::warn!(
                        trigger = transition.trigger.label(),
                        "rollback trigger ACTIVE: {}",
                        transition.detail
                    );
                } else {
                    tracing::info!(
                        trigger = transition.trigger.label(),
                        "rollback trigger cleared: {}",
                        transition.detail
                    );
                }
                notify(&transition);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "the times compared are exact")]
mod tests {
    use super::*;

    fn rule(name: TriggerName, for_seconds: f64) -> Rule {
        Rule {
            name,
            severity: Severity::Rollback,
            threshold: 0.0,
            clear_threshold: 0.0,
            for_seconds,
            clear_seconds: 30.0,
            restore_deadline_seconds: 600.0,
            window_seconds: 300.0,
        }
    }

    fn peers(lost: bool) -> Inputs {
        Inputs {
            peers: BTreeMap::from([("node-2".into(), lost), ("node-3".into(), false)]),
            ..Inputs::default()
        }
    }

    fn file(dir: &std::path::Path) -> StateFile {
        let rejected = prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap();
        StateFile::new(Some(dir), FILE_NAME, FORMAT, "node-1", rejected)
    }

    #[test]
    fn fires_after_exactly_its_for_and_clears_after_its_clear_time() {
        let dir = crate::state_file::TempDir::new("triggers-for");
        let mut triggers =
            Triggers::load(vec![rule(TriggerName::ConnectivityLost, 1800.0)], file(dir.path()), None);
        assert!(triggers.evaluate(&peers(true), 1000.0).is_empty());
        assert!(triggers.evaluate(&peers(true), 2799.0).is_empty(), "1799 s: still pending");
        assert_eq!(triggers.report()[0].pending_seconds, 1799.0);
        let fired = triggers.evaluate(&peers(true), 2800.0);
        assert_eq!(fired.len(), 1);
        assert!(fired[0].active && fired[0].detail.contains("node-2"), "{fired:?}");
        assert!(triggers.rollback_recommended());
        // Restored: clears only after clear_seconds of good results.
        assert!(triggers.evaluate(&peers(false), 2810.0).is_empty());
        assert_eq!(triggers.report()[0].state, "clearing");
        assert!(triggers.evaluate(&peers(true), 2820.0).is_empty(), "a relapse resets the clearing");
        assert!(triggers.evaluate(&peers(false), 2830.0).is_empty());
        assert!(triggers.evaluate(&peers(false), 2859.0).is_empty());
        let cleared = triggers.evaluate(&peers(false), 2860.0);
        assert_eq!(cleared.len(), 1);
        assert!(!cleared[0].active);
        assert!(!triggers.rollback_recommended());
    }

    #[test]
    fn a_restart_keeps_the_pending_time() {
        let dir = crate::state_file::TempDir::new("triggers-restart");
        let mut triggers =
            Triggers::load(vec![rule(TriggerName::ConnectivityLost, 1800.0)], file(dir.path()), None);
        triggers.evaluate(&peers(true), 1000.0);
        triggers.evaluate(&peers(true), 2740.0);
        drop(triggers);
        // 29 minutes in, the daemon restarts: one minute later the trigger fires.
        let mut restarted =
            Triggers::load(vec![rule(TriggerName::ConnectivityLost, 1800.0)], file(dir.path()), None);
        assert!(restarted.evaluate(&peers(true), 2741.0).is_empty());
        assert_eq!(restarted.report()[0].pending_seconds, 1741.0);
        assert_eq!(restarted.evaluate(&peers(true), 2800.0).len(), 1);
    }

    /// The daemon's first evaluation after a restart runs before any check result or
    /// baseline window exists: that is no data, and must leave the carried state as it is.
    #[test]
    fn a_restart_waits_for_fresh_inputs_and_keeps_the_carried_time() {
        let dir = crate::state_file::TempDir::new("triggers-restart-no-data");
        let rules = || vec![rule(TriggerName::ConnectivityLost, 1800.0)];
        let mut triggers = Triggers::load(rules(), file(dir.path()), None);
        triggers.evaluate(&peers(true), 1000.0);
        triggers.evaluate(&peers(true), 2740.0);
        drop(triggers);
        let mut restarted = Triggers::load(rules(), file(dir.path()), None);
        // Ten seconds of evaluations with nothing measured yet.
        for now in [2745.0, 2750.0, 2755.0] {
            assert!(restarted.evaluate(&Inputs::default(), now).is_empty());
        }
        let report = &restarted.report()[0];
        assert_eq!((report.state.as_str(), report.pending_seconds), ("no_data", 1755.0));
        // Not written over: the file still holds since when the failure holds.
        let kept = Triggers::load(rules(), file(dir.path()), None);
        assert_eq!(kept.states[&TriggerName::ConnectivityLost].holding_since, Some(1000.0));
        // The first fresh results still fail: it fires 1800 s after the carried
        // holding_since (1000), not 1800 s after the restart.
        assert!(restarted.evaluate(&peers(true), 2799.0).is_empty());
        assert_eq!(restarted.report()[0].pending_seconds, 1799.0);
        let fired = restarted.evaluate(&peers(true), 2800.0);
        assert_eq!(fired.len(), 1);
        assert!(fired[0].active);
        assert!(restarted.rollback_recommended());
    }

    /// Without data an active trigger keeps its state but recommends nothing; fresh
    /// inputs judge it again from where it was.
    #[test]
    fn no_data_neither_fires_clears_nor_recommends() {
        let dir = crate::state_file::TempDir::new("triggers-gap");
        let mut triggers =
            Triggers::load(vec![rule(TriggerName::ConnectivityLost, 60.0)], file(dir.path()), None);
        triggers.evaluate(&peers(true), 1000.0);
        assert_eq!(triggers.evaluate(&peers(true), 1060.0).len(), 1);
        assert!(triggers.rollback_recommended());
        assert!(triggers.evaluate(&Inputs::default(), 1070.0).is_empty());
        assert!(!triggers.rollback_recommended(), "no rollback on no data");
        assert_eq!(triggers.report()[0].state, "no_data");
        // An hour without data clears nothing.
        assert!(triggers.evaluate(&Inputs::default(), 4670.0).is_empty());
        assert!(triggers.evaluate(&peers(true), 4680.0).is_empty(), "still active, no second transition");
        assert!(triggers.rollback_recommended());
        assert_eq!(triggers.report()[0].active_seconds, 3620.0);
    }

    fn forge(dir: &std::path::Path, state: &str) {
        let text = format!(
            "{{\"format\":\"{FORMAT}\",\"version\":1,\"node\":\"node-1\",\"body\":{{\"connectivity_lost\":{state}}}}}"
        );
        std::fs::write(dir.join("triggers.json"), text).unwrap();
    }

    /// A hand-edited `active_since: 2` is older than the node's phase record (since 5000):
    /// the file is set aside, and nothing is recommended; a state from the future too.
    #[test]
    fn implausible_carried_states_are_set_aside() {
        let rules = || vec![rule(TriggerName::ConnectivityLost, 1800.0)];
        let rejected = |dir: &std::path::Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".rejected-"))
                .count()
        };
        for (forged, why) in [
            ("{\"holding_since\":2.0,\"active_since\":2.0}", "older than the phase record"),
            ("{\"holding_since\":20000.0}", "in the future"),
            ("{\"holding_since\":6000.0,\"clearing_since\":7000.0}", "clearing while not active"),
        ] {
            let dir = crate::state_file::TempDir::new("triggers-forged");
            forge(dir.path(), forged);
            let mut triggers = Triggers::load_at(rules(), file(dir.path()), 10_000.0, Some(5000.0));
            assert_eq!(triggers.states.get(&TriggerName::ConnectivityLost), None, "{why}");
            assert_eq!(rejected(dir.path()), 1, "{why}: set aside");
            assert!(!triggers.rollback_recommended(), "{why}");
            // Failing checks now start the trigger afresh: pending, not active.
            assert!(triggers.evaluate(&peers(true), 10_000.0).is_empty(), "{why}");
            assert!(!triggers.rollback_recommended(), "{why}");
            assert_eq!(triggers.report()[0].state, "pending", "{why}");
        }
        // A plausible active state is kept, but recommends a rollback only once inputs say so.
        let dir = crate::state_file::TempDir::new("triggers-carried-active");
        forge(dir.path(), "{\"holding_since\":6000.0,\"active_since\":7800.0}");
        let mut triggers = Triggers::load_at(rules(), file(dir.path()), 10_000.0, Some(5000.0));
        assert_eq!(rejected(dir.path()), 0);
        assert!(!triggers.rollback_recommended(), "no inputs yet");
        assert_eq!(triggers.report()[0].state, "no_data");
        assert!(triggers.evaluate(&Inputs::default(), 10_010.0).is_empty());
        assert!(!triggers.rollback_recommended(), "still no inputs");
        assert!(triggers.evaluate(&peers(true), 10_020.0).is_empty());
        assert!(triggers.rollback_recommended());
        assert_eq!(triggers.report()[0].active_seconds, 2220.0);
    }

    /// The `from` pod vanished: the last results (every check to node-2 failing) stay in
    /// the map, but 31 s after them (3 intervals of 10 s, plus one) they are no data.
    #[test]
    fn stale_results_feed_no_trigger() {
        use std::collections::VecDeque;
        use std::time::Duration;
        let start = Instant::now();
        let state = |peer: &str, ok: bool| crate::checks::TargetState {
            check: CheckKind::PodToPod,
            peer: peer.into(),
            history: VecDeque::from([(start, ok)]),
            last_failure: None,
            stale_after: Duration::from_secs(30),
        };
        let checks = SharedResults::default();
        checks.lock().unwrap().insert("node-2".into(), state("node-2", false));
        checks.lock().unwrap().insert("node-3".into(), state("node-3", true));
        let (baselines, phase) = (
            std::sync::Arc::new(std::sync::Mutex::new(crate::judgement::baseline::Baselines::load(
                StateFile::new(
                    None,
                    "b",
                    "b",
                    "node-1",
                    prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap(),
                ),
                3,
            ))),
            SharedPhase::default(),
        );
        let rules = vec![rule(TriggerName::ConnectivityLost, 30.0)];
        let at =
            |seconds| gather_at(&rules, &checks, &baselines, &phase, start + Duration::from_secs(seconds));
        assert_eq!(at(30).peers, peers(true).peers, "30 s old: fresh");
        assert!(at(31).peers.is_empty(), "31 s old: stale, no data");
        assert_eq!(at(31).pod_to_pod_window, None);
        let dir = crate::state_file::TempDir::new("triggers-stale");
        let mut triggers = Triggers::load(rules.clone(), file(dir.path()), None);
        // Pending since 1000 on the fresh results; they go stale before its 30 s are up.
        assert!(triggers.evaluate(&at(0), 1000.0).is_empty());
        assert!(triggers.evaluate(&at(30), 1029.0).is_empty());
        for (age, now) in [(31, 1030.0), (64, 1064.0), (600, 1600.0)] {
            assert!(triggers.evaluate(&at(age), now).is_empty(), "no check ran: never fires ({now})");
        }
        assert!(!triggers.rollback_recommended());
        assert_eq!(triggers.report()[0].state, "no_data");
    }

    /// Every default rule, on synthetic inputs: fires after exactly its `for` and clears.
    #[test]
    fn every_default_rule_fires_and_clears() {
        let window = |signal: Signal, value: f64| BTreeMap::from([(signal, value)]);
        let cases: Vec<(TriggerName, Inputs, Inputs)> = vec![
            (TriggerName::ConnectivityLost, peers(true), peers(false)),
            (
                TriggerName::PodToPodNotRestored,
                Inputs {
                    since_phase_change: Some(1000.0),
                    pod_to_pod_window: Some((5.0, 100.0)),
                    ..Inputs::default()
                },
                Inputs {
                    since_phase_change: Some(1000.0),
                    pod_to_pod_window: Some((0.0, 100.0)),
                    ..Inputs::default()
                },
            ),
            (
                TriggerName::CriticalServiceUnavailable,
                Inputs {
                    services: 2,
                    services_failing: vec!["seldon-scheduler".into()],
                    ..Inputs::default()
                },
                Inputs { services: 2, ..Inputs::default() },
            ),
            (
                TriggerName::DnsFailing,
                Inputs {
                    window: BTreeMap::from([
                        (baseline::DNS_FAILURE_RATIO, 0.1),
                        (baseline::DNS_TIMEOUT_RATIO, 0.3),
                    ]),
                    ..Inputs::default()
                },
                Inputs {
                    window: BTreeMap::from([
                        (baseline::DNS_FAILURE_RATIO, 0.0),
                        (baseline::DNS_TIMEOUT_RATIO, 0.01),
                    ]),
                    ..Inputs::default()
                },
            ),
            (
                TriggerName::LocalhostLatencySlo,
                Inputs { window: window(baseline::LOCALHOST_P99, 0.004), ..Inputs::default() },
                Inputs { window: window(baseline::LOCALHOST_P99, 0.0004), ..Inputs::default() },
            ),
            (
                TriggerName::Regression,
                Inputs { ratios: window(baseline::DROPS_PER_SECOND, 5.0), ..Inputs::default() },
                Inputs { ratios: window(baseline::DROPS_PER_SECOND, 1.0), ..Inputs::default() },
            ),
        ];
        let dir = crate::state_file::TempDir::new("triggers-defaults");
        for (name, bad, good) in cases {
            let rule = settings::default_rules().into_iter().find(|rule| rule.name == name).unwrap();
            let mut triggers = Triggers::load(vec![rule.clone()], file(dir.path()), None);
            let start = 10_000.0;
            assert!(triggers.evaluate(&bad, start).is_empty(), "{name:?}");
            if rule.for_seconds > 0.0 {
                assert!(
                    triggers.evaluate(&bad, start + rule.for_seconds - 1.0).is_empty(),
                    "{name:?} before its for"
                );
            }
            let fired = triggers.evaluate(&bad, start + rule.for_seconds);
            assert_eq!(fired.len(), 1, "{name:?} fires after exactly {}s", rule.for_seconds);
            let end = start + rule.for_seconds;
            assert!(triggers.evaluate(&good, end + 1.0).is_empty(), "{name:?}");
            assert!(
                triggers.evaluate(&good, end + rule.clear_seconds).is_empty(),
                "{name:?} before its clear time"
            );
            let cleared = triggers.evaluate(&good, end + 1.0 + rule.clear_seconds);
            assert_eq!(cleared.len(), 1, "{name:?} clears");
        }
    }

    #[test]
    fn no_data_never_fires() {
        for rule in settings::default_rules() {
            assert_eq!(rule.read(&Inputs::default()), None, "{:?}", rule.name);
        }
        // Within the restore deadline, pod-to-pod failures are expected.
        let early = Inputs {
            since_phase_change: Some(60.0),
            pod_to_pod_window: Some((50.0, 100.0)),
            ..Inputs::default()
        };
        let rule = settings::default_rules()
            .into_iter()
            .find(|r| r.name == TriggerName::PodToPodNotRestored)
            .unwrap();
        assert_eq!(rule.read(&early), None);
    }
}
