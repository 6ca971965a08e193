//! What runs in the pods: started and stopped as pod generations come and go, with check
//! targets and DNS records following the pods; the traffic generators paused and resumed.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use nix::sys::signal::Signal;

use super::{Lab, cni_name};
use crate::cniguard::PATIENCE;
use crate::netns::NetNs;
use crate::topology::{DNS_PORT, ECHO_PORT, Pod, Workload};
use crate::workloads::{Context, Planned, Serving, WORKLOAD_KEY_PREFIX};
use crate::{mlserver, services};

/// How long the real MLServer may take to serve its model after it starts.
const MLSERVER_PATIENCE: Duration = Duration::from_mins(1);

impl Lab {
    /// Starts what every live pod generation should run, with peers at their current
    /// addresses, and stops what no longer should.
    pub(super) fn reconcile_workloads(&mut self) -> Result<()> {
        self.reconcile(true)
    }

    /// [`Self::reconcile_workloads`] without starting the traffic generators: the servers,
    /// for a lab whose cniguards are not watching yet.
    pub(super) fn start_servers(&mut self) -> Result<()> {
        self.reconcile(false)
    }

    fn reconcile(&mut self, generators: bool) -> Result<()> {
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
        let (servers, mut clients): (Vec<Planned>, Vec<Planned>) =
            planned.into_iter().partition(|p| !p.generator);
        if !generators {
            clients.clear();
        }
        for plan in servers.iter().chain(&clients) {
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
            match &plan.serving {
                Serving::File(file) => {
                    let _ = std::fs::remove_file(file);
                }
                Serving::MlServer { dir, server } => server.write(dir)?,
            }
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
                // Its HTTP port, as a Service in front of the pod would expose it.
                let _ = write!(
                    text,
                    "\n[[targets]]\ncheck = \"service\"\nname = \"mlserver\"\naddress = \"{address}:{}\"\nhttp_path = \"/v2/health/ready\"\n",
                    mlserver::HTTP_PORT
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
        // The real MLServer takes seconds to import and load its model; more on a busy machine.
        let patience = match plan.serving {
            Serving::File(_) => PATIENCE,
            Serving::MlServer { .. } => MLSERVER_PATIENCE,
        };
        let started = Instant::now();
        let deadline = started + patience;
        while !self.serves(plan) {
            ensure!(
                self.state.processes.is_running(&plan.key),
                "{} exited:\n{}",
                plan.key,
                self.log_tail(&plan.key)
            );
            ensure!(
                Instant::now() < deadline,
                "{} not serving within {patience:?}:\n{}",
                plan.key,
                self.log_tail(&plan.key)
            );
            std::thread::sleep(Duration::from_millis(match plan.serving {
                Serving::File(_) => 20,
                Serving::MlServer { .. } => 100,
            }));
        }
        if let Serving::MlServer { .. } = plan.serving {
            println!("lab: {} serves its model after {:.1}s", plan.key, started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Whether the server `plan` started serves now. The MLServer: once both of its ports
    /// listen (its own sockets, from /proc: nothing is sent to the gRPC port, whose every
    /// exchange cniguard counts) and its HTTP port says the model is ready (one exchange).
    fn serves(&self, plan: &Planned) -> bool {
        match &plan.serving {
            Serving::File(file) => file.exists(),
            Serving::MlServer { server, .. } => {
                let Some(pid) = self.state.processes.record(&plan.key).map(|r| r.pid) else { return false };
                let listening = listening_ports(pid);
                listening.contains(&server.http_port)
                    && listening.contains(&server.grpc_port)
                    && matches!(
                        NetNs::existing(&plan.netns).http_get(
                            SocketAddr::from((Ipv4Addr::LOCALHOST, server.http_port)),
                            &format!("/v2/models/{}/ready", mlserver::MODEL),
                        ),
                        Ok((200, _))
                    )
            }
        }
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

/// The TCP ports the process `pid` sees listening in its network namespace (IPv4 and IPv6,
/// from `/proc/<pid>/net/tcp*`); none if it is gone.
fn listening_ports(pid: u32) -> Vec<u16> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|table| listening_in(&table))
        .collect()
}

/// The listening ports of a `/proc/net/tcp` table: `sl local_address rem_address st ...`
/// under a header line, each address `HEX:PORT`, state `0A` for LISTEN.
fn listening_in(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = fields.next()?;
            let state = fields.nth(1)?;
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (state == "0A").then_some(port)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::listening_in;

    #[test]
    fn listening_ports_are_read_from_the_kernels_table() {
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:251C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:D2F0 0100007F:251C 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
        assert_eq!(listening_in(table), vec![9000, 9500]);
        let ipv6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000
";
        assert_eq!(listening_in(ipv6), vec![8080]);
    }
}
