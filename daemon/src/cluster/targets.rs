//! Check targets discovered through the API, for the active connectivity checks.
//!
//! Peers: cniguard's own pods run on the node's network (hostNetwork), so checking them
//! would not cross the pod network. The unprivileged `cniguard-echo` DaemonSet
//! (`deploy/echo.yaml`) puts a small responder on the pod network of every node; its pods
//! on the other nodes are this node's pod-to-pod targets. Services: the configured
//! critical Services, resolved to their ClusterIP.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus::Registry;
use tokio::sync::{Notify, watch};

use super::api::{ApiMetrics, Presence, Watched};
use super::settings::{ClusterSettings, ServiceRef};
use crate::metrics::catalogue;

/// Every target the checks should reach from this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterTargets {
    pub peers: Vec<PeerTarget>,
    pub services: Vec<ServiceTarget>,
}

/// A `cniguard-echo` pod on another node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerTarget {
    pub node: String,
    pub pod: String,
    pub address: Ipv4Addr,
    pub port: u16,
}

/// A critical Service, by its ClusterIP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceTarget {
    pub name: String,
    pub namespace: String,
    pub address: Ipv4Addr,
    pub port: u16,
}

/// The echo pods on other nodes that can take a check: running, not being deleted, with
/// an IPv4 address. Sorted by node and pod.
#[must_use]
pub fn peers(pods: &[Arc<Pod>], own_node: &str, port: u16) -> Vec<PeerTarget> {
    let mut peers: Vec<PeerTarget> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let node = pod.spec.as_ref()?.node_name.clone()?;
            let status = pod.status.as_ref()?;
            if node == own_node || status.phase.as_deref() != Some("Running") {
                return None;
            }
            let address = status.pod_ip.as_ref()?.parse().ok()?;
            Some(PeerTarget { node, pod: pod.metadata.name.clone()?, address, port })
        })
        .collect();
    peers.sort();
    peers
}

/// The ClusterIP of a Service, if it has one (a headless Service has `None`).
#[must_use]
pub fn cluster_ip(service: &Service) -> Option<Ipv4Addr> {
    service.spec.as_ref()?.cluster_ip.as_ref()?.parse().ok()
}

/// Watches the echo pods and the critical Services and publishes the targets whenever they
/// change. The receiver starts empty.
pub fn discover(
    client: &Client,
    settings: &ClusterSettings,
    node: &str,
    api_metrics: &ApiMetrics,
    registry: &Registry,
) -> prometheus::Result<watch::Receiver<ClusterTargets>> {
    let resolved = catalogue::CLUSTER_SERVICE_RESOLVED.int_gauge_vec()?;
    let peer_count = catalogue::CLUSTER_TARGETS.int_gauge_vec()?;
    registry.register(Box::new(resolved.clone()))?;
    registry.register(Box::new(peer_count.clone()))?;
    let changed = Arc::new(Notify::new());
    let echo = super::api::watch(
        Api::<Pod>::all(client.clone()),
        (),
        watcher::Config::default().labels(&settings.echo_selector),
        "pods",
        Presence::Required,
        api_metrics,
        changed.clone(),
    );
    let services: Vec<(ServiceRef, Watched<Service>)> = settings
        .critical_services
        .iter()
        .map(|service| {
            let watched = super::api::watch(
                Api::<Service>::namespaced(client.clone(), &service.namespace),
                (),
                watcher::Config::default().fields(&format!("metadata.name={}", service.name)),
                "services",
                Presence::Required,
                api_metrics,
                changed.clone(),
            );
            (service.clone(), watched)
        })
        .collect();
    let (sender, receiver) = watch::channel(ClusterTargets::default());
    let (node, port) = (node.to_owned(), settings.echo_port);
    tokio::spawn(async move {
        let mut logged: BTreeMap<String, Option<Ipv4Addr>> = BTreeMap::new();
        loop {
            changed.notified().await;
            let peers = peers(&echo.store.state(), &node, port);
            let mut targets = Vec::new();
            for (service, watched) in &services {
                let address = watched.store.state().first().and_then(|s| cluster_ip(s));
                let key = service.key();
                resolved.with_label_values(&[&key]).set(i64::from(address.is_some()));
                if logged.get(&key) != Some(&address) {
                    if let Some(address) = address {
                        tracing::info!(service = key, %address, "critical Service resolved");
                    } else {
                        tracing::warn!(
                            service = key,
                            "critical Service has no ClusterIP (missing or headless): it is not checked"
                        );
                    }
                    logged.insert(key, address);
                }
                targets.extend(address.map(|address| ServiceTarget {
                    name: service.name.clone(),
                    namespace: service.namespace.clone(),
                    address,
                    port: service.port,
                }));
            }
            peer_count.with_label_values(&["peer"]).set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
            peer_count.with_label_values(&["service"]).set(i64::try_from(targets.len()).unwrap_or(i64::MAX));
            let next = ClusterTargets { peers, services: targets };
            sender.send_if_modified(|current| {
                let modified = *current != next;
                *current = next;
                modified
            });
        }
    });
    Ok(receiver)
}
