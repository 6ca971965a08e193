//! What tests, the demo and `cargo xtask lab status` read from a running lab: its nodes'
//! phases, where each pod is, the endpoints to scrape, the workloads' stats.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{Event, Fault, Lab, cni_name};
use crate::cniguard::Endpoint;
use crate::netns::{NetNs, run};
use crate::services::Prometheus;
use crate::topology::{CNIGUARD_PORT, Cni, PROMETHEUS_PORT, Topology, Workload};
use crate::workloads::workload_key;

/// A node's CNI as its devices show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodePhase {
    Flannel,
    Mixed,
    Calico,
}

impl Lab {
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

    /// `cniguard diagnose` of a node, run in its namespace as an operator would.
    ///
    /// # Errors
    /// If it cannot run or fails.
    pub fn diagnose(&self, node: usize) -> Result<String> {
        let endpoint = self.cniguard(node);
        let mut command = endpoint.netns.command(&self.state.binaries.cniguard)?;
        crate::netns::run(command.args(["diagnose", "--address", &endpoint.address.to_string()]))
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
}
