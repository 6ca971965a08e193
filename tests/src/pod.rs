//! A DaemonSet's container as containerd's CRI plugin would run it, under runc.
//!
//! [`Manifest::oci_spec`] turns the container of a manifest in `deploy/` into an OCI runtime
//! spec mechanically: args with `$(VAR)` expanded from its env (fieldRefs filled from a
//! [`Node`]), the image's entrypoint and user, the container's securityContext (user,
//! capabilities after `drop`/`add` over containerd's defaults, no_new_privs, read-only root),
//! its volumeMounts (hostPath as a recursive bind, `readOnly`, `mountPropagation`), its
//! memory limit and cpu request, and containerd's RuntimeDefault seccomp profile rendered
//! for the granted capabilities as `contrib/seccomp/seccomp_default.go` renders it (the
//! fixture `tests/fixtures/containerd-seccomp/`). A change to the manifest changes the spec.
//!
//! What the kubelet adds is left out: /etc/hosts, resolv.conf, the termination log and the
//! service account token (the API is out of reach here; the tests give the agent a
//! configuration with cluster mode off).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize as _;
use serde_json::{Value, json};

/// containerd's default capabilities (`defaultUnixCaps` in its `pkg/oci/spec.go`), which a
/// container's `drop` and `add` change.
const CONTAINERD_DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The paths containerd masks and makes read-only in every unprivileged container.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The workspace root.
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Which RuntimeDefault profile to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seccomp {
    /// containerd's profile as of the fixture's commit.
    RuntimeDefault,
    /// The same before containerd 1.7 (commit 43907515): no rule for CAP_BPF or
    /// CAP_PERFMON, so bpf(2) and perf_event_open(2) are allowed by CAP_SYS_ADMIN only.
    BeforeContainerd17,
}

/// containerd's RuntimeDefault profile rendered for the bounding set `capabilities`.
///
/// # Panics
/// If the fixture cannot be read.
#[must_use]
pub fn runtime_default(capabilities: &[String], which: Seccomp) -> Value {
    let path = workspace().join("tests/fixtures/containerd-seccomp/runtime-default.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let added_later: Vec<&str> = fixture["capabilities_rules_added_by"]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut rules: Vec<Value> = fixture["syscalls"].as_array().unwrap().clone();
    for capability in capabilities {
        if which == Seccomp::BeforeContainerd17 && added_later.contains(&capability.as_str()) {
            continue;
        }
        if let Some(extra) = fixture["by_capability"][capability].as_array() {
            rules.extend(extra.iter().cloned());
        }
    }
    if !capabilities.iter().any(|c| c == "CAP_SYS_ADMIN") {
        rules.extend(fixture["without_cap_sys_admin"].as_array().unwrap().iter().cloned());
    }
    let rules: Vec<Value> = rules.into_iter().map(|rule| oci_rule(&rule)).collect();
    json!({
        "defaultAction": fixture["defaultAction"],
        "architectures": fixture["architectures"],
        "syscalls": rules,
    })
}

fn oci_rule(rule: &Value) -> Value {
    let mut out = json!({ "names": rule["names"], "action": rule["action"] });
    if let Some(args) = rule["args"].as_array() {
        out["args"] = args
            .iter()
            .map(|a| {
                json!({"index": a["index"], "value": a["value"], "valueTwo": a["valueTwo"].as_u64().unwrap_or(0), "op": a["op"]})
            })
            .collect();
    }
    if let Some(errno) = rule["errnoRet"].as_u64() {
        out["errnoRet"] = json!(errno);
    }
    out
}

/// The node a pod runs on, as the kubelet would fill it in.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// `spec.nodeName`.
    pub name: String,
    /// `status.hostIP`.
    pub host_ip: String,
    /// The network namespace a `hostNetwork` pod shares (the test's node); `None`: a pod
    /// network namespace of its own (as the echo pod has, given by the CNI).
    pub netns: Option<PathBuf>,
    /// hostPath volumes moved elsewhere on this machine (the state directory into the
    /// test's own directory); other host paths are used as they are.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// What each configMap volume holds: a directory per volume name.
    pub config_maps: BTreeMap<String, PathBuf>,
    /// Host directories bound read-only at the same path, beyond the manifest's mounts
    /// (the lab's check targets file, which cluster mode would get from the API).
    pub extra_read_only: Vec<PathBuf>,
}

