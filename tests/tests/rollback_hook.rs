//! `cniguard rollback-hook` behind a real Alertmanager (Debian's `prometheus-alertmanager`),
//! both in a namespace of the test's own: the rollback alert is posted to Alertmanager,
//! which delivers it with the bearer token; the stand-in rollback command runs exactly
//! once, however often the alert is repeated, resolved, fires again, or the hook restarts.
//! Requests without the token are refused and run nothing; unarmed, nothing runs at all.

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

struct Setup {
    _alertmanager: Process,
    hook: Option<Process>,
    dir: Dir,
    ns: NetNs,
}

impl Setup {
    fn new(armed: bool) -> Self {
        let ns = NetNs::new("hook").unwrap();
        let dir = Dir(std::env::temp_dir().join(format!("{}-files", ns.name())));
        std::fs::create_dir_all(dir.0.join("alertmanager")).unwrap();
        std::fs::write(dir.0.join("token"), format!("{TOKEN}\n")).unwrap();
        let config = format!(
            "route:\n  receiver: rollback\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1s\n\
             receivers:\n  - name: rollback\n    webhook_configs:\n      - url: http://{HOOK}/webhook\n        send_resolved: true\n\
             \x20       http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {}\n",
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
        let mut setup = Self { _alertmanager: alertmanager, hook: None, dir, ns };
        setup.start_hook(armed);
        setup.wait("Alertmanager ready", || {
            setup.get(ALERTMANAGER, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        setup
    }

    fn start_hook(&mut self, armed: bool) {
        self.hook = None;
        let marker = self.marker();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.0.join("hook.log")).unwrap();
        let mut command = self.ns.command(Binaries::beside_test_executable().cniguard).unwrap();
        command.args(["rollback-hook", "--listen", HOOK, "--firing-for-seconds", "3"]);
        command.arg("--token-file").arg(self.dir.0.join("token"));
        command.arg("--state-dir").arg(self.dir.0.join("state"));
        if armed {
            command.arg("--arm");
        }
        // The stand-in rollback: appends one line per run.
        command.args(["--", "/bin/sh", "-c", &format!("echo rolled back >> {}", marker.display())]);
        self.hook =
            Some(Process(command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap()));
        self.wait("the hook listening", || {
            self.get(HOOK, "/healthz").is_some_and(|(status, _)| status == 200)
        });
    }

    fn marker(&self) -> PathBuf {
        self.dir.0.join("rollback-ran")
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.marker()).map_or(0, |text| text.lines().count())
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
        let ends_at = if firing { SystemTime::now() + Duration::from_mins(10) } else { SystemTime::now() };
        let body = format!(
            r#"[{{"labels":{{"alertname":"CniguardRollbackRecommended","node":"node-1","severity":"critical"}},"startsAt":"{}","endsAt":"{}"}}]"#,
            humantime::format_rfc3339(starts_at),
            humantime::format_rfc3339(ends_at)
        );
        let (status, answer) =
            self.post(ALERTMANAGER, "/api/v2/alerts", None, &body).expect("Alertmanager answers");
        assert_eq!(status, 200, "Alertmanager refused the alert: {answer}");
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
    format!(
        r#"{{"version":"4","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"CniguardRollbackRecommended"}},"startsAt":"{}"}}]}}"#,
        humantime::format_rfc3339(starts_at)
    )
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
    setup.start_hook(true);
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
