//! The localhost health check: what the runbook runs by hand as
//! `kubectl exec mlserver-0 -c agent -- curl 127.0.0.1:9000/v2/health/ready`, run by the
//! daemon in every selected pod's namespace at each interval, on each checked port, in the
//! protocol the port speaks: HTTP/1 `GET /v2/health/ready` on MLServer's HTTP port (Seldon
//! v2: 9000), the KServe v2 gRPC `ServerReady` on its gRPC port (9500, HTTP/2 only: curl
//! gets no answer there). It answers "is the server up", where the localhost probe's
//! passive measurements answer "how fast is it"; when it is not, `checks::listeners` says
//! why (`cniguard_localhost_failure_cause`, and `cniguard status`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;
use prometheus::{GaugeVec, Registry};
use serde::{Deserialize, Serialize};

use super::engine::{self, Failure, HttpGet};
use super::listeners::{self, Cause, Listener, Seen};
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
    /// The ports checked (Seldon Core v2's MLServer: HTTP 9000, gRPC 9500).
    pub ports: Vec<u16>,
    /// Ports spoken to in gRPC (`ServerReady`); MLServer's gRPC ports, Seldon's and its own.
    pub grpc_ports: Vec<u16>,
    /// Ports spoken to in HTTP/1 (`GET path`). A checked port in neither list is detected
    /// each round: gRPC if it answers HTTP/2, else HTTP/1.
    pub http_ports: Vec<u16>,
    pub path: String,
    /// When set, the readiness of this model instead of the server's: HTTP
    /// `GET /v2/models/<model>/ready` (in place of `path`), gRPC `ModelReady`. MLServer's
    /// server readiness stays true with no model loaded.
    pub model: String,
    /// The loopback address the check calls, as the client in the pod does.
    pub address: IpAddr,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            namespaces: vec!["*".into()],
            ports: vec![9000, 9500],
            grpc_ports: vec![9500, 8081],
            http_ports: vec![9000, 8080],
            path: "/v2/health/ready".into(),
            model: String::new(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            interval_seconds: 5,
            timeout_seconds: 2,
        }
    }
}

/// What a checked port is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
    /// Detected each round.
    Detect,
}

impl Protocol {
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Detect => "unknown",
        }
    }
}

/// The validated `[localhost.check]` table.
#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    pub namespaces: globset::GlobSet,
    pub ports: Vec<(u16, Protocol)>,
    pub path: String,
    pub model: String,
    pub address: IpAddr,
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
        if self.ports.is_empty() || self.ports.contains(&0) {
            return Err(ChecksError::CheckPorts);
        }
        if let Some(port) = self.grpc_ports.iter().find(|port| self.http_ports.contains(port)) {
            return Err(ChecksError::BothProtocols(*port));
        }
        if !self.address.is_loopback() {
            return Err(ChecksError::NotLoopback(self.address));
        }
        let mut ports: Vec<(u16, Protocol)> = self
            .ports
            .iter()
            .map(|port| {
                let protocol = if self.grpc_ports.contains(port) {
                    Protocol::Grpc
                } else if self.http_ports.contains(port) {
                    Protocol::Http
                } else {
                    Protocol::Detect
                };
                (*port, protocol)
            })
            .collect();
        ports.dedup();
        Ok(Some(HealthCheckSettings {
            namespaces: glob_set("localhost.check.namespaces", &self.namespaces)?,
            ports,
            path: if self.model.is_empty() {
                self.path.clone()
            } else {
                format!("/v2/models/{}/ready", self.model)
            },
            model: self.model.clone(),
            address: self.address,
            interval: Duration::from_secs(self.interval_seconds),
            timeout: Duration::from_secs(self.timeout_seconds),
        }))
    }
}

/// The latest round of one pod's port, for `/status` and `cniguard status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalhostStatus {
    /// The pod, by `netns` label.
    pub netns: String,
    pub port: u16,
    /// What the port was spoken to in (`unknown` when detection met no server).
    pub protocol: String,
    pub healthy: bool,
    /// How the call failed (`refused`, `timeout`, `grpc_status`... as the checks' `reason`).
    pub failure: Option<String>,
    /// `cniguard_localhost_failure_cause`'s label.
    pub cause: String,
    /// The cause in words.
    pub explanation: String,
    /// Where something listens on the port (read when the check failed).
    pub listening_on: Vec<String>,
}

/// The latest round, by pod and port.
pub type SharedLocalhost = Arc<Mutex<BTreeMap<(String, u16), LocalhostStatus>>>;

struct Metrics {
    success: GaugeVec,
    seconds: GaugeVec,
    cause: GaugeVec,
}