/// One container of a manifest in `deploy/` and its pod.
pub struct Manifest {
    pub file: String,
    pod: Value,
    container: Value,
}

/// Changes a test makes to what the manifest says, each one an edit an operator could make.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    /// Replaces the container's `args` (`cniguard check` in the agent's pod).
    pub args: Option<Vec<String>>,
    /// A capability taken out of `capabilities.add` (`"BPF"`).
    pub remove_capability: Option<String>,
    /// containerd's profile before 1.7.
    pub older_seccomp: bool,
}

impl Manifest {
    /// The first container of the first DaemonSet in `deploy/<file>`.
    ///
    /// # Panics
    /// If the file has no DaemonSet.
    #[must_use]
    pub fn daemonset(file: &str) -> Self {
        let path = workspace().join("deploy").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap();
            if value["kind"] == "DaemonSet" {
                let pod = value["spec"]["template"]["spec"].clone();
                let container = pod["containers"][0].clone();
                return Self { file: format!("deploy/{file}"), pod, container };
            }
        }
        panic!("{} has no DaemonSet", path.display());
    }

    /// `terminationGracePeriodSeconds` (30 s when unset, as Kubernetes defaults it).
    #[must_use]
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30))
    }

    /// The container's `args`, as in the manifest.
    #[must_use]
    pub fn container_args(&self) -> Vec<String> {
        strings(&self.container["args"])
    }

    /// The container's `capabilities.add`, as in the manifest (`BPF`, ...).
    #[must_use]
    pub fn added_capabilities(&self) -> Vec<String> {
        strings(&self.container["securityContext"]["capabilities"]["add"])
    }

    /// The capabilities the container holds: containerd's defaults, less `drop`, plus `add`.
    #[must_use]
    pub fn capabilities(&self, edits: &Edits) -> Vec<String> {
        let context = &self.container["securityContext"];
        let drop = strings(&context["capabilities"]["drop"]);
        let mut held: Vec<String> = if drop.iter().any(|d| d == "ALL") {
            Vec::new()
        } else {
            CONTAINERD_DEFAULT_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .filter(|c| !drop.iter().any(|d| c == &format!("CAP_{d}")))
                .collect()
        };
        for add in self.added_capabilities() {
            if edits.remove_capability.as_deref() != Some(add.as_str()) {
                held.push(format!("CAP_{add}"));
            }
        }
        held
    }

    fn security(&self, field: &str) -> Value {
        let own = &self.container["securityContext"][field];
        if own.is_null() { self.pod["securityContext"][field].clone() } else { own.clone() }
    }

    /// The container's environment with its fieldRefs filled in from `node`.
    ///
    /// # Errors
    /// If an env entry has a source this does not know.
    pub fn env(&self, node: &Node) -> Result<Vec<(String, String)>> {
        let mut env = Vec::new();
        for entry in self.container["env"].as_array().into_iter().flatten() {
            let name = entry["name"].as_str().context("env without a name")?.to_owned();
            let value = if let Some(value) = entry["value"].as_str() {
                value.to_owned()
            } else {
                match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("spec.nodeName") => node.name.clone(),
                    Some("status.hostIP") => node.host_ip.clone(),
                    other => bail!("{}: env {name}: unknown source {other:?}", self.file),
                }
            };
            env.push((name, value));
        }
        Ok(env)
    }

    /// The OCI runtime spec (config.json) of this container on `node`, its root
    /// filesystem at `rootfs`, the image's config `image` (entrypoint, user, env).
    ///
    /// # Errors
    /// If the manifest uses something this translation does not know (it fails rather
    /// than leave it out).
    pub fn oci_spec(&self, image: &Value, rootfs: &Path, node: &Node, edits: &Edits) -> Result<Value> {
        let env = self.env(node)?;
        let expand = |arg: &str| {
            env.iter().fold(arg.to_owned(), |arg, (name, value)| arg.replace(&format!("$({name})"), value))
        };
        let mut args = strings(&image["Entrypoint"]);
        let container_args = edits.args.clone().unwrap_or_else(|| strings(&self.container["args"]));
        args.extend(container_args.iter().map(|a| expand(a)));
        let mut process_env = strings(&image["Env"]);
        process_env.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        let (user_of_image, group_of_image) = image_user(image);
        let uid = self.security("runAsUser").as_u64().unwrap_or(user_of_image);
        let gid = self.security("runAsGroup").as_u64().unwrap_or(group_of_image);
        let capabilities = self.capabilities(edits);
        // containerd gives a non-root process no effective or permitted capabilities
        // (Kubernetes has no ambient capabilities), only the bounding set.
        let effective = if uid == 0 { capabilities.clone() } else { Vec::new() };
        let no_new_privileges = self.security("allowPrivilegeEscalation") == Value::Bool(false);
        ensure!(
            self.security("privileged") != Value::Bool(true),
            "{}: privileged is not translated",
            self.file
        );
        ensure!(
            self.security("seccompProfile")["type"] == "RuntimeDefault",
            "{}: only seccompProfile RuntimeDefault is translated",
            self.file
        );
        let seccomp = runtime_default(
            &capabilities,
            if edits.older_seccomp { Seccomp::BeforeContainerd17 } else { Seccomp::RuntimeDefault },
        );

        let mut namespaces = vec![
            json!({"type": "pid"}),
            json!({"type": "ipc"}),
            json!({"type": "mount"}),
            json!({"type": "cgroup"}),
        ];
        let host_network = self.pod["hostNetwork"] == Value::Bool(true);
        match (&node.netns, host_network) {
            (Some(netns), true) => namespaces.push(json!({"type": "network", "path": netns})),
            (None, true) => bail!("{}: hostNetwork needs the node's namespace", self.file),
            (Some(netns), false) => {
                // The pod's own namespace, as the CNI plugin would make it; and its own
                // host name (hostNetwork pods share the node's).
                namespaces.push(json!({"type": "network", "path": netns}));
                namespaces.push(json!({"type": "uts"}));
            }
            (None, false) => bail!("{}: a pod network namespace is needed", self.file),
        }

        let mut mounts = default_mounts();
        mounts.extend(self.volume_mounts(node)?);
        for path in &node.extra_read_only {
            mounts.push(json!({"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro", "rprivate"]}));
        }

        let resources = self.resources()?;

        let mut spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": uid, "gid": gid},
                "args": args,
                "env": process_env,
                "cwd": "/",
                "capabilities": {
                    "bounding": capabilities,
                    "effective": effective,
                    "permitted": effective,
                },
                "noNewPrivileges": no_new_privileges,
                "oomScoreAdj": 0,
            },
            "root": {"path": rootfs, "readonly": self.security("readOnlyRootFilesystem") == Value::Bool(true)},
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces,
                "resources": resources,
                "seccomp": seccomp,
                "maskedPaths": MASKED_PATHS,
                "readonlyPaths": READONLY_PATHS,
            },
        });
        if !host_network {
            spec["hostname"] = json!(node.name);
        }
        Ok(spec)
    }

    /// The memory limit and the cpu request, as the kubelet hands them to the runtime.
    fn resources(&self) -> Result<Value> {
        let mut resources = json!({});
        if let Some(limit) = self.container["resources"]["limits"]["memory"].as_str() {
            resources["memory"] = json!({"limit": quantity_bytes(limit)?});
        }
        if let Some(cpu) = self.container["resources"]["requests"]["cpu"].as_str() {
            // The kubelet's shares: 1024 per CPU, at least 2.
            resources["cpu"] = json!({"shares": (millicpu(cpu)? * 1024 / 1000).max(2)});
        }
        Ok(resources)
    }

    fn volume_mounts(&self, node: &Node) -> Result<Vec<Value>> {
        let volumes: BTreeMap<&str, &Value> = self.pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?, v)))
            .collect();
        let mut mounts = Vec::new();
        for mount in self.container["volumeMounts"].as_array().into_iter().flatten() {
            let name = mount["name"].as_str().context("volumeMount without a name")?;
            let volume = volumes.get(name).with_context(|| format!("{}: no volume {name}", self.file))?;
            let source = if let Some(path) = volume["hostPath"]["path"].as_str() {
                let source = node.host_paths.get(path).cloned().unwrap_or_else(|| PathBuf::from(path));
                if volume["hostPath"]["type"] == "DirectoryOrCreate" {
                    std::fs::create_dir_all(&source)?;
                }
                ensure!(source.is_dir(), "{}: hostPath {path} is not a directory here", self.file);
                source
            } else if volume["configMap"].is_object() {
                node.config_maps
                    .get(name)
                    .cloned()
                    .with_context(|| format!("no configMap content for {name}"))?
            } else {
                bail!("{}: volume {name}: only hostPath and configMap are translated", self.file);
            };
            let mut options = vec!["rbind".to_owned()];
            options.push(if mount["readOnly"] == Value::Bool(true) { "ro" } else { "rw" }.to_owned());
            options.push(
                match mount["mountPropagation"].as_str() {
                    Some("HostToContainer") => "rslave",
                    Some("Bidirectional") => "rshared",
                    _ => "rprivate",
                }
                .to_owned(),
            );
            mounts.push(json!({
                "destination": mount["mountPath"],
                "type": "bind",
                "source": source,
                "options": options,
            }));
        }
        Ok(mounts)
    }
}

