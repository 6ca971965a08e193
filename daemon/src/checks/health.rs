//! The localhost health check: what the runbook runs by hand as
//! `kubectl exec mlserver-0 -c agent -- curl 127.0.0.1:9500/v2/health/ready`, run by the
//! daemon in every selected pod's namespace at each interval. It answers "is the server
//! up", where the localhost probe's passive measurements answer "how fast is it".

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use prometheus::{GaugeVec, Registry};
use serde::Deserialize;

use super::engine::{self, HttpGet};
use super::settings::{ChecksError, glob_set, interval_and_timeout};
use crate::metrics::catalogue;
use crate::node::namespaces::{self, SharedInventory};

/// The `[localhost.check]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    /// Namespaces to check, by `netns` label (globs; the node's own namespace has an empty
    /// label and is never checked).
    pub namespaces: Vec<String>,
    pub port: u16,
    pub path: String,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            namespaces: vec!["*".into()],
            port: 9500,
            path: "/v2/health/ready".into(),
            interval_seconds: 5,
            timeout_seconds: 2,
        }
    }
}

/// The validated `[localhost.check]` table.
#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    pub namespaces: globset::GlobSet,
    pub port: u16,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl HealthCheckConfig {
    /// The settings the check runs with; `None` when `enabled = false`.
    pub fn validate(&self) -> Result<Option<HealthCheckSettings>, ChecksError> {
        if !self.enabled {
            return Ok(None);
        }
        interval_and_timeout("localhost.check.timeout_seconds", self.interval_seconds, self.timeout_seconds)?;
        if !self.path.starts_with('/') {
            return Err(ChecksError::HttpPath { field: "localhost.check.path", path: self.path.clone() });
        }
        Ok(Some(HealthCheckSettings {
            namespaces: glob_set("localhost.check.namespaces", &self.namespaces)?,
            port: self.port,
            path: self.path.clone(),
            interval: Duration::from_secs(self.interval_seconds),
            timeout: Duration::from_secs(self.timeout_seconds),
        }))
    }
}

/// Registers the check's metrics and runs it for as long as the daemon runs.
///
/// # Errors
/// If a metric cannot be registered (a duplicate name: a programming error).
pub fn start(settings: HealthCheckSettings, inventory: SharedInventory, registry: &Registry) -> Result<()> {
    let success = catalogue::LOCALHOST_PROBE_SUCCESS.gauge_vec()?;
    let seconds = catalogue::LOCALHOST_PROBE_SECONDS.gauge_vec()?;
    registry.register(Box::new(success.clone()))?;
    registry.register(Box::new(seconds.clone()))?;
    tokio::spawn(run(inventory, settings, success, seconds));
    Ok(())
}

/// Checks every selected namespace at each interval, all at once; series of namespaces no
/// longer checked are removed.
async fn run(inventory: SharedInventory, check: HealthCheckSettings, success: GaugeVec, seconds: GaugeVec) {
    let mut ticker = tokio::time::interval(check.interval);
    let mut checked: BTreeSet<String> = BTreeSet::new();
    let port = check.port.to_string();
    loop {
        ticker.tick().await;
        let targets: Vec<(String, PathBuf)> = namespaces::read(&inventory)
            .by_netns
            .values()
            .filter(|ns| !ns.own && check.namespaces.is_match(ns.label()))
            .map(|ns| (ns.label(), ns.path.clone()))
            .collect();
        let pending: Vec<_> = targets
            .into_iter()
            .map(|(label, path)| {
                let (http_path, timeout, target_port) = (check.path.clone(), check.timeout, check.port);
                let started = Instant::now();
                let result = engine::in_pod(path, move || health_check(target_port, &http_path, timeout));
                (label, started, tokio::spawn(result))
            })
            .collect();
        let mut now_checked = BTreeSet::new();
        for (label, started, result) in pending {
            // A namespace that cannot be entered fails its check like a server that is down.
            let ok = matches!(result.await, Ok(Some(true)));
            success.with_label_values(&[&label, &port]).set(f64::from(u8::from(ok)));
            seconds.with_label_values(&[&label, &port]).set(started.elapsed().as_secs_f64());
            now_checked.insert(label);
        }
        for gone in checked.difference(&now_checked) {
            let _ = success.remove_label_values(&[gone, &port]);
            let _ = seconds.remove_label_values(&[gone, &port]);
        }
        checked = now_checked;
    }
}

/// `GET path` on 127.0.0.1:`port` from the current thread's namespace: whether it answered
/// 2xx within `timeout`, reading the whole answer.
fn health_check(port: u16, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let host = format!("127.0.0.1:{port}");
    engine::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), deadline)
        .and_then(|mut stream| {
            HttpGet { host: &host, path, user_agent: "cniguard" }.whole_answer(&mut stream)
        })
        .is_ok()
}
