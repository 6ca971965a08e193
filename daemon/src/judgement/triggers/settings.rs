//! The `[triggers]` table: the runbook's rules with their defaults, and each trigger's
//! overrides.

use std::time::Duration;

use serde::Deserialize;

use super::{Rule, Severity, TriggerName};

/// The `[triggers]` table: every trigger's fields are optional and default to the runbook's
/// values (`default_rules`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    pub enabled: bool,
    /// How often the rules are evaluated.
    pub evaluate_seconds: u64,
    pub connectivity_lost: TriggerConfig,
    pub pod_to_pod_not_restored: TriggerConfig,
    pub critical_service_unavailable: TriggerConfig,
    pub dns_failing: TriggerConfig,
    pub localhost_latency_slo: TriggerConfig,
    pub regression: TriggerConfig,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            evaluate_seconds: 10,
            connectivity_lost: TriggerConfig::default(),
            pod_to_pod_not_restored: TriggerConfig::default(),
            critical_service_unavailable: TriggerConfig::default(),
            dns_failing: TriggerConfig::default(),
            localhost_latency_slo: TriggerConfig::default(),
            regression: TriggerConfig::default(),
        }
    }
}

impl TriggersConfig {
    fn get(&self, name: TriggerName) -> &TriggerConfig {
        match name {
            TriggerName::ConnectivityLost => &self.connectivity_lost,
            TriggerName::PodToPodNotRestored => &self.pod_to_pod_not_restored,
            TriggerName::CriticalServiceUnavailable => &self.critical_service_unavailable,
            TriggerName::DnsFailing => &self.dns_failing,
            TriggerName::LocalhostLatencySlo => &self.localhost_latency_slo,
            TriggerName::Regression => &self.regression,
        }
    }
}

/// One `[triggers.<name>]` table; what is left out keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    pub enabled: Option<bool>,
    pub severity: Option<Severity>,
    /// The condition holds while the trigger's value is above this.
    pub threshold: Option<f64>,
    /// An active trigger clears once its value has stayed at or below this...
    pub clear_threshold: Option<f64>,
    /// ...for this long; and becomes active once its condition has held this long.
    pub for_seconds: Option<u64>,
    pub clear_seconds: Option<u64>,
    /// `pod_to_pod_not_restored` only.
    pub restore_deadline_seconds: Option<u64>,
    pub window_seconds: Option<u64>,
}

/// The runbook's rules. Thresholds are in the trigger's own unit: peers or services
/// failing (a count), failure ratios (0 to 1), seconds (latency), baseline ratios.
#[must_use]
pub fn default_rules() -> Vec<Rule> {
    let rule = |name, severity, threshold, clear_threshold, for_seconds, clear_seconds| Rule {
        name,
        severity,
        threshold,
        clear_threshold,
        for_seconds,
        clear_seconds,
        restore_deadline_seconds: 900.0,
        window_seconds: 300.0,
    };
    vec![
        // "Network connectivity failures lasting more than 30 minutes": a peer node whose
        // every pod-to-pod check fails.
        rule(TriggerName::ConnectivityLost, Severity::Rollback, 0.0, 0.0, 1800.0, 300.0),
        // "Pod-to-pod communication cannot be restored": below 99% success once the
        // restore deadline after a phase change has passed.
        rule(TriggerName::PodToPodNotRestored, Severity::Rollback, 0.01, 0.01, 300.0, 300.0),
        rule(TriggerName::CriticalServiceUnavailable, Severity::Rollback, 0.0, 0.0, 300.0, 120.0),
        // "DNS resolution failures": over 5% of queries failing or timing out.
        rule(TriggerName::DnsFailing, Severity::Rollback, 0.05, 0.01, 300.0, 120.0),
        // Success criterion "intra-pod latency under 1 ms".
        rule(TriggerName::LocalhostLatencySlo, Severity::Warning, 0.001, 0.0008, 300.0, 300.0),
        // Success criterion "no degradation": drops or retransmits at twice their baseline.
        rule(TriggerName::Regression, Severity::Warning, 2.0, 1.5, 600.0, 300.0),
    ]
}

/// The validated `[triggers]` table.
#[derive(Debug, Clone)]
pub struct TriggerSettings {
    pub evaluate_every: Duration,
    pub rules: Vec<Rule>,
}

