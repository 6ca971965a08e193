//! `cargo xtask lab demo`: the runbook's migration, unattended, with a timeline of what
//! cniguard saw at each step (read back from the lab's Prometheus), next to what the pods'
//! own workloads experienced.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use cniguard_lab::lab::{Fault, Lab, LabOptions};
use cniguard_lab::topology::Workload;
use cniguard_lab::workloads::{AGENT_FAILURES, AGENT_OK};

/// How long the demo lets traffic flow after each step, so Prometheus sees rates.
const SETTLE: Duration = Duration::from_secs(12);

/// What the workloads did during one step, from their own counters.
#[derive(Default)]
struct WorkloadWindow {
    /// The agent's inference calls to the MLServer (gRPC and HTTP) answered well, and not.
    agent_ok: u64,
    agent_failed: u64,
    dns_answered: u64,
    dns_failed: u64,
}

pub fn run(options: LabOptions) -> Result<()> {
    // `lab` is owned: it is torn down when this function returns, also on error.
    let mut lab = Lab::up(options)?;
    let mut windows = Vec::new();
    println!("demo: on Flannel; traffic flows for {}s after each step", SETTLE.as_secs());
    windows.push(settle(&lab));
    let nodes: Vec<String> = lab.topology().nodes.iter().map(|n| n.name.clone()).collect();
    for node in &nodes {
        lab.cutover(Some(node))?;
        windows.push(settle(&lab));
    }
    // A clean cutover raises no finding once its windows have passed: the demo fails if one
    // stays (lab_diagnose asserts the same, and that none comes back for a while).
    wait_until(&lab, "no finding on any node after the cutover", |lab| raised_anywhere(lab) == Some(0))?;
    lab.note("cniguard: no finding after the cutover")?;
    // 127.0.0.1:9500 filtered inside the MLServer pod: cniguard names the cause.
    let fault = Fault::BlockMlserver;
    lab.inject(&fault)?;
    windows.push(settle(&lab));
    wait_until(&lab, "the MLServer's node to diagnose the fault", |lab| {
        !diagnosing(lab, "localhost_cause").is_empty()
    })?;
    let (node, diagnosis) = diagnosing(&lab, "localhost_cause").remove(0);
    lab.note(&format!("cniguard: localhost_cause diagnosed on {}", lab.topology().nodes[node].name))?;
    lab.repair(&fault)?;
    windows.push(settle(&lab));
    // The runbook's rollback trigger "DNS resolution failures": the triggers fire, the
    // rollback hook runs the (stand-in) rollback once, and everything clears on repair.
    let fault = Fault::StopDns;
    lab.inject(&fault)?;
    windows.push(settle(&lab));
    wait_until(&lab, "a node to recommend a rollback", |lab| !recommending(lab).is_empty())?;
    lab.note(&format!("cniguard: rollback recommended on {}", recommending(&lab).join(", ")))?;
    windows.push(settle(&lab));
    wait_until(&lab, "the rollback hook to run the rollback", |lab| lab.rollback_runs() > 0)?;
    lab.note("rollback hook: ran the (stand-in) rollback playbook")?;
    windows.push(settle(&lab));
    lab.repair(&fault)?;
    windows.push(settle(&lab));
    wait_until(&lab, "every trigger to clear", |lab| recommending(lab).is_empty())?;
    lab.note("cniguard: every trigger cleared")?;
    windows.push(settle(&lab));
    println!("{}", timeline(&lab, &windows)?);
    println!(
        "demo: the rollback hook ran the stand-in rollback {} time(s): not during the cutover, whose blips\n\
         \x20     (cross-node traffic breaks while nodes run different CNIs) fire the lab's seconds-long triggers\n\
         \x20     for less than the hook's {}s, and once for the DNS outage, however often Alertmanager repeated it",
        lab.rollback_runs(),
        cniguard_lab::lab::LAB_HOOK_FIRING_FOR_SECONDS
    );
    println!("demo: the injected MLServer fault, as `cniguard diagnose` on its node put it:\n{diagnosis}");
    let report = crate::workspace::workspace_root().join("target/lab/report.html");
    cniguard_lab::report::write(&lab, &report)?;
    println!(
        "demo: the run as pictures (every node's charts, the steps, faults and the rollback call marked): {}",
        report.display()
    );
    println!("demo: done; removing the lab");
    lab.down();
    Ok(())
}

