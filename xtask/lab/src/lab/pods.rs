//! What runs in the pods: started and stopped as pod generations come and go, with check
//! targets and DNS records following the pods; the traffic generators paused and resumed.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use nix::sys::signal::Signal;

use super::{Lab, cni_name};
use crate::cniguard::PATIENCE;
use crate::netns::NetNs;
use crate::services;
use crate::topology::{DNS_PORT, ECHO_PORT, Pod, Workload};
use crate::workloads::{Context, Planned, WORKLOAD_KEY_PREFIX};

impl Lab {
    /// Starts what every live pod generation should run, with peers at their current
    /// addresses, and stops what no longer should.
    pub(super) fn reconcile_workloads(&mut self) -> Result<()> {
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
            if self.stopped_by_fault(&plan.key) {
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

    pub(super) fn planned_workloads(&self) -> Vec<Planned> {
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

    pub(super) fn context(&self) -> Context<'_> {
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
            mlserver_delay_ms: self.mlserver_delay_ms(),
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
}