/// What is wrong with the `[triggers]` table.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TriggersError {
    #[error("{0} is out of range: must be 1 to {MAX_EVALUATE_SECONDS} seconds")]
    EvaluateSeconds(u64),
    #[error("only pod_to_pod_not_restored has a restore deadline and a window")]
    NoRestoreDeadline { trigger: TriggerName },
    #[error("{value} must be a number of at least 0")]
    Threshold { trigger: TriggerName, value: f64 },
    #[error(
        "{value} must be between 0 and the threshold ({threshold}): a trigger clears below where it fires"
    )]
    ClearThreshold { trigger: TriggerName, value: f64, threshold: f64 },
    #[error("{value} is out of range: must be 1 to {max} seconds (the checks keep an hour of results)", max = crate::checks::HISTORY.as_secs())]
    Window { trigger: TriggerName, value: f64 },
    #[error("{value} is out of range: must be 0 to {MAX_SECONDS} seconds (a day)")]
    Seconds { trigger: TriggerName, field: &'static str, value: u64 },
}

/// The longest `evaluate_seconds`: a trigger's `for` is judged to within one evaluation.
pub const MAX_EVALUATE_SECONDS: u64 = 600;
/// The longest `for_seconds`, `clear_seconds` and `restore_deadline_seconds`.
pub const MAX_SECONDS: u64 = 86_400;

impl TriggersError {
    /// The configuration field the error is about.
    #[must_use]
    pub fn field(&self) -> String {
        let field = |trigger: &TriggerName, field: &str| format!("triggers.{}.{field}", trigger.label());
        match self {
            Self::EvaluateSeconds(_) => "triggers.evaluate_seconds".into(),
            Self::NoRestoreDeadline { trigger } => field(trigger, "restore_deadline_seconds"),
            Self::Threshold { trigger, .. } => field(trigger, "threshold"),
            Self::ClearThreshold { trigger, .. } => field(trigger, "clear_threshold"),
            Self::Window { trigger, .. } => field(trigger, "window_seconds"),
            Self::Seconds { trigger, field: name, .. } => field(trigger, name),
        }
    }
}

impl TriggersConfig {
    /// The settings the triggers run with; `None` when `enabled = false`.
    pub fn validate(&self) -> Result<Option<TriggerSettings>, TriggersError> {
        if !self.enabled {
            return Ok(None);
        }
        if !(1..=MAX_EVALUATE_SECONDS).contains(&self.evaluate_seconds) {
            return Err(TriggersError::EvaluateSeconds(self.evaluate_seconds));
        }
        Ok(Some(TriggerSettings {
            evaluate_every: Duration::from_secs(self.evaluate_seconds),
            rules: self.rules()?,
        }))
    }

    /// The rules after the overrides, enabled ones only.
    pub fn rules(&self) -> Result<Vec<Rule>, TriggersError> {
        let mut rules = Vec::new();
        for mut rule in default_rules() {
            let trigger = rule.name;
            let table = self.get(trigger);
            if trigger != TriggerName::PodToPodNotRestored
                && (table.restore_deadline_seconds.is_some() || table.window_seconds.is_some())
            {
                return Err(TriggersError::NoRestoreDeadline { trigger });
            }
            for (field, value) in [
                ("for_seconds", table.for_seconds),
                ("clear_seconds", table.clear_seconds),
                ("restore_deadline_seconds", table.restore_deadline_seconds),
            ] {
                if let Some(value) = value.filter(|v| *v > MAX_SECONDS) {
                    return Err(TriggersError::Seconds { trigger, field, value });
                }
            }
            #[allow(clippy::cast_precision_loss, reason = "seconds, bounded far below 2^52")]
            let seconds = |value: Option<u64>, default: f64| value.map_or(default, |v| v as f64);
            rule.severity = table.severity.unwrap_or(rule.severity);
            rule.threshold = table.threshold.unwrap_or(rule.threshold);
            rule.clear_threshold = table.clear_threshold.unwrap_or(rule.threshold.min(rule.clear_threshold));
            rule.for_seconds = seconds(table.for_seconds, rule.for_seconds);
            rule.clear_seconds = seconds(table.clear_seconds, rule.clear_seconds);
            rule.restore_deadline_seconds =
                seconds(table.restore_deadline_seconds, rule.restore_deadline_seconds);
            rule.window_seconds = seconds(table.window_seconds, rule.window_seconds);
            if !rule.threshold.is_finite() || rule.threshold < 0.0 {
                return Err(TriggersError::Threshold { trigger, value: rule.threshold });
            }
            if !rule.clear_threshold.is_finite()
                || rule.clear_threshold > rule.threshold
                || rule.clear_threshold < 0.0
            {
                return Err(TriggersError::ClearThreshold {
                    trigger,
                    value: rule.clear_threshold,
                    threshold: rule.threshold,
                });
            }
            #[allow(clippy::cast_precision_loss, reason = "an hour")]
            if !(1.0..=crate::checks::HISTORY.as_secs() as f64).contains(&rule.window_seconds) {
                return Err(TriggersError::Window { trigger, value: rule.window_seconds });
            }
            if table.enabled.unwrap_or(true) {
                rules.push(rule);
            }
        }
        Ok(rules)
    }
}
