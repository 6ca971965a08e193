//! Rolling baselines of the node's key rates while it still runs Flannel, frozen when the
//! cutover starts, and the ratio of every later window to them: "drops are 5x what they
//! were before the cutover" is the question the runbook's rollback triggers ask.
//!
//! Every `[baseline] window_seconds` the daemon reads its own metrics (the numbers an
//! operator sees on /metrics) and the kernel's count of TCP segments sent in each watched
//! namespace, and turns the window's increase into rates and ratios. In the `flannel` phase
//! each window joins the baseline (the last `windows` of them); the first window in another
//! phase freezes it, and from then on `cniguard_baseline_ratio` compares each window with
//! it. Baselines and the phase are kept in `<state dir>/baselines.json` (see `state_file`),
//! written after every window, so a restart in the middle of the cutover keeps them.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};

use crate::judgement::phase::{Phase, PhaseRecord};
use crate::judgement::signals::{Signals, Totals, quantile};
use crate::metrics::{FamilyBuilder, catalogue};
use crate::node::namespaces::{self, SharedInventory};
use crate::state_file::StateFile;

/// The `[baseline]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// The length of one window, in seconds: rates and ratios are computed per window.
    pub window_seconds: u64,
    /// How many of the latest windows in the `flannel` phase make the baseline.
    pub windows: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self { window_seconds: 60, windows: 30 }
    }
}

/// The validated `[baseline]` table.
#[derive(Debug, Clone, Copy)]
pub struct BaselineSettings {
    pub window: std::time::Duration,
    pub windows: usize,
}

/// The longest window: an hour (the checks keep an hour of results, and a longer window
/// would judge the cutover too late).
pub const MAX_WINDOW_SECONDS: u64 = 3600;
/// The most windows a baseline keeps: the state file stays a few MiB.
pub const MAX_WINDOWS: usize = 10_000;

/// What is wrong with the `[baseline]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaselineError {
    #[error("{value} is out of range: must be 1 to {max}{unit}")]
    Range { field: &'static str, value: u64, max: u64, unit: &'static str },
}

impl BaselineError {
    /// The configuration field the error is about.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::Range { field, .. } => field,
        }
    }
}

impl BaselineConfig {
    pub fn validate(&self) -> Result<BaselineSettings, BaselineError> {
        let windows = u64::try_from(self.windows).unwrap_or(u64::MAX);
        if !(1..=MAX_WINDOWS as u64).contains(&windows) {
            return Err(BaselineError::Range {
                field: "baseline.windows",
                value: windows,
                max: MAX_WINDOWS as u64,
                unit: " windows",
            });
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.window_seconds) {
            return Err(BaselineError::Range {
                field: "baseline.window_seconds",
                value: self.window_seconds,
                max: MAX_WINDOW_SECONDS,
                unit: " seconds",
            });
        }
        Ok(BaselineSettings {
            window: std::time::Duration::from_secs(self.window_seconds),
            windows: self.windows,
        })
    }
}

/// The state file's name and format.
pub const FILE_NAME: &str = "baselines";
pub const FORMAT: &str = "cniguard-baselines";

/// What a window measures: the `signal` label, and the keys of the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    DropsPerSecond,
    RetransmitsPerSegment,
    DnsFailureRatio,
    DnsTimeoutRatio,
    #[serde(rename = "localhost_response_p99_seconds")]
    LocalhostP99,
}

impl Signal {
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::DropsPerSecond => "drops_per_second",
            Self::RetransmitsPerSegment => "retransmits_per_segment",
            Self::DnsFailureRatio => "dns_failure_ratio",
            Self::DnsTimeoutRatio => "dns_timeout_ratio",
            Self::LocalhostP99 => "localhost_response_p99_seconds",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

pub const DROPS_PER_SECOND: Signal = Signal::DropsPerSecond;
pub const RETRANSMITS_PER_SEGMENT: Signal = Signal::RetransmitsPerSegment;
pub const DNS_FAILURE_RATIO: Signal = Signal::DnsFailureRatio;
pub const DNS_TIMEOUT_RATIO: Signal = Signal::DnsTimeoutRatio;
pub const LOCALHOST_P99: Signal = Signal::LocalhostP99;

/// What is kept on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Stored {
    phase: Option<PhaseRecord>,
    /// Set when the node first left `flannel`: the baselines learn no more.
    frozen: bool,
    /// The last windows' values, oldest first.
    signals: BTreeMap<Signal, VecDeque<f64>>,
    drop_reasons: BTreeMap<String, VecDeque<f64>>,
}

