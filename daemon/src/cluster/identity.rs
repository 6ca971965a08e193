//! Pod identity: which pod of this node owns each network namespace and host-side veth,
//! and the `pod` and `namespace` labels that follow from it on /metrics.
//!
//! The pods come from the API (a watch on `spec.nodeName`); the namespaces and veths from
//! the kernel. A pod's namespace is the one holding its IP; its veths are the node's
//! interfaces whose far end is in that namespace (the id this namespace gives it, as
//! `link-netnsid` says). That works for Flannel's bridge (`veth*`) and Calico's `cali*`
//! alike, with no naming convention assumed. Labels are added when /metrics is served, so
//! the collectors and the baselines never see them and node-local mode is unchanged.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use prometheus::Registry;
use prometheus::proto::{LabelPair, MetricFamily};
use tokio::sync::Notify;

use crate::metrics::catalogue;
use crate::node::namespaces::{self, SharedInventory};
use crate::node::pod_facts::{self, NetnsFacts, NodeFacts};

/// Label names added to series of pod-facing interfaces and pod namespaces.
pub const POD_LABEL: &str = "pod";
pub const NAMESPACE_LABEL: &str = "namespace";
/// How often the mapping is rebuilt without a pod change: new namespaces and veths appear
/// without one (the CNI plugs a pod in after the API has it), and a deleted pod's labels
/// are gone by the next rebuild at the latest.
pub const REBUILD_EVERY: Duration = Duration::from_secs(10);

/// A pod, as far as its identity goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSummary {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<Ipv4Addr>,
    /// Pods on the node's own network (cniguard itself, kube-proxy...) share the node's
    /// namespace: they label nothing.
    pub host_network: bool,
}

impl PodSummary {
    #[must_use]
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let mut ips: Vec<Ipv4Addr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ips,
            host_network: pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false),
        }
    }
}

/// A pod's name: the `namespace` and `pod` label values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// Pods by `netns` label and by node-side interface name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIndex {
    by_netns: HashMap<String, PodRef>,
    by_interface: HashMap<String, PodRef>,
    pub mapped: usize,
    /// Pods with an IP in no namespace of this host (yet): not plugged in, or IP-less.
    pub unmapped: usize,
    pub host_network: usize,
}

impl PodIndex {
    #[must_use]
    pub fn build(pods: &[PodSummary], facts: &NodeFacts) -> Self {
        let mut by_address: HashMap<Ipv4Addr, &NetnsFacts> = HashMap::new();
        for namespace in &facts.namespaces {
            for address in namespace.addresses.iter().filter(|a| !a.is_loopback()) {
                by_address.insert(*address, namespace);
            }
        }
        let mut index = Self::default();
        for pod in pods {
            if pod.host_network {
                index.host_network += 1;
                continue;
            }
            let Some(namespace) = pod.ips.iter().find_map(|ip| by_address.get(ip)) else {
                index.unmapped += 1;
                continue;
            };
            index.mapped += 1;
            let pod_ref = PodRef { namespace: pod.namespace.clone(), name: pod.name.clone() };
            for veth in facts.veths_of(namespace) {
                index.by_interface.insert(veth.to_owned(), pod_ref.clone());
            }
            index.by_netns.insert(namespace.label.clone(), pod_ref);
        }
        index
    }

    /// The pod a series belongs to. A non-empty `netns` names a pod's namespace (and its
    /// `interface`, if any, is one inside that namespace); an empty or absent one means
    /// the node's, where `interface` may be a pod's node-side veth.
    #[must_use]
    pub fn lookup(&self, netns: Option<&str>, interface: Option<&str>) -> Option<&PodRef> {
        match netns {
            Some(netns) if !netns.is_empty() => self.by_netns.get(netns),
            _ => interface.and_then(|name| self.by_interface.get(name)),
        }
    }

