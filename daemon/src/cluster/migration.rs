//! The cluster's word on this node's migration phase, set against what the node itself
//! shows (`phase`): a disagreement means one of the two is wrong (a node labelled
//! migrated that still runs Flannel, Calico installed while this node shows no sign of
//! it, or cniguard not seeing the node's CNI at all).
//!
//! Sources, the most specific first:
//! - the node label `projectcalico.org/node-network-during-migration`, which Calico's
//!   Flannel migration sets to `flannel` on nodes still to migrate and to `calico` when a
//!   node's cutover begins (so `calico` allows `mixed` too);
//! - else Calico's objects, when their CRDs exist: an `Installation` (the Tigera operator's,
//!   as the runbook installs it) or an enabled `IPPool` means Calico runs (`mixed` or
//!   `calico`); neither, or no CRDs at all, means Flannel alone.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus::Registry;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use tokio::sync::Notify;

use super::api::{ApiMetrics, Presence, Watched};
use crate::judgement::phase::{Phase, SharedPhase};
use crate::metrics::{FamilyBuilder, catalogue};

pub const MIGRATION_LABEL: &str = "projectcalico.org/node-network-during-migration";
/// How often the node's own phase is compared (it is re-read this often too).
const COMPARE_EVERY: Duration = Duration::from_secs(2);

/// What the cluster says this node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterView {
    Flannel,
    Calico,
}

impl ClusterView {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Flannel => "flannel",
            Self::Calico => "calico",
        }
    }

    /// Whether the node's own phase fits.
    #[must_use]
    pub fn allows(self, detected: Phase) -> bool {
        match self {
            Self::Flannel => detected == Phase::Flannel,
            Self::Calico => matches!(detected, Phase::Mixed | Phase::Calico),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    NodeLabel,
    CalicoObjects,
}

impl Source {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::NodeLabel => "node_label",
            Self::CalicoObjects => "calico_objects",
        }
    }
}

/// The node label's view; `None` without the label or with a value it does not define.
#[must_use]
pub fn from_label(value: Option<&str>) -> Option<ClusterView> {
    match value? {
        "flannel" => Some(ClusterView::Flannel),
        "calico" => Some(ClusterView::Calico),
        _ => None,
    }
}

/// Calico's objects' view: an Installation or an enabled IPPool means Calico runs.
#[must_use]
pub fn from_calico_objects(
    installations: &[Arc<DynamicObject>],
    ippools: &[Arc<DynamicObject>],
) -> ClusterView {
    let enabled = |pool: &Arc<DynamicObject>| {
        !pool.data.pointer("/spec/disabled").and_then(serde_json::Value::as_bool).unwrap_or(false)
    };
    if !installations.is_empty() || ippools.iter().any(enabled) {
        ClusterView::Calico
    } else {
        ClusterView::Flannel
    }
}

/// One comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// Each source's view, when known.
    pub label: Option<ClusterView>,
    pub objects: Option<ClusterView>,
    /// The node's own phase, and the verdict against the most specific source.
    pub judged: Option<(Source, ClusterView, Phase, bool)>,
}

impl Comparison {
    #[must_use]
    pub fn new(label: Option<ClusterView>, objects: Option<ClusterView>, detected: Option<Phase>) -> Self {
        let expected = label.map(|v| (Source::NodeLabel, v)).or(objects.map(|v| (Source::CalicoObjects, v)));
        let judged = expected
            .zip(detected)
            .map(|((source, view), detected)| (source, view, detected, !view.allows(detected)));
        Self { label, objects, judged }
    }
}

/// Calico's CRDs, read as dynamic objects (cniguard needs two fields of them).
fn calico_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Watches this node, the Installations and the IPPools, compares them with the node's
/// phase every [`COMPARE_EVERY`], logs each change of verdict and exports it.
pub fn start(
    client: &Client,
    node: &str,
    phase: SharedPhase,
    api_metrics: &ApiMetrics,
    registry: &Registry,
) -> prometheus::Result<()> {
    let changed = Arc::new(Notify::new());
    let nodes: Watched<Node> = super::api::watch(
        Api::all(client.clone()),
        (),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
        "nodes",
        Presence::Required,
        api_metrics,
        changed.clone(),
    );
    let installation = calico_resource("operator.tigera.io", "v1", "Installation", "installations");
    let installations: Watched<DynamicObject> = super::api::watch(
        Api::all_with(client.clone(), &installation),
        installation,
        watcher::Config::default(),
        "installations",
        Presence::Optional,
        api_metrics,
        changed.clone(),
    );
    let ippool = calico_resource("crd.projectcalico.org", "v1", "IPPool", "ippools");
    let ippools: Watched<DynamicObject> = super::api::watch(
        Api::all_with(client.clone(), &ippool),
        ippool,
        watcher::Config::default(),
        "ippools",
        Presence::Optional,
        api_metrics,
        changed,
    );
    let latest = Arc::new(Mutex::new(None));
    registry.register(Box::new(MigrationCollector::new(latest.clone())))?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COMPARE_EVERY);
        let mut previous: Option<Comparison> = None;
        loop {
            tick.tick().await;
            let label = nodes.is_known().then(|| {
                let node = nodes.store.state().into_iter().next();
                let value =
                    node.as_ref().and_then(|n| n.metadata.labels.as_ref()?.get(MIGRATION_LABEL).cloned());
                (value.clone(), from_label(value.as_deref()))
            });
            let objects = (installations.is_known() && ippools.is_known())
                .then(|| from_calico_objects(&installations.store.state(), &ippools.store.state()));
            let detected =
                phase.read().unwrap_or_else(PoisonError::into_inner).map(|(record, _)| record.phase);
            let comparison = Comparison::new(label.as_ref().and_then(|l| l.1), objects, detected);
            if previous.map(|p| p.judged) != Some(comparison.judged) {
                log(comparison, label.and_then(|l| l.0).as_deref());
            }
            previous = Some(comparison);
            *latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(comparison);
        }
    });
    Ok(())
}