/// The rates and ratios of one window.
#[derive(Debug, Clone, Default, PartialEq)]
struct Window {
    signals: BTreeMap<Signal, f64>,
    drop_reasons: BTreeMap<String, f64>,
}

pub struct Baselines {
    stored: Stored,
    file: StateFile,
    windows: usize,
    previous: Option<(Instant, Totals)>,
    latest: Option<Window>,
    /// TCP segments sent per namespace (inode) at the last reading, and their running sum.
    segments_seen: BTreeMap<u64, u64>,
    segments_sent_total: u64,
}

/// Where the baselines live, shared by the sampler and the collector.
pub type SharedBaselines = Arc<Mutex<Baselines>>;

impl Baselines {
    /// Loads the state file if it is trustworthy (see `state_file`), else starts afresh.
    #[must_use]
    pub fn load(file: StateFile, windows: usize) -> Self {
        let stored = file.load(check).unwrap_or_default();
        Self {
            stored,
            file,
            windows,
            previous: None,
            latest: None,
            segments_seen: BTreeMap::new(),
            segments_sent_total: 0,
        }
    }

    /// The phase kept from before a restart.
    #[must_use]
    pub fn phase(&self) -> Option<PhaseRecord> {
        self.stored.phase
    }

    /// The latest window's signals (empty before the first window closes).
    #[must_use]
    pub fn latest_window(&self) -> BTreeMap<Signal, f64> {
        self.latest.as_ref().map(|window| window.signals.clone()).unwrap_or_default()
    }

    /// The latest window over the baseline, per signal: only once the baselines are frozen
    /// (the node has left Flannel), and only for signals with both.
    #[must_use]
    pub fn ratios(&self) -> BTreeMap<Signal, f64> {
        if !self.stored.frozen {
            return BTreeMap::new();
        }
        let Some(latest) = &self.latest else { return BTreeMap::new() };
        self.stored
            .signals
            .iter()
            .filter_map(|(signal, samples)| {
                Some((*signal, ratio(*latest.signals.get(signal)?, baseline(*signal, samples)?)))
            })
            .collect()
    }

    /// Records the phase; a change is saved at once.
    pub fn observe_phase(&mut self, phase: Phase) -> PhaseRecord {
        let record = PhaseRecord::observe(self.stored.phase, phase);
        if self.stored.phase != Some(record) {
            if let Some(previous) = self.stored.phase {
                tracing::info!(from = previous.phase.label(), to = phase.label(), "migration phase changed");
            }
            self.stored.phase = Some(record);
            if phase != Phase::Flannel && !self.stored.frozen && !self.stored.signals.is_empty() {
                tracing::info!("the node left flannel: baselines frozen, ratios from now on");
                self.stored.frozen = true;
            }
            self.save();
        }
        record
    }

    /// Closes a window: `totals` are the cumulative readings now.
    fn close_window(&mut self, now: Instant, totals: Totals) {
        let Some((then, previous)) = self.previous.take() else {
            self.previous = Some((now, totals));
            return;
        };
        let window = window(&previous, &totals, now.duration_since(then).as_secs_f64());
        self.previous = Some((now, totals));
        let Some(window) = window else { return };
        let learning = self.stored.phase.is_some_and(|p| p.phase == Phase::Flannel) && !self.stored.frozen;
        if learning {
            for (signal, value) in &window.signals {
                push(self.stored.signals.entry(*signal).or_default(), *value, self.windows);
            }
            // Every reason seen so far gets this window's value, 0 when it had none.
            // Once each: a reason both stored and in this window is one sample, not two.
            let reasons: std::collections::BTreeSet<String> =
                self.stored.drop_reasons.keys().chain(window.drop_reasons.keys()).cloned().collect();
            for reason in reasons {
                let value = window.drop_reasons.get(&reason).copied().unwrap_or(0.0);
                push(self.stored.drop_reasons.entry(reason).or_default(), value, self.windows);
            }
        }
        self.latest = Some(window);
        self.save();
    }

    fn save(&self) {
        self.file.save(&self.stored);
    }
}

fn push(samples: &mut VecDeque<f64>, value: f64, limit: usize) {
    samples.push_back(value);
    while samples.len() > limit {
        samples.pop_front();
    }
}