/// The mounts containerd gives every unprivileged container (`/sys` read-only).
fn default_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ]
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

fn image_user(image: &Value) -> (u64, u64) {
    let user = image["User"].as_str().unwrap_or("0");
    let mut parts = user.split(':').map(|p| p.parse().unwrap_or(0));
    let uid = parts.next().unwrap_or(0);
    (uid, parts.next().unwrap_or(uid))
}

/// A Kubernetes memory quantity (`256Mi`, `64M`, `1Gi`, bytes) in bytes.
///
/// # Errors
/// On a suffix this does not know.
pub fn quantity_bytes(quantity: &str) -> Result<u64> {
    let split = quantity.find(|c: char| !c.is_ascii_digit()).unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: u64 = number.parse().with_context(|| format!("quantity {quantity}"))?;
    let factor: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => bail!("quantity {quantity}: unknown suffix"),
    };
    Ok(number * factor)
}

fn millicpu(cpu: &str) -> Result<u64> {
    Ok(match cpu.strip_suffix('m') {
        Some(milli) => milli.parse()?,
        None => cpu.parse::<u64>()? * 1000,
    })
}

/// The image `cargo xtask image` exported into `target/image/`.
pub struct Image {
    pub rootfs: PathBuf,
    pub config: Value,
}

impl Image {
    /// The exported image, or `None` when `cargo xtask image` has not run.
    #[must_use]
    pub fn exported() -> Option<Self> {
        let dir = workspace().join("target/image");
        let config = std::fs::read_to_string(dir.join("config.json")).ok()?;
        let rootfs = dir.join("rootfs");
        let config = serde_json::from_str(&config).ok()?;
        rootfs.join("cniguard").is_file().then_some(Self { rootfs, config })
    }
}