fn log(comparison: Comparison, label_value: Option<&str>) {
    let Some((source, view, detected, disagree)) = comparison.judged else { return };
    if disagree {
        tracing::warn!(
            source = source.label(),
            cluster = view.label(),
            node = detected.label(),
            label = label_value,
            "migration phase disagreement: the cluster says this node runs {}, the node shows {}",
            view.label(),
            detected.label()
        );
    } else {
        tracing::info!(
            source = source.label(),
            cluster = view.label(),
            node = detected.label(),
            "migration phase confirmed by the cluster"
        );
    }
}

struct MigrationCollector {
    latest: Arc<Mutex<Option<Comparison>>>,
    disagreement: Desc,
    view: Desc,
}

impl MigrationCollector {
    fn new(latest: Arc<Mutex<Option<Comparison>>>) -> Self {
        Self {
            latest,
            disagreement: catalogue::MIGRATION_PHASE_DISAGREEMENT.desc(),
            view: catalogue::CLUSTER_PHASE.desc(),
        }
    }
}

impl Collector for MigrationCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.disagreement, &self.view]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(comparison) = *self.latest.lock().unwrap_or_else(PoisonError::into_inner) else {
            return Vec::new();
        };
        let mut disagreement = FamilyBuilder::gauge(&self.disagreement, &["source"]);
        if let Some((source, _, _, disagree)) = comparison.judged {
            disagreement.sample(&[source.label()], f64::from(u8::from(disagree)));
        }
        let mut view = FamilyBuilder::gauge(&self.view, &["source", "phase"]);
        for (source, known) in
            [(Source::NodeLabel, comparison.label), (Source::CalicoObjects, comparison.objects)]
        {
            let Some(known) = known else { continue };
            for candidate in [ClusterView::Flannel, ClusterView::Calico] {
                view.sample(&[source.label(), candidate.label()], f64::from(u8::from(candidate == known)));
            }
        }
        [disagreement.build(), view.build()].into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(data: serde_json::Value) -> Arc<DynamicObject> {
        let resource = calico_resource("crd.projectcalico.org", "v1", "IPPool", "ippools");
        Arc::new(DynamicObject::new("pool", &resource).data(data))
    }

    #[test]
    fn the_label_decides_when_present() {
        assert_eq!(from_label(Some("flannel")), Some(ClusterView::Flannel));
        assert_eq!(from_label(Some("calico")), Some(ClusterView::Calico));
        assert_eq!(from_label(Some("something-else")), None);
        assert_eq!(from_label(None), None);
        let flannel_node =
            Comparison::new(Some(ClusterView::Flannel), Some(ClusterView::Calico), Some(Phase::Flannel));
        assert_eq!(
            flannel_node.judged,
            Some((Source::NodeLabel, ClusterView::Flannel, Phase::Flannel, false))
        );
        let late = Comparison::new(Some(ClusterView::Calico), None, Some(Phase::Flannel));
        assert_eq!(late.judged, Some((Source::NodeLabel, ClusterView::Calico, Phase::Flannel, true)));
        let cutting_over = Comparison::new(Some(ClusterView::Calico), None, Some(Phase::Mixed));
        assert_eq!(cutting_over.judged.map(|j| j.3), Some(false));
    }

    #[test]
    fn calico_objects_decide_without_the_label() {
        let pool = object(serde_json::json!({"spec": {"cidr": "10.244.0.0/16"}}));
        let disabled = object(serde_json::json!({"spec": {"cidr": "10.244.0.0/16", "disabled": true}}));
        assert_eq!(from_calico_objects(&[], &[]), ClusterView::Flannel);
        assert_eq!(from_calico_objects(&[], std::slice::from_ref(&disabled)), ClusterView::Flannel);
        assert_eq!(from_calico_objects(&[], &[disabled, pool.clone()]), ClusterView::Calico);
        assert_eq!(from_calico_objects(&[pool], &[]), ClusterView::Calico);
        let blind = Comparison::new(None, Some(ClusterView::Calico), Some(Phase::Unknown));
        assert_eq!(blind.judged, Some((Source::CalicoObjects, ClusterView::Calico, Phase::Unknown, true)));
        // Nothing known, or the node not read yet: no verdict.
        assert_eq!(Comparison::new(None, None, Some(Phase::Flannel)).judged, None);
        assert_eq!(Comparison::new(Some(ClusterView::Flannel), None, None).judged, None);
    }
}
