//! Diagnose: the cause of a failing cutover, named, with its evidence and the fix, from
//! what this node's kernel shows. Every `[diagnose] evaluate_seconds` the findings'
//! detectors (`findings::DETECTORS`) read the probes' typed totals over the window, the
//! node's devices and routes, and the in-pod health checks; each finding about one subject
//! (a peer, a pod, a route) holds and clears with the rollback triggers' discipline
//! (`Hysteresis`: raised once its evidence has held `for_seconds`, cleared once gone for
//! `clear_seconds`), so one packet never raises a finding.
//!
//! Raised findings are on `GET /diagnose` (and `cniguard diagnose`), in `/status`, in
//! `cniguard_finding{finding,severity}` and `cniguard_finding_evidence{finding}`, in the
//! log, and in cluster mode an Event on the Node.

pub mod findings;
pub mod observations;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Result;
use prometheus::Registry;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};

use self::findings::{DETECTORS, Detected, FindingName};
use self::observations::{Devices, History, Observations, PodAddresses};
use self::settings::DiagnoseSettings;
use crate::checks::health::SharedLocalhost;
use crate::judgement::phase::{SharedPhase, unix_now};
use crate::judgement::signals::Signals;
use crate::judgement::triggers::{Hysteresis, TriggerState};
use crate::metrics::{FamilyBuilder, catalogue};
use crate::node::namespaces::SharedInventory;

/// Subjects followed at once, pending or raised: a bound on memory whatever the node shows.
pub const MAX_TRACKED: usize = 512;

/// One finding about one subject, as it is followed between evaluations.
#[derive(Debug, Clone)]
struct Tracked {
    state: TriggerState,
    /// What its detector last said (kept while it clears).
    latest: Detected,
}

/// Every finding of this node, raised or on its way.
pub struct Diagnosis {
    hysteresis: Hysteresis,
    tracked: BTreeMap<(FindingName, String), Tracked>,
    /// Subjects left out because `MAX_TRACKED` were followed already.
    dropped: u64,
    evaluated_at: f64,
}

/// A finding raised or cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub raised: bool,
    pub finding: Detected,
}

/// One finding as `/diagnose` and `cniguard diagnose` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingReport {
    pub finding: String,
    pub severity: String,
    pub subject: String,
    /// `pending` (its evidence holds, not for long enough yet), `raised`, or `clearing`.
    pub state: String,
    /// How long its evidence has held (pending) or since it was raised.
    pub seconds: f64,
    pub evidence: String,
    pub fix: String,
}

/// What `GET /diagnose` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    pub findings: Vec<FindingReport>,
}

pub type SharedDiagnosis = Arc<Mutex<Diagnosis>>;

impl Diagnosis {
    #[must_use]
    pub fn new(hysteresis: Hysteresis) -> Self {
        Self { hysteresis, tracked: BTreeMap::new(), dropped: 0, evaluated_at: unix_now() }
    }

