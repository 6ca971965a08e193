//! The `[checks]` table: where the active checks run from, how often, and what they reach.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Target, TargetConfig};

/// The `[checks]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksConfig {
    pub enabled: bool,
    /// The pods the checks run from, by `netns` label (globs): the first match, in name
    /// order, is used each round.
    pub from: Vec<String>,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
    /// The cluster DNS (`host:port`, IPv4) for `dns` checks and target names.
    pub resolver: Option<String>,
    /// A TOML file of `[[targets]]`, re-read every round.
    pub targets_file: Option<String>,
    pub targets: Vec<TargetConfig>,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            from: vec!["*".into()],
            interval_seconds: 10,
            timeout_seconds: 2,
            resolver: None,
            targets_file: None,
            targets: Vec::new(),
        }
    }
}

/// The validated `[checks]` table.
#[derive(Debug, Clone)]
pub struct ChecksSettings {
    pub from: globset::GlobSet,
    pub interval: Duration,
    pub timeout: Duration,
    pub resolver: Option<SocketAddrV4>,
    pub targets: Vec<Target>,
    pub targets_file: Option<PathBuf>,
}

/// What is wrong with a `[checks]` or `[localhost.check]` table, and in which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksError {
    #[error(
        "interval {interval} s and timeout {timeout} s are out of range: the interval must be 1 to {MAX_INTERVAL_SECONDS} seconds, the timeout 1 second to the interval"
    )]
    IntervalAndTimeout { field: &'static str, interval: u64, timeout: u64 },
    #[error("invalid pattern `{pattern}`: {reason}")]
    Pattern { field: &'static str, pattern: String, reason: String },
    #[error("`{0}` is not an IPv4 address and port like 10.43.0.10:53")]
    Resolver(String),
    #[error("{0}")]
    Target(String),
    #[error("two targets are named `{0}`: names label the metrics, make them unique")]
    DuplicateTarget(String),
    #[error("`{path}` must start with /")]
    HttpPath { field: &'static str, path: String },
    #[error("list at least one port, and no port 0")]
    CheckPorts,
    #[error("port {0} is listed as both gRPC and HTTP")]
    BothProtocols(u16),
    #[error("`{0}` is not a loopback address (127.0.0.1 or ::1)")]
    NotLoopback(std::net::IpAddr),
}

impl ChecksError {
    /// The configuration field the error is about.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::IntervalAndTimeout { field, .. }
            | Self::Pattern { field, .. }
            | Self::HttpPath { field, .. } => field,
            Self::Resolver(_) => "checks.resolver",
            Self::CheckPorts => "localhost.check.ports",
            Self::BothProtocols(_) => "localhost.check.grpc_ports",
            Self::NotLoopback(_) => "localhost.check.address",
            Self::Target(_) | Self::DuplicateTarget(_) => "checks.targets",
        }
    }
}

impl ChecksConfig {
    /// The settings the checks run with; `None` when `enabled = false`.
    pub fn validate(&self) -> Result<Option<ChecksSettings>, ChecksError> {
        if !self.enabled {
            return Ok(None);
        }
        interval_and_timeout("checks.timeout_seconds", self.interval_seconds, self.timeout_seconds)?;
        let from = glob_set("checks.from", &self.from)?;
        let resolver = match self.resolver.as_deref() {
            None => None,
            Some(text) => {
                Some(text.parse::<SocketAddrV4>().map_err(|_| ChecksError::Resolver(text.to_owned()))?)
            }
        };
        let targets = self
            .targets
            .iter()
            .map(|target| Target::parse(target, resolver.is_some()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ChecksError::Target)?;
        let mut names = std::collections::BTreeSet::new();
        if let Some(duplicate) = targets.iter().find(|target| !names.insert(target.name.as_str())) {
            return Err(ChecksError::DuplicateTarget(duplicate.name.clone()));
        }
        Ok(Some(ChecksSettings {
            from,
            interval: Duration::from_secs(self.interval_seconds),
            timeout: Duration::from_secs(self.timeout_seconds),
            resolver,
            targets,
            targets_file: self.targets_file.as_ref().map(PathBuf::from),
        }))
    }
}

/// The longest check interval: results older than 3 intervals are stale, and the checks keep
/// an hour of them.
pub const MAX_INTERVAL_SECONDS: u64 = 3600;

/// A periodic check's interval and timeout: both at least a second, the interval at most
/// [`MAX_INTERVAL_SECONDS`], the timeout at most the interval (a check must end before the
/// next one starts).
pub(crate) fn interval_and_timeout(
    field: &'static str,
    interval: u64,
    timeout: u64,
) -> Result<(), ChecksError> {
    if !(1..=MAX_INTERVAL_SECONDS).contains(&interval) || timeout == 0 || timeout > interval {
        return Err(ChecksError::IntervalAndTimeout { field, interval, timeout });
    }
    Ok(())
}

/// Namespace label patterns (globs), each checked on its own so the bad one is named.
pub(crate) fn glob_set(field: &'static str, patterns: &[String]) -> Result<globset::GlobSet, ChecksError> {
    let mut set = globset::GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::Glob::new(pattern).map_err(|err| ChecksError::Pattern {
            field,
            pattern: pattern.clone(),
            reason: err.kind().to_string(),
        })?;
        set.add(glob);
    }
    set.build().map_err(|err| ChecksError::Pattern {
        field,
        pattern: patterns.join(", "),
        reason: err.to_string(),
    })
}
