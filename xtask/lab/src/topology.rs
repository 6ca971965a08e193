//! The lab's cluster, described as data: subnets, nodes, pods and what runs in them. Every
//! name and address the lab uses is derived here, so the steps that build the cluster read
//! as "do this for each node" rather than as a script.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// VXLAN settings of the two overlays, as Flannel and Calico program them.
pub const FLANNEL_VXLAN_PORT: u16 = 8472;
pub const FLANNEL_VNI: u32 = 1;
pub const CALICO_VXLAN_PORT: u16 = 4789;
pub const CALICO_VNI: u32 = 4096;
/// The private AS of Calico's node-to-node BGP mesh.
pub const CALICO_AS: u32 = 64512;
/// The address a Calico pod routes everything through, answered by proxy ARP on its cali*.
pub const CALICO_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The MAC of every cali* host-side interface.
pub const CALICO_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// Where the node's cniguard serves metrics (on the node's underlay address).
pub const CNIGUARD_PORT: u16 = 9464;
pub const PROMETHEUS_PORT: u16 = 9090;
pub const ALERTMANAGER_PORT: u16 = 9093;
/// Where the rollback hook listens, inside the monitoring namespace.
pub const HOOK_ADDRESS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9466));
/// The Seldon MLServer port the runbook checks inside the pod: MLServer's gRPC port in Seldon
/// Core v2 (its HTTP port is [`crate::mlserver::HTTP_PORT`], 9000).
pub const MLSERVER_PORT: u16 = crate::mlserver::GRPC_PORT;
/// Where `cniguard echo` answers the other nodes' pod-to-pod checks.
pub const ECHO_PORT: u16 = 9465;
pub const SINK_PORT: u16 = 7000;
pub const DNS_PORT: u16 = 53;
/// The cluster domain the lab's DNS answers for.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Which CNI a node (and the pods on it) is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cni {
    Flannel,
    Calico,
}

/// An underlay subnet: a bridge in the router namespace, with the router as gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subnet {
    pub bridge: String,
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

impl Subnet {
    #[must_use]
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
        u32::from(address) & mask == u32::from(self.network) & mask
    }

    #[must_use]
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix_len)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// `node-1`: also the Prometheus `node` label.
    pub name: String,
    /// 1, 2, 3: the third octet of the node's pod networks.
    pub index: u8,
    pub subnet: usize,
    /// The node's underlay address, on its `eth0`.
    pub address: Ipv4Addr,
}

impl Node {
    /// Flannel's per-node /24 from 10.42.0.0/16; the node's flannel.1 holds `.0`, cni0 `.1`.
    #[must_use]
    pub fn flannel_network(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 42, self.index, 0)
    }

    /// Calico's per-node /26 block from 10.244.0.0/16; vxlan.calico holds its `.0`.
    #[must_use]
    pub fn calico_block(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 0)
    }

    #[must_use]
    pub fn flannel_vtep_mac(&self) -> String {
        format!("0e:42:00:00:00:{:02x}", self.index)
    }

    #[must_use]
    pub fn calico_vtep_mac(&self) -> String {
        format!("0e:44:00:00:00:{:02x}", self.index)
    }

    /// The pod address with host part `host` under `cni`.
    #[must_use]
    pub fn pod_address(&self, cni: Cni, host: u8) -> Ipv4Addr {
        match cni {
            Cni::Flannel => Ipv4Addr::new(10, 42, self.index, host),
            Cni::Calico => Ipv4Addr::new(10, 244, self.index, host),
        }
    }
}

/// A process a pod runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    /// The real MLServer (`cargo xtask setup`'s, pinned) as Seldon Core v2 runs it: HTTP on
    /// 9000 and gRPC on 9500, on every address of the pod, serving the lab's `slow` model.
    MlServer,
    /// The Seldon agent stand-in next to it: `rate` rounds per second of gRPC `ModelInfer`
    /// streams on 127.0.0.1:9500 and HTTP/1.1 keep-alive infers on 127.0.0.1:9000
    /// ([`crate::workloads::AGENT_STREAMS`] and the rest).
    Agent { rate: u32 },
    /// The cluster DNS (dnsmasq) answering `<pod>.<namespace>.svc.cluster.local`.
    Dns,
    /// Resolves `names` (pod names, resolved as service names) through the cluster DNS.
    DnsClient { rate: u32, names: Vec<String> },
    /// Sends UDP datagrams to the `SINK_PORT` of pod `to`.
    UdpSend { to: String, rate: u32 },
    /// Counts datagrams arriving on `SINK_PORT`.
    UdpSink,
    /// `cniguard echo` on `ECHO_PORT`: the target of the other nodes' pod-to-pod checks.
    Echo,
}