/// A bundle and a container under runc: `runc run` in the foreground (runc forwards the
/// signals it gets to the container's process). Dropping it kills and deletes the
/// container and removes the bundle, also when a test fails.
pub struct Container {
    id: String,
    bundle: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Container {
    /// A new bundle directory for a container: its rootfs, a copy of `image`'s (runc
    /// creates mount points in it, which must not change the exported image).
    ///
    /// # Errors
    /// If the bundle cannot be made.
    pub fn bundle(image: &Image, name: &str) -> Result<PathBuf> {
        Self::bundle_named(image, &cniguard_lab::names::unique(&format!("pod-{name}")))
    }

    /// The same under a name of the caller's (the container's id: `cgt-...`).
    ///
    /// # Errors
    /// If the bundle cannot be made.
    pub fn bundle_named(image: &Image, id: &str) -> Result<PathBuf> {
        ensure!(id.starts_with(cniguard_lab::names::TEST_PREFIX), "container ids start with cgt-");
        let bundle = Self::bundle_dir(id);
        std::fs::create_dir_all(bundle.join("rootfs"))?;
        std::fs::copy(image.rootfs.join("cniguard"), bundle.join("rootfs/cniguard"))?;
        Ok(bundle)
    }

    /// Where the bundle of container `id` is.
    #[must_use]
    pub fn bundle_dir(id: &str) -> PathBuf {
        std::env::temp_dir().join(id)
    }

    /// Writes `spec` into `bundle` and starts it under runc, its output into a file of the
    /// bundle ([`Container::output`]).
    ///
    /// # Errors
    /// If runc cannot be started.
    pub fn start(bundle: PathBuf, spec: &Value) -> Result<Self> {
        let log = bundle.join("output.log");
        let output = File::create(&log)?;
        Self::start_with(bundle, spec, output.try_clone()?.into(), output.into(), log)
    }

    /// The same, its output where this process's goes.
    ///
    /// # Errors
    /// If runc cannot be started.
    pub fn start_inheriting(bundle: PathBuf, spec: &Value) -> Result<Self> {
        let log = bundle.join("output.log");
        Self::start_with(bundle, spec, Stdio::inherit(), Stdio::inherit(), log)
    }

    fn start_with(bundle: PathBuf, spec: &Value, stdout: Stdio, stderr: Stdio, log: PathBuf) -> Result<Self> {
        let id = bundle.file_name().unwrap().to_string_lossy().into_owned();
        // Its own cgroup, named as the container (runc removes it with the container).
        let mut spec = spec.clone();
        spec["linux"]["cgroupsPath"] = json!(id);
        std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
        let child = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("runc (Debian package runc; `cargo xtask setup`)")?;
        Ok(Self { id, bundle, child: Some(child), log })
    }

    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs `spec` to its end; its exit code and output.
    ///
    /// # Errors
    /// If runc cannot be started or waited for.
    pub fn run_to_end(bundle: PathBuf, spec: &Value) -> Result<(i32, String)> {
        let mut container = Self::start(bundle, spec)?;
        let status = container.wait(Duration::from_mins(1))?;
        Ok((status.code().unwrap_or(-1), container.output()))
    }

    /// What the container printed so far (and runc's own errors).
    #[must_use]
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The container's init process on the host, from `runc state`.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        let state = Command::new("runc").args(["state", &self.id]).output().ok()?;
        let state: Value = serde_json::from_slice(&state.stdout).ok()?;
        state["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).filter(|p| *p != 0)
    }

    /// Sends `signal` as the runtime does when the kubelet stops a pod (`runc kill`).
    ///
    /// # Errors
    /// If runc refuses.
    pub fn kill(&self, signal: &str) -> Result<()> {
        let status = Command::new("runc").args(["kill", &self.id, signal]).status()?;
        ensure!(status.success(), "runc kill {} {signal}: {status}", self.id);
        Ok(())
    }

    /// Waits for the container to exit, at most `limit`.
    ///
    /// # Errors
    /// If it is still running after `limit`.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().context("already waited for")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            ensure!(Instant::now() < deadline, "container {} still runs after {limit:?}", self.id);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["kill", &self.id, "KILL"]).stderr(Stdio::null()).status();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        remove(&self.id);
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// Removes container `id` and its bundle, whatever state they are in (a drop guard's
/// work, for a container another process started).
pub fn remove(id: &str) {
    let _ = Command::new("runc").args(["delete", "--force", id]).stderr(Stdio::null()).status();
    let _ = std::fs::remove_dir_all(Container::bundle_dir(id));
}