    /// Steps every finding with what the detectors found at `now` (present: 1, gone: 0);
    /// returns what was raised or cleared. A subject neither present nor raised is let go.
    pub fn evaluate(&mut self, detected: Vec<Detected>, now: f64) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut present: BTreeMap<(FindingName, String), Detected> = BTreeMap::new();
        for finding in detected {
            present.insert((finding.name, finding.subject.clone()), finding);
        }
        for (key, finding) in &present {
            if !self.tracked.contains_key(key) {
                if self.tracked.len() >= MAX_TRACKED {
                    self.dropped += 1;
                    continue;
                }
                self.tracked
                    .insert(key.clone(), Tracked { state: TriggerState::default(), latest: finding.clone() });
            }
        }
        let hysteresis = self.hysteresis;
        self.tracked.retain(|key, tracked| {
            let now_present = present.get(key);
            if let Some(finding) = now_present {
                tracked.latest = finding.clone();
            }
            let value = if now_present.is_some() { 1.0 } else { 0.0 };
            if let Some(raised) = tracked.state.step(hysteresis, Some(value), now) {
                changes.push(Change { raised, finding: tracked.latest.clone() });
            }
            tracked.state != TriggerState::default()
        });
        self.evaluated_at = now;
        changes
    }

    /// Raised findings first, then pending ones; by finding and subject.
    #[must_use]
    pub fn report(&self) -> Vec<FindingReport> {
        let now = self.evaluated_at;
        let mut reports: Vec<FindingReport> = self
            .tracked
            .values()
            .map(|tracked| {
                let (state, seconds) = match (tracked.state.active_since, tracked.state.clearing_since) {
                    (Some(since), Some(_)) => ("clearing", now - since),
                    (Some(since), None) => ("raised", now - since),
                    (None, _) => ("pending", tracked.state.pending_seconds(now)),
                };
                let finding = &tracked.latest;
                FindingReport {
                    finding: finding.name.label().to_owned(),
                    severity: finding.name.severity().to_owned(),
                    subject: finding.subject.clone(),
                    state: state.to_owned(),
                    seconds: seconds.max(0.0),
                    evidence: finding.evidence.clone(),
                    fix: finding.fix.clone(),
                }
            })
            .collect();
        reports.sort_by_key(|r| (r.state == "pending", r.finding.clone(), r.subject.clone()));
        reports
    }

    /// Each finding's raised subjects' evidence values summed, for the findings raised.
    fn raised(&self) -> BTreeMap<FindingName, f64> {
        let mut raised = BTreeMap::new();
        for ((name, _), tracked) in &self.tracked {
            if tracked.state.is_active() {
                *raised.entry(*name).or_default() += tracked.latest.value;
            }
        }
        raised
    }
}

/// The findings as `cniguard diagnose` prints them.
#[must_use]
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let raised = report.findings.iter().filter(|f| f.state != "pending").count();
    let _ = writeln!(
        out,
        "node {}: {}",
        report.node,
        match raised {
            0 => "no finding raised".to_owned(),
            1 => "1 finding raised".to_owned(),
            n => format!("{n} findings raised"),
        }
    );
    for finding in &report.findings {
        let _ = writeln!(
            out,
            "{:<8} {:<8} {} ({}) for {:.0}s\n  evidence: {}\n  fix:      {}",
            finding.state,
            finding.severity,
            finding.finding,
            finding.subject,
            finding.seconds,
            finding.evidence,
            finding.fix
        );
    }
    out
}

/// What the evaluation reads, besides the probes' totals.
pub struct Sources {
    pub signals: Signals,
    pub phase: SharedPhase,
    pub localhost: Option<SharedLocalhost>,
    pub handle: rtnetlink::Handle,
    pub typha_port: u16,
    /// The namespaces in scope: the pods whose addresses `pods_on_old_addresses` reads.
    pub inventory: SharedInventory,
}

/// Registers the findings' metrics and evaluates them for as long as the daemon runs;
/// `on_change` hears each finding raised or cleared.
///
/// # Errors
/// If a metric cannot be registered.
pub fn start(
    settings: DiagnoseSettings,
    sources: Sources,
    registry: &Registry,
    on_change: impl Fn(&Change) + Send + 'static,
) -> Result<SharedDiagnosis> {
    let diagnosis: SharedDiagnosis = Arc::new(Mutex::new(Diagnosis::new(settings.hysteresis)));
    registry.register(Box::new(FindingCollector::new(diagnosis.clone())))?;
    let shared = diagnosis.clone();
    tokio::spawn(async move {
        let mut history = History::default();
        let mut devices = Devices::default();
        let mut tick = tokio::time::interval(settings.evaluate_every);
        loop {
            tick.tick().await;
            let observed = observe(&settings, &sources, &mut history, &mut devices).await;
            let detected: Vec<Detected> =
                DETECTORS.iter().flat_map(|(_, detect)| detect(&observed)).collect();
            let changes =
                shared.lock().unwrap_or_else(PoisonError::into_inner).evaluate(detected, unix_now());
            for change in &changes {
                let finding = &change.finding;
                if change.raised {
                    tracing::warn!(
                        finding = finding.name.label(),
                        severity = finding.name.severity(),
                        subject = finding.subject,
                        fix = finding.fix,
                        "finding raised: {}",
                        finding.evidence
                    );
                } else {
                    tracing::info!(
                        finding = finding.name.label(),
                        subject = finding.subject,
                        "finding cleared"
                    );
                }
                on_change(change);
            }
        }
    });
    Ok(diagnosis)
}

