//! The lab's steps, as the runbook takes them: up on Flannel, cutover node by node to
//! Calico (with BIRD's BGP mesh), rollback, down.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};

use super::{Fault, Lab, LabOptions, LabState, check_programs};
use crate::dataplane;
use crate::netns::{NetNs, remove_namespaces, run};
use crate::process::Processes;
use crate::services;
use crate::topology::{Cni, Workload};

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
        if options.topology.pods.iter().any(|pod| pod.workloads.contains(&Workload::MlServer)) {
            crate::mlserver::ensure_installed(&options.binaries.mlserver)?;
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
                cniguard_launcher: options.cniguard_launcher,
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
        // The traffic starts once every cniguard watches, as it does on a cluster where
        // cniguard was deployed before the workloads: the agent keeps its one gRPC
        // connection for its life, and a connection whose HTTP/2 preface went by before
        // cniguard attached is only followed turn by turn (`protocol="other"`), not per call.
        self.start_servers()?;
        for node in &all {
            self.start_cniguard(*node)?;
        }
        self.start_alerting()?;
        self.start_prometheus()?;
        self.wait_until_observed()?;
        self.reconcile_workloads()?;
        self.record("up (flannel)");
        self.save()
    }

    fn intact(&self) -> bool {
        let topology = &self.state.topology;
        NetNs::exists(&topology.router_netns())
            && (0..topology.nodes.len()).all(|n| NetNs::exists(&topology.node_netns(n)))
            && self
                .state
                .processes
                .keys()
                .all(|key| self.state.processes.is_running(key) || self.stopped_by_fault(key))
    }

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
    pub(super) fn sync_calico(&mut self) -> Result<()> {
        let topology = self.state.topology.clone();
        let calico_nodes = self.nodes_with(Cni::Calico);
        for &node in &calico_nodes {
            dataplane::enable_calico(&topology, node, &calico_nodes)?;
            let name = &topology.nodes[node].name;
            let config = self.state.state_dir.join(format!("bird-{name}.conf"));
            std::fs::write(
                &config,
                services::bird_config(&topology, node, &calico_nodes, &self.bird_faults(node)),
            )?;
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

    /// What the lab's faults change in `node`'s BIRD configuration.
    fn bird_faults(&self, node: usize) -> services::BirdFaults {
        let topology = &self.state.topology;
        let mut faults = services::BirdFaults::default();
        for fault in &self.state.faults {
            match fault {
                Fault::BgpWrongAs { node: on, peer } if topology.node(on) == Some(node) => {
                    faults.wrong_as.extend(topology.node(peer));
                }
                Fault::WrongRouterId { node: on } if topology.node(on) == Some(node) => {
                    faults.router_id = Some(super::faults::WRONG_ROUTER_ID);
                }
                _ => {}
            }
        }
        faults
    }

    pub(super) fn bird_socket(&self, node: usize) -> String {
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

    pub(super) fn selected_nodes(&self, node: Option<&str>) -> Result<Vec<usize>> {
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

    /// Stops everything and removes every namespace and file of this lab.
    pub fn down(mut self) {
        self.teardown();
    }
}
