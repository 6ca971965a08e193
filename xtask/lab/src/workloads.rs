//! The processes each pod runs, as command lines resolved against where every pod is now.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::binaries::Binaries;
use crate::mlserver;
use crate::topology::{DNS_PORT, ECHO_PORT, Pod, SINK_PORT, Topology, Workload};

/// What the Seldon agent stand-in does in each round (`Workload::Agent`'s rate is rounds per
/// second), as Seldon's agent does with its MLServer: this many concurrent gRPC `ModelInfer`
/// streams of this many calls each, multiplexed on its one HTTP/2 connection to
/// 127.0.0.1:9500, then this many HTTP/1.1 keep-alive infer `POST`s to 127.0.0.1:9000.
pub const AGENT_STREAMS: u64 = 3;
pub const AGENT_CALLS_PER_STREAM: u64 = 3;
pub const AGENT_HTTP_CALLS: u64 = 1;
/// The agent's stats fields (`cniguard-workload seldon-agent`), summed over its two
/// protocols: the calls made, those answered well (gRPC status 0, HTTP 2xx), and the rest
/// (another status, or no answer: refused, reset, timed out).
pub const AGENT_CALLS: &[&str] = &["grpc_calls", "http_calls"];
pub const AGENT_OK: &[&str] = &["grpc_ok", "http_ok"];
pub const AGENT_FAILURES: &[&str] = &["grpc_errors", "grpc_failures", "http_errors", "http_failures"];

/// A process a pod generation should be running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// `pod/<pod>/<cni>/<workload>`: the process key.
    pub key: String,
    pub netns: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub generator: bool,
    /// How to tell that a server serves.
    pub serving: Serving,
}

/// How the lab tells that a server it started serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// The process creates this file once it serves (after binding its sockets).
    File(PathBuf),
    /// The real MLServer, which writes no such file: it serves once it listens on both of
    /// its ports and says its model is ready. `dir` is the folder it serves, written from
    /// `server` before it starts.
    MlServer { dir: PathBuf, server: mlserver::Server },
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

    /// The real MLServer's settings: Seldon's ports on every address (`0.0.0.0`, as in
    /// Seldon's pods), the lab's model answering [`Self::mlserver_delay_ms`] late.
    #[must_use]
    pub fn mlserver(&self) -> mlserver::Server {
        mlserver::Server::seldon(Ipv4Addr::UNSPECIFIED.into(), self.mlserver_delay_ms)
    }

    /// The folder the MLServer under process key `key` serves: one per pod generation and
    /// delay, so that a new delay is a new command line, and restarts the server.
    #[must_use]
    pub fn mlserver_dir(&self, key: &str) -> PathBuf {
        self.state_dir.join("mlserver").join(format!(
            "{}-{}ms",
            key.replace('/', "_"),
            self.mlserver_delay_ms
        ))
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
                    // As Seldon's pods run it: both ports on every address of the pod.
                    Workload::MlServer => {
                        Some((self.binaries.mlserver.clone(), mlserver::start_args(&self.mlserver_dir(&key))))
                    }
                    Workload::Agent { rate } => workload_args(agent_args(*rate)),
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
                let serving = match workload {
                    Workload::Dns => Serving::File(pid_file),
                    Workload::MlServer => {
                        Serving::MlServer { dir: self.mlserver_dir(&key), server: self.mlserver() }
                    }
                    _ => Serving::File(stats_file),
                };
                Some(Planned {
                    key,
                    netns: netns.to_owned(),
                    program,
                    args,
                    generator: workload.is_generator(),
                    serving,
                })
            })
            .collect()
    }
}

/// The Seldon agent stand-in's command line at `rate` rounds per second.
fn agent_args(rate: u32) -> Vec<String> {
    let mut args = vec![
        "seldon-agent".to_owned(),
        "--grpc".into(),
        format!("127.0.0.1:{}", mlserver::GRPC_PORT),
        "--http".into(),
        format!("127.0.0.1:{}", mlserver::HTTP_PORT),
        "--model".into(),
        mlserver::MODEL.into(),
    ];
    for (flag, value) in [
        ("--streams", AGENT_STREAMS),
        ("--calls", AGENT_CALLS_PER_STREAM),
        ("--http-calls", AGENT_HTTP_CALLS),
    ] {
        args.extend([flag.to_owned(), value.to_string()]);
    }
    args.extend(["--rate".to_owned(), rate.to_string()]);
    args
}

/// The process key of a pod's workload: `pod/<pod>/<generation>/<workload>`.
#[must_use]
pub fn workload_key(pod: &str, generation: &str, workload: &Workload) -> String {
    format!("{WORKLOAD_KEY_PREFIX}{pod}/{generation}/{}", workload.label())
}

/// What the process keys of pod workloads start with.
pub const WORKLOAD_KEY_PREFIX: &str = "pod/";
