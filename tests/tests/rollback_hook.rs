//! `cniguard rollback-hook` behind a real Alertmanager (Debian's `prometheus-alertmanager`),
//! both in a namespace of the test's own: the rollback alert is posted to Alertmanager,
//! which delivers it with the bearer token; the stand-in rollback command runs exactly
//! once, however often the alert is repeated, resolved, fires again, or the hook restarts.
//! Requests without the token are refused and run nothing; unarmed, nothing runs at all.
//! And the issue-13 guarantees: a record that cannot be written or read refuses (5xx) and
//! never runs twice; a SIGTERM never stops the command halfway; firing state is kept per
//! alert and across restarts; startsAt with UTC offsets; floods and slow clients bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cniguard_lab::binaries::Binaries;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;

const HOOK: &str = "127.0.0.1:9466";
const ALERTMANAGER: &str = "127.0.0.1:9093";
const TOKEN: &str = "s3cret-rollback-token";

/// A process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process group (a rollback command the hook left running) killed on drop.
struct Group(PathBuf);

impl Drop for Group {
    fn drop(&mut self) {
        let pids = std::fs::read_to_string(&self.0).unwrap_or_default();
        for pid in pids.lines().filter_map(|line| line.trim().parse::<i32>().ok()) {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// How the test runs the hook and Alertmanager.
struct Options {
    armed: bool,
    firing_for_seconds: u64,
    /// Alertmanager's `repeat_interval`: long, so that only the hook's own memory acts.
    repeat_interval: &'static str,
    /// The stand-in rollback, a `sh -c` script run in the test's directory.
    script: Option<String>,
    extra: Vec<String>,
}

impl Options {
    fn armed() -> Self {
        Self { armed: true, firing_for_seconds: 3, repeat_interval: "1s", script: None, extra: vec![] }
    }
}

struct Setup {
    _alertmanager: Process,
    hook: Option<Process>,
    options: Options,
    dir: Dir,
    ns: NetNs,
}

impl Setup {
    fn new(armed: bool) -> Self {
        Self::with(Options { armed, ..Options::armed() })
    }

    fn with(options: Options) -> Self {
        let ns = NetNs::new("hook").unwrap();
        let dir = Dir(std::env::temp_dir().join(format!("{}-files", ns.name())));
        std::fs::create_dir_all(dir.0.join("alertmanager")).unwrap();
        std::fs::write(dir.0.join("token"), format!("{TOKEN}\n")).unwrap();
        let config = format!(
            "route:\n  receiver: rollback\n  group_by: [alertname, node]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: {}\n\
             receivers:\n  - name: rollback\n    webhook_configs:\n      - url: http://{HOOK}/webhook\n        send_resolved: true\n\
             \x20       http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {}\n",
            options.repeat_interval,
            dir.0.join("token").display()
        );
        std::fs::write(dir.0.join("alertmanager.yml"), config).unwrap();
        let log = std::fs::File::create(dir.0.join("alertmanager.log")).unwrap();
        let alertmanager = Process(
            ns.command("prometheus-alertmanager")
                .unwrap()
                .arg(format!("--config.file={}", dir.0.join("alertmanager.yml").display()))
                .arg(format!("--storage.path={}", dir.0.join("alertmanager").display()))
                .arg(format!("--web.listen-address={ALERTMANAGER}"))
                // An empty cluster address: a single Alertmanager, no gossip port.
                .arg("--cluster.listen-address=")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("prometheus-alertmanager (Debian package; `cargo xtask setup` installs it)"),
        );
        let mut setup = Self { _alertmanager: alertmanager, hook: None, options, dir, ns };
        setup.start_hook();
        setup.wait("Alertmanager ready", || {
            setup.get(ALERTMANAGER, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        setup
    }

    fn start_hook(&mut self) {
        self.hook = None;
        let marker = self.marker();
        let options = &self.options;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.0.join("hook.log")).unwrap();
        let mut command = self.ns.command(Binaries::beside_test_executable().cniguard).unwrap();
        command.args(["rollback-hook", "--listen", HOOK, "--firing-for-seconds"]);
        command.arg(options.firing_for_seconds.to_string());
        command.arg("--token-file").arg(self.dir.0.join("token"));
        command.arg("--state-dir").arg(self.state_dir());
        command.args(&options.extra);
        if options.armed {
            command.arg("--arm");
        }
        // The stand-in rollback: appends one line per run.
        let script =
            options.script.clone().unwrap_or_else(|| format!("echo rolled back >> {}", marker.display()));
        command.args(["--", "/bin/sh", "-c", &script]).current_dir(&self.dir.0);
        self.hook =
            Some(Process(command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap()));
        self.wait("the hook listening", || {
            self.get(HOOK, "/healthz").is_some_and(|(status, _)| status == 200)
        });
    }

    fn marker(&self) -> PathBuf {
        self.dir.0.join("rollback-ran")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    fn runs(&self) -> usize {
        self.lines("rollback-ran")
    }

    /// Lines in a file of the test's directory (0 if it does not exist).
    fn lines(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.0.join(name)).map_or(0, |text| text.lines().count())
    }

    fn run_state(&self, state: &str) -> u64 {
        self.counter("cniguard_rollback_hook_run_state", ("state", state))
    }

    fn firing_alerts(&self) -> u64 {
        self.hook_metrics().count("cniguard_rollback_hook_firing_alerts", &[])
    }

    fn status(&self) -> serde_json::Value {
        let (status, body) = self.get(HOOK, "/status").expect("the hook's /status");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    fn hook_pid(&self) -> i32 {
        i32::try_from(self.hook.as_ref().expect("a running hook").0.id()).unwrap()
    }

    /// A real SIGTERM to the hook.
    fn terminate_hook(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.hook_pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits for the hook to exit: failing if it is still running after 20 s.
    fn wait_hook_exited(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.hook.as_mut().expect("a hook").0.try_wait().unwrap() {
                self.hook = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the hook did not exit 20 s after SIGTERM\n{}",
                self.hook_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Posts an alert for `node` to Alertmanager, firing since `starts_at` (as written) or resolved.
    fn alert_for(&self, node: &str, starts_at: &str, firing: bool) {
        let ends_at = if firing { SystemTime::now() + Duration::from_mins(10) } else { SystemTime::now() };
        let body = format!(
            r#"[{{"labels":{{"alertname":"CniguardRollbackRecommended","node":"{node}","severity":"critical"}},"startsAt":"{starts_at}","endsAt":"{}"}}]"#,
            humantime::format_rfc3339(ends_at)
        );
        let (status, answer) =
            self.post(ALERTMANAGER, "/api/v2/alerts", None, &body).expect("Alertmanager answers");
        assert_eq!(status, 200, "Alertmanager refused the alert: {answer}");
    }

    fn hook_metrics(&self) -> Scrape {
        Scrape::parse(&self.get(HOOK, "/metrics").expect("the hook's /metrics").1)
    }

    fn counter(&self, name: &str, label: (&str, &str)) -> u64 {
        self.hook_metrics().count(name, &[label])
    }

    fn get(&self, address: &str, path: &str) -> Option<(u16, String)> {
        self.ns.http_get(address.parse().unwrap(), path).ok()
    }

    fn post(&self, address: &str, path: &str, token: Option<&str>, body: &str) -> Option<(u16, String)> {
        let auth = token.map(|token| format!("Authorization: Bearer {token}"));
        let mut headers = vec!["Content-Type: application/json"];
        headers.extend(auth.as_deref());
        self.ns.http(address.parse().unwrap(), "POST", path, &headers, body).ok()
    }

    /// Posts the rollback alert to Alertmanager, as Prometheus would: firing since
    /// `starts_at`, or resolved.
    fn alert(&self, starts_at: SystemTime, firing: bool) {
        self.alert_for("node-1", &humantime::format_rfc3339(starts_at).to_string(), firing);
    }

    /// Waits for `condition`; a test that waits in vain fails with the logs.
    fn wait(&self, what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_mins(1);
        while !condition() {
            if Instant::now() > deadline {
                let log = |name: &str| std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default();
                panic!(
                    "timed out waiting for {what}\n--- hook log ---\n{}\n--- alertmanager log ---\n{}",
                    log("hook.log"),
                    log("alertmanager.log")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until Alertmanager has had `more` further notifications refused (503).
    fn wait_for_refused(&self, more: u64) {
        let target = self.counter("cniguard_rollback_hook_requests_total", ("outcome", "refused")) + more;
        self.wait(&format!("{more} more refused notifications"), || {
            self.counter("cniguard_rollback_hook_requests_total", ("outcome", "refused")) >= target
        });
    }

    /// Waits until Alertmanager has delivered `more` further accepted notifications.
    fn wait_for_notifications(&self, more: u64) {
        let target = self.counter("cniguard_rollback_hook_requests_total", ("outcome", "accepted")) + more;
        self.wait(&format!("{more} more notifications"), || {
            self.counter("cniguard_rollback_hook_requests_total", ("outcome", "accepted")) >= target
        });
    }

    fn hook_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("hook.log")).unwrap_or_default()
    }
}

fn payload(starts_at: SystemTime) -> String {
    payload_at(&humantime::format_rfc3339(starts_at).to_string())
}

fn payload_at(starts_at: &str) -> String {
    format!(
        r#"{{"version":"4","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"CniguardRollbackRecommended"}},"startsAt":"{starts_at}"}}]}}"#
    )
}

/// `time` as RFC 3339 in the zone `offset_minutes` east of UTC (`-05:00`, `+05:30`).
fn at_offset(time: SystemTime, offset_minutes: i64) -> String {
    let shift = Duration::from_secs(offset_minutes.unsigned_abs() * 60);
    let local = if offset_minutes >= 0 { time + shift } else { time - shift };
    let text = humantime::format_rfc3339_seconds(local).to_string();
    let sign = if offset_minutes >= 0 { '+' } else { '-' };
    let (hours, minutes) = (offset_minutes.unsigned_abs() / 60, offset_minutes.unsigned_abs() % 60);
    format!("{}{sign}{hours:02}:{minutes:02}", text.trim_end_matches('Z'))
}

/// Whole seconds, so that times written at an offset (to the second) are exact.
fn whole_seconds(time: SystemTime) -> SystemTime {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

#[test]
fn the_rollback_runs_exactly_once_and_only_with_the_token() {
    require_root!();
    let setup = Setup::new(true);
    let long_ago = SystemTime::now() - Duration::from_hours(1);

    // Without the token, or with a wrong one, a payload that would run at once runs nothing.
    assert_eq!(setup.post(HOOK, "/webhook", None, &payload(long_ago)).unwrap().0, 401);
    assert_eq!(setup.post(HOOK, "/webhook", Some("guess"), &payload(long_ago)).unwrap().0, 401);
    assert_eq!(setup.post(HOOK, "/webhook", Some(TOKEN), "not json").unwrap().0, 400);
    assert_eq!(setup.counter("cniguard_rollback_hook_requests_total", ("outcome", "unauthorized")), 2);
    assert_eq!(setup.counter("cniguard_rollback_hook_requests_total", ("outcome", "bad_request")), 1);

    // The alert fires now: Alertmanager delivers it with the token; 3 s later it runs.
    setup.alert(SystemTime::now(), true);
    setup.wait("the rollback to run", || setup.runs() == 1);
    setup.wait("the run to finish", || {
        setup.counter("cniguard_rollback_executions_total", ("result", "succeeded")) == 1
    });
    // Alertmanager keeps repeating the firing alert: nothing runs again.
    setup.wait_for_notifications(3);
    assert_eq!(setup.runs(), 1);

    // Resolved, then firing again (a new episode): still the one run.
    setup.alert(SystemTime::now() - Duration::from_secs(10), false);
    setup.wait("the resolved notification", || {
        setup.hook_log().contains("CniguardRollbackRecommended resolved")
    });
    setup.alert(SystemTime::now() - Duration::from_mins(1), true);
    setup.wait_for_notifications(3);
    assert_eq!(setup.runs(), 1);
    assert!(setup.hook_log().contains("the rollback already ran"), "{}", setup.hook_log());

    // A restarted hook remembers the run.
    let mut setup = setup;
    setup.start_hook();
    let (status, decision) = setup.post(HOOK, "/webhook", Some(TOKEN), &payload(long_ago)).unwrap();
    assert_eq!((status, decision.trim_end().starts_with("AlreadyRan")), (200, true), "{decision}");
    setup.wait_for_notifications(2);
    assert_eq!(setup.runs(), 1);
    assert_eq!(
        setup.counter("cniguard_rollback_executions_total", ("result", "succeeded")),
        0,
        "none in this process"
    );
}

#[test]
fn unarmed_it_only_says_what_it_would_run() {
    require_root!();
    let setup = Setup::new(false);
    setup.alert(SystemTime::now(), true);
    setup.wait("the dry run", || {
        setup.counter("cniguard_rollback_executions_total", ("result", "dry_run")) == 1
    });
    setup.wait_for_notifications(3);
    assert_eq!(
        setup.counter("cniguard_rollback_executions_total", ("result", "dry_run")),
        1,
        "logged once per alert"
    );
    assert_eq!(setup.runs(), 0, "a dry run runs nothing");
    assert!(setup.hook_log().contains("DRY RUN: would run the rollback now"), "{}", setup.hook_log());
    assert!(
        !Path::new(&setup.dir.0.join("state/rollback-hook.json")).exists(),
        "a dry run is not recorded as a run"
    );
}

#[test]
fn a_record_that_cannot_be_written_refuses_with_a_5xx_then_runs_exactly_once() {
    require_root!();
    let setup = Setup::new(true);
    // The record's temporary file cannot be created: the "started" record cannot be saved.
    let blocker = setup.state_dir().join("rollback-hook.json.tmp");
    std::fs::create_dir_all(&blocker).unwrap();
    setup.alert(SystemTime::now() - Duration::from_hours(1), true);
    setup.wait("the hook refusing", || setup.run_state("unwritable") == 1);
    let (status, answer) = setup
        .post(HOOK, "/webhook", Some(TOKEN), &payload(SystemTime::now() - Duration::from_hours(1)))
        .unwrap();
    assert_eq!(status, 503, "{answer}");
    // Alertmanager's own notices get the 5xx too (and it retries them).
    setup.wait("Alertmanager's refused notices", || {
        setup.counter("cniguard_rollback_hook_requests_total", ("outcome", "refused")) >= 3
    });
    assert_eq!(setup.runs(), 0, "nothing runs without its record");
    let log = setup.hook_log();
    assert!(log.contains("NOT RUNNING the due rollback") && log.contains("rollback-hook.json.tmp"), "{log}");

    // Fixed: it runs, once.
    std::fs::remove_dir(&blocker).unwrap();
    setup.wait("the rollback to run", || setup.run_state("succeeded") == 1);
    setup.wait_for_notifications(3);
    assert_eq!(setup.runs(), 1);
    assert_eq!(setup.run_state("unwritable"), 0);
    assert_eq!(setup.counter("cniguard_rollback_executions_total", ("result", "succeeded")), 1);
}

#[test]
fn a_truncated_record_refuses_until_an_operator_removes_it() {
    require_root!();
    let mut setup = Setup::new(true);
    setup.hook = None;
    let record = setup.state_dir().join("rollback-hook.json");
    std::fs::write(
        &record,
        r#"{"format":"cniguard-rollback-hook","version":1,"node":"rollback-hook","body":{"ran":{"at":17"#,
    )
    .unwrap();
    setup.start_hook();
    assert_eq!(setup.run_state("untrusted"), 1);
    assert_eq!(setup.counter("cniguard_rollback_hook_record_errors_total", ("operation", "read")), 1);
    assert_eq!(setup.counter("cniguard_state_file_rejected_total", ("reason", "corrupt")), 1);
    setup.alert(SystemTime::now() - Duration::from_hours(1), true);
    setup.wait("Alertmanager's refused notices", || {
        setup.counter("cniguard_rollback_hook_requests_total", ("outcome", "refused")) >= 3
    });
    assert_eq!(setup.runs(), 0, "a record that cannot be read may mean it ran");
    assert!(setup.hook_log().contains("REFUSING TO RUN"), "{}", setup.hook_log());
    let state_dir = setup.state_dir();
    let asides = || {
        std::fs::read_dir(&state_dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rollback-hook.json.rejected-"))
            .count()
    };
    assert_eq!(asides(), 1, "the bytes are kept for the operator");

    // A restart does not forget: the record in its place says "untrusted".
    setup.start_hook();
    assert_eq!(setup.run_state("untrusted"), 1);
    setup.wait_for_refused(3);
    assert_eq!((setup.runs(), asides()), (0, 1));

    // The operator checks, removes the record and restarts the hook: one run.
    std::fs::remove_file(&record).unwrap();
    setup.start_hook();
    setup.wait("the rollback to run", || setup.run_state("succeeded") == 1);
    setup.wait_for_notifications(3);
    assert_eq!(setup.runs(), 1);
}

/// The stand-in for a long rollback: notes its process group and that it started, waits
/// for the test's `release` file, then appends its one line.
fn long_rollback() -> String {
    "echo $$ >> pids; echo started >> started; while [ ! -e release ]; do sleep 0.1; done; echo rolled back >> rollback-ran"
        .into()
}

#[test]
fn a_sigterm_during_the_command_waits_for_its_end_and_the_record_keeps_it() {
    require_root!();
    let mut setup = Setup::with(Options {
        script: Some(long_rollback()),
        extra: vec!["--shutdown-grace-seconds".into(), "20".into()],
        ..Options::armed()
    });
    let _group = Group(setup.dir.0.join("pids"));
    setup.alert(SystemTime::now() - Duration::from_hours(1), true);
    setup.wait("the command to start", || setup.lines("started") == 1);
    assert_eq!(setup.run_state("started"), 1);
    setup.terminate_hook();
    // The hook is waiting for the command; let the command finish.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(setup.dir.0.join("release"), "").unwrap();
    let status = setup.wait_hook_exited();
    assert!(status.success(), "{status}");
    assert_eq!(setup.runs(), 1, "the command ran to its end before the hook exited");
    assert!(setup.hook_log().contains("waiting up to 20s for the rollback command"), "{}", setup.hook_log());

    setup.start_hook();
    assert_eq!(setup.run_state("succeeded"), 1, "the record has the command's result");
    assert_eq!(setup.status()["run"]["record"]["result"], "succeeded");
    setup.wait_for_notifications(3);
    assert_eq!((setup.runs(), setup.lines("started")), (1, 1), "exactly one run overall");
}

#[test]
fn a_command_outliving_the_grace_period_is_left_running_and_reported_unknown() {
    require_root!();
    let mut setup = Setup::with(Options {
        script: Some(long_rollback()),
        extra: vec!["--shutdown-grace-seconds".into(), "1".into()],
        ..Options::armed()
    });
    let _group = Group(setup.dir.0.join("pids"));
    setup.alert(SystemTime::now() - Duration::from_hours(1), true);
    setup.wait("the command to start", || setup.lines("started") == 1);
    setup.terminate_hook();
    setup.wait_hook_exited();
    assert_eq!(setup.runs(), 0, "the command waits for `release`: still running");
    // The hook is gone; the command is not.
    std::fs::write(setup.dir.0.join("release"), "").unwrap();
    setup.wait("the command to finish on its own", || setup.runs() == 1);

    setup.start_hook();
    assert_eq!(setup.run_state("unknown"), 1);
    assert_eq!(setup.counter("cniguard_rollback_executions_total", ("result", "unknown")), 1);
    assert_eq!(setup.status()["run"]["state"], "unknown");
    assert!(setup.hook_log().contains("this hook never saw it end"), "{}", setup.hook_log());
    setup.wait_for_notifications(3);
    assert_eq!((setup.runs(), setup.lines("started")), (1, 1), "exactly one run overall");
}

#[test]
fn a_resolved_group_clears_only_its_own_alerts() {
    require_root!();
    // Alertmanager does not repeat: after the resolved notice, only the hook's memory of
    // node-2's alert can run the rollback.
    let setup = Setup::with(Options { firing_for_seconds: 8, repeat_interval: "1h", ..Options::armed() });
    let now = humantime::format_rfc3339(SystemTime::now()).to_string();
    setup.alert_for("node-1", &now, true);
    setup.alert_for("node-2", &now, true);
    setup.wait("two groups firing", || setup.firing_alerts() == 2);
    setup.alert_for("node-1", &now, false);
    setup.wait("node-1 resolved", || setup.firing_alerts() == 1);
    assert_eq!(setup.status()["firing"].as_array().unwrap().len(), 1);
    setup.wait("node-2's alert to run the rollback", || setup.run_state("succeeded") == 1);
    assert_eq!(setup.runs(), 1);
}

#[test]
fn a_restarted_hook_acts_on_the_persisted_alert_without_a_new_notice() {
    require_root!();
    let mut setup = Setup::with(Options { firing_for_seconds: 8, repeat_interval: "1h", ..Options::armed() });
    setup.alert(SystemTime::now(), true);
    setup.wait("the alert notified", || setup.firing_alerts() == 1);
    setup.start_hook();
    assert_eq!(setup.firing_alerts(), 1, "persisted");
    setup.wait("the rollback to run", || setup.run_state("succeeded") == 1);
    assert_eq!(setup.runs(), 1);
    assert_eq!(
        setup.counter("cniguard_rollback_hook_requests_total", ("outcome", "accepted")),
        0,
        "no notice reached the restarted hook"
    );
}

#[test]
fn starts_at_with_utc_offsets_reads_the_right_age() {
    require_root!();
    let setup = Setup::with(Options { firing_for_seconds: 3600, ..Options::armed() });
    // 30 minutes ago, written in India (+05:30): 30 minutes short of the hour.
    let half_hour_ago = whole_seconds(SystemTime::now() - Duration::from_mins(30));
    let (status, answer) =
        setup.post(HOOK, "/webhook", Some(TOKEN), &payload_at(&at_offset(half_hour_ago, 330))).unwrap();
    assert_eq!(status, 200, "{answer}");
    let remaining: f64 = answer
        .trim()
        .strip_prefix("Waiting { remaining_seconds: ")
        .and_then(|rest| rest.strip_suffix(" }"))
        .unwrap_or_else(|| panic!("not waiting: {answer}"))
        .parse()
        .unwrap();
    // 1800 s less the time since `half_hour_ago` (a minute is far more than this takes).
    assert!(remaining <= 1800.0 && remaining > 1740.0, "{remaining}");
    assert_eq!(setup.runs(), 0);

    // Two hours ago, written in New York (-05:00), through Alertmanager: due, runs once.
    let two_hours_ago = whole_seconds(SystemTime::now() - Duration::from_hours(2));
    setup.alert_for("node-2", &at_offset(two_hours_ago, -300), true);
    setup.wait("the rollback to run", || setup.run_state("succeeded") == 1);
    setup.wait_for_notifications(2);
    assert_eq!(setup.runs(), 1);
    let fired: Vec<f64> = setup.status()["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["fired_for_seconds"].as_f64().unwrap())
        .collect();
    assert_eq!(fired.len(), 2);
    assert_eq!(fired.iter().filter(|&&age| (7200.0..7260.0).contains(&age)).count(), 1, "{fired:?}");
    assert_eq!(fired.iter().filter(|&&age| (1800.0..1860.0).contains(&age)).count(), 1, "{fired:?}");
}

#[test]
fn floods_are_refused_unread_and_a_slow_client_does_not_hold_the_stop() {
    use std::io::{Read as _, Write as _};
    const CLIENTS: usize = 200;
    const BODY: usize = 2_000_000;
    require_root!();
    let mut setup = Setup::with(Options {
        extra: vec![
            "--shutdown-grace-seconds".into(),
            "3".into(),
            // Longer than the test: only the stop's deadline can end the slow clients.
            "--request-timeout-seconds".into(),
            "600".into(),
        ],
        ..Options::armed()
    });
    let address: std::net::SocketAddr = HOOK.parse().unwrap();
    setup.ns.run(|| {
        std::thread::scope(|scope| {
            for _ in 0..CLIENTS {
                scope.spawn(move || {
                    let Ok(mut stream) = std::net::TcpStream::connect(address) else { return };
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let head = format!(
                        "POST /webhook HTTP/1.1\r\nHost: {HOOK}\r\nContent-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
                    );
                    if stream.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = 0;
                    while sent < BODY && stream.write_all(&chunk[..chunk.len().min(BODY - sent)]).is_ok() {
                        sent += chunk.len();
                    }
                    let _ = stream.read(&mut [0; 512]);
                });
            }
        });
    });
    setup.wait("every flood request counted", || {
        setup.counter("cniguard_rollback_hook_requests_total", ("outcome", "unauthorized")) == CLIENTS as u64
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", setup.hook_pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    // 200 bodies of 2 MB would be 400 MB; unread, the hook stays near its idle size.
    assert!(peak_kib < 100 * 1024, "the hook's peak RSS reached {peak_kib} KiB");
    assert_eq!(setup.get(HOOK, "/healthz").map(|(status, _)| status), Some(200));
    // With the token, a body over --max-body-bytes (default 1 MiB) is refused too, from its
    // Content-Length, unread: the request's head alone gets the answer. (A client still
    // sending the body may meet the reset of the closed connection before it reads it.)
    let refused = setup
        .ns
        .run(|| -> std::io::Result<String> {
            use std::io::BufRead as _;
            let mut stream = std::net::TcpStream::connect(address)?;
            stream.set_read_timeout(Some(Duration::from_secs(15)))?;
            let length = (1 << 20) + 1;
            stream.write_all(
                format!(
                    "POST /webhook HTTP/1.1\r\nHost: {HOOK}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
                )
                .as_bytes(),
            )?;
            let mut status_line = String::new();
            std::io::BufReader::new(stream).read_line(&mut status_line)?;
            Ok(status_line)
        })
        .unwrap();
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert_eq!(setup.counter("cniguard_rollback_hook_requests_total", ("outcome", "too_large")), 1);

    // Slow clients: one mid-headers, one mid-body with the token.
    let _slow: Vec<std::net::TcpStream> = setup.ns.run(|| {
        let mut headers = std::net::TcpStream::connect(address).unwrap();
        headers.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n").unwrap();
        let mut body = std::net::TcpStream::connect(address).unwrap();
        let head = format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"alerts\""
        );
        body.write_all(head.as_bytes()).unwrap();
        vec![headers, body]
    });
    std::thread::sleep(Duration::from_millis(500));
    setup.terminate_hook();
    let status = setup.wait_hook_exited();
    assert!(status.success(), "{status}");
    assert!(setup.hook_log().contains("dropping connections still open"), "{}", setup.hook_log());
}