async fn observe(
    settings: &DiagnoseSettings,
    sources: &Sources,
    history: &mut History,
    kept: &mut Devices,
) -> Observations {
    let now = sources.signals.totals();
    // Until a whole window is kept, the window is what there is since the daemon started:
    // what happened right after a restart is not lost (the hold time still applies).
    let (before, age) = history.push(Instant::now(), now.clone(), settings.window);
    let previous = history.previous().clone();
    // A dump refused (the handle is shared: another dump may be under way) keeps the last
    // reading: a finding about a route or a device must not flicker with it.
    match Devices::read(&sources.handle).await {
        Ok(devices) => *kept = devices,
        Err(err) => {
            tracing::debug!("reading the node's devices for the findings failed, kept the last: {err}");
        }
    }
    let Devices { links, routes, addresses } = kept.clone();
    let localhost = sources.localhost.as_ref().map_or_else(Vec::new, |localhost| {
        localhost.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    });
    let phase = *sources.phase.read().unwrap_or_else(PoisonError::into_inner);
    // Entering every pod's namespace costs a thread hop each: only where a finding reads it.
    let on_calico = phase.is_some_and(|(record, _)| record.phase == crate::judgement::phase::Phase::Calico);
    let pods = if on_calico { read_pods(sources).await } else { Vec::new() };
    Observations {
        before,
        previous,
        now,
        window_seconds: age,
        min_packets: settings.min_packets,
        min_attempts: settings.min_attempts,
        typha_port: sources.typha_port,
        phase: phase.map(|(_, signals)| signals),
        phase_age: phase.map(|(record, _)| (record.phase, (unix_now() - record.since).max(0.0))),
        localhost,
        routes,
        addresses,
        links,
        cidrs: settings.cidrs.clone(),
        old_service_cidrs: settings.old_service_cidrs.clone(),
        old_pod_cidrs: settings.old_pod_cidrs.clone(),
        pods,
    }
}

/// This node's pods with their addresses; none when they cannot be read (the next evaluation
/// tries again).
async fn read_pods(sources: &Sources) -> Vec<PodAddresses> {
    let inventory = crate::node::namespaces::read(&sources.inventory).clone();
    match crate::node::pod_facts::gather(&sources.handle, &inventory).await {
        Ok(facts) => PodAddresses::of(&facts),
        Err(err) => {
            tracing::debug!("reading the pods' addresses for the findings failed: {err:#}");
            Vec::new()
        }
    }
}

/// `cniguard_finding` (every finding, 1 while raised) and `cniguard_finding_evidence`
/// (the raised ones').
struct FindingCollector {
    diagnosis: SharedDiagnosis,
    finding: Desc,
    evidence: Desc,
    dropped: Desc,
}

impl FindingCollector {
    fn new(diagnosis: SharedDiagnosis) -> Self {
        Self {
            diagnosis,
            finding: catalogue::FINDING.desc(),
            evidence: catalogue::FINDING_EVIDENCE.desc(),
            dropped: catalogue::FINDING_SUBJECTS_DROPPED_TOTAL.desc(),
        }
    }
}

