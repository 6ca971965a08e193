//! The migration lab: up on Flannel, cut over node by node to Calico, roll back, inject
//! faults and repair them, tear down. Its state is saved after every step, so each
//! `cargo xtask lab ...` command picks up where the last one left off, and every step can
//! be repeated without harm.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::binaries::Binaries;
use crate::cniguard::{Endpoint, PATIENCE};
use crate::dataplane;
use crate::netns::{NetNs, remove_namespaces, run};
use crate::process::Processes;
use crate::services::{self, Prometheus};
use crate::topology::{
    ALERTMANAGER_PORT, CNIGUARD_PORT, Cni, DNS_PORT, ECHO_PORT, HOOK_ADDRESS, MLSERVER_PORT, PROMETHEUS_PORT,
    Pod, Topology, Workload,
};
use crate::workloads::{Context, Planned, WORKLOAD_KEY_PREFIX, workload_key};

/// The programs the lab runs, with the Debian package that has each.
pub const REQUIRED_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("bridge", "iproute2"),
    ("bird", "bird2"),
    ("birdc", "bird2"),
    ("dnsmasq", "dnsmasq"),
    ("prometheus", "prometheus"),
    ("nft", "nftables"),
    ("prometheus-alertmanager", "prometheus-alertmanager"),
];

/// Checks that every required program is on `path` (the `PATH` variable's value).
///
/// # Errors
/// Names every missing program and its package, and how to install them.
pub fn check_programs(path: &std::ffi::OsStr) -> Result<()> {
    let missing: Vec<String> = REQUIRED_PROGRAMS
        .iter()
        .filter(|(program, _)| !std::env::split_paths(path).any(|dir| dir.join(program).is_file()))
        .map(|(program, package)| format!("{program} (Debian package {package})"))
        .collect();
    ensure!(
        missing.is_empty(),
        "the lab cannot start: missing {}. Run `cargo xtask setup` (as root) to install them",
        missing.join(", ")
    );
    Ok(())
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub topology: Topology,
    pub binaries: Binaries,
    /// Logs, configuration, Prometheus' data and the saved state.
    pub state_dir: PathBuf,
    /// Extra arguments for every node's `cniguard run`.
    pub cniguard_args: Vec<String>,
    /// The configuration file every node's cniguard reads (as a DaemonSet's ConfigMap).
    pub cniguard_config: String,
}

/// The lab's cniguard configuration: each node watches its own namespace and its pods' (one
/// kernel runs all three nodes), and checks the MLServer pods every 2 seconds like the
/// runbook's `curl 127.0.0.1:9500/v2/health/ready`.
pub const LAB_CNIGUARD_CONFIG: &str = "\
netns_scope = \"node\"

[localhost]
connect_timeout_seconds = 2

[localhost.check]
enabled = true
namespaces = [\"*-mlserver-*\"]
interval_seconds = 2
timeout_seconds = 1

[baseline]
window_seconds = 2
windows = 5
";

/// What turns the lab's measurements into a rollback decision: active checks from a pod
/// of each node to the others' echo pods, the MLServer and the cluster DNS (targets the
/// lab rewrites as pods move), and the runbook's triggers with their `for` and clear
/// times shortened from minutes to seconds. Appended to [`LAB_CNIGUARD_CONFIG`] by
/// `cargo xtask lab` and the trigger tests; left out where a test counts packets exactly
/// (the checks add their own). `{state_dir}` and `{node}` are filled in per node.
pub const LAB_JUDGEMENT_CONFIG: &str = "
[checks]
enabled = true
interval_seconds = 1
timeout_seconds = 1
targets_file = \"{state_dir}/targets-{node}.toml\"

[triggers]
evaluate_seconds = 1

[triggers.connectivity_lost]
for_seconds = 8
clear_seconds = 4

[triggers.pod_to_pod_not_restored]
restore_deadline_seconds = 30
window_seconds = 10
for_seconds = 8
clear_seconds = 4

[triggers.critical_service_unavailable]
for_seconds = 8
clear_seconds = 4

[triggers.dns_failing]
for_seconds = 8
clear_seconds = 4

# The lab's three nodes share a small machine's CPUs: under load its loopback p99 crosses
# the runbook's 1 ms with nothing wrong. A 20 ms injected delay (slow-mlserver) is clear.
[triggers.localhost_latency_slo]
threshold = 0.01
clear_threshold = 0.005
for_seconds = 8
clear_seconds = 4

[triggers.regression]
for_seconds = 8
clear_seconds = 4
";

/// The bearer token the lab's Alertmanager sends to its rollback hook.
const HOOK_TOKEN: &str = "cniguard-lab-token";
/// How long the lab's rollback alert must fire before the hook runs the rollback.
pub const LAB_HOOK_FIRING_FOR_SECONDS: u64 = 30;

/// A fault `inject` can introduce and `repair` can take back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// nftables on the node drops VXLAN (UDP 8472 and 4789) both ways.
    BlockVxlan { node: String },
    /// BIRD stops on the node: its BGP sessions go down.
    StopBird { node: String },
    /// Inside the MLServer pod, 127.0.0.1:9500 stops answering: the problem the runbook
    /// migrates away from.
    BlockMlserver,
    /// The cluster DNS server stops.
    StopDns,
    /// The MLServer answers `ms` late: a known delay on the pod's loopback path to it. (The
    /// kernels this runs on lack sch_netem, so the delay is the server's, and exact.)
    SlowMlserver { ms: u32 },
    /// nftables drops `percent`% of the packets towards a pod, at random, on its veth.
    VethLoss { pod: String, percent: u32 },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BlockVxlan { node } => write!(f, "block VXLAN on {node}"),
            Self::StopBird { node } => write!(f, "stop BIRD on {node}"),
            Self::BlockMlserver => write!(f, "block 127.0.0.1:{MLSERVER_PORT} in the MLServer pod"),
            Self::StopDns => write!(f, "stop the cluster DNS"),
            Self::SlowMlserver { ms } => write!(f, "make the MLServer answer {ms} ms late"),
            Self::VethLoss { pod, percent } => write!(f, "lose {percent}% of packets to {pod}"),
        }
    }
}

