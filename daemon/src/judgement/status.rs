//! `GET /status` and `cniguard status`: each trigger with its state, how long, and the
//! numbers behind it; the checks' latest results; the node's phase.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::checks::SharedResults;
use crate::checks::health::{LocalhostStatus, SharedLocalhost};
use crate::judgement::phase::{SharedPhase, unix_now};
use crate::judgement::triggers::{SharedTriggers, TriggerReport};

/// How far back a check's success ratio in the status looks.
const CHECK_WINDOW: Duration = Duration::from_mins(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub phase: Option<PhaseStatus>,
    pub rollback_recommended: bool,
    /// Empty when `[triggers] enabled = false`.
    pub triggers: Vec<TriggerReport>,
    /// Empty when `[checks] enabled = false`.
    pub checks: Vec<CheckStatus>,
    /// Each checked pod's localhost ports, and why a failing one fails; empty when
    /// `[localhost.check] enabled = false`.
    #[serde(default)]
    pub localhost: Vec<LocalhostStatus>,
    /// The findings raised or pending; empty when `[diagnose] enabled = false`.
    #[serde(default)]
    pub findings: Vec<crate::diagnose::FindingReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseStatus {
    pub phase: String,
    pub since_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckStatus {
    pub check: String,
    pub target: String,
    pub peer: String,
    pub latest: Option<bool>,
    /// The latest result is older than 3 check intervals: no data for the triggers.
    #[serde(default)]
    pub stale: bool,
    pub success_ratio_5m: Option<f64>,
    pub last_failure: Option<String>,
}

/// What `/status` reads; set once the node has started (503 before).
pub struct Sources {
    pub node: String,
    pub phase: SharedPhase,
    pub triggers: Option<SharedTriggers>,
    pub checks: Option<SharedResults>,
    pub localhost: Option<SharedLocalhost>,
    pub diagnosis: Option<crate::diagnose::SharedDiagnosis>,
    /// What the live page draws (`/live.json`).
    pub history: crate::live::SharedHistory,
}

pub type SharedSources = Arc<OnceLock<Sources>>;

impl Sources {
    #[must_use]
    pub fn snapshot(&self) -> Status {
        let phase = self.phase.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(|(record, _)| {
            PhaseStatus {
                phase: record.phase.label().to_owned(),
                since_seconds: (unix_now() - record.since).max(0.0),
            }
        });
        let (triggers, rollback_recommended) =
            self.triggers.as_ref().map_or((Vec::new(), false), |triggers| {
                let triggers = triggers.lock().unwrap_or_else(PoisonError::into_inner);
                (triggers.report(), triggers.rollback_recommended())
            });
        let since = Instant::now().checked_sub(CHECK_WINDOW).unwrap_or_else(Instant::now);
        let checks = self.checks.as_ref().map_or_else(Vec::new, |checks| {
            checks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(target, state)| CheckStatus {
                    check: state.check.label().to_owned(),
                    target: target.clone(),
                    // Only pod-to-pod checks have a peer node; the others name a service.
                    peer: if state.check == crate::checks::CheckKind::PodToPod {
                        state.peer.clone()
                    } else {
                        String::new()
                    },
                    latest: state.latest(),
                    stale: state.is_stale(Instant::now()),
                    success_ratio_5m: state.success_ratio(since),
                    last_failure: state.last_failure.map(|failure| failure.label().to_owned()),
                })
                .collect()
        });
        let localhost = self.localhost.as_ref().map_or_else(Vec::new, |localhost| {
            localhost.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
        });
        Status {
            node: self.node.clone(),
            version: crate::VERSION.to_owned(),
            phase,
            rollback_recommended,
            triggers,
            checks,
            localhost,
            findings: self.findings(),
        }
    }

    /// The findings, for `/status` and `/diagnose`.
    #[must_use]
    pub fn findings(&self) -> Vec<crate::diagnose::FindingReport> {
        self.diagnosis.as_ref().map_or_else(Vec::new, |diagnosis| {
            diagnosis.lock().unwrap_or_else(PoisonError::into_inner).report()
        })
    }
}

/// Asks a running daemon for its status.
///
/// # Errors
/// A message naming the address and what failed (nothing listening, not cniguard...).
pub fn fetch(address: SocketAddr) -> Result<Status, String> {
    fetch_json(address, "/status", "a cniguard status")
}

/// Asks a running daemon for the JSON at `path`, which is `what`.
///
/// # Errors
/// A message naming the address and what failed (nothing listening, not cniguard...).
pub fn fetch_json<T: serde::de::DeserializeOwned>(
    address: SocketAddr,
    path: &str,
    what: &str,
) -> Result<T, String> {
    let timeout = Duration::from_secs(5);
    let unreachable = |err: std::io::Error| {
        format!(
            "cannot reach cniguard at {address}: {err} (is `cniguard run` listening there? see --address)"
        )
    };
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: application/json\r\n\r\n").as_bytes(),
        )
        .map_err(unreachable)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(unreachable)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) =
        response.split_once("\r\n\r\n").ok_or_else(|| format!("{address} sent no HTTP answer"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        return Err(format!("{address} answered `{status_line}`: {}", body.trim()));
    }
    serde_json::from_str(body).map_err(|err| format!("{address} did not answer with {what} ({err})"))
}