impl Collector for FindingCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.finding, &self.evidence, &self.dropped]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let diagnosis = self.diagnosis.lock().unwrap_or_else(PoisonError::into_inner);
        let raised = diagnosis.raised();
        let mut finding = FamilyBuilder::gauge(&self.finding, &["finding", "severity"]);
        let mut evidence = FamilyBuilder::gauge(&self.evidence, &["finding"]);
        for name in FindingName::ALL {
            let value = raised.get(&name);
            finding.sample(&[name.label(), name.severity()], f64::from(u8::from(value.is_some())));
            if let Some(value) = value {
                evidence.sample(&[name.label()], *value);
            }
        }
        let mut dropped = FamilyBuilder::counter(&self.dropped, &[]);
        #[allow(clippy::cast_precision_loss, reason = "a count far below 2^52")]
        dropped.sample(&[], diagnosis.dropped as f64);
        [finding.build(), evidence.build(), dropped.build()].into_iter().flatten().collect()
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "the values compared are small whole numbers, exact in f64")]
mod tests {
    use super::*;

    fn detected(subject: &str) -> Detected {
        Detected {
            name: FindingName::VxlanOneWay,
            subject: subject.to_owned(),
            evidence: format!("{subject}: 40 sent, none back"),
            value: 40.0,
            fix: "open 4789/udp".to_owned(),
        }
    }

    /// (now, present, raised by this step, cleared by this step)
    type Step<'a> = (f64, &'a [&'a str], &'a [&'a str], &'a [&'a str]);

    /// The hold and clear discipline, as a table: (second, subjects present, raised after).
    #[test]
    fn a_finding_is_raised_after_holding_and_cleared_after_being_gone() {
        let hysteresis =
            Hysteresis { threshold: 0.5, clear_threshold: 0.5, for_seconds: 10.0, clear_seconds: 20.0 };
        let mut diagnosis = Diagnosis::new(hysteresis);
        let steps: &[Step<'_>] = &[
            (0.0, &["a"], &[], &[]),
            (5.0, &["a"], &[], &[]),
            // Gone before it held 10 s: it starts over.
            (7.0, &[], &[], &[]),
            (8.0, &["a", "b"], &[], &[]),
            (18.0, &["a", "b"], &["a", "b"], &[]),
            // b goes; a stays raised.
            (20.0, &["a"], &[], &[]),
            // b back within clear_seconds: it never cleared.
            (30.0, &["a", "b"], &[], &[]),
            (31.0, &["a"], &[], &[]),
            (51.0, &["a"], &[], &["b"]),
            (60.0, &[], &[], &[]),
            (80.0, &[], &[], &["a"]),
        ];
        for (now, present, raised, cleared) in steps {
            let changes = diagnosis.evaluate(present.iter().map(|s| detected(s)).collect(), *now);
            let subjects = |up: bool| -> Vec<&str> {
                changes.iter().filter(|c| c.raised == up).map(|c| c.finding.subject.as_str()).collect()
            };
            assert_eq!(subjects(true), *raised, "raised at {now}");
            assert_eq!(subjects(false), *cleared, "cleared at {now}");
        }
        assert!(diagnosis.tracked.is_empty(), "nothing present or raised is kept");
    }

    #[test]
    fn memory_is_bounded_and_what_is_left_out_is_counted() {
        let hysteresis =
            Hysteresis { threshold: 0.5, clear_threshold: 0.5, for_seconds: 0.0, clear_seconds: 0.0 };
        let mut diagnosis = Diagnosis::new(hysteresis);
        let many: Vec<Detected> = (0..MAX_TRACKED + 10).map(|i| detected(&format!("peer-{i}"))).collect();
        let changes = diagnosis.evaluate(many, 0.0);
        assert_eq!(changes.len(), MAX_TRACKED);
        assert_eq!(diagnosis.dropped, 10);
        let report = diagnosis.report();
        assert_eq!(report.len(), MAX_TRACKED);
        assert_eq!(report[0].state, "raised");
        assert_eq!(diagnosis.raised()[&FindingName::VxlanOneWay], 40.0 * MAX_TRACKED as f64);
    }
}
