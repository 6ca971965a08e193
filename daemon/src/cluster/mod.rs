//! Cluster mode: what cniguard learns from the Kubernetes API when it runs as a DaemonSet
//! (in-cluster config) or is given `--kubeconfig`.
//!
//! - `identity`: the pods of this node (a watch on `spec.nodeName`), mapped to their
//!   network namespaces and node-side veths; series of those gain `pod` and `namespace`.
//! - `migration`: the node label and Calico's Installation and IPPools, set against the
//!   node's own phase (`cniguard_migration_phase_disagreement`).
//! - `targets`: the `cniguard-echo` pods on other nodes and the critical Services, for the
//!   active checks ([`Cluster::targets`]).
//! - `events`: Events on the Node for rollback triggers ([`Cluster::events`]).
//!
//! Every API read is a kube watcher feeding a reflector store, retried with kube's backoff;
//! failures are logged and counted (`api`), never fatal. Without a cluster
//! ([`Cluster::node_local`]) nothing here runs and nothing on /metrics changes.

pub mod api;
pub mod events;
pub mod identity;
pub mod migration;
pub mod settings;
pub mod targets;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use prometheus::Registry;
use tokio::sync::{Notify, watch};

pub use events::EventRecorder;
pub use settings::{ApiSource, ClusterConfig, ClusterError, ClusterSettings};
pub use targets::{ClusterTargets, PeerTarget, ServiceTarget};

use crate::judgement::phase::SharedPhase;
use crate::node::namespaces::SharedInventory;
use crate::server::Rewriter;

/// What cluster mode takes from the rest of the daemon.
pub struct ClusterContext {
    /// This node's name (`NODE_NAME` from the downward API).
    pub node: String,
    pub registry: Registry,
    /// The phase the node detects itself.
    pub phase: SharedPhase,
    /// The node's namespace inventory, kept current by the daemon.
    pub inventory: SharedInventory,
    /// Where the `pod`/`namespace` enrichment of /metrics is installed.
    pub rewriter: Rewriter,
}

/// Cluster mode's handles for the rest of the daemon; inert in node-local mode.
pub struct Cluster {
    targets: watch::Receiver<ClusterTargets>,
    /// Keeps a node-local receiver's channel open: `changed()` then waits forever instead
    /// of failing at once.
    _idle_sender: Option<Arc<watch::Sender<ClusterTargets>>>,
    events: EventRecorder,
}

impl Cluster {
    /// No API: no targets (ever), and Events are not recorded.
    #[must_use]
    pub fn node_local() -> Self {
        let (sender, targets) = watch::channel(ClusterTargets::default());
        Self { targets, _idle_sender: Some(Arc::new(sender)), events: EventRecorder::node_local() }
    }

    /// Starts cluster mode if `settings` call for it, else returns [`Cluster::node_local`].
    ///
    /// # Errors
    /// If the API configuration cannot be turned into a client (a kubeconfig naming a
    /// missing certificate file, an in-cluster token that cannot be read). API calls that
    /// fail later are retried, never fatal.
    pub async fn start(settings: &ClusterSettings, context: ClusterContext) -> Result<Self> {
        let Some(source) = &settings.api else { return Ok(Self::node_local()) };
        let config = match source {
            ApiSource::InCluster => {
                kube::Config::incluster().context("in-cluster Kubernetes configuration")?
            }
            ApiSource::Kubeconfig(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                    .await
                    .with_context(|| format!("--kubeconfig {}", path.display()))?
            }
        };
        tracing::info!(api = %config.cluster_url, node = context.node, "cluster mode: watching the Kubernetes API");
        let client = kube::Client::try_from(config).context("Kubernetes API client")?;
        let facts = identity::LiveFacts {
            handle: netlink_handle().context("netlink connection for pod identity")?,
            inventory: context.inventory.clone(),
        };
        Self::with_client(client, settings, context, facts).context("starting cluster mode")
    }

    /// Cluster mode on `client` (a real one, or a mocked API service in tests).
    pub(crate) fn with_client<S: identity::FactsSource>(
        client: kube::Client,
        settings: &ClusterSettings,
        context: ClusterContext,
        facts: S,
    ) -> prometheus::Result<Self> {
        let ClusterContext { node, registry, phase, rewriter, .. } = context;
        let api_metrics = api::ApiMetrics::register(&registry)?;
        let pods_changed = Arc::new(Notify::new());
        let pods = api::watch(
            Api::<Pod>::all(client.clone()),
            (),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            "pods",
            api::Presence::Required,
            &api_metrics,
            pods_changed.clone(),
        );
        let index = identity::maintain(pods.store, pods_changed, facts, &registry)?;
        let installed = rewriter.set(Box::new(move |families| {
            index.read().unwrap_or_else(std::sync::PoisonError::into_inner).enrich(families);
        }));
        if installed.is_err() {
            tracing::warn!("pod labels were already installed on /metrics; keeping the first");
        }
        migration::start(&client, &node, phase, &api_metrics, &registry)?;
        let targets = targets::discover(&client, settings, &node, &api_metrics, &registry)?;
        let events = EventRecorder::start(client, node, settings.event_interval, api_metrics, &registry)?;
        Ok(Self { targets, _idle_sender: None, events })
    }

    /// The check targets discovered through the API, updated as pods and Services change
    /// (empty, and never changing, in node-local mode).
    #[must_use]
    pub fn targets(&self) -> watch::Receiver<ClusterTargets> {
        self.targets.clone()
    }

    /// The recorder of rollback trigger Events (a no-op in node-local mode).
    #[must_use]
    pub fn events(&self) -> EventRecorder {
        self.events.clone()
    }
}

/// A netlink connection of cluster mode's own, to the daemon's namespace.
fn netlink_handle() -> std::io::Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}
