//! The DaemonSets' pods in a real container runtime: the image `cargo xtask image` built,
//! run by runc with the OCI spec made from `deploy/daemonset.yaml` and `deploy/echo.yaml`
//! (`cniguard_tests::pod`), containerd's RuntimeDefault seccomp profile rendered for the
//! granted capabilities. The README's "Tested in a container runtime" says what this covers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cniguard_lab::netns::NetNs;
use cniguard_lab::{require_root, traffic};
use cniguard_tests::pod::{
    Container, Edits, Image, Manifest, Node, Seccomp, quantity_bytes, runtime_default,
};
use serde_json::Value;

/// The exported image, or: skipped (failed with CI=true) when `cargo xtask image` has not run.
fn image() -> Option<Image> {
    let image = Image::exported();
    if image.is_none() {
        let message = "no image in target/image/: run `cargo xtask image` first (`cargo xtask test` does)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}, and CI=true forbids skipping");
        eprintln!("SKIPPED: {message}");
    }
    image
}

/// The agent's node: the namespace `ns` stands for the node's network (hostNetwork).
fn agent_node(ns: &NetNs, host_ip: &str, bundle: &Path, config: &str) -> Node {
    let config_dir = bundle.join("configmap");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("cniguard.toml"), config).unwrap();
    Node {
        name: "cgt-node".into(),
        host_ip: host_ip.into(),
        netns: Some(ns.path()),
        host_paths: BTreeMap::from([("/var/lib/cniguard".to_owned(), bundle.join("state"))]),
        config_maps: BTreeMap::from([("config".to_owned(), config_dir)]),
        extra_read_only: Vec::new(),
    }
}

/// The agent's configuration for these tests: the ConfigMap's is cluster mode "on", and no
/// API server runs here.
const AGENT_CONFIG: &str = "[cluster]\nmode = \"off\"\n";

/// `cniguard check` in the agent's pod with `edits`; its exit code and output.
fn check_in_pod(image: &Image, edits: &Edits) -> (i32, String) {
    let manifest = Manifest::daemonset("daemonset.yaml");
    let ns = NetNs::new("podcheck").unwrap();
    let bundle = Container::bundle(image, "check").unwrap();
    let node = agent_node(&ns, "127.0.0.1", &bundle, AGENT_CONFIG);
    let edits = Edits { args: Some(vec!["check".into()]), ..edits.clone() };
    let spec = manifest.oci_spec(&image.config, &bundle.join("rootfs"), &node, &edits).unwrap();
    Container::run_to_end(bundle, &spec).unwrap()
}

/// The lines of a `cniguard check` output that do not pass, in order.
fn not_passing(text: &str) -> Vec<String> {
    text.lines().filter(|l| !l.starts_with("pass") && !l.trim().is_empty()).map(str::to_owned).collect()
}