    /// Adds `namespace` and `pod` to every series whose `netns` or `interface` is a pod's.
    pub fn enrich(&self, families: &mut [MetricFamily]) {
        if self.by_netns.is_empty() && self.by_interface.is_empty() {
            return;
        }
        for family in families {
            for metric in family.mut_metric().iter_mut() {
                let value =
                    |name: &str| metric.get_label().iter().find(|l| l.name() == name).map(LabelPair::value);
                if value(POD_LABEL).is_some() || value(NAMESPACE_LABEL).is_some() {
                    continue;
                }
                let Some(pod) = self.lookup(value("netns"), value("interface")).cloned() else { continue };
                let mut labels = metric.take_label();
                for (name, value) in [(NAMESPACE_LABEL, pod.namespace), (POD_LABEL, pod.name)] {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.to_owned());
                    pair.set_value(value);
                    labels.push(pair);
                }
                metric.set_label(labels);
            }
        }
    }
}

pub type SharedIndex = Arc<RwLock<PodIndex>>;

/// Where the kernel's side of the mapping comes from (the node in the daemon, fixed facts
/// in tests).
pub trait FactsSource: Send + Sync + 'static {
    fn gather(&self) -> impl Future<Output = Result<NodeFacts>> + Send;
}

/// The daemon's namespaces (its inventory, kept current by the node) and its interfaces.
pub struct LiveFacts {
    pub handle: rtnetlink::Handle,
    pub inventory: SharedInventory,
}

impl FactsSource for LiveFacts {
    async fn gather(&self) -> Result<NodeFacts> {
        let inventory = namespaces::read(&self.inventory).clone();
        pod_facts::gather(&self.handle, &inventory).await
    }
}

/// Keeps the index current: rebuilt when the node's pods change and every
/// [`REBUILD_EVERY`], for as long as the daemon runs.
pub fn maintain<S: FactsSource>(
    pods: Store<Pod>,
    changed: Arc<Notify>,
    source: S,
    registry: &Registry,
) -> prometheus::Result<SharedIndex> {
    let gauge = catalogue::CLUSTER_PODS.int_gauge_vec()?;
    registry.register(Box::new(gauge.clone()))?;
    let index = SharedIndex::default();
    let shared = index.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REBUILD_EVERY);
        loop {
            tokio::select! {
                () = changed.notified() => {}
                _ = tick.tick() => {}
            }
            let pods: Vec<PodSummary> = pods.state().iter().map(|pod| PodSummary::of(pod)).collect();
            let facts = match source.gather().await {
                Ok(facts) => facts,
                Err(err) => {
                    tracing::warn!("reading namespaces for pod identity failed, will retry: {err:#}");
                    continue;
                }
            };
            let rebuilt = PodIndex::build(&pods, &facts);
            for (state, count) in [
                ("mapped", rebuilt.mapped),
                ("unmapped", rebuilt.unmapped),
                ("host_network", rebuilt.host_network),
            ] {
                gauge.with_label_values(&[state]).set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            *shared.write().unwrap_or_else(PoisonError::into_inner) = rebuilt;
        }
    });
    Ok(index)
}

#[cfg(test)]
pub(crate) mod tests {
    use prometheus::proto::Metric;

    use super::*;
    use crate::node::pod_facts::HostVeth;

    fn pod(namespace: &str, name: &str, ip: &str) -> PodSummary {
        PodSummary {
            namespace: namespace.into(),
            name: name.into(),
            ips: vec![ip.parse().unwrap()],
            host_network: false,
        }
    }

    pub(crate) fn facts() -> NodeFacts {
        NodeFacts {
            namespaces: vec![
                NetnsFacts {
                    label: "cni-1111".into(),
                    nsid: Some(0),
                    addresses: vec![Ipv4Addr::LOCALHOST, "10.42.0.5".parse().unwrap()],
                },
                NetnsFacts {
                    label: "4026532999".into(),
                    nsid: Some(1),
                    addresses: vec!["10.244.1.7".parse().unwrap()],
                },
            ],
            veths: vec![
                HostVeth { name: "veth1a2b".into(), peer_nsid: 0 },
                HostVeth { name: "cali0c0ffee".into(), peer_nsid: 1 },
                HostVeth { name: "vethother".into(), peer_nsid: 9 },
            ],
        }
    }