/// The status as the table `cniguard status` prints.
#[must_use]
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let phase = status.phase.as_ref().map_or_else(
        || "unknown".to_owned(),
        |phase| format!("{} for {}", phase.phase, duration(phase.since_seconds)),
    );
    let verdict = if status.rollback_recommended { "ROLLBACK RECOMMENDED" } else { "no rollback called for" };
    let _ = writeln!(out, "node {} (cniguard {}): phase {phase}; {verdict}", status.node, status.version);
    if status.triggers.is_empty() {
        out.push_str("triggers: off ([triggers] enabled = false)\n");
    } else {
        let _ = writeln!(
            out,
            "\n{:<29} {:<9} {:<9} {:>9} {:>11} {:>16}  DETAIL",
            "TRIGGER", "SEVERITY", "STATE", "FOR", "VALUE", "FIRES ABOVE"
        );
        for trigger in &status.triggers {
            let held = match trigger.state.as_str() {
                "active" | "clearing" => duration(trigger.active_seconds),
                "pending" => duration(trigger.pending_seconds),
                _ => "-".to_owned(),
            };
            let value = trigger.value.map_or_else(|| "-".to_owned(), number);
            let fires = format!("{} for {}", number(trigger.threshold), duration(trigger.for_seconds));
            let _ = writeln!(
                out,
                "{:<29} {:<9} {:<9} {held:>9} {value:>11} {fires:>16}  {}",
                trigger.trigger, trigger.severity, trigger.state, trigger.detail
            );
        }
    }
    if status.checks.is_empty() {
        out.push_str("\nchecks: none ([checks] enabled = false, or no round has run yet)\n");
    } else {
        let _ = writeln!(
            out,
            "\n{:<11} {:<29} {:<9} {:>8} {:>9}  LAST FAILURE",
            "CHECK", "TARGET", "PEER", "LATEST", "OK (5m)"
        );
        for check in &status.checks {
            let latest = match check.latest {
                _ if check.stale => "STALE",
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "-",
            };
            let ratio =
                check.success_ratio_5m.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
            let peer = if check.peer.is_empty() { "-" } else { check.peer.as_str() };
            let _ = writeln!(
                out,
                "{:<11} {:<29} {peer:<9} {latest:>8} {ratio:>9}  {}",
                check.check,
                check.target,
                check.last_failure.as_deref().unwrap_or("-")
            );
        }
    }
    render_localhost(&mut out, &status.localhost);
    if !status.findings.is_empty() {
        let _ =
            writeln!(out, "\n{:<18} {:<9} {:<9} {:>9}  SUBJECT: FIX", "FINDING", "SEVERITY", "STATE", "FOR");
        for finding in &status.findings {
            let _ = writeln!(
                out,
                "{:<18} {:<9} {:<9} {:>9}  {}: {}",
                finding.finding,
                finding.severity,
                finding.state,
                duration(finding.seconds),
                finding.subject,
                finding.fix
            );
        }
    }
    out
}