/// Registers the check's metrics and runs it for as long as the daemon runs.
///
/// # Errors
/// If a metric cannot be registered (a duplicate name: a programming error).
pub fn start(
    settings: HealthCheckSettings,
    inventory: SharedInventory,
    registry: &Registry,
) -> Result<SharedLocalhost> {
    let metrics = Metrics {
        success: catalogue::LOCALHOST_PROBE_SUCCESS.gauge_vec()?,
        seconds: catalogue::LOCALHOST_PROBE_SECONDS.gauge_vec()?,
        cause: catalogue::LOCALHOST_FAILURE_CAUSE.gauge_vec()?,
    };
    registry.register(Box::new(metrics.success.clone()))?;
    registry.register(Box::new(metrics.seconds.clone()))?;
    registry.register(Box::new(metrics.cause.clone()))?;
    let shared = SharedLocalhost::default();
    tokio::spawn(run(inventory, Arc::new(settings), metrics, Arc::clone(&shared)));
    Ok(shared)
}

/// Checks every selected namespace's ports at each interval, all at once; series of
/// namespaces no longer checked are removed.
async fn run(
    inventory: SharedInventory,
    check: Arc<HealthCheckSettings>,
    metrics: Metrics,
    shared: SharedLocalhost,
) {
    let mut ticker = tokio::time::interval(check.interval);
    loop {
        ticker.tick().await;
        let targets: Vec<(String, PathBuf)> = namespaces::read(&inventory)
            .by_netns
            .values()
            .filter(|ns| !ns.own && check.namespaces.is_match(ns.label()))
            .map(|ns| (ns.label(), ns.path.clone()))
            .collect();
        let mut pending = Vec::new();
        for (label, path) in targets {
            for &(port, protocol) in &check.ports {
                let (check, path) = (Arc::clone(&check), path.clone());
                let started = Instant::now();
                let round = tokio::spawn(async move { check_port(&check, path, port, protocol).await });
                pending.push((label.clone(), port, protocol, started, round));
            }
        }
        let mut now = BTreeMap::new();
        for (label, port, protocol, started, round) in pending {
            // A namespace that cannot be entered fails its check like a server that is down.
            let round = round.await.unwrap_or(Round {
                protocol,
                seen: Seen::Other,
                failure: Some(Failure::Other),
                listeners: Vec::new(),
            });
            let elapsed = started.elapsed().as_secs_f64();
            let port_label = port.to_string();
            let cause = listeners::cause(&round.listeners, check.address, round.seen);
            let labels = [label.as_str(), port_label.as_str()];
            metrics.success.with_label_values(&labels).set(f64::from(u8::from(round.seen == Seen::Healthy)));
            metrics.seconds.with_label_values(&labels).set(elapsed);
            for other in Cause::ALL.iter().filter(|other| **other != cause) {
                let _ = metrics.cause.remove_label_values(&[&label, &port_label, other.label()]);
            }
            metrics.cause.with_label_values(&[&label, &port_label, cause.label()]).set(1.0);
            now.insert(
                (label.clone(), port),
                LocalhostStatus {
                    netns: label,
                    port,
                    protocol: round.protocol.label().to_owned(),
                    healthy: round.seen == Seen::Healthy,
                    failure: round.failure.map(|failure| failure.label().to_owned()),
                    cause: cause.label().to_owned(),
                    explanation: cause.explain().to_owned(),
                    listening_on: round.listeners.iter().map(Listener::display).collect(),
                },
            );
        }
        let mut latest = shared.lock().unwrap_or_else(PoisonError::into_inner);
        for (label, port) in latest.keys().filter(|key| !now.contains_key(*key)) {
            let port = port.to_string();
            let _ = metrics.success.remove_label_values(&[label, &port]);
            let _ = metrics.seconds.remove_label_values(&[label, &port]);
            for cause in Cause::ALL {
                let _ = metrics.cause.remove_label_values(&[label, &port, cause.label()]);
            }
        }
        *latest = now;
    }
}

/// What one port's check saw, and (when it failed) what listens on the port.
struct Round {
    protocol: Protocol,
    seen: Seen,
    failure: Option<Failure>,
    listeners: Vec<Listener>,
}

async fn check_port(check: &HealthCheckSettings, netns: PathBuf, port: u16, protocol: Protocol) -> Round {
    let deadline = Instant::now() + check.timeout;
    let address = SocketAddr::new(check.address, port);
    let (protocol, outcome) = match protocol {
        Protocol::Http => (Protocol::Http, http_check(&netns, address, &check.path, deadline).await),
        Protocol::Grpc => (Protocol::Grpc, grpc_check(&netns, address, &check.model, deadline).await),
        Protocol::Detect => match grpc_check(&netns, address, &check.model, deadline).await {
            Err((Seen::Other, _)) => {
                // Not HTTP/2 (or not an answer at all): ask again in HTTP/1.
                let outcome = http_check(&netns, address, &check.path, deadline).await;
                let known = !matches!(outcome, Err((Seen::Other, _)));
                (if known { Protocol::Http } else { Protocol::Detect }, outcome)
            }
            Err((seen @ Seen::ConnectFailed { .. }, failure)) => (Protocol::Detect, Err((seen, failure))),
            outcome => (Protocol::Grpc, outcome),
        },
    };
    let (seen, failure) = match outcome {
        Ok(()) => (Seen::Healthy, None),
        Err((seen, failure)) => (seen, Some(failure)),
    };
    let listeners = if seen == Seen::Healthy {
        Vec::new()
    } else {
        engine::in_pod(netns, move || listeners::listening(port).unwrap_or_default())
            .await
            .unwrap_or_default()
    };
    Round { protocol, seen, failure, listeners }
}