    #[test]
    fn pods_map_to_their_namespace_and_veth_by_ip() {
        let pods = [
            pod("financial-ml", "mlserver-0", "10.42.0.5"),
            pod("kube-system", "coredns-1", "10.244.1.7"),
            pod("default", "pending", "10.42.0.99"),
            PodSummary { host_network: true, ..pod("cniguard", "cniguard-x", "192.168.10.11") },
        ];
        let index = PodIndex::build(&pods, &facts());
        let name = |pod: Option<&PodRef>| pod.map(|p| format!("{}/{}", p.namespace, p.name));
        assert_eq!(name(index.lookup(Some("cni-1111"), None)), Some("financial-ml/mlserver-0".into()));
        assert_eq!(
            name(index.lookup(Some("cni-1111"), Some("eth0"))),
            Some("financial-ml/mlserver-0".into())
        );
        assert_eq!(name(index.lookup(Some("4026532999"), None)), Some("kube-system/coredns-1".into()));
        assert_eq!(name(index.lookup(None, Some("veth1a2b"))), Some("financial-ml/mlserver-0".into()));
        assert_eq!(name(index.lookup(Some(""), Some("cali0c0ffee"))), Some("kube-system/coredns-1".into()));
        // An interface name inside a pod's namespace is not the node's interface of that name.
        assert_eq!(
            name(index.lookup(Some("cni-1111"), Some("cali0c0ffee"))),
            Some("financial-ml/mlserver-0".into())
        );
        assert_eq!(index.lookup(None, Some("vethother")), None);
        assert_eq!(index.lookup(None, Some("flannel.1")), None);
        assert_eq!((index.mapped, index.unmapped, index.host_network), (2, 1, 1));
    }

    fn metric(labels: &[(&str, &str)]) -> Metric {
        Metric::from_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name((*name).into());
                    pair.set_value((*value).into());
                    pair
                })
                .collect(),
        )
    }

    fn labels(metric: &Metric) -> Vec<(String, String)> {
        metric.get_label().iter().map(|l| (l.name().to_owned(), l.value().to_owned())).collect()
    }

    #[test]
    fn enrichment_adds_pod_and_namespace_to_pod_series_only() {
        let index = PodIndex::build(&[pod("financial-ml", "mlserver-0", "10.42.0.5")], &facts());
        let mut family = MetricFamily::default();
        family.set_name("cniguard_test".into());
        family.mut_metric().push(metric(&[("interface", "veth1a2b"), ("direction", "ingress")]));
        family.mut_metric().push(metric(&[("interface", "flannel.1"), ("direction", "ingress")]));
        family.mut_metric().push(metric(&[("netns", "cni-1111"), ("port", "9500")]));
        family.mut_metric().push(metric(&[("netns", ""), ("port", "9500")]));
        let mut families = vec![family];
        index.enrich(&mut families);
        let got: Vec<_> = families[0].get_metric().iter().map(labels).collect();
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
        };
        assert_eq!(
            got,
            vec![
                pairs(&[
                    ("interface", "veth1a2b"),
                    ("direction", "ingress"),
                    ("namespace", "financial-ml"),
                    ("pod", "mlserver-0")
                ]),
                pairs(&[("interface", "flannel.1"), ("direction", "ingress")]),
                pairs(&[
                    ("netns", "cni-1111"),
                    ("port", "9500"),
                    ("namespace", "financial-ml"),
                    ("pod", "mlserver-0")
                ]),
                pairs(&[("netns", ""), ("port", "9500")]),
            ]
        );
    }
}
