//! `cniguard check` and the same checks before `cniguard run`: one line per requirement,
//! and a missing capability named with its fix.

use std::process::Command;

use cniguard_lab::binaries::Binaries;
use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;

fn binary() -> std::path::PathBuf {
    Binaries::beside_test_executable().cniguard
}

/// Runs `cniguard <args>` without CAP_BPF and CAP_SYS_ADMIN (the fallback that would
/// cover it): dropped from the bounding set, so root's exec cannot regain them.
fn without_cap_bpf(ns: &NetNs, args: &[&str]) -> (i32, String) {
    let mut command = ns.command("setpriv").unwrap();
    command.args(["--inh-caps=-all", "--bounding-set=-bpf,-sys_admin", "--"]).arg(binary()).args(args);
    let output = command.output().expect("setpriv (util-linux)");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn check_passes_as_root_with_one_line_per_requirement() {
    require_root!();
    let output = Command::new(binary()).arg("check").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{text}");
    for requirement in ["kernel", "BTF", "bpffs", "cgroup v2", "CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"] {
        let lines: Vec<&str> =
            text.lines().filter(|l| l[6..].starts_with(&format!("{requirement} "))).collect();
        assert_eq!(lines.len(), 1, "one line for {requirement}:\n{text}");
        assert!(lines[0].starts_with("pass"), "{requirement} should pass here (setup mounts bpffs):\n{text}");
    }
}

/// Each probe of the table has one line, found by loading its programs: on this kernel
/// (the newest of the matrix) every probe runs. `cargo xtask kernels` checks the others.
#[test]
fn check_has_one_line_per_probe_and_every_probe_is_on_here() {
    require_root!();
    let output = Command::new(binary()).arg("check").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{text}");
    let probe_lines: Vec<&str> =
        text.lines().filter(|l| l.get(6..).is_some_and(|l| l.starts_with("probe "))).collect();
    assert_eq!(probe_lines.len(), cniguard::probes::PROBES.len(), "{text}");
    for spec in cniguard::probes::PROBES {
        // `on`, or `on (hook <name>)` for a probe with several hooks.
        let line = format!("pass  probe {:<12} on", spec.name);
        assert!(
            probe_lines.iter().any(|l| *l == line || l.starts_with(&format!("{line} (hook "))),
            "{line:?} missing:\n{text}"
        );
    }
}

#[test]
fn missing_cap_bpf_is_named_with_its_fix_and_run_refuses() {
    require_root!();
    let ns = NetNs::new("caps").unwrap();
    let (code, text) = without_cap_bpf(&ns, &["check"]);
    assert_eq!(code, 3, "{text}");
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failures.len(), 1, "{text}");
    assert!(failures[0].starts_with("FAIL  CAP_BPF"), "{text}");
    assert!(failures[0].contains("setcap cap_bpf+ep"), "{text}");

    let (code, text) = without_cap_bpf(&ns, &["run"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.lines().next().unwrap().starts_with("FAIL  CAP_BPF"), "{text}");
    assert!(text.contains("refusing to start"), "{text}");
}
