//! The processes each pod runs, as command lines resolved against where every pod is now.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::binaries::Binaries;
use crate::topology::{DNS_PORT, ECHO_PORT, MLSERVER_PORT, Pod, SINK_PORT, Topology, Workload};

/// A process a pod generation should be running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// `pod/<pod>/<cni>/<workload>`: the process key.
    pub key: String,
    pub netns: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub generator: bool,
    /// A file the process creates once it serves (after binding its sockets).
    pub ready_file: PathBuf,
}

/// Where to find things while planning: pod addresses now, and the files of this lab.
pub struct Context<'a> {
    pub topology: &'a Topology,
    pub binaries: &'a Binaries,
    pub state_dir: &'a Path,
    /// Where each running pod is now.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// How late the MLServer answers (a fault), in milliseconds.
    pub mlserver_delay_ms: u32,
}

impl Context<'_> {
    /// The stats file of a workload (written by `cniguard-workload`).
    #[must_use]
    pub fn stats_file(&self, key: &str) -> PathBuf {
        self.state_dir.join("stats").join(format!("{}.json", key.replace('/', "_")))
    }

    #[must_use]
    pub fn dns_hosts_file(&self) -> PathBuf {
        self.state_dir.join("dns-hosts")
    }

    /// The processes of `pod` in the generation living in `netns`, under key prefix
    /// `pod/<pod>/<cni>`. A workload whose peer runs nowhere is left out.
    #[must_use]
    pub fn plan(&self, pod: &Pod, generation: &str, netns: &str, address: Ipv4Addr) -> Vec<Planned> {
        let dns_server = self
            .topology
            .pods
            .iter()
            .find(|p| p.workloads.contains(&Workload::Dns))
            .and_then(|p| self.addresses.get(&p.name).copied());
        pod.workloads
            .iter()
            .filter_map(|workload| {
                let key = workload_key(&pod.name, generation, workload);
                let stats_file = self.stats_file(&key);
                let stats = stats_file.display().to_string();
                let pid_file = self.state_dir.join(format!("dnsmasq-{}.pid", pod.name));
                let workload_args = |args: Vec<String>| {
                    let mut all = args;
                    all.extend(["--stats".to_owned(), stats.clone()]);
                    Some((self.binaries.workload.clone(), all))
                };
                let (program, args) = match workload {
                    Workload::MlServer => workload_args(vec![
                        "mlserver".into(),
                        "--listen".into(),
                        format!("127.0.0.1:{MLSERVER_PORT}"),
                        "--listen".into(),
                        format!("{address}:8080"),
                        "--delay-ms".into(),
                        self.mlserver_delay_ms.to_string(),
                    ]),
                    Workload::Agent { rate } => workload_args(vec![
                        "agent".into(),
                        "--target".into(),
                        format!("127.0.0.1:{MLSERVER_PORT}"),
                        "--path".into(),
                        "/v2/health/ready".into(),
                        "--rate".into(),
                        rate.to_string(),
                    ]),
                    Workload::Dns => Some((
                        PathBuf::from("dnsmasq"),
                        crate::services::dnsmasq_args(
                            address,
                            &self.dns_hosts_file().display().to_string(),
                            &pid_file.display().to_string(),
                        ),
                    )),
                    Workload::DnsClient { rate, names } => {
                        let mut args = vec![
                            "dns-client".into(),
                            "--server".into(),
                            format!("{}:{DNS_PORT}", dns_server?),
                        ];
                        for name in names {
                            let fqdn = self.topology.pod(name).map_or_else(
                                || format!("{name}.default.svc.{}", crate::topology::CLUSTER_DOMAIN),
                                Pod::service_name,
                            );
                            args.extend(["--name".into(), fqdn]);
                        }
                        args.extend(["--rate".into(), rate.to_string()]);
                        workload_args(args)
                    }
                    Workload::UdpSend { to, rate } => workload_args(vec![
                        "udp-send".into(),
                        "--to".into(),
                        format!("{}:{SINK_PORT}", self.addresses.get(to)?),
                        "--rate".into(),
                        rate.to_string(),
                    ]),
                    Workload::Echo => Some((
                        self.binaries.cniguard.clone(),
                        vec![
                            "echo".into(),
                            "--listen".into(),
                            format!("{address}:{ECHO_PORT}"),
                            "--ready-file".into(),
                            stats.clone(),
                        ],
                    )),
                    Workload::UdpSink => workload_args(vec![
                        "udp-sink".into(),
                        "--listen".into(),
                        format!("{address}:{SINK_PORT}"),
                    ]),
                }?;
                // dnsmasq writes its pid file once its sockets are bound; the workloads write
                // their first stats.
                let ready_file = if *workload == Workload::Dns { pid_file } else { stats_file };
                Some(Planned {
                    key,
                    netns: netns.to_owned(),
                    program,
                    args,
                    generator: workload.is_generator(),
                    ready_file,
                })
            })
            .collect()
    }
}

/// The process key of a pod's workload: `pod/<pod>/<generation>/<workload>`.
#[must_use]
pub fn workload_key(pod: &str, generation: &str, workload: &Workload) -> String {
    format!("{WORKLOAD_KEY_PREFIX}{pod}/{generation}/{}", workload.label())
}

/// What the process keys of pod workloads start with.
pub const WORKLOAD_KEY_PREFIX: &str = "pod/";