/// The baseline of a signal: the mean of its windows, but the median for a percentile
/// (one slow window must not move it much).
fn baseline(signal: Signal, samples: &VecDeque<f64>) -> Option<f64> {
    if signal != LOCALHOST_P99 {
        return mean(samples);
    }
    let mut sorted: Vec<f64> = samples.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// The mean of the windows' values; `None` without any.
fn mean(samples: &VecDeque<f64>) -> Option<f64> {
    #[allow(clippy::cast_precision_loss, reason = "at most a few thousand windows")]
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
}

/// Current over baseline. A baseline of zero gives 1 while the signal stays zero and +Inf
/// once it is not: anything at all is infinitely more than nothing.
fn ratio(current: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        current / baseline
    } else if current > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

/// Samples must be rates and ratios: finite, never negative.
fn check(stored: &Stored) -> Result<(), String> {
    let plausible = stored
        .signals
        .values()
        .chain(stored.drop_reasons.values())
        .flatten()
        .all(|v| v.is_finite() && *v >= 0.0);
    if plausible { Ok(()) } else { Err("a sample is negative or not a number".into()) }
}

/// A window's rates and ratios from the cumulative readings at its start and end.
fn window(before: &Totals, after: &Totals, seconds: f64) -> Option<Window> {
    if seconds <= 0.0 {
        return None;
    }
    // Counters only grow, but a series can vanish with its interface: never below zero.
    let delta = |a: f64, b: f64| (b - a).max(0.0);
    let mut signals = BTreeMap::new();
    let mut drop_reasons = BTreeMap::new();
    for (reason, count) in &after.drops {
        drop_reasons.insert(
            reason.clone(),
            delta(before.drops.get(reason).copied().unwrap_or(0.0), *count) / seconds,
        );
    }
    // A socket's queues purged as it closes are not packets the network lost: their rate
    // follows how often connections close, which a cutover changes for reasons of its own.
    // (A fold from 0.0: summing no floats gives -0.0, which reads oddly on /metrics.)
    let network_drops = drop_reasons
        .iter()
        .filter(|(reason, _)| reason.as_str() != "QUEUE_PURGE")
        .fold(0.0, |sum, (_, rate)| sum + rate);
    signals.insert(DROPS_PER_SECOND, network_drops);
    let segments = delta(before.segments_sent, after.segments_sent);
    if segments > 0.0 {
        signals.insert(RETRANSMITS_PER_SEGMENT, delta(before.retransmits, after.retransmits) / segments);
    }
    let queries = delta(before.dns_queries, after.dns_queries);
    if queries > 0.0 {
        signals.insert(DNS_FAILURE_RATIO, delta(before.dns_failures, after.dns_failures) / queries);
        signals.insert(DNS_TIMEOUT_RATIO, delta(before.dns_timeouts, after.dns_timeouts) / queries);
    }
    if let Some(p99) = quantile(0.99, &before.localhost_response, &after.localhost_response) {
        signals.insert(LOCALHOST_P99, p99);
    }
    Some(Window { signals, drop_reasons })
}

/// Samples every window until the daemon stops, on a thread of its own: the work is all
/// blocking (reading /proc in each namespace, gathering every collector).
///
/// # Errors
/// If the thread cannot be started.
pub fn start_sampling(
    baselines: SharedBaselines,
    signals: Signals,
    inventory: SharedInventory,
    window: std::time::Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("baselines".into()).spawn(move || {
        let mut next = Instant::now();
        loop {
            let segments = read_segments(&inventory);
            let mut totals = signals.totals();
            {
                let mut baselines = baselines.lock().unwrap_or_else(PoisonError::into_inner);
                let sent = baselines.count_segments(&segments);
                #[allow(clippy::cast_precision_loss, reason = "far below 2^52")]
                {
                    totals.segments_sent = sent as f64;
                }
                baselines.close_window(Instant::now(), totals);
            }
            next += window;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    })?;
    Ok(())
}

impl Baselines {
    /// Adds the increase of each namespace's segments-sent counter to the running total
    /// (a namespace that goes takes its count along; one that comes starts from now).
    fn count_segments(&mut self, now: &BTreeMap<u64, u64>) -> u64 {
        for (inode, sent) in now {
            if let Some(before) = self.segments_seen.get(inode) {
                self.segments_sent_total += sent.saturating_sub(*before);
            }
        }
        self.segments_seen.clone_from(now);
        self.segments_sent_total
    }
}

/// `OutSegs` of /proc/net/snmp in every watched namespace, by namespace inode.
fn read_segments(inventory: &SharedInventory) -> BTreeMap<u64, u64> {
    let watched: Vec<(u64, PathBuf, bool)> =
        namespaces::read(inventory).by_netns.values().map(|ns| (ns.inode, ns.path.clone(), ns.own)).collect();
    watched
        .into_iter()
        .filter_map(|(inode, path, own)| {
            let read = || std::fs::read_to_string("/proc/thread-self/net/snmp").ok();
            let snmp = if own { read() } else { namespaces::in_namespace(&path, read).flatten() }?;
            Some((inode, out_segments(&snmp)?))
        })
        .collect()
}

/// The `OutSegs` field of the `Tcp:` lines of /proc/net/snmp.
fn out_segments(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let index = names.split_whitespace().position(|name| name == "OutSegs")?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// Exports the baselines, the latest window, the ratios and the segment count.
pub struct BaselineCollector {
    baselines: SharedBaselines,
    baseline: Desc,
    current: Desc,
    ratio: Desc,
    drops_baseline: Desc,
    drops_ratio: Desc,
    segments: Desc,
}

impl BaselineCollector {
    #[must_use]
    pub fn new(baselines: SharedBaselines) -> Self {
        Self {
            baselines,
            baseline: catalogue::BASELINE.desc(),
            current: catalogue::BASELINE_WINDOW.desc(),
            ratio: catalogue::BASELINE_RATIO.desc(),
            drops_baseline: catalogue::BASELINE_DROPS_PER_SECOND.desc(),
            drops_ratio: catalogue::BASELINE_DROPS_RATIO.desc(),
            segments: catalogue::TCP_SEGMENTS_SENT_TOTAL.desc(),
        }
    }
}

impl Collector for BaselineCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![
            &self.baseline,
            &self.current,
            &self.ratio,
            &self.drops_baseline,
            &self.drops_ratio,
            &self.segments,
        ]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let baselines = self.baselines.lock().unwrap_or_else(PoisonError::into_inner);
        let stored = &baselines.stored;
        let latest = baselines.latest.clone().unwrap_or_default();
        let mut baseline = FamilyBuilder::gauge(&self.baseline, &["signal"]);
        for (signal, samples) in &stored.signals {
            if let Some(value) = self::baseline(*signal, samples) {
                baseline.sample(&[signal.label()], value);
            }
        }
        let mut ratio = FamilyBuilder::gauge(&self.ratio, &["signal"]);
        for (signal, value) in baselines.ratios() {
            ratio.sample(&[signal.label()], value);
        }
        let mut current = FamilyBuilder::gauge(&self.current, &["signal"]);
        for (signal, value) in &latest.signals {
            current.sample(&[signal.label()], *value);
        }
        let mut drops_baseline = FamilyBuilder::gauge(&self.drops_baseline, &["reason"]);
        let mut drops_ratio = FamilyBuilder::gauge(&self.drops_ratio, &["reason"]);
        for (reason, samples) in &stored.drop_reasons {
            let Some(value) = mean(samples) else { continue };
            drops_baseline.sample(&[reason], value);
            if stored.frozen {
                let now = latest.drop_reasons.get(reason).copied().unwrap_or(0.0);
                drops_ratio.sample(&[reason], self::ratio(now, value));
            }
        }
        let mut segments = FamilyBuilder::counter(&self.segments, &[]);
        #[allow(clippy::cast_precision_loss, reason = "far below 2^52")]
        segments.sample(&[], baselines.segments_sent_total as f64);
        [
            baseline.build(),
            current.build(),
            ratio.build(),
            drops_baseline.build(),
            drops_ratio.build(),
            segments.build(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(families: &[MetricFamily]) -> String {
        use prometheus::Encoder as _;
        let mut text = Vec::new();
        prometheus::TextEncoder::new().encode(families, &mut text).unwrap();
        String::from_utf8(text).unwrap()
    }

    fn file(dir: &std::path::Path) -> StateFile {
        let rejected = prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason"]).unwrap();
        StateFile::new(Some(dir), FILE_NAME, FORMAT, "node-a", rejected)
    }

    fn learnt(dir: &std::path::Path) -> Baselines {
        let mut baselines = Baselines::load(file(dir), 3);
        baselines.observe_phase(Phase::Flannel);
        let start = Instant::now();
        let mut totals = Totals { segments_sent: 1000.0, ..Totals::default() };
        totals.drops.insert("NETFILTER_DROP".into(), 0.0);
        baselines.close_window(start, totals.clone());
        totals.drops.insert("NETFILTER_DROP".into(), 20.0);
        totals.segments_sent = 2000.0;
        totals.retransmits = 10.0;
        baselines.close_window(start + std::time::Duration::from_secs(10), totals);
        baselines
    }

    #[test]
    fn baselines_learn_in_flannel_survive_a_restart_and_give_ratios_after() {
        let dir = crate::state_file::TempDir::new("baseline-restart");
        let baselines = learnt(dir.path());
        assert_eq!(baselines.stored.signals[&DROPS_PER_SECOND], [2.0]);
        assert_eq!(baselines.stored.signals[&RETRANSMITS_PER_SEGMENT], [0.01]);
        drop(baselines);

        let mut restarted = Baselines::load(file(dir.path()), 3);
        assert_eq!(restarted.stored.signals[&DROPS_PER_SECOND], [2.0]);
        assert_eq!(restarted.phase().unwrap().phase, Phase::Flannel);
        restarted.observe_phase(Phase::Mixed);
        assert!(restarted.stored.frozen);
        let start = Instant::now();
        let mut totals = Totals::default();
        totals.drops.insert("NETFILTER_DROP".into(), 100.0);
        restarted.close_window(start, totals.clone());
        totals.drops.insert("NETFILTER_DROP".into(), 160.0);
        restarted.close_window(start + std::time::Duration::from_secs(10), totals);
        // Frozen: the cutover's windows do not move the baseline.
        assert_eq!(restarted.stored.signals[&DROPS_PER_SECOND], [2.0]);
        let text = encode(&BaselineCollector::new(Arc::new(Mutex::new(restarted))).collect());
        assert!(text.contains("cniguard_baseline_ratio{signal=\"drops_per_second\"} 3"), "{text}");
        assert!(text.contains("cniguard_baseline_drops_ratio{reason=\"NETFILTER_DROP\"} 3"), "{text}");
    }

    /// Each window adds exactly one sample per reason: a reason already stored and seen
    /// again, one that appears late, and one that goes quiet.
    #[test]
    fn per_reason_baselines_take_one_sample_per_window() {
        let dir = crate::state_file::TempDir::new("baseline-reasons");
        let mut baselines = Baselines::load(file(dir.path()), 3);
        baselines.observe_phase(Phase::Flannel);
        let start = Instant::now();
        let at = |seconds: u64| start + std::time::Duration::from_secs(seconds);
        let totals = |netfilter: f64, reset: Option<f64>| {
            let mut totals = Totals::default();
            totals.drops.insert("NETFILTER_DROP".into(), netfilter);
            if let Some(reset) = reset {
                totals.drops.insert("TCP_RESET".into(), reset);
            }
            totals
        };
        baselines.close_window(at(0), totals(0.0, None));
        // 20 drops in 10 s, then 40, then 60: 2, 4 and 6 per second.
        baselines.close_window(at(10), totals(20.0, None));
        baselines.close_window(at(20), totals(60.0, Some(10.0)));
        baselines.close_window(at(30), totals(120.0, Some(10.0)));
        assert_eq!(baselines.stored.drop_reasons["NETFILTER_DROP"], [2.0, 4.0, 6.0]);
        assert_eq!(baselines.stored.drop_reasons["TCP_RESET"], [1.0, 0.0]);
        assert_eq!(baselines.stored.signals[&DROPS_PER_SECOND], [2.0, 5.0, 6.0]);
        let text = encode(&BaselineCollector::new(Arc::new(Mutex::new(baselines))).collect());
        // The mean of the last 3 windows: (2 + 4 + 6) / 3, and (1 + 0) / 2.
        assert!(text.contains("cniguard_baseline_drops_per_second{reason=\"NETFILTER_DROP\"} 4\n"), "{text}");
        assert!(text.contains("cniguard_baseline_drops_per_second{reason=\"TCP_RESET\"} 0.5\n"), "{text}");
    }

    #[test]
    fn implausible_samples_are_not_trusted() {
        let dir = crate::state_file::TempDir::new("baseline-implausible");
        let mut baselines = learnt(dir.path());
        baselines.stored.signals.insert(DROPS_PER_SECOND, VecDeque::from([-1.0]));
        baselines.save();
        assert!(Baselines::load(file(dir.path()), 3).stored.signals.is_empty());
    }

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        let before = [(0.001, 0.0), (0.01, 0.0), (f64::INFINITY, 0.0)];
        let after = [(0.001, 50.0), (0.01, 100.0), (f64::INFINITY, 100.0)];
        let p99 = quantile(0.99, &before, &after).unwrap();
        // Rank 99 of 100: 49 of the 50 observations between 1 ms and 10 ms.
        assert!((p99 - 0.00982).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.99, &after, &after), None, "no observations");
    }

    #[test]
    fn ratios_of_nothing() {
        assert!((ratio(3.0, 1.5) - 2.0).abs() < f64::EPSILON);
        assert!(ratio(1.0, 0.0).is_infinite());
        assert!((ratio(0.0, 0.0) - 1.0).abs() < f64::EPSILON);
    }
}
