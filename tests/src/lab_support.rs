//! Helpers for tests that run the migration lab.

use std::time::Duration;

use cniguard_lab::binaries::Binaries;
use cniguard_lab::lab::{LAB_CNIGUARD_CONFIG, Lab, LabOptions};
use cniguard_lab::topology::{Topology, Workload};

/// A standard lab under a prefix unique to this test process and `role`.
#[must_use]
pub fn options(role: &str) -> LabOptions {
    let prefix = format!("cglab-t{:x}-{role}", std::process::id());
    LabOptions {
        topology: Topology::standard(&prefix),
        binaries: Binaries::beside_test_executable(),
        state_dir: std::env::temp_dir().join(&prefix),
        cniguard_args: Vec::new(),
        cniguard_config: LAB_CNIGUARD_CONFIG.to_owned(),
        cniguard_launcher: None,
    }
}

/// The standard topology's workload of kind `label` in `pod`.
///
/// # Panics
/// If the pod has no such workload.
#[must_use]
pub fn workload(lab: &Lab, pod: &str, label: &str) -> Workload {
    let pod = lab.topology().pod(pod).unwrap_or_else(|| panic!("no pod {pod}"));
    pod.workloads
        .iter()
        .find(|w| w.label() == label)
        .unwrap_or_else(|| panic!("{} has no {label}", pod.name))
        .clone()
}

/// How a set of workload counters changed over a window.
pub struct Window {
    before: serde_json::Value,
    after: serde_json::Value,
}

impl Window {
    /// The change of the sum of `fields` (a missing field counts as 0).
    #[must_use]
    pub fn delta(&self, fields: &[&str]) -> u64 {
        let sum =
            |stats: &serde_json::Value| fields.iter().map(|f| stats[f].as_u64().unwrap_or(0)).sum::<u64>();
        sum(&self.after).saturating_sub(sum(&self.before))
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.before, self.after)
    }
}

pub use cniguard_lab::workloads::{AGENT_CALLS, AGENT_FAILURES, AGENT_OK};
/// The DNS client's failure counters.
pub const DNS_FAILURES: &[&str] =
    &["servfail", "refused", "other_rcode", "timeouts", "malformed", "socket_errors"];

/// Watches the workloads `(pod, workload label)` for `seconds`.
///
/// # Panics
/// If a workload's stats cannot be read.
#[must_use]
pub fn watch(lab: &Lab, workloads: &[(&str, &str)], seconds: u64) -> Vec<Window> {
    let read = || -> Vec<serde_json::Value> {
        workloads
            .iter()
            .map(|(pod, label)| lab.workload_stats(pod, &workload(lab, pod, label)).unwrap())
            .collect()
    };
    let before = read();
    std::thread::sleep(Duration::from_secs(seconds));
    before.into_iter().zip(read()).map(|(before, after)| Window { before, after }).collect()
}

/// Runs `promtool check metrics` on a scrape's text.
///
/// # Panics
/// If promtool is missing or finds a problem (its findings are in the message).
pub fn assert_promtool_accepts(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by `cargo xtask setup` (Debian package prometheus)");
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