fn recommended(lab: &Lab, node: usize) -> bool {
    lab.cniguard(node).scrape().is_ok_and(|s| s.value("cniguard_rollback_recommended", &[]) == Some(1.0))
}

/// Waits (up to two minutes) until `condition` holds.
fn wait_until(lab: &Lab, what: &str, condition: impl Fn(&Lab) -> bool) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_mins(2);
    println!("demo: waiting for {what}");
    while !condition(lab) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "demo: gave up waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    Ok(())
}

/// The nodes with `finding` raised now, with their `cniguard diagnose`.
fn diagnosing(lab: &Lab, finding: &str) -> Vec<(usize, String)> {
    (0..lab.topology().nodes.len())
        .filter(|&node| {
            lab.cniguard(node)
                .scrape()
                .is_ok_and(|s| s.value("cniguard_finding", &[("finding", finding)]) == Some(1.0))
        })
        .filter_map(|node| Some((node, lab.diagnose(node).ok()?)))
        .collect()
}

/// How many findings are raised across the nodes now (`None` if a node did not answer).
fn raised_anywhere(lab: &Lab) -> Option<usize> {
    (0..lab.topology().nodes.len())
        .map(|node| {
            let scrape = lab.cniguard(node).scrape().ok()?;
            // `cniguard_finding` is 1 for each finding raised, 0 for the others.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "0 or 1 per finding")]
            Some(scrape.sum("cniguard_finding", &[]) as usize)
        })
        .sum()
}

/// The nodes whose cniguard recommends a rollback now.
fn recommending(lab: &Lab) -> Vec<String> {
    (0..lab.topology().nodes.len())
        .filter(|&node| recommended(lab, node))
        .map(|node| lab.topology().nodes[node].name.clone())
        .collect()
}

/// Lets traffic flow for [`SETTLE`] and returns what the MLServer's agent (its inference
/// calls, gRPC and HTTP) and the DNS client of client-1 saw meanwhile, with the index of
/// the step it followed in the timeline (notes of what cniguard concluded have none).
fn settle(lab: &Lab) -> (usize, WorkloadWindow) {
    let step = lab.events().len().saturating_sub(1);
    let read = || {
        let agent = lab.workload_stats("mlserver-0", &Workload::Agent { rate: 10 }).ok();
        let dns = lab.topology().pod("client-1").and_then(|pod| {
            let workload = pod.workloads.iter().find(|w| matches!(w, Workload::DnsClient { .. }))?;
            lab.workload_stats("client-1", workload).ok()
        });
        (agent, dns)
    };
    let (agent_before, dns_before) = read();
    std::thread::sleep(SETTLE);
    let (agent_after, dns_after) = read();
    let delta = |before: &Option<serde_json::Value>, after: &Option<serde_json::Value>, fields: &[&str]| {
        let sum = |stats: &Option<serde_json::Value>| {
            fields.iter().map(|f| stats.as_ref().and_then(|s| s[f].as_u64()).unwrap_or(0)).sum::<u64>()
        };
        sum(after).saturating_sub(sum(before))
    };
    let dns_failures = ["servfail", "refused", "other_rcode", "timeouts", "malformed", "socket_errors"];
    let window = WorkloadWindow {
        agent_ok: delta(&agent_before, &agent_after, AGENT_OK),
        agent_failed: delta(&agent_before, &agent_after, AGENT_FAILURES),
        dns_answered: delta(&dns_before, &dns_after, &["noerror", "nxdomain"]),
        dns_failed: delta(&dns_before, &dns_after, &dns_failures),
    };
    (step, window)
}