/// A moment of the lab's story, for timelines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub step: String,
    /// Unix time in seconds.
    pub at: f64,
}

/// A node's CNI as its devices show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodePhase {
    Flannel,
    Mixed,
    Calico,
}

#[derive(Debug, Serialize, Deserialize)]
struct LabState {
    topology: Topology,
    binaries: Binaries,
    state_dir: PathBuf,
    cniguard_args: Vec<String>,
    cniguard_config: String,
    /// Per node: whether each dataplane is present.
    flannel: Vec<bool>,
    calico: Vec<bool>,
    /// Per pod: its live generations, the current one last.
    pods: BTreeMap<String, Vec<Cni>>,
    processes: Processes,
    faults: Vec<Fault>,
    paused: bool,
    events: Vec<Event>,
}

/// A running lab. Dropping one that [`Lab::up`] built tears it down, unless
/// [`Lab::keep_running`] handed it over to later commands.
pub struct Lab {
    state: LabState,
    owned: bool,
}

const STATE_FILE: &str = "lab.json";

impl Lab {
    /// Builds the lab on Flannel, with its workloads, a cniguard per node and Prometheus,
    /// and waits until all of them are up. A lab already up in `state_dir` is returned as
    /// it is. If any step fails, everything built so far is removed.
    ///
    /// # Errors
    /// A missing program (named, with its package), or the step that failed.
    pub fn up(options: LabOptions) -> Result<Self> {
        check_programs(&std::env::var_os("PATH").unwrap_or_default())?;
        for binary in [&options.binaries.cniguard, &options.binaries.workload] {
            ensure!(binary.is_file(), "{} is missing: build the workspace first", binary.display());
        }
        match Self::open(&options.state_dir) {
            Ok(lab) if lab.intact() => {
                println!("lab: already up ({}), nothing to do", lab.state.topology.prefix);
                return Ok(lab);
            }
            // A lab that broke halfway (a failed step, a killed process) starts over.
            Ok(mut broken) => broken.teardown(),
            Err(_) => {}
        }
        remove_namespaces(&options.topology.prefix);
        std::fs::create_dir_all(options.state_dir.join("stats"))?;
        let nodes = options.topology.nodes.len();
        let mut lab = Self {
            state: LabState {
                topology: options.topology,
                binaries: options.binaries,
                state_dir: options.state_dir,
                cniguard_args: options.cniguard_args,
                cniguard_config: options.cniguard_config,
                flannel: vec![false; nodes],
                calico: vec![false; nodes],
                pods: BTreeMap::new(),
                processes: Processes::default(),
                faults: Vec::new(),
                paused: false,
                events: Vec::new(),
            },
            owned: true,
        };
        // On failure, `lab` drops here and tears down what was built.
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let topology = self.state.topology.clone();
        println!("lab: building {} nodes in namespaces {}-*", topology.nodes.len(), topology.prefix);
        dataplane::build_underlay(&topology)?;
        let all: Vec<usize> = (0..topology.nodes.len()).collect();
        for &node in &all {
            dataplane::enable_flannel(&topology, node, &all)?;
            self.state.flannel[node] = true;
        }
        for pod in &topology.pods {
            dataplane::create_pod(&topology, pod, Cni::Flannel)?;
            self.state.pods.insert(pod.name.clone(), vec![Cni::Flannel]);
        }
        self.reconcile_workloads()?;
        for node in &all {
            self.start_cniguard(*node)?;
        }
        self.start_alerting()?;
        self.start_prometheus()?;
        self.wait_until_observed()?;
        self.record("up (flannel)");
        self.save()
    }