impl Workload {
    /// A short name for process keys and file names.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Self::MlServer => "mlserver".into(),
            Self::Agent { .. } => "agent".into(),
            Self::Dns => "dns".into(),
            Self::DnsClient { .. } => "dns-client".into(),
            Self::UdpSend { to, .. } => format!("udp-send-{to}"),
            Self::UdpSink => "udp-sink".into(),
            Self::Echo => "echo".into(),
        }
    }

    /// Whether it generates traffic (paused when a test needs quiet devices).
    #[must_use]
    pub fn is_generator(&self) -> bool {
        matches!(self, Self::Agent { .. } | Self::DnsClient { .. } | Self::UdpSend { .. })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's name, unique in the lab: `mlserver-0`.
    pub name: String,
    /// Its Kubernetes namespace.
    pub namespace: String,
    pub node: usize,
    /// The host part of its address, in either CNI's network.
    pub host: u8,
    pub workloads: Vec<Workload>,
}

impl Pod {
    /// Its DNS name, as a Service of the same name would have.
    #[must_use]
    pub fn service_name(&self) -> String {
        format!("{}.{}.svc.{CLUSTER_DOMAIN}", self.name, self.namespace)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topology {
    /// Every namespace of this lab starts with it: `cglab-<id>`.
    pub prefix: String,
    pub subnets: Vec<Subnet>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// Where Prometheus runs, on the first subnet.
    pub monitor_address: Ipv4Addr,
}

impl Topology {
    /// The runbook's cluster: node-1 and node-2 on one subnet (Calico routes between them
    /// with BGP), node-3 behind a router on another (Calico crosses to it with VXLAN); an
    /// MLServer pod with its agent, cluster DNS and its clients, pod-to-pod traffic within
    /// and across subnets.
    #[must_use]
    pub fn standard(prefix: &str) -> Self {
        let subnet = |third: u8, bridge: &str| Subnet {
            bridge: bridge.into(),
            network: Ipv4Addr::new(192, 168, third, 0),
            prefix_len: 24,
            gateway: Ipv4Addr::new(192, 168, third, 1),
        };
        let node = |index: u8, subnet: usize, address: Ipv4Addr| Node {
            name: format!("node-{index}"),
            index,
            subnet,
            address,
        };
        let pod = |name: &str, namespace: &str, node: usize, host: u8, workloads: Vec<Workload>| Pod {
            name: name.into(),
            namespace: namespace.into(),
            node,
            host,
            workloads,
        };
        let names = vec!["mlserver-0".to_owned(), "sink-2".to_owned(), "missing".to_owned()];
        Self {
            prefix: prefix.into(),
            subnets: vec![subnet(10, "br-a"), subnet(20, "br-b")],
            nodes: vec![
                node(1, 0, Ipv4Addr::new(192, 168, 10, 11)),
                node(2, 0, Ipv4Addr::new(192, 168, 10, 12)),
                node(3, 1, Ipv4Addr::new(192, 168, 20, 13)),
            ],
            pods: vec![
                pod(
                    "mlserver-0",
                    "financial-ml",
                    0,
                    10,
                    vec![Workload::MlServer, Workload::Agent { rate: 10 }],
                ),
                pod(
                    "client-1",
                    "default",
                    0,
                    11,
                    vec![
                        Workload::DnsClient { rate: 4, names: names.clone() },
                        Workload::UdpSend { to: "sink-2".into(), rate: 20 },
                        Workload::UdpSend { to: "sink-3".into(), rate: 20 },
                        Workload::Echo,
                    ],
                ),
                pod("coredns-0", "kube-system", 1, 10, vec![Workload::Dns]),
                pod("sink-2", "default", 1, 11, vec![Workload::UdpSink, Workload::Echo]),
                pod("sink-3", "default", 2, 10, vec![Workload::UdpSink, Workload::Echo]),
                pod("client-3", "default", 2, 11, vec![Workload::DnsClient { rate: 4, names }]),
            ],
            monitor_address: Ipv4Addr::new(192, 168, 10, 100),
        }
    }

    #[must_use]
    pub fn node(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    #[must_use]
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The network namespace of a node.
    #[must_use]
    pub fn node_netns(&self, node: usize) -> String {
        format!("{}-{}", self.prefix, self.nodes[node].name)
    }

    /// The network namespace of a pod; pods are re-created by the cutover, hence the CNI.
    #[must_use]
    pub fn pod_netns(&self, pod: &Pod, cni: Cni) -> String {
        let generation = match cni {
            Cni::Flannel => "f",
            Cni::Calico => "c",
        };
        format!("{}-{}-{}-{generation}", self.prefix, self.nodes[pod.node].name, pod.name)
    }

    #[must_use]
    pub fn router_netns(&self) -> String {
        format!("{}-router", self.prefix)
    }

    #[must_use]
    pub fn monitor_netns(&self) -> String {
        format!("{}-mon", self.prefix)
    }

    /// The host side of a pod's veth: `veth` + 8 hex under Flannel, `cali` + 11 hex under
    /// Calico (as the CNIs name them), unique across the lab's nodes.
    #[must_use]
    pub fn host_veth(&self, pod: &Pod, cni: Cni) -> String {
        let hash = fnv1a(format!("{}/{}/{}", self.nodes[pod.node].name, pod.namespace, pod.name).as_bytes());
        match cni {
            Cni::Flannel => format!("veth{:08x}", hash & 0xffff_ffff),
            Cni::Calico => format!("cali{:011x}", hash & 0xfff_ffff_ffff),
        }
    }

    /// The namespace of a copy of `pod` left behind on its Flannel address (the lab's
    /// `old-address-pod` fault).
    #[must_use]
    pub fn left_behind_netns(&self, pod: &Pod) -> String {
        format!("{}-{}-{}-old", self.prefix, self.nodes[pod.node].name, pod.name)
    }

    /// The `veth*` of a copy of `pod` left behind on its Flannel address (the lab's
    /// `old-address-pod` fault): named as Flannel would, apart from the pod's own.
    #[must_use]
    pub fn left_behind_veth(&self, pod: &Pod) -> String {
        let hash =
            fnv1a(format!("{}/{}/{}/old", self.nodes[pod.node].name, pod.namespace, pod.name).as_bytes());
        format!("veth{:08x}", hash & 0xffff_ffff)
    }

    #[must_use]
    pub fn subnet_of(&self, node: usize) -> &Subnet {
        &self.subnets[self.nodes[node].subnet]
    }
}

/// FNV-1a: a stable hash for interface names (Calico hashes the workload id the same way).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_are_unique() {
        let topology = Topology::standard("cglab-test");
        let mut names = std::collections::HashSet::new();
        for pod in &topology.pods {
            for cni in [Cni::Flannel, Cni::Calico] {
                let veth = topology.host_veth(pod, cni);
                assert!(veth.len() <= 15, "{veth}");
                assert!(names.insert(veth));
                assert!(names.insert(topology.pod_netns(pod, cni)));
            }
        }
    }

    #[test]
    fn pods_have_unique_addresses_per_node_and_targets_exist() {
        let topology = Topology::standard("cglab-test");
        let mut hosts = std::collections::HashSet::new();
        for pod in &topology.pods {
            assert!(hosts.insert((pod.node, pod.host)), "{} reuses a host part", pod.name);
            for workload in &pod.workloads {
                if let Workload::UdpSend { to, .. } = workload {
                    assert!(topology.pod(to).is_some(), "{to}");
                }
            }
        }
        assert_eq!(topology.nodes.iter().filter(|n| n.subnet == 0).count(), 2, "two nodes share a subnet");
        assert!(topology.subnets[1].contains(topology.nodes[2].address));
    }
}
