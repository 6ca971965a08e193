//! The migration phase and the pre-cutover baselines on a lab node: flannel, then mixed
//! when Calico comes up next to Flannel, calico after the cutover, flannel again after the
//! rollback. The baselines learnt under Flannel freeze when the node leaves it, survive a
//! `kill -9` of the daemon, and a ratio to them appears once the cutover has started.
#![allow(clippy::float_cmp, reason = "values read back from the state file must be exactly the same")]

use std::collections::BTreeMap;

use cniguard_lab::exposition::Scrape;
use cniguard_lab::lab::Lab;
use cniguard_lab::require_root;
use cniguard_tests::lab_support::{assert_promtool_accepts, options};

const NODE: usize = 0;
const SIGNALS: &[&str] = &[
    "drops_per_second",
    "retransmits_per_segment",
    "dns_failure_ratio",
    "dns_timeout_ratio",
    "localhost_response_p99_seconds",
];

/// The phase whose `cniguard_migration_phase` series is 1.
fn phase(scrape: &Scrape) -> Option<String> {
    scrape.series("cniguard_migration_phase", &[]).find(|s| s.value == 1.0).map(|s| s.labels["phase"].clone())
}

fn baselines(scrape: &Scrape) -> BTreeMap<String, f64> {
    scrape.series("cniguard_baseline", &[]).map(|s| (s.labels["signal"].clone(), s.value)).collect()
}

fn changed_at(scrape: &Scrape) -> f64 {
    scrape.value("cniguard_migration_phase_changed_timestamp_seconds", &[]).expect("a phase timestamp")
}

fn wait_for_phase(lab: &Lab, wanted: &str) -> Scrape {
    wait(lab, &format!("phase {wanted}"), |s| phase(s).as_deref() == Some(wanted))
}

/// Waits on node-1's cniguard; a failure shows its log too.
fn wait(lab: &Lab, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    lab.cniguard(NODE)
        .wait_for(what, done)
        .unwrap_or_else(|err| panic!("{err:#}\ncniguard log:\n{}", lab.cniguard_log(NODE)))
}

#[test]
fn phase_and_baselines_across_cutover_restart_and_rollback() {
    require_root!();
    let mut lab = Lab::up(options("phase")).unwrap();

    // Flannel: every signal learns from the lab's traffic (pods talking across nodes, DNS,
    // the agent calling its MLServer); no ratio while the node has not left Flannel.
    let flannel = wait(&lab, "a baseline of every signal", |s| {
        phase(s).as_deref() == Some("flannel")
            && SIGNALS.iter().all(|signal| baselines(s).contains_key(*signal))
    });
    assert_eq!(flannel.series("cniguard_baseline_ratio", &[]).count(), 0, "{}", flannel.text);
    assert_eq!(flannel.value("cniguard_migration_signal", &[("signal", "flannel_vxlan")]), Some(1.0));
    assert_promtool_accepts(&flannel.text);

    // Calico comes up next to Flannel: mixed, and the baselines stop learning.
    lab.calico_up("node-1").unwrap();
    let mixed = wait_for_phase(&lab, "mixed");
    assert_eq!(mixed.value("cniguard_migration_signal", &[("signal", "calico_vxlan")]), Some(1.0));
    assert!(changed_at(&mixed) > changed_at(&flannel));
    let frozen = baselines(&mixed);
    // A window later they have not moved.
    let later = wait(&lab, "a ratio", |s| {
        s.series("cniguard_baseline_ratio", &[("signal", "drops_per_second")]).count() == 1
    });
    assert_eq!(baselines(&later), frozen);

    // Killed mid-cutover, with no chance to save: the baselines and the phase's start come
    // back from the state file.
    lab.restart_cniguard(NODE, true).unwrap();
    let restarted = wait_for_phase(&lab, "mixed");
    assert_eq!(baselines(&restarted), frozen, "{}", restarted.text);
    assert_eq!(changed_at(&restarted), changed_at(&mixed));
    assert_eq!(restarted.count_sum("cniguard_state_file_rejected_total", &[]), 0);
    let ratio = wait(&lab, "a ratio after the restart", |s| {
        s.series("cniguard_baseline_ratio", &[("signal", "drops_per_second")]).count() == 1
    });
    assert_promtool_accepts(&ratio.text);

    // The cutover finishes: calico; the rollback: flannel again, still against the same
    // pre-cutover baselines.
    lab.cutover(Some("node-1")).unwrap();
    let calico = wait_for_phase(&lab, "calico");
    assert_eq!(calico.value("cniguard_migration_signal", &[("signal", "flannel_vxlan")]), Some(0.0));
    lab.rollback(Some("node-1")).unwrap();
    let back = wait_for_phase(&lab, "flannel");
    assert!(changed_at(&back) > changed_at(&calico));
    let after =
        wait(&lab, "ratios after the rollback", |s| s.series("cniguard_baseline_ratio", &[]).count() > 0);
    assert_eq!(baselines(&after), frozen, "the rollback does not make the baselines learn again");
    lab.down();
}
