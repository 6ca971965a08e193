//! `cniguard check` without CAP_SYS_ADMIN (dropped from the bounding set, as a container
//! without it is): it must say that pods cannot be entered and what is lost. Needs root and
//! `setpriv` (util-linux).

use std::process::Command;

fn check(setpriv: &[&str]) -> (i32, String) {
    let binary = env!("CARGO_BIN_EXE_cniguard");
    let output = if setpriv.is_empty() {
        Command::new(binary).arg("check").output()
    } else {
        Command::new("setpriv").args(setpriv).args(["--", binary, "check"]).output()
    }
    .expect("run cniguard check");
    (output.status.code().expect("exit code"), String::from_utf8(output.stdout).expect("utf-8"))
}

fn runnable() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status.lines().any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
    });
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    if !(root && setpriv) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root and setpriv");
        eprintln!("skipped: needs root and setpriv");
        return false;
    }
    true
}

#[test]
fn check_without_sys_admin_says_pods_cannot_be_entered() {
    if !runnable() {
        return;
    }
    let (code, with) = check(&[]);
    assert_eq!(code, 0, "{with}");
    let line = |text: &str| text.lines().find(|l| l.contains("pod netns")).map(str::to_owned);
    let held = line(&with).expect("a pod netns line");
    assert!(held.starts_with("pass  pod netns"), "{held}");

    let (code, without) = check(&["--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]);
    let refused = line(&without).expect("a pod netns line");
    assert!(refused.starts_with("warn  pod netns"), "{without}");
    for part in [
        "cannot enter pods' network namespaces",
        "Operation not permitted",
        "CAP_SYS_ADMIN",
        "the active checks ([checks])",
        "the localhost health check ([localhost.check])",
        "the per-namespace counters",
        "capabilities.add: [\"SYS_ADMIN\"]",
    ] {
        assert!(refused.contains(part), "{part} in {refused}");
    }
    // Root keeps CAP_BPF and CAP_PERFMON: the daemon can run, blind inside pods; a warning,
    // not a failure.
    assert_eq!(code, 0, "{without}");
    assert_eq!(without.lines().filter(|l| l.starts_with("warn  pod netns")).count(), 1);
}