    /// Opens the lab saved in `state_dir` (for a command after `lab up`). Dropping it
    /// leaves the lab running.
    ///
    /// # Errors
    /// If there is no saved lab, or its state cannot be read.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no lab is up ({} is missing)", path.display()))?;
        let state =
            serde_json::from_str(&text).with_context(|| format!("{} is not a lab state", path.display()))?;
        Ok(Self { state, owned: false })
    }

    /// Leaves the lab running after this handle drops (`cargo xtask lab up`).
    ///
    /// # Errors
    /// If the state cannot be saved.
    pub fn keep_running(mut self) -> Result<()> {
        self.save()?;
        self.owned = false;
        Ok(())
    }

    fn intact(&self) -> bool {
        let topology = &self.state.topology;
        NetNs::exists(&topology.router_netns())
            && (0..topology.nodes.len()).all(|n| NetNs::exists(&topology.node_netns(n)))
            && self
                .state
                .processes
                .keys()
                .all(|key| self.state.processes.is_running(key) || self.paused_or_stopped(key))
    }

    /// Processes a fault stopped on purpose are not a sign of a broken lab.
    fn paused_or_stopped(&self, key: &str) -> bool {
        self.state.faults.iter().any(|fault| match fault {
            Fault::StopBird { node } => key == format!("bird/{node}"),
            Fault::StopDns => key.ends_with("/dns"),
            _ => false,
        })
    }

    fn save(&self) -> Result<()> {
        let path = self.state.state_dir.join(STATE_FILE);
        let temporary = path.with_extension("json.new");
        std::fs::write(&temporary, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&temporary, &path)?;
        Ok(())
    }

    /// Adds a moment to the timeline (e.g. what cniguard concluded), and saves it.
    ///
    /// # Errors
    /// If the state cannot be saved.
    pub fn note(&mut self, step: &str) -> Result<()> {
        self.record(step);
        self.save()
    }

    fn record(&mut self, step: &str) {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        self.state.events.push(Event { step: step.to_owned(), at });
    }

    // --- The story ---

    /// Cuts `node` (or every node still on Flannel, in order) over to Calico, as the
    /// runbook's playbook does: Calico's dataplane and BGP come up, the node's pods are
    /// re-created with addresses from 10.244.0.0/16 on cali* veths, then Flannel goes.
    ///
    /// # Errors
    /// An unknown node, or the step that failed.
    pub fn cutover(&mut self, node: Option<&str>) -> Result<()> {
        for node in self.selected_nodes(node)? {
            if self.state.calico[node] && !self.state.flannel[node] {
                println!("lab: {} is already on Calico", self.state.topology.nodes[node].name);
                continue;
            }
            self.cutover_node(node)?;
        }
        Ok(())
    }

    /// The first step of a cutover on `node` alone: Calico's dataplane and BGP come up next
    /// to Flannel's, the pods stay where they are. The node is then `mixed` until
    /// [`Self::cutover`] finishes it (or [`Self::rollback`] takes it back).
    ///
    /// # Errors
    /// An unknown node, or the step that failed.
    pub fn calico_up(&mut self, node: &str) -> Result<()> {
        for node in self.selected_nodes(Some(node))? {
            let name = self.state.topology.nodes[node].name.clone();
            println!("lab: {name}: Calico up next to Flannel");
            self.state.calico[node] = true;
            self.sync_calico()?;
            self.record(&format!("calico up {name}"));
            self.save()?;
        }
        Ok(())
    }

    fn cutover_node(&mut self, node: usize) -> Result<()> {
        let topology = self.state.topology.clone();
        let name = topology.nodes[node].name.clone();
        println!("lab: cutover {name}: Calico up, pods re-created on cali*, Flannel down");
        self.state.calico[node] = true;
        self.sync_calico()?;
        self.recreate_pods(node, Cni::Flannel, Cni::Calico)?;
        dataplane::disable_flannel(&topology, node);
        self.state.flannel[node] = false;
        for other in self.nodes_with(Cni::Flannel) {
            dataplane::forget_flannel_peer(&topology, other, node);
        }
        self.record(&format!("cutover {name}"));
        self.save()
    }

    /// Takes `node` (or every node on Calico, the last cut over first) back to Flannel,
    /// as the runbook's rollback plan does.
    ///
    /// # Errors
    /// An unknown node, or the step that failed.
    pub fn rollback(&mut self, node: Option<&str>) -> Result<()> {
        let mut nodes = self.selected_nodes(node)?;
        nodes.reverse();
        for node in nodes {
            if self.state.flannel[node] && !self.state.calico[node] {
                println!("lab: {} is already on Flannel", self.state.topology.nodes[node].name);
                continue;
            }
            self.rollback_node(node)?;
        }
        Ok(())
    }

    fn rollback_node(&mut self, node: usize) -> Result<()> {
        let topology = self.state.topology.clone();
        let name = topology.nodes[node].name.clone();
        println!("lab: rollback {name}: Flannel up, pods re-created on veth*, Calico down");
        self.state.flannel[node] = true;
        let flannel_nodes = self.nodes_with(Cni::Flannel);
        for &other in &flannel_nodes {
            dataplane::enable_flannel(&topology, other, &flannel_nodes)?;
        }
        self.recreate_pods(node, Cni::Calico, Cni::Flannel)?;
        self.state.calico[node] = false;
        self.state.processes.stop(&format!("bird/{name}"));
        dataplane::disable_calico(&topology, node);
        for other in self.nodes_with(Cni::Calico) {
            dataplane::forget_calico_peer(&topology, other, node);
        }
        self.sync_calico()?;
        self.record(&format!("rollback {name}"));
        self.save()
    }

    /// Re-creates the pods of `node` under `to`, then deletes their `from` generation.
    fn recreate_pods(&mut self, node: usize, from: Cni, to: Cni) -> Result<()> {
        let topology = self.state.topology.clone();
        for pod in topology.pods.iter().filter(|p| p.node == node) {
            dataplane::create_pod(&topology, pod, to)?;
            let generations = self.state.pods.entry(pod.name.clone()).or_default();
            generations.retain(|g| *g != to);
            generations.push(to);
        }
        self.reconcile_workloads()?;
        for pod in topology.pods.iter().filter(|p| p.node == node) {
            self.state.pods.entry(pod.name.clone()).or_default().retain(|g| *g != from);
        }
        // Stops the old generation's processes before its namespace goes.
        self.reconcile_workloads()?;
        for pod in topology.pods.iter().filter(|p| p.node == node) {
            dataplane::delete_pod(&topology, pod, from);
        }
        Ok(())
    }

    /// Calico's dataplane and BIRD on every Calico node, meshed with every other one.
    fn sync_calico(&mut self) -> Result<()> {
        let topology = self.state.topology.clone();
        let calico_nodes = self.nodes_with(Cni::Calico);
        for &node in &calico_nodes {
            dataplane::enable_calico(&topology, node, &calico_nodes)?;
            let name = &topology.nodes[node].name;
            let config = self.state.state_dir.join(format!("bird-{name}.conf"));
            std::fs::write(&config, services::bird_config(&topology, node, &calico_nodes))?;
            let key = format!("bird/{name}");
            if self.state.faults.contains(&Fault::StopBird { node: name.clone() }) {
                continue;
            }
            let socket = self.bird_socket(node);
            if self.state.processes.is_running(&key) {
                run(std::process::Command::new("birdc").args(["-s", &socket, "configure"]))
                    .with_context(|| format!("reloading BIRD on {name}"))?;
            } else {
                self.start_bird(node)?;
            }
        }
        Ok(())
    }

    fn bird_socket(&self, node: usize) -> String {
        self.state
            .state_dir
            .join(format!("bird-{}.ctl", self.state.topology.nodes[node].name))
            .display()
            .to_string()
    }

    fn start_bird(&mut self, node: usize) -> Result<()> {
        let name = self.state.topology.nodes[node].name.clone();
        let config = self.state.state_dir.join(format!("bird-{name}.conf")).display().to_string();
        let args = vec!["-f".into(), "-c".into(), config, "-s".into(), self.bird_socket(node)];
        let log = self.log_file(&format!("bird-{name}"));
        let netns = NetNs::existing(&self.state.topology.node_netns(node));
        self.state.processes.start(&format!("bird/{name}"), &netns, Path::new("bird"), &args, log)?;
        Ok(())
    }

    fn nodes_with(&self, cni: Cni) -> Vec<usize> {
        let present = match cni {
            Cni::Flannel => &self.state.flannel,
            Cni::Calico => &self.state.calico,
        };
        present.iter().enumerate().filter(|(_, on)| **on).map(|(node, _)| node).collect()
    }

    fn selected_nodes(&self, node: Option<&str>) -> Result<Vec<usize>> {
        match node {
            None => Ok((0..self.state.topology.nodes.len()).collect()),
            Some(name) => {
                let index = self.state.topology.node(name).with_context(|| {
                    let names: Vec<&str> =
                        self.state.topology.nodes.iter().map(|n| n.name.as_str()).collect();
                    format!("no node {name:?} in the lab (nodes: {})", names.join(", "))
                })?;
                Ok(vec![index])
            }
        }
    }

    // --- Workloads ---

    /// Starts what every live pod generation should run, with peers at their current
    /// addresses, and stops what no longer should.
    fn reconcile_workloads(&mut self) -> Result<()> {
        let planned = self.planned_workloads();
        let stale: Vec<String> = self
            .state
            .processes
            .keys()
            .filter(|key| key.starts_with(WORKLOAD_KEY_PREFIX) && !planned.iter().any(|p| p.key == *key))
            .map(str::to_owned)
            .collect();
        for key in stale {
            self.state.processes.stop(&key);
        }
        self.write_check_targets()?;
        let hosts = self.dns_hosts();
        let hosts_file = self.context().dns_hosts_file();
        let hosts_changed = std::fs::read_to_string(&hosts_file).ok().as_deref() != Some(hosts.as_str());
        if hosts_changed {
            std::fs::write(&hosts_file, &hosts)?;
        }
        // Servers first, each serving before anything that talks to it starts: a client's
        // first request must not meet a port that is not open yet.
        let (servers, generators): (Vec<Planned>, Vec<Planned>) =
            planned.into_iter().partition(|p| !p.generator);
        for plan in servers.iter().chain(&generators) {
            if self.state.faults.contains(&Fault::StopDns) && plan.key.ends_with("/dns") {
                continue;
            }
            let log = self.log_file(&plan.key.replace('/', "_"));
            let netns = NetNs::existing(&plan.netns);
            if self.state.processes.is_current(&plan.key, &netns, &plan.program, &plan.args) {
                if plan.key.ends_with("/dns") && hosts_changed {
                    // dnsmasq re-reads its hosts file on SIGHUP.
                    self.state.processes.signal(&plan.key, Signal::SIGHUP);
                }
                continue;
            }
            let _ = std::fs::remove_file(&plan.ready_file);
            self.state.processes.start(&plan.key, &netns, &plan.program, &plan.args, log)?;
            if plan.generator {
                if self.state.paused {
                    self.state.processes.signal(&plan.key, Signal::SIGSTOP);
                }
            } else {
                self.wait_serving(plan)?;
            }
        }
        Ok(())
    }

    /// Each node's check targets (`targets-<node>.toml`, read by its cniguard every round):
    /// the echo pods of the other nodes, the MLServer and the cluster DNS, where they run
    /// now. Replaced whole, never half-written.
    fn write_check_targets(&self) -> Result<()> {
        let topology = &self.state.topology;
        let address_of = |name: &str| self.pod_address(name);
        let dns = topology.pods.iter().find(|p| p.workloads.contains(&Workload::Dns));
        for (index, node) in topology.nodes.iter().enumerate() {
            let mut text =
                format!("# Written by the cniguard lab for {}; rewritten as pods move.\n", node.name);
            for pod in
                topology.pods.iter().filter(|p| p.node != index && p.workloads.contains(&Workload::Echo))
            {
                let Some(address) = address_of(&pod.name) else { continue };
                // Named after the peer node, as with the echo DaemonSet (one pod per node):
                // the Prometheus rules read `target` as the other end of a node pair.
                let _ = write!(
                    text,
                    "\n[[targets]]\ncheck = \"pod_to_pod\"\nname = \"{}\"\naddress = \"{address}:{ECHO_PORT}\"\n",
                    topology.nodes[pod.node].name
                );
            }
            if let Some(address) = topology
                .pods
                .iter()
                .find(|p| p.workloads.contains(&Workload::MlServer))
                .and_then(|p| address_of(&p.name))
            {
                let _ = write!(
                    text,
                    "\n[[targets]]\ncheck = \"service\"\nname = \"mlserver\"\naddress = \"{address}:8080\"\nhttp_path = \"/v2/health/ready\"\n"
                );
            }
            if let Some(dns) = dns.and_then(|p| Some((p, address_of(&p.name)?))) {
                let (pod, address) = dns;
                let name = topology
                    .pods
                    .iter()
                    .find(|p| p.workloads.contains(&Workload::Echo))
                    .map_or_else(|| pod.service_name(), Pod::service_name);
                let _ = write!(
                    text,
                    "\n[[targets]]\ncheck = \"service\"\nname = \"cluster-dns\"\naddress = \"{address}:{DNS_PORT}\"\n\n[[targets]]\ncheck = \"dns\"\nname = \"cluster-dns-lookup\"\nquery = \"{name}\"\naddress = \"{address}:{DNS_PORT}\"\n"
                );
            }
            let path = self.state.state_dir.join(format!("targets-{}.toml", node.name));
            let partial = path.with_extension("toml.tmp");
            std::fs::write(&partial, text)?;
            std::fs::rename(&partial, &path)?;
        }
        Ok(())
    }

    fn wait_serving(&self, plan: &Planned) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while !plan.ready_file.exists() {
            ensure!(
                self.state.processes.is_running(&plan.key),
                "{} exited:\n{}",
                plan.key,
                self.log_tail(&plan.key)
            );
            ensure!(
                Instant::now() < deadline,
                "{} not serving within {PATIENCE:?}:\n{}",
                plan.key,
                self.log_tail(&plan.key)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn planned_workloads(&self) -> Vec<Planned> {
        let context = self.context();
        let mut planned = Vec::new();
        for pod in &self.state.topology.pods {
            for &cni in self.state.pods.get(&pod.name).into_iter().flatten() {
                let generation = cni_name(cni);
                let netns = self.state.topology.pod_netns(pod, cni);
                let address = self.state.topology.nodes[pod.node].pod_address(cni, pod.host);
                planned.extend(context.plan(pod, generation, &netns, address));
            }
        }
        planned
    }

    fn context(&self) -> Context<'_> {
        Context {
            topology: &self.state.topology,
            binaries: &self.state.binaries,
            state_dir: &self.state.state_dir,
            addresses: self
                .state
                .topology
                .pods
                .iter()
                .filter_map(|pod| Some((pod.name.clone(), self.pod_address(&pod.name)?)))
                .collect(),
            mlserver_delay_ms: self
                .state
                .faults
                .iter()
                .find_map(|fault| match fault {
                    Fault::SlowMlserver { ms } => Some(*ms),
                    _ => None,
                })
                .unwrap_or(0),
        }
    }

    fn dns_hosts(&self) -> String {
        let entries: Vec<(Ipv4Addr, String)> = self
            .state
            .topology
            .pods
            .iter()
            .filter_map(|pod| Some((self.pod_address(&pod.name)?, pod.service_name())))
            .collect();
        services::dns_hosts(&entries)
    }

    /// Stops every traffic generator (SIGSTOP), so that a test's own packets are the only
    /// ones on the lab's devices; [`Self::resume_traffic`] lets them go on.
    ///
    /// # Errors
    /// If the state cannot be saved.
    pub fn pause_traffic(&mut self) -> Result<()> {
        self.state.paused = true;
        self.signal_generators(Signal::SIGSTOP);
        // A stopped process may still have a datagram in flight: let it land.
        std::thread::sleep(Duration::from_millis(300));
        self.save()
    }

    /// # Errors
    /// If the state cannot be saved.
    pub fn resume_traffic(&mut self) -> Result<()> {
        self.state.paused = false;
        self.signal_generators(Signal::SIGCONT);
        self.save()
    }

    fn signal_generators(&self, signal: Signal) {
        for plan in self.planned_workloads().iter().filter(|p| p.generator) {
            self.state.processes.signal(&plan.key, signal);
        }
    }

    // --- Observers ---

    /// Stops node `node`'s cniguard (with SIGKILL if `kill`: no chance to clean up or save,
    /// like a crash or an OOM kill) and starts it again; returns once it is ready.
    ///
    /// # Errors
    /// If it does not come back.
    pub fn restart_cniguard(&mut self, node: usize, kill: bool) -> Result<()> {
        let key = format!("cniguard/{}", self.state.topology.nodes[node].name);
        if kill {
            self.state.processes.signal(&key, Signal::SIGKILL);
        }
        self.state.processes.stop(&key);
        self.start_cniguard(node)?;
        self.save()?;
        self.wait_until_observed()
    }

    fn start_cniguard(&mut self, node: usize) -> Result<()> {
        let spec = &self.state.topology.nodes[node];
        let key = format!("cniguard/{}", spec.name);
        // One file per node, written whole before it is renamed into place: a daemon
        // starting while another node's file is rewritten must never read half of it (an
        // empty file is a valid configuration: every default, silently).
        let config = self.state.state_dir.join(format!("cniguard-{}.toml", spec.name));
        let partial = config.with_extension("toml.tmp");
        let text = self
            .state
            .cniguard_config
            .replace("{state_dir}", &self.state.state_dir.display().to_string())
            .replace("{node}", &spec.name);
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, &config)?;
        // NODE_NAME, as the DaemonSet sets it from the pod's spec.nodeName: the node's name in
        // `cniguard status` and its state files (one kernel, one host name, three nodes).
        let mut args = vec![
            format!("NODE_NAME={}", spec.name),
            self.state.binaries.cniguard.display().to_string(),
            "run".to_owned(),
            "--listen".into(),
            format!("{}:{CNIGUARD_PORT}", spec.address),
            "--config".into(),
            config.display().to_string(),
            "--state-dir".into(),
            self.state.state_dir.join(format!("cniguard-{}", spec.name)).display().to_string(),
        ];
        args.extend(self.state.cniguard_args.iter().cloned());
        let log = self.log_file(&format!("cniguard-{}", spec.name));
        let netns = NetNs::existing(&self.state.topology.node_netns(node));
        self.state.processes.start(&key, &netns, Path::new("/usr/bin/env"), &args, log)?;
        Ok(())
    }

    fn start_prometheus(&mut self) -> Result<()> {
        let config = self.state.state_dir.join("prometheus.yml");
        let rules = self.state.state_dir.join("cniguard.rules.yaml");
        std::fs::write(&rules, services::SHIPPED_RULES)?;
        let alertmanager = SocketAddr::from((self.state.topology.monitor_address, ALERTMANAGER_PORT));
        std::fs::write(
            &config,
            services::prometheus_config(&self.state.topology, &rules.display().to_string(), alertmanager),
        )?;
        let data = self.state.state_dir.join("prometheus-data");
        std::fs::create_dir_all(&data)?;
        let args = services::prometheus_args(
            &self.state.topology,
            &config.display().to_string(),
            &data.display().to_string(),
        );
        let log = self.log_file("prometheus");
        let netns = NetNs::existing(&self.state.topology.monitor_netns());
        self.state.processes.start("prometheus", &netns, Path::new("prometheus"), &args, log)?;
        Ok(())
    }

    /// Alertmanager and `cniguard rollback-hook` in the monitoring namespace: the rollback
    /// alert goes to the hook, which (armed) runs a stand-in for the runbook's rollback
    /// playbook that appends a line to `rollback-runs`.
    fn start_alerting(&mut self) -> Result<()> {
        let dir = &self.state.state_dir;
        let token = dir.join("hook-token");
        std::fs::write(&token, format!("{HOOK_TOKEN}\n"))?;
        let config = dir.join("alertmanager.yml");
        std::fs::write(&config, services::alertmanager_config(HOOK_ADDRESS, &token.display().to_string()))?;
        std::fs::create_dir_all(dir.join("alertmanager-data"))?;
        let netns = NetNs::existing(&self.state.topology.monitor_netns());
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.join("alertmanager-data").display()),
            format!("--web.listen-address={}:{ALERTMANAGER_PORT}", self.state.topology.monitor_address),
            "--cluster.listen-address=".into(),
            "--log.level=warn".into(),
        ];
        let log = self.log_file("alertmanager");
        self.state.processes.start(
            "alertmanager",
            &netns,
            Path::new("prometheus-alertmanager"),
            &args,
            log,
        )?;
        let runs = self.rollback_runs_file().display().to_string();
        let args = vec![
            "rollback-hook".into(),
            "--listen".into(),
            HOOK_ADDRESS.to_string(),
            "--token-file".into(),
            token.display().to_string(),
            // Longer than the lab's node-by-node cutover disrupts cross-node traffic (the
            // triggers fire then, with their `for` of seconds): the hook rides that out,
            // as production's 5 minutes ride out a real cutover's blips.
            "--firing-for-seconds".into(),
            LAB_HOOK_FIRING_FOR_SECONDS.to_string(),
            "--arm".into(),
            "--state-dir".into(),
            dir.join("rollback-hook").display().to_string(),
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            format!("echo \"stand-in rollback playbook ran at $(date +%s)\" >> {runs}"),
        ];
        let log = self.log_file("rollback-hook");
        let program = self.state.binaries.cniguard.clone();
        self.state.processes.start("rollback-hook", &netns, &program, &args, log)?;
        Ok(())
    }

    fn rollback_runs_file(&self) -> PathBuf {
        self.state.state_dir.join("rollback-runs")
    }

    /// How many times the rollback hook ran the (stand-in) rollback.
    #[must_use]
    pub fn rollback_runs(&self) -> usize {
        std::fs::read_to_string(self.rollback_runs_file()).map_or(0, |text| text.lines().count())
    }

    /// The namespace the rollback hook listens in, at [`HOOK_ADDRESS`].
    #[must_use]
    pub fn rollback_hook_netns(&self) -> NetNs {
        NetNs::existing(&self.state.topology.monitor_netns())
    }

    /// The last lines of the rollback hook's log (it logs every decision).
    #[must_use]
    pub fn rollback_hook_log(&self) -> String {
        self.log_tail("rollback-hook")
    }

    /// Waits until every cniguard is ready and Prometheus scrapes all of them.
    fn wait_until_observed(&self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        for node in 0..self.state.topology.nodes.len() {
            let endpoint = self.cniguard(node);
            while !endpoint.ready() {
                let key = format!("cniguard/{}", self.state.topology.nodes[node].name);
                ensure!(self.state.processes.is_running(&key), "{key} exited:\n{}", self.log_tail(&key));
                ensure!(
                    Instant::now() < deadline,
                    "{key} not ready within {PATIENCE:?}:\n{}",
                    self.log_tail(&key)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let prometheus = self.prometheus();
        let deadline = Instant::now() + Duration::from_mins(1);
        while !prometheus.all_targets_up(self.state.topology.nodes.len()) {
            ensure!(
                self.state.processes.is_running("prometheus"),
                "Prometheus exited:\n{}",
                self.log_tail("prometheus")
            );
            ensure!(
                Instant::now() < deadline,
                "Prometheus does not scrape every node:\n{}",
                self.log_tail("prometheus")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.state.state_dir.join(format!("{name}.log"))
    }

    /// The last lines of node `node`'s cniguard log, for a test's failure message.
    #[must_use]
    pub fn cniguard_log(&self, node: usize) -> String {
        self.log_tail(&format!("cniguard/{}", self.state.topology.nodes[node].name))
    }

    fn log_tail(&self, key: &str) -> String {
        let log = self.state.processes.record(key).map(|r| r.log.clone()).unwrap_or_default();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    // --- Faults ---

    /// Introduces `fault` (again is a no-op).
    ///
    /// # Errors
    /// If its target does not exist or the change fails.
    pub fn inject(&mut self, fault: &Fault) -> Result<()> {
        if self.state.faults.contains(fault) {
            println!("lab: already injected: {fault}");
            return Ok(());
        }
        println!("lab: inject: {fault}");
        match fault {
            Fault::BlockVxlan { node } => {
                let netns = self.state.topology.node_netns(self.selected_nodes(Some(node))?[0]);
                nft(
                    &netns,
                    &format!(
                        "table inet {FAULT_TABLE} {{\n chain output {{ type filter hook output priority 0; udp dport {{ 8472, 4789 }} drop; }}\n chain input {{ type filter hook input priority 0; udp dport {{ 8472, 4789 }} drop; }}\n}}\n"
                    ),
                )?;
            }
            Fault::StopBird { node } => {
                self.selected_nodes(Some(node))?;
                self.state.processes.stop(&format!("bird/{node}"));
            }
            Fault::BlockMlserver => {
                let netns = self.pod_netns_name("mlserver-0")?;
                nft(
                    &netns,
                    &format!(
                        "table inet {FAULT_TABLE} {{\n chain input {{ type filter hook input priority 0; iif \"lo\" tcp dport {MLSERVER_PORT} drop; }}\n}}\n"
                    ),
                )?;
            }
            Fault::StopDns => {
                for key in self.dns_keys() {
                    self.state.processes.stop(&key);
                }
            }
            Fault::SlowMlserver { .. } => {}
            Fault::VethLoss { pod, percent } => {
                ensure!((1..=100).contains(percent), "a loss of {percent}% makes no sense: give 1 to 100");
                let (node_ns, veth) = self.host_side(pod)?;
                nft(node_ns.name(), &loss_ruleset(self.pod_cni(pod), &veth, *percent))?;
            }
        }
        self.state.faults.push(fault.clone());
        if matches!(fault, Fault::SlowMlserver { .. }) {
            // The MLServer restarts with its answers delayed.
            self.reconcile_workloads()?;
        }
        self.record(&format!("inject: {fault}"));
        self.save()
    }

    /// Takes `fault` back (a fault not in place is a no-op).
    ///
    /// # Errors
    /// If the change fails.
    pub fn repair(&mut self, fault: &Fault) -> Result<()> {
        if !self.state.faults.contains(fault) {
            println!("lab: not injected: {fault}");
            return Ok(());
        }
        println!("lab: repair: {fault}");
        self.state.faults.retain(|f| f != fault);
        match fault {
            Fault::BlockVxlan { node } => {
                let netns = self.state.topology.node_netns(self.selected_nodes(Some(node))?[0]);
                delete_nft_table(&netns, "inet", FAULT_TABLE);
            }
            Fault::StopBird { .. } => self.sync_calico()?,
            Fault::BlockMlserver => {
                let netns = self.pod_netns_name("mlserver-0")?;
                delete_nft_table(&netns, "inet", FAULT_TABLE);
            }
            // The DNS server starts again; the MLServer restarts without the delay.
            Fault::StopDns | Fault::SlowMlserver { .. } => self.reconcile_workloads()?,
            Fault::VethLoss { pod, .. } => {
                let (node_ns, _) = self.host_side(pod)?;
                delete_nft_table(node_ns.name(), loss_family(self.pod_cni(pod)), LOSS_TABLE);
            }
        }
        self.record(&format!("repair: {fault}"));
        self.save()
    }

    fn dns_keys(&self) -> Vec<String> {
        self.planned_workloads().into_iter().filter(|p| p.key.ends_with("/dns")).map(|p| p.key).collect()
    }

    // --- What tests and the timeline read ---

    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.state.topology
    }

    #[must_use]
    pub fn events(&self) -> &[Event] {
        &self.state.events
    }

    #[must_use]
    pub fn faults(&self) -> &[Fault] {
        &self.state.faults
    }

    /// The node's CNI, from which dataplanes are present.
    #[must_use]
    pub fn phase(&self, node: usize) -> NodePhase {
        match (self.state.flannel[node], self.state.calico[node]) {
            (true, false) => NodePhase::Flannel,
            (false, true) => NodePhase::Calico,
            _ => NodePhase::Mixed,
        }
    }

    /// The node's namespace (a handle that leaves it in place).
    #[must_use]
    pub fn node_netns(&self, node: usize) -> NetNs {
        NetNs::existing(&self.state.topology.node_netns(node))
    }

    /// The current generation of a pod, if it runs.
    #[must_use]
    pub fn pod_cni(&self, pod: &str) -> Option<Cni> {
        self.state.pods.get(pod).and_then(|generations| generations.last().copied())
    }

    /// The pod's current address.
    #[must_use]
    pub fn pod_address(&self, pod: &str) -> Option<Ipv4Addr> {
        let spec = self.state.topology.pod(pod)?;
        Some(self.state.topology.nodes[spec.node].pod_address(self.pod_cni(pod)?, spec.host))
    }

    /// The name of the pod's current namespace.
    ///
    /// # Errors
    /// If the pod does not run.
    pub fn pod_netns_name(&self, pod: &str) -> Result<String> {
        let spec = self.state.topology.pod(pod).with_context(|| format!("no pod {pod:?} in the lab"))?;
        let cni = self.pod_cni(pod).with_context(|| format!("pod {pod} does not run"))?;
        Ok(self.state.topology.pod_netns(spec, cni))
    }

    /// The pod's node namespace and the host side of its veth.
    ///
    /// # Errors
    /// If the pod does not run.
    pub fn host_side(&self, pod: &str) -> Result<(NetNs, String)> {
        let spec = self.state.topology.pod(pod).with_context(|| format!("no pod {pod:?} in the lab"))?;
        let cni = self.pod_cni(pod).with_context(|| format!("pod {pod} does not run"))?;
        Ok((self.node_netns(spec.node), self.state.topology.host_veth(spec, cni)))
    }

    /// The cniguard of `node`.
    #[must_use]
    pub fn cniguard(&self, node: usize) -> Endpoint {
        let address = SocketAddr::from((self.state.topology.nodes[node].address, CNIGUARD_PORT));
        Endpoint { netns: self.node_netns(node), address }
    }

    #[must_use]
    pub fn prometheus(&self) -> Prometheus {
        let address = SocketAddr::from((self.state.topology.monitor_address, PROMETHEUS_PORT));
        Prometheus { netns: NetNs::existing(&self.state.topology.monitor_netns()), address }
    }

    /// BIRD's protocol table on `node` (`birdc show protocols`), e.g. to see BGP sessions
    /// `Established`.
    ///
    /// # Errors
    /// If BIRD does not run on the node.
    pub fn bird_protocols(&self, node: usize) -> Result<String> {
        run(std::process::Command::new("birdc").args(["-s", &self.bird_socket(node), "show", "protocols"]))
    }

    /// The latest stats a workload wrote (see `cniguard-workload`), by pod and workload.
    ///
    /// # Errors
    /// If the pod does not run that workload or its stats cannot be read.
    pub fn workload_stats(&self, pod: &str, workload: &Workload) -> Result<serde_json::Value> {
        let cni = self.pod_cni(pod).with_context(|| format!("pod {pod} does not run"))?;
        let path = self.context().stats_file(&workload_key(pod, cni_name(cni), workload));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// A readable summary: nodes, phases, pods and processes.
    #[must_use]
    pub fn status(&self) -> String {
        let topology = &self.state.topology;
        let mut text = format!("lab {} (state in {})\n", topology.prefix, self.state.state_dir.display());
        for (index, node) in topology.nodes.iter().enumerate() {
            let _ = writeln!(text, "  {} {} ({:?})", node.name, node.address, self.phase(index));
            for pod in topology.pods.iter().filter(|p| p.node == index) {
                let address = self.pod_address(&pod.name).map_or_else(|| "-".into(), |a| a.to_string());
                let _ = writeln!(text, "    pod {}/{} {address}", pod.namespace, pod.name);
            }
        }
        for key in self.state.processes.keys() {
            let state = if self.state.processes.is_running(key) { "running" } else { "STOPPED" };
            let _ = writeln!(text, "  process {key}: {state}");
        }
        for fault in &self.state.faults {
            let _ = writeln!(text, "  fault: {fault}");
        }
        if self.state.paused {
            text.push_str("  traffic generators paused\n");
        }
        let _ = writeln!(
            text,
            "  rollback hook: the stand-in rollback ran {} time(s) ({})",
            self.rollback_runs(),
            self.rollback_runs_file().display()
        );
        text
    }

    /// Stops everything and removes every namespace and file of this lab.
    pub fn down(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        self.owned = false;
        self.state.processes.stop_all();
        remove_namespaces(&self.state.topology.prefix);
        let _ = std::fs::remove_dir_all(&self.state.state_dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            if std::thread::panicking() {
                eprintln!("--- lab status at failure ---\n{}", self.status());
            }
            self.teardown();
        }
    }
}

fn cni_name(cni: Cni) -> &'static str {
    match cni {
        Cni::Flannel => "flannel",
        Cni::Calico => "calico",
    }
}

/// The nftables family that sees packets leave through a pod's veth: Flannel bridges them
/// from cni0 (bridge family), Calico routes them (inet).
fn loss_family(cni: Option<Cni>) -> &'static str {
    if cni == Some(Cni::Flannel) { "bridge" } else { "inet" }
}

/// Drops `percent`% of the packets sent through `veth`, chosen at random per packet.
fn loss_ruleset(cni: Option<Cni>, veth: &str, percent: u32) -> String {
    let family = loss_family(cni);
    // Bridged frames from cni0 itself pass the bridge's output hook, forwarded ones its
    // forward hook; routed ones the inet forward hook.
    let hooks: &[&str] = if family == "bridge" { &["forward", "output"] } else { &["forward"] };
    // nftables compares `numgen random mod 100` with 0-99 only: all means no draw at all.
    let draw = if percent >= 100 { String::new() } else { format!("numgen random mod 100 < {percent} ") };
    let mut ruleset = format!("table {family} {LOSS_TABLE} {{\n");
    for hook in hooks {
        let _ = writeln!(
            ruleset,
            " chain {hook} {{ type filter hook {hook} priority 0; oifname \"{veth}\" {draw}drop; }}"
        );
    }
    ruleset.push_str("}\n");
    ruleset
}

/// Loads an nftables ruleset inside `netns`.
/// The nftables tables the lab's faults add: one per namespace, removed whole on repair.
const FAULT_TABLE: &str = "cniguard_lab_fault";
const LOSS_TABLE: &str = "cniguard_lab_loss";

/// Removes a fault's table; one already gone (a repeated repair) is fine.
fn delete_nft_table(netns: &str, family: &str, table: &str) {
    let _ = run(std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "delete", "table", family, table]));
}

fn nft(netns: &str, ruleset: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("nft stdin")?.write_all(ruleset.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("nft in {netns}: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