#[test]
fn the_spec_is_the_manifest() {
    let agent = Manifest::daemonset("daemonset.yaml");
    let image = serde_json::json!({"User": "0:0", "Entrypoint": ["/cniguard"], "Env": ["PATH=/"]});
    let node = Node {
        name: "node-a".into(),
        host_ip: "10.1.2.3".into(),
        netns: Some("/var/run/netns/x".into()),
        host_paths: BTreeMap::from([("/var/lib/cniguard".to_owned(), std::env::temp_dir())]),
        config_maps: BTreeMap::from([("config".to_owned(), std::env::temp_dir())]),
        extra_read_only: Vec::new(),
    };
    let spec = agent.oci_spec(&image, Path::new("/rootfs"), &node, &Edits::default()).unwrap();
    let process = &spec["process"];
    assert_eq!(
        process["args"],
        serde_json::json!([
            "/cniguard",
            "run",
            "--config",
            "/etc/cniguard/cniguard.toml",
            "--listen",
            "10.1.2.3:9464"
        ])
    );
    assert!(process["env"].as_array().unwrap().contains(&"NODE_NAME=node-a".into()), "{process}");
    assert_eq!(process["user"], serde_json::json!({"uid": 0, "gid": 0}));
    let held = serde_json::json!(["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]);
    for set in ["bounding", "effective", "permitted"] {
        assert_eq!(process["capabilities"][set], held, "{set}");
    }
    assert_eq!(process["noNewPrivileges"], false);
    assert_eq!(spec["root"]["readonly"], true);
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 256 * 1024 * 1024);
    assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 51);
    let binds: Vec<(String, String)> = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "bind")
        .map(|m| (m["destination"].as_str().unwrap().to_owned(), m["options"].to_string()))
        .collect();
    assert_eq!(
        binds,
        [
            ("/etc/cniguard", r#"["rbind","ro","rprivate"]"#),
            ("/sys/fs/bpf", r#"["rbind","ro","rprivate"]"#),
            ("/sys/fs/cgroup", r#"["rbind","ro","rprivate"]"#),
            ("/var/run/netns", r#"["rbind","ro","rslave"]"#),
            ("/var/lib/cniguard", r#"["rbind","rw","rprivate"]"#),
        ]
        .map(|(d, o)| (d.to_owned(), o.to_owned()))
    );
    // hostNetwork: the node's namespace, and no UTS namespace of its own.
    let namespaces = spec["linux"]["namespaces"].to_string();
    assert!(namespaces.contains(r#"{"path":"/var/run/netns/x","type":"network"}"#), "{namespaces}");
    assert!(!namespaces.contains("uts"), "{namespaces}");

    let echo = Manifest::daemonset("echo.yaml");
    let spec = echo.oci_spec(&image, Path::new("/rootfs"), &node, &Edits::default()).unwrap();
    assert_eq!(spec["process"]["user"], serde_json::json!({"uid": 65532, "gid": 65532}));
    assert_eq!(spec["process"]["capabilities"]["bounding"], serde_json::json!([]));
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], quantity_bytes("64Mi").unwrap());
    assert!(spec["linux"]["namespaces"].to_string().contains("uts"));
}

/// The rendering follows containerd's: bpf(2) is allowed through CAP_BPF (and
/// CAP_SYS_ADMIN), perf_event_open(2) through CAP_PERFMON (and CAP_SYS_ADMIN); before
/// containerd 1.7 through CAP_SYS_ADMIN only; clone(2) of new namespaces only with
/// CAP_SYS_ADMIN.
#[test]
fn the_seccomp_profile_is_rendered_per_capability_as_containerd_does() {
    let allowed = |profile: &Value, syscall: &str| {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r["args"].is_null())
            .any(|r| r["names"].as_array().unwrap().iter().any(|n| n == syscall))
    };
    let caps = |list: &[&str]| list.iter().map(|c| format!("CAP_{c}")).collect::<Vec<_>>();
    let four = runtime_default(&caps(&["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"]), Seccomp::RuntimeDefault);
    for syscall in ["bpf", "perf_event_open", "setns", "socket", "read"] {
        let base = syscall == "socket";
        assert_eq!(allowed(&four, syscall), !base, "{syscall}");
    }
    let no_admin = runtime_default(&caps(&["BPF", "PERFMON", "NET_ADMIN"]), Seccomp::RuntimeDefault);
    assert!(allowed(&no_admin, "bpf") && allowed(&no_admin, "perf_event_open"));
    assert!(!allowed(&no_admin, "setns") && !allowed(&no_admin, "clone"));
    let old = runtime_default(&caps(&["BPF", "PERFMON", "NET_ADMIN"]), Seccomp::BeforeContainerd17);
    assert!(!allowed(&old, "bpf") && !allowed(&old, "perf_event_open"));
    let old_four =
        runtime_default(&caps(&["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"]), Seccomp::BeforeContainerd17);
    assert!(allowed(&old_four, "bpf") && allowed(&old_four, "perf_event_open"));
    let none = runtime_default(&[], Seccomp::RuntimeDefault);
    assert!(!allowed(&none, "bpf") && allowed(&none, "accept4"));
}

#[test]
fn check_in_the_agents_pod_passes_every_line() {
    require_root!();
    let Some(image) = image() else { return };
    let (code, text) = check_in_pod(&image, &Edits::default());
    assert_eq!(code, 0, "{text}");
    assert_eq!(not_passing(&text), Vec::<String>::new(), "{text}");
    let probes = text.lines().filter(|l| l.starts_with("pass  probe ")).count();
    assert_eq!(probes, cniguard::probes::PROBES.len(), "{text}");
}

/// Each of the four capabilities taken out of the manifest's `add` in turn (and the
/// seccomp profile rendered for what is left, as containerd would): what `cniguard check`
/// says, every line that does not pass, and the exit code. The README's table says the same.
///
/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (in the kernel, and in containerd's
/// profile, which allows bpf(2) and perf_event_open(2) for it), so either alone is not
/// missed. Without CAP_SYS_ADMIN the kernel refuses setns(2) (and the profile does not
/// allow it): `cniguard check` warns that the pods' namespaces are out of reach, and what is
/// lost, and still exits 0 (the node's own probes run).
#[test]
fn each_capability_removed_in_turn_is_named_and_nothing_else() {
    require_root!();
    let Some(image) = image() else { return };
    let manifest = Manifest::daemonset("daemonset.yaml");
    let through_sys_admin = |name: &str| format!("pass  {name:<13}  held through CAP_SYS_ADMIN");
    for capability in manifest.added_capabilities() {
        let edits = Edits { remove_capability: Some(capability.clone()), ..Edits::default() };
        let (code, text) = check_in_pod(&image, &edits);
        let failing = not_passing(&text);
        readme_row_agrees(&capability, code, &failing);
        match capability.as_str() {
            "BPF" | "PERFMON" => {
                assert_eq!((code, failing.len()), (0, 0), "without {capability}:\n{text}");
                let line = through_sys_admin(&format!("CAP_{capability}"));
                assert!(text.lines().any(|l| l.starts_with(&line)), "{line:?} without {capability}:\n{text}");
            }
            "NET_ADMIN" => {
                assert_eq!(code, 3, "{text}");
                assert_eq!(failing.len(), 2, "{text}");
                assert!(failing[0].starts_with("FAIL  CAP_NET_ADMIN  missing"), "{text}");
                assert!(failing[0].contains(r#"capabilities.add: ["NET_ADMIN"]"#), "{text}");
                assert!(failing[1].starts_with("skip  probes"), "{text}");
            }
            "SYS_ADMIN" => {
                assert_eq!((code, failing.len()), (0, 1), "without SYS_ADMIN:\n{text}");
                assert!(failing[0].starts_with("warn  pod netns"), "{text}");
                assert!(failing[0].contains("CAP_SYS_ADMIN"), "{text}");
            }
            other => panic!("the manifest adds {other}, which this test does not know"),
        }
    }
}

/// The README's row for `capability` taken out says the exit code observed and, when a
/// line fails, its first words (`FAIL  CAP_NET_ADMIN`).
fn readme_row_agrees(capability: &str, code: i32, failing: &[String]) {
    let readme = std::fs::read_to_string(cniguard_tests::pod::workspace().join("README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with(&format!("| `{capability}` |")))
        .unwrap_or_else(|| panic!("README: no capability table row for {capability}"));
    let check = row.split(" | ").nth(1).unwrap_or_default();
    assert!(
        check.ends_with(&format!("({code})")),
        "README row for {capability}: exit {code} observed\n{row}"
    );
    if let Some(first) = failing.first() {
        let words: Vec<&str> = first.split_whitespace().take(2).collect();
        assert!(
            check.contains(&words.join("  ")),
            "README row for {capability} should name {words:?}\n{row}"
        );
    }
}

/// containerd before 1.7 has no seccomp rule for CAP_BPF or CAP_PERFMON: with the four
/// capabilities bpf(2) is still allowed through CAP_SYS_ADMIN's rule, and every line passes.
/// Without CAP_SYS_ADMIN the capabilities are held but the profile refuses bpf(2): the
/// probes fail to load with EPERM, which `cniguard check` names (not as seccomp).
#[test]
fn containerd_before_1_7_allows_the_agent_through_cap_sys_admin() {
    require_root!();
    let Some(image) = image() else { return };
    let (code, text) = check_in_pod(&image, &Edits { older_seccomp: true, ..Edits::default() });
    assert_eq!((code, not_passing(&text)), (0, Vec::<String>::new()), "{text}");
    let edits =
        Edits { older_seccomp: true, remove_capability: Some("SYS_ADMIN".into()), ..Edits::default() };
    let (code, text) = check_in_pod(&image, &edits);
    let failing = not_passing(&text);
    assert_eq!((code, failing.len()), (3, 2), "{text}");
    assert!(failing[0].starts_with("warn  pod netns"), "{text}");
    assert!(failing[1].starts_with("FAIL  probes         the eBPF object did not load"), "{text}");
    assert!(failing[1].contains("Operation not permitted"), "{text}");
}

/// A field of `/proc/<pid>/status` (`CapEff`, `Seccomp`, ...).
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The memory limit of `pid`'s cgroup: cgroup v1's memory controller on this machine
/// (whose cgroup v2 has no memory controller), else v2's `memory.max`.
fn memory_limit(pid: u32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if controllers.split(',').any(|c| c == "memory") {
            return std::fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
                .unwrap()
                .trim()
                .to_owned();
        }
    }
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let root = cniguard::node::cgroup2_root().unwrap();
    std::fs::read_to_string(root.join(path.trim_start_matches('/')).join("memory.max"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Waits until `pid` runs under a seccomp filter (runc installs it just before exec).
fn wait_for_exec(container: &Container) -> u32 {
    for _ in 0..200 {
        if let Some(pid) = container.pid()
            && status_field(pid, "Seccomp") == "2"
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("container {} never ran its process:\n{}", container.id(), container.output());
}

#[test]
fn the_echo_pod_answers_as_uid_65532_with_nothing() {
    require_root!();
    let Some(image) = image() else { return };
    let manifest = Manifest::daemonset("echo.yaml");
    // Its own pod network namespace, as the CNI plugin would give it.
    let pod = NetNs::new("echo").unwrap();
    pod.ip(&["link", "set", "lo", "up"]).unwrap();
    let bundle = Container::bundle(&image, "echo").unwrap();
    let node = Node { name: "cgt-node".into(), netns: Some(pod.path()), ..Node::default() };
    let spec = manifest.oci_spec(&image.config, &bundle.join("rootfs"), &node, &Edits::default()).unwrap();
    let mut container = Container::start(bundle, &spec).unwrap();
    let pid = wait_for_exec(&container);
    assert_eq!(status_field(pid, "Uid"), "65532\t65532\t65532\t65532");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(memory_limit(pid), quantity_bytes("64Mi").unwrap().to_string());

    let address = "127.0.0.1:9465".parse().unwrap();
    let mut answer = Err(anyhow::anyhow!("not tried"));
    for _ in 0..100 {
        answer = pod.http_get(address, "/");
        if answer.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(answer.unwrap(), (200, "cniguard echo\n".to_owned()), "{}", container.output());
    // SIGTERM from the runtime: `cniguard echo` (the pid namespace's init, which gets no
    // default action) handles it, stops serving and exits 0 within the grace period.
    container.kill("TERM").unwrap();
    let status = container.wait(manifest.grace_period()).unwrap();
    assert_eq!(status.code(), Some(0), "{}", container.output());
}

/// Removes a container another process (the lab's launcher) ran, on drop.
struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        cniguard_tests::pod::remove(&self.0);
    }
}

/// The exact Flannel burst of `lab_overlay_bgp`, seen by node-1's agent in its pod.
const BURST: u64 = 30;
const PAYLOAD: u64 = 100;
const VXLAN_FRAME: u64 = 14 + 20 + 8 + 8 + 14 + 20 + 8 + PAYLOAD;
const NODE_3: &str = "192.168.20.13";

/// CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21), CAP_PERFMON (38), CAP_BPF (39).
const FOUR_CAPABILITIES: &str = "000000c000201000";

/// One lab boot: node-1's agent runs in its pod under runc (`cniguard-pod`), the other
/// nodes' as plain processes.
#[test]
fn node_1s_agent_in_its_pod_sees_the_lab_and_stops_on_sigterm() {
    require_root!();
    let Some(_image) = image() else { return };
    let manifest = Manifest::daemonset("daemonset.yaml");
    let id = format!("cgt-{:x}-lab-node-1", std::process::id());
    let _remove = RemoveContainer(id.clone());
    let mut options = cniguard_tests::lab_support::options("pod");
    options.cniguard_config =
        format!("{}{}", cniguard_lab::lab::LAB_CNIGUARD_CONFIG, cniguard_lab::lab::LAB_JUDGEMENT_CONFIG);
    options.cniguard_launcher =
        Some(("node-1".into(), vec![env!("CARGO_BIN_EXE_cniguard-pod").into(), "--id".into(), id.clone()]));
    let mut lab = cniguard_lab::lab::Lab::up(options).unwrap();

    // The process in the pod: the four capabilities, seccomp, the memory limit.
    let state = std::process::Command::new("runc").args(["state", &id]).output().unwrap();
    let state: Value =
        serde_json::from_slice(&state.stdout).unwrap_or_else(|_| panic!("{}", lab.cniguard_log(0)));
    let pid = u32::try_from(state["pid"].as_u64().unwrap()).unwrap();
    assert_eq!(status_field(pid, "CapEff"), FOUR_CAPABILITIES);
    assert_eq!(status_field(pid, "CapBnd"), FOUR_CAPABILITIES);
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(memory_limit(pid), (256 * 1024 * 1024).to_string());

    let node_1 = lab.cniguard(0);
    // Every probe on, as `cniguard check` found it.
    let scrape = node_1
        .wait_for("every probe available", |s| {
            cniguard::probes::PROBES
                .iter()
                .all(|p| s.value("cniguard_probe_available", &[("probe", p.name)]) == Some(1.0))
        })
        .unwrap();
    cniguard_tests::lab_support::assert_promtool_accepts(&scrape.text);

    // Exact traffic: the Flannel burst from client-1 to sink-3, leaving node-1 in VXLAN.
    lab.pause_traffic().unwrap();
    let vxlan = |s: &cniguard_lab::exposition::Scrape, metric: &str| {
        s.count(
            metric,
            &[
                ("interface", "eth0"),
                ("direction", "egress"),
                ("port", "8472"),
                ("vni", "1"),
                ("peer", NODE_3),
            ],
        )
    };
    let from_ns = NetNs::existing(&lab.pod_netns_name("client-1").unwrap());
    let to_ns = NetNs::existing(&lab.pod_netns_name("sink-3").unwrap());
    let (from, to) = (lab.pod_address("client-1").unwrap(), lab.pod_address("sink-3").unwrap());
    // Paused traffic stops the lab's generators, not the agents' own active checks, whose
    // packets to node-3 can share a burst's window: a window is exact or tried again (at
    // most three times), so a count that is wrong every time still fails.
    let mut windows = Vec::new();
    for _ in 0..3 {
        let before = node_1.scrape().unwrap();
        traffic::udp(&from_ns, from, &to_ns, to, BURST, PAYLOAD).unwrap();
        let after = node_1
            .wait_for("the burst counted", |s| {
                vxlan(s, "cniguard_vxlan_packets_total") - vxlan(&before, "cniguard_vxlan_packets_total")
                    >= BURST
            })
            .unwrap();
        let counted = (
            vxlan(&after, "cniguard_vxlan_packets_total") - vxlan(&before, "cniguard_vxlan_packets_total"),
            vxlan(&after, "cniguard_vxlan_bytes_total") - vxlan(&before, "cniguard_vxlan_bytes_total"),
        );
        windows.push(counted);
        if counted == (BURST, BURST * VXLAN_FRAME) {
            break;
        }
    }
    assert_eq!(
        windows.last(),
        Some(&(BURST, BURST * VXLAN_FRAME)),
        "packets and bytes per window: {windows:?}"
    );
    lab.resume_traffic().unwrap();

    // Into the pods' namespaces (setns, CAP_SYS_ADMIN; /var/run/netns) and the host's
    // cgroup v2 root (the localhost probe): the MLServer pod measured and checked.
    let mlserver = lab.pod_netns_name("mlserver-0").unwrap();
    let localhost = |s: &cniguard_lab::exposition::Scrape, netns: &str| {
        s.value("cniguard_localhost_probe_success", &[("netns", netns), ("port", "9500")])
    };
    node_1.wait_for("the MLServer check passes", |s| localhost(s, &mlserver) == Some(1.0)).unwrap();
    // A namespace made after the pod started reaches it (mountPropagation: HostToContainer).
    lab.cutover(Some("node-1")).unwrap();
    let moved = lab.pod_netns_name("mlserver-0").unwrap();
    node_1
        .wait_for("the re-created MLServer pod checked", |s| {
            localhost(s, &moved) == Some(1.0) && localhost(s, &mlserver).is_none()
        })
        .unwrap();
    // The triggers are evaluated (none active on a healthy cutover of one node).
    let scrape = node_1.scrape().unwrap();
    let triggers: Vec<_> = scrape.series("cniguard_rollback_trigger_active", &[]).collect();
    assert!(!triggers.is_empty(), "{}", scrape.text);

    sigterm_detaches_within_the_grace_period(&lab, &id, pid, manifest.grace_period());
    lab.down();
}

/// SIGTERM from the runtime: the agent detaches from every interface of its node and exits
/// within the grace period.
fn sigterm_detaches_within_the_grace_period(
    lab: &cniguard_lab::lab::Lab,
    id: &str,
    pid: u32,
    grace: Duration,
) {
    // SIGTERM from the runtime: the agent detaches and exits within the grace period.
    let node_ns = lab.node_netns(0);
    let links = node_ns.ip(&["-o", "link", "show"]).unwrap();
    let devices: Vec<String> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name != "lo")
        .collect();
    assert!(devices.len() >= 3, "{links}");
    std::process::Command::new("runc").args(["kill", id, "TERM"]).status().unwrap();
    let deadline = std::time::Instant::now() + grace;
    while cniguard_lab::process::alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "still running after the grace period:\n{}",
            lab.cniguard_log(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for device in &devices {
        for hook in [cniguard_tests::tc::Hook::Ingress, cniguard_tests::tc::Hook::Egress] {
            let tcx = cniguard_tests::tc::tcx_programs(&node_ns, device, hook).unwrap();
            let filters = cniguard_tests::tc::filters(&node_ns, device, hook).unwrap();
            assert!(tcx.is_empty() && filters.is_empty(), "{device} {hook:?}: {tcx:?} {filters:?}");
        }
    }
    assert!(lab.cniguard_log(0).contains("stopping: detaching from"), "{}", lab.cniguard_log(0));
}