/// Per step and node, from Prometheus just before the next step: which overlay carries the
/// node's traffic (VXLAN packets per second by port on the underlay), its pods' traffic
/// (packets per second on veth* and cali*), and how many BGP sessions are up; per step,
/// what the workloads saw. At most [`TIMELINE_COLUMNS`] wide: the step on a line of its
/// own, then a row per node.
fn timeline(lab: &Lab, windows: &[(usize, WorkloadWindow)]) -> Result<String> {
    let prometheus = lab.prometheus();
    let events = lab.events();
    let start = events.first().map_or(0.0, |e| e.at);
    let columns: [(&str, &str); 9] = [
        ("8472/s", "sum(rate(cniguard_vxlan_packets_total{node=\"NODE\",port=\"8472\"}[10s]))"),
        ("4789/s", "sum(rate(cniguard_vxlan_packets_total{node=\"NODE\",port=\"4789\"}[10s]))"),
        ("veth/s", "sum(rate(cniguard_interface_packets_total{node=\"NODE\",interface=~\"veth.*\"}[10s]))"),
        ("cali/s", "sum(rate(cniguard_interface_packets_total{node=\"NODE\",interface=~\"cali.*\"}[10s]))"),
        ("BGP up", "sum(cniguard_bgp_session_up{node=\"NODE\"})"),
        (
            "lo99 ms",
            "1000 * histogram_quantile(0.99, sum by (le) (rate(cniguard_localhost_response_seconds_bucket{node=\"NODE\",port=\"9500\"}[10s])))",
        ),
        ("check", "min(cniguard_localhost_probe_success{node=\"NODE\"})"),
        ("trig on", "sum(cniguard_rollback_trigger_active{node=\"NODE\"})"),
        ("rollbk", "max(cniguard_rollback_recommended{node=\"NODE\"})"),
    ];
    let mut text = String::from(
        "timeline: per node, what cniguard measured (from Prometheus): VXLAN packets/s by port on the underlay\n\
         \x20 (Flannel 8472, Calico 4789), pod packets/s on veth* (Flannel) and cali* (Calico), BGP sessions up,\n\
         \x20 the MLServer pod's 127.0.0.1:9500 p99 response time in ms (the real MLServer's gRPC calls, each\n\
         \x20 the server's own milliseconds in Python; the loopback itself adds microseconds), its active checks on\n\
         \x20 9000 and 9500 (1: healthy), rollback triggers active, and whether the node recommends a rollback (1);\n\
         \x20 per step, what the pods' own workloads saw (the agent's inference calls, DNS queries)\n",
    );
    let _ = write!(text, "{:>6}  {:<7}", "t", "node");
    for (label, _) in columns {
        let _ = write!(text, " {label:>7}");
    }
    text.push_str("  agent ok/fail  dns ok/fail\n");
    for (index, event) in events.iter().enumerate() {
        let sample_at = events.get(index + 1).map_or(event.at + SETTLE.as_secs_f64(), |next| next.at) - 1.0;
        let step: String = event.step.chars().take(TIMELINE_COLUMNS - 8).collect();
        let _ = writeln!(text, "{:>5.0}s  {step}", event.at - start);
        let window = windows.iter().find(|(step, _)| *step == index).map(|(_, window)| window);
        for (row, node) in lab.topology().nodes.iter().enumerate() {
            let _ = write!(text, "{:>6}  {:<7}", "", node.name);
            for (_, query) in columns {
                let value = prometheus.scalar(&query.replace("NODE", &node.name), Some(sample_at))?;
                let shown =
                    value.filter(|v| v.is_finite()).map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
                let _ = write!(text, " {shown:>7}");
            }
            if let (0, Some(window)) = (row, window) {
                let _ = write!(
                    text,
                    "  {:>7}/{:<5} {:>6}/{:<4}",
                    window.agent_ok, window.agent_failed, window.dns_answered, window.dns_failed
                );
            }
            text.push('\n');
        }
    }
    Ok(text)
}

/// The widest line the timeline prints: it must not wrap in a terminal.
const TIMELINE_COLUMNS: usize = 120;