/// A check's result: how far it got and how it failed.
type Outcome = Result<(), (Seen, Failure)>;

/// What a failure at each stage means for the cause.
fn connect_failed(failure: Failure) -> (Seen, Failure) {
    let seen = match failure {
        Failure::Refused => Seen::ConnectFailed { timeout: false },
        Failure::Timeout => Seen::ConnectFailed { timeout: true },
        _ => Seen::Other,
    };
    (seen, failure)
}

fn answer_failed(failure: Failure) -> (Seen, Failure) {
    let seen = match failure {
        Failure::Timeout => Seen::AnswerTimeout,
        Failure::HttpStatus | Failure::GrpcStatus => Seen::NotReady,
        _ => Seen::Other,
    };
    (seen, failure)
}

/// `GET path` on `address` from the pod's namespace: 2xx within the deadline, reading the
/// whole answer.
async fn http_check(netns: &std::path::Path, address: SocketAddr, path: &str, deadline: Instant) -> Outcome {
    let (host, path) = (address.to_string(), path.to_owned());
    let call = move || {
        let mut stream = engine::connect(address, deadline).map_err(connect_failed)?;
        (HttpGet { host: &host, path: &path, user_agent: "cniguard" })
            .whole_answer(&mut stream)
            .map_err(answer_failed)
    };
    engine::in_pod(netns.to_owned(), call).await.unwrap_or(Err((Seen::Other, Failure::Other)))
}

const GRPC_SERVER_READY: &str = "/inference.GRPCInferenceService/ServerReady";
const GRPC_MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";

/// KServe v2 `ServerReady` (or `ModelReady` of `model`) on `address`: `ready: true`.
async fn grpc_check(netns: &std::path::Path, address: SocketAddr, model: &str, deadline: Instant) -> Outcome {
    let stream = match engine::in_pod(netns.to_owned(), move || engine::connect(address, deadline)).await {
        None => return Err((Seen::Other, Failure::Other)),
        Some(Err(failure)) => return Err(connect_failed(failure)),
        Some(Ok(stream)) => stream,
    };
    let (method, message) = if model.is_empty() {
        (GRPC_SERVER_READY, Vec::new())
    } else {
        (GRPC_MODEL_READY, model_ready_request(model))
    };
    match engine::grpc_unary(stream, &address.to_string(), method, &message, deadline).await {
        Ok(answer) if ready(&answer) => Ok(()),
        Ok(_) => Err((Seen::NotReady, Failure::GrpcStatus)),
        Err(failure) => Err(answer_failed(failure)),
    }
}

/// `ModelReadyRequest { name }`: field 1, length-delimited.
fn model_ready_request(model: &str) -> Vec<u8> {
    let mut message = vec![0x0a];
    let mut length = model.len();
    while length >= 0x80 {
        message.push(u8::try_from(length & 0x7f).unwrap_or(0) | 0x80);
        length >>= 7;
    }
    message.push(u8::try_from(length).unwrap_or(0));
    message.extend_from_slice(model.as_bytes());
    message
}

/// `ServerReadyResponse`/`ModelReadyResponse { bool ready = 1 }`: proto3 leaves a false
/// `ready` out, so an empty message is "not ready".
fn ready(message: &[u8]) -> bool {
    message.chunks(2).any(|field| field == [0x08, 0x01])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_speak_seldons_ports() {
        let mut config = HealthCheckConfig { enabled: true, ..HealthCheckConfig::default() };
        let settings = config.validate().unwrap().unwrap();
        assert_eq!(settings.ports, vec![(9000, Protocol::Http), (9500, Protocol::Grpc)]);
        assert_eq!(settings.path, "/v2/health/ready");
        config.ports = vec![7001];
        config.model = "iris".into();
        let settings = config.validate().unwrap().unwrap();
        assert_eq!(settings.ports, vec![(7001, Protocol::Detect)]);
        assert_eq!(settings.path, "/v2/models/iris/ready");
    }

    #[test]
    fn bad_tables_name_their_field() {
        let base = HealthCheckConfig { enabled: true, ..HealthCheckConfig::default() };
        let field = |config: HealthCheckConfig| config.validate().unwrap_err().field();
        assert_eq!(field(HealthCheckConfig { ports: vec![], ..base.clone() }), "localhost.check.ports");
        assert_eq!(
            field(HealthCheckConfig { http_ports: vec![9500], ..base.clone() }),
            "localhost.check.grpc_ports"
        );
        assert_eq!(
            field(HealthCheckConfig { address: "10.42.0.5".parse().unwrap(), ..base }),
            "localhost.check.address"
        );
    }

    #[test]
    fn readiness_messages() {
        assert_eq!(model_ready_request("slow"), b"\x0a\x04slow");
        assert!(ready(&[0x08, 0x01]));
        assert!(!ready(&[]));
        assert!(!ready(&[0x08, 0x00]));
    }
}
