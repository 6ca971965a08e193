//! The workloads on the real kernel, each test in a network namespace of its own
//! (`cniguard_lab::netns::NetNs`): the processes run inside it, and only its loopback
//! carries traffic.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;
use serde_json::{Map, Value};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_cniguard-workload");
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// How long to wait for a process to come up or finish before calling the test failed.
/// Only a bound on a broken run: nothing asserts how fast anything is.
const PATIENCE: Duration = Duration::from_secs(30);

/// A test's namespace (`cgt-<pid>-<n>-wl`) and its scratch directory for stats files, named
/// after it under `CARGO_TARGET_TMPDIR`. On drop the directory is removed, then the
/// namespace with whatever still runs in it.
struct Sandbox {
    ns: NetNs,
    dir: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let ns = NetNs::new("wl").expect("create the test's namespace");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(ns.name());
        fs::create_dir_all(&dir).expect("create the scratch directory");
        Self { ns, dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `program` inside the namespace; it dies with the test's thread at the latest.
    fn spawn(&self, program: &str, args: &[&str]) -> Process {
        let child = self
            .ns
            .command(program)
            .expect("open the namespace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
        Process { child, what: format!("{program} {}", args.join(" ")) }
    }

    fn workload(&self, args: &[&str]) -> Process {
        self.spawn(WORKLOAD, args)
    }

    /// Runs `f` on a thread inside the namespace, for the test's own client sockets.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.ns.run(f)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A started process, killed on drop if it still runs.
struct Process {
    child: Child,
    what: String,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait for the child").is_none()
    }

    /// Waits for the process to end by itself; returns its status and stderr.
    fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + PATIENCE;
        while self.running() {
            assert!(Instant::now() < deadline, "{} did not finish", self.what);
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.try_wait().expect("wait for the child").expect("it ended");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status, stderr)
    }

    /// SIGTERM, then waits for the process to end.
    fn terminate(self) -> (ExitStatus, String) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.wait()
    }

    /// Waits until `ready` holds, failing the test if the process ends first.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ready() {
            if !self.running() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("{} ended before {what}: {}", self.what, stderr.trim());
            }
            assert!(Instant::now() < deadline, "{} never got to {what}", self.what);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the first stats file, written once the workload has bound its sockets.
    fn wait_for_stats(&mut self, path: &Path) {
        self.wait_until("writing its stats file", || path.exists());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for a workload that stops by itself (`--count`), checks it exited 0 and returns
/// its final stats.
fn finished(process: Process, stats: &Path) -> Map<String, Value> {
    let what = process.what.clone();
    let (exit, stderr) = process.wait();
    assert!(exit.success(), "{what} exited with {exit}: {}", stderr.trim());
    read_stats(stats)
}

/// Stops a workload with SIGTERM, checks it exited 0 and returns its final stats.
fn terminated(process: Process, stats: &Path) -> Map<String, Value> {
    let what = process.what.clone();
    let (exit, stderr) = process.terminate();
    assert!(exit.success(), "{what} exited with {exit} after SIGTERM: {}", stderr.trim());
    read_stats(stats)
}

fn read_stats(path: &Path) -> Map<String, Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    match serde_json::from_str(&text) {
        Ok(Value::Object(object)) => object,
        _ => panic!("{} is not a JSON object: {text}", path.display()),
    }
}

/// The counters of a stats file (every field but `kind` and the two timestamps).
fn counters(stats: &Map<String, Value>) -> Vec<(&str, u64)> {
    stats
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "kind" | "started_unix_ms" | "updated_unix_ms"))
        .map(|(name, value)| (name.as_str(), value.as_u64().unwrap_or_else(|| panic!("{name} = {value}"))))
        .collect()
}

/// Asserts the counters are exactly `expected`, every one not named being zero.
#[track_caller]
fn assert_counts(stats: &Map<String, Value>, kind: &str, expected: &[(&str, u64)]) {
    assert_eq!(stats["kind"], kind);
    let actual = counters(stats);
    for (name, _) in expected {
        assert!(actual.iter().any(|(field, _)| field == name), "no field {name} in {stats:?}");
    }
    let wanted: Vec<(&str, u64)> = actual
        .iter()
        .map(|&(name, _)| (name, expected.iter().find(|(field, _)| *field == name).map_or(0, |&(_, n)| n)))
        .collect();
    assert_eq!(actual, wanted, "{kind} stats");
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn agent_reuses_keep_alive_connections_to_mlserver() {
    require_root!();
    let ns = Sandbox::new();
    let server_stats = ns.file("mlserver.json");
    let mut server = ns.workload(&["mlserver", "--listen", "127.0.0.1:9500", "--stats", arg(&server_stats)]);
    server.wait_for_stats(&server_stats);

    let agent_stats = ns.file("agent.json");
    let agent = ns.workload(&[
        "agent",
        "--target",
        "127.0.0.1:9500",
        "--rate",
        "100",
        "--count",
        "25",
        "--requests-per-connection",
        "10",
        "--stats",
        arg(&agent_stats),
    ]);
    let agent = finished(agent, &agent_stats);
    assert_counts(&agent, "agent", &[("attempts", 25), ("ok", 25), ("connections_opened", 3)]);

    let server = terminated(server, &server_stats);
    assert_counts(&server, "mlserver", &[("health", 25)]);
}

#[test]
fn mlserver_answers_inference_and_unknown_routes() {
    require_root!();
    let ns = Sandbox::new();
    let stats = ns.file("mlserver.json");
    let mut server = ns.workload(&[
        "mlserver",
        "--listen",
        "127.0.0.1:9500",
        "--listen",
        "127.0.0.1:8080",
        "--stats",
        arg(&stats),
    ]);
    server.wait_for_stats(&stats);

    let infer = r#"{"id": "1", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]}"#;
    let answers = ns.run(|| {
        [
            http("127.0.0.1:9500", "POST", "/v2/models/fraud/infer", infer),
            http("127.0.0.1:8080", "POST", "/v2/models/fraud/infer", "{not json"),
            http("127.0.0.1:9500", "GET", "/v2/models/fraud/ready", ""),
            http("127.0.0.1:9500", "GET", "/v1/models", ""),
            http("127.0.0.1:9500", "POST", "/v2/health/ready", ""),
        ]
    });
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, [200, 400, 200, 404, 404]);
    let echoed: Value = serde_json::from_str(&answers[0].1).expect("JSON answer");
    assert_eq!(
        echoed,
        serde_json::json!({
            "model_name": "fraud",
            "id": "1",
            "outputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]
        })
    );
    assert!(answers[1].1.contains("invalid JSON"), "400 body: {}", answers[1].1);

    let stats = terminated(server, &stats);
    assert_counts(&stats, "mlserver", &[("health", 1), ("infer", 2), ("not_found", 2)]);
}