/// One line per checked pod and port: healthy, or why not.
fn render_localhost(out: &mut String, localhost: &[LocalhostStatus]) {
    if localhost.is_empty() {
        return;
    }
    let _ =
        writeln!(out, "\n{:<40} {:>5} {:<8} {:<11}  CAUSE", "LOCALHOST (POD)", "PORT", "PROTOCOL", "LATEST");
    for port in localhost {
        // The failure as the checks name it: refused, timeout, grpc_status...
        let latest = if port.healthy { "ok" } else { port.failure.as_deref().unwrap_or("failed") };
        let listening = if port.healthy {
            String::new()
        } else if port.listening_on.is_empty() {
            " (listening: none)".to_owned()
        } else {
            format!(" (listening: {})", port.listening_on.join(", "))
        };
        let _ = writeln!(
            out,
            "{:<40} {:>5} {:<8} {latest:<11}  {}{listening}",
            port.netns, port.port, port.protocol, port.explanation
        );
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e9 { format!("{value:.0}") } else { format!("{value:.4}") }
}

/// 95 -> "1m35s", 7200 -> "2h0m".
fn duration(seconds: f64) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "seconds, rounded down, never negative"
    )]
    let seconds = seconds.max(0.0) as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
        _ => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_trigger_with_its_state_time_and_numbers() {
        let status = Status {
            node: "node-1".into(),
            version: "0.1.0".into(),
            phase: Some(PhaseStatus { phase: "calico".into(), since_seconds: 95.0 }),
            rollback_recommended: true,
            triggers: vec![TriggerReport {
                trigger: "dns_failing".into(),
                severity: "rollback".into(),
                state: "active".into(),
                pending_seconds: 400.0,
                active_seconds: 100.0,
                value: Some(0.25),
                threshold: 0.05,
                clear_threshold: 0.01,
                for_seconds: 300.0,
                detail: "pods' queries failing or timing out: 25.0%".into(),
            }],
            checks: vec![CheckStatus {
                check: "dns".into(),
                target: "coredns".into(),
                peer: "coredns".into(),
                latest: Some(false),
                stale: false,
                success_ratio_5m: Some(0.5),
                last_failure: Some("timeout".into()),
            }],
            localhost: vec![LocalhostStatus {
                netns: "cgt-7-pod".into(),
                port: 9000,
                protocol: "http".into(),
                healthy: false,
                failure: Some("refused".into()),
                cause: "ipv6_loopback_only".into(),
                explanation: "listens on ::1 only; the client uses 127.0.0.1".into(),
                listening_on: vec!["[::1]:9000".into()],
            }],
            findings: vec![crate::diagnose::FindingReport {
                finding: "vxlan_one_way".into(),
                severity: "critical".into(),
                subject: "192.168.20.13:4789".into(),
                state: "raised".into(),
                seconds: 12.0,
                evidence: "40 VXLAN packets sent to 192.168.20.13 on UDP 4789 in 60 s, none came back".into(),
                fix: "open 4789/udp between this node and 192.168.20.13".into(),
            }],
        };
        let text = render(&status);
        assert!(
            text.starts_with("node node-1 (cniguard 0.1.0): phase calico for 1m35s; ROLLBACK RECOMMENDED"),
            "{text}"
        );
        let row = text.lines().find(|line| line.starts_with("dns_failing")).unwrap();
        for part in ["rollback", "active", "1m40s", "0.2500", "0.0500 for 5m0s", "25.0%"] {
            assert!(row.contains(part), "{part} in {row}");
        }
        let check = text.lines().find(|line| line.starts_with("dns ")).unwrap();
        assert!(check.contains("FAILED") && check.contains("50.0%") && check.ends_with("timeout"), "{check}");
        let pod = text.lines().find(|line| line.starts_with("cgt-7-pod")).unwrap();
        assert!(
            pod.contains(" 9000 http     refused ")
                && pod.ends_with("listens on ::1 only; the client uses 127.0.0.1 (listening: [::1]:9000)"),
            "{pod}"
        );
        let finding = text.lines().find(|line| line.starts_with("vxlan_one_way")).unwrap();
        assert!(
            finding.contains("critical") && finding.contains("raised") && finding.contains("12s"),
            "{finding}"
        );
        assert!(
            finding.ends_with("192.168.20.13:4789: open 4789/udp between this node and 192.168.20.13"),
            "{finding}"
        );
    }
}