/// One request on a connection of its own; returns the status and the body.
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap_or_else(|err| panic!("connect {address}: {err}"));
    stream.set_read_timeout(Some(PATIENCE)).expect("set a read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {response:?}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok());
    (status.unwrap_or_else(|| panic!("no status in {head:?}")), body.to_owned())
}

#[test]
fn udp_sink_counts_every_datagram_sent() {
    require_root!();
    let ns = Sandbox::new();
    let sink_stats = ns.file("sink.json");
    let mut sink = ns.workload(&["udp-sink", "--listen", "127.0.0.1:7000", "--stats", arg(&sink_stats)]);
    sink.wait_for_stats(&sink_stats);

    let send_stats = ns.file("send.json");
    let sender = ns.workload(&[
        "udp-send",
        "--to",
        "127.0.0.1:7000",
        "--from",
        "127.0.0.1",
        "--rate",
        "200",
        "--count",
        "40",
        "--stats",
        arg(&send_stats),
    ]);
    let sent = finished(sender, &send_stats);
    assert_counts(&sent, "udp-send", &[("sent", 40)]);

    let received = terminated(sink, &sink_stats);
    assert_counts(&received, "udp-sink", &[("received", 40), ("bytes", 40 * 64)]);
}

#[test]
fn dns_client_tells_answers_from_nxdomain() {
    require_root!();
    let ns = Sandbox::new();
    let pid_file = ns.file("dnsmasq.pid");
    let log_file = ns.file("dnsmasq.log");
    let mut dnsmasq = ns.spawn(
        DNSMASQ,
        &[
            "--keep-in-foreground",
            // Nothing from the host's own configuration.
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--port=5353",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            // Authoritative for the cluster domain: unknown names are NXDOMAIN, not REFUSED.
            "--local=/cluster.local/",
            "--address=/mlserver.financial-ml.svc.cluster.local/10.244.1.10",
            &format!("--pid-file={}", arg(&pid_file)),
            &format!("--log-facility={}", arg(&log_file)),
        ],
    );
    // The child entered the namespace before exec, and spawn returns once dnsmasq runs:
    // /proc/<pid>/net shows the namespace's sockets.
    let pid = dnsmasq.pid();
    dnsmasq.wait_until("listening on 127.0.0.1:5353", || {
        fs::read_to_string(format!("/proc/{pid}/net/udp"))
            .is_ok_and(|sockets| sockets.contains(" 0100007F:14E9 "))
    });

    let stats = ns.file("dns.json");
    let client = ns.workload(&[
        "dns-client",
        "--server",
        "127.0.0.1:5353",
        "--name",
        "mlserver.financial-ml.svc.cluster.local",
        "--name",
        "seldon-missing.financial-ml.svc.cluster.local",
        "--rate",
        "50",
        "--count",
        "6",
        "--stats",
        arg(&stats),
    ]);
    let stats = finished(client, &stats);
    let log = fs::read_to_string(&log_file).unwrap_or_default();
    assert_eq!(stats["noerror"], 3, "dnsmasq log:\n{log}");
    assert_counts(&stats, "dns-client", &[("queries", 6), ("noerror", 3), ("nxdomain", 3)]);
}

#[test]
fn agent_counts_refused_connections() {
    require_root!();
    let ns = Sandbox::new();
    let stats = ns.file("agent.json");
    let agent = ns.workload(&[
        "agent",
        "--target",
        "127.0.0.1:9500",
        "--rate",
        "50",
        "--count",
        "4",
        "--stats",
        arg(&stats),
    ]);
    let stats = finished(agent, &stats);
    assert_counts(&stats, "agent", &[("attempts", 4), ("refused", 4)]);
}

#[test]
fn startup_errors_exit_2_with_one_line() {
    require_root!();
    let ns = Sandbox::new();
    let stats = ns.file("first.json");
    let mut first = ns.workload(&["udp-sink", "--listen", "127.0.0.1:7000", "--stats", arg(&stats)]);
    first.wait_for_stats(&stats);

    let taken =
        ns.workload(&["udp-sink", "--listen", "127.0.0.1:7000", "--stats", arg(&ns.file("second.json"))]);
    let (exit, stderr) = taken.wait();
    assert_eq!(exit.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("127.0.0.1:7000"), "{stderr}");

    let no_rate = ns.workload(&[
        "udp-send",
        "--to",
        "127.0.0.1:7000",
        "--rate",
        "0",
        "--stats",
        arg(&ns.file("third.json")),
    ]);
    let (exit, stderr) = no_rate.wait();
    assert_eq!(exit.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--rate"), "{stderr}");

    let stats = terminated(first, &stats);
    assert_counts(&stats, "udp-sink", &[("received", 0), ("bytes", 0)]);
}
