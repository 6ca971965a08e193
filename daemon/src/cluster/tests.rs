//! Cluster mode against a mocked API service (`fake_api`), the way kube documents testing
//! clients: kube's own watchers, reflectors and request building run unchanged, and only
//! the HTTP exchange is answered by the test. The kernel's side of pod identity is fixed
//! facts here (`identity::FactsSource`); `node::pod_facts::gather` itself is tested on the real kernel in
//! `tests/tests/cluster_identity.rs`.
//!
//! Time is tokio's paused clock: waits advance it only as far as the code under test sleeps,
//! so the rate limit and the one-minute bound on stale pod labels are checked exactly,
//! without real waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{IntCounterVec, Registry};
use serde_json::{Value, json};

use super::fake_api::{self, ApiCall, EVENTS, FakeApi, NODES, PODS, SERVICES, collection};
use super::identity::FactsSource;
use super::{Cluster, ClusterContext, ClusterSettings, ClusterTargets, PeerTarget, ServiceTarget};
use crate::judgement::phase::{Phase, PhaseRecord, SharedPhase, Signals};
use crate::metrics::catalogue;
use crate::node::pod_facts::{HostVeth, NetnsFacts, NodeFacts};
use crate::server::Rewriter;

const NODE: &str = "node-1";

fn installations() -> String {
    collection("operator.tigera.io", "v1", "installations")
}

fn ippools() -> String {
    collection("crd.projectcalico.org", "v1", "ippools")
}

/// The kernel's side, changeable while cluster mode runs.
#[derive(Clone, Default)]
struct Facts(Arc<Mutex<NodeFacts>>);

impl Facts {
    fn set(&self, facts: NodeFacts) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = facts;
    }
}

impl FactsSource for Facts {
    async fn gather(&self) -> anyhow::Result<NodeFacts> {
        Ok(self.0.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// Cluster mode on a fake API, with the daemon-side handles a test looks at.
struct Harness {
    fake: FakeApi,
    registry: Registry,
    rewriter: Rewriter,
    phase: SharedPhase,
    facts: Facts,
    cluster: Cluster,
    /// Series in the shape the probes export, for the enrichment to label.
    packets: IntCounterVec,
    localhost: IntCounterVec,
}

impl Harness {
    /// A fake API set up by `setup`, then cluster mode started on it.
    fn start(setup: impl FnOnce(&FakeApi)) -> Self {
        let (client, fake) = FakeApi::start();
        setup(&fake);
        let registry = Registry::new();
        let packets = catalogue::INTERFACE_PACKETS_TOTAL.int_counter_vec().unwrap();
        let localhost = catalogue::LOCALHOST_CONNECT_FAILURES_TOTAL.int_counter_vec().unwrap();
        registry.register(Box::new(packets.clone())).unwrap();
        registry.register(Box::new(localhost.clone())).unwrap();
        let (rewriter, phase, facts) = (Rewriter::default(), SharedPhase::default(), Facts::default());
        let context = ClusterContext {
            node: NODE.into(),
            registry: registry.clone(),
            phase: phase.clone(),
            inventory: crate::node::namespaces::SharedInventory::default(),
            rewriter: rewriter.clone(),
        };
        let cluster = Cluster::with_client(client, &settings(), context, facts.clone()).unwrap();
        Self { fake, registry, rewriter, phase, facts, cluster, packets, localhost }
    }

    /// /metrics as the server renders it: gathered, then rewritten; every family the
    /// catalogue's.
    fn scrape(&self) -> Vec<MetricFamily> {
        let mut families = self.registry.gather();
        if let Some(rewrite) = self.rewriter.get() {
            rewrite(&mut families);
        }
        families.iter().for_each(catalogue::assert_catalogued);
        families
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.write().unwrap() =
            Some((PhaseRecord { phase, since: 0.0, changes: 0 }, Signals::default()));
    }
}

/// The default `[cluster]` table (the runbook's critical Services, the echo selector).
fn settings() -> ClusterSettings {
    ClusterSettings::node_local()
}

type Labels = BTreeMap<String, String>;

/// Every sample of `name`, with all its labels.
fn samples(families: &[MetricFamily], name: &str) -> Vec<(Labels, f64)> {
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|family| {
            family.get_metric().iter().map(move |metric| {
                let labels =
                    metric.get_label().iter().map(|l| (l.name().to_owned(), l.value().to_owned())).collect();
                let value = match family.get_field_type() {
                    MetricType::COUNTER => metric.get_counter().get_value(),
                    _ => metric.get_gauge().get_value(),
                };
                (labels, value)
            })
        })
        .collect()
}

/// The value of the sample of `name` whose labels include `labels`, if exactly one does.
fn value(families: &[MetricFamily], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(families, name)
        .into_iter()
        .filter(|(have, _)| labels.iter().all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, v)| v)
        .collect();
    match matching.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Waits (on the paused clock, 100 ms steps) until `check` gives a value; at most `limit`.
async fn until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lets every task run as far as it can without the clock moving (the API's answers, the
/// watchers, the Event writer), then checks.
async fn settle() {
    for _ in 0..2000 {
        tokio::task::yield_now().await;
    }
}

fn with_host_network(mut pod: Value) -> Value {
    pod["spec"]["hostNetwork"] = json!(true);
    pod
}

fn pending(mut pod: Value) -> Value {
    pod["status"] = json!({"phase": "Pending"});
    pod
}

/// Two pod namespaces on this node: a Flannel pod behind `veth1a2b` and a Calico pod behind
/// `cali0c0ffee`, as `ip netns` and `ip link` show them.
fn node_facts() -> NodeFacts {
    super::identity::tests::facts()
}

// Pod identity.

#[tokio::test(start_paused = true)]
async fn pods_of_this_node_label_their_series_and_leave_within_a_minute_of_deletion() {
    let harness = Harness::start(|fake| {
        fake.apply(PODS, fake_api::pod("financial-ml", "mlserver-0", NODE, "10.42.0.5", &json!({})));
        fake.apply(PODS, fake_api::pod("kube-system", "coredns-1", NODE, "10.244.1.7", &json!({})));
        // Same IP as mlserver-0, on another node: must never be considered.
        fake.apply(PODS, fake_api::pod("default", "elsewhere", "node-2", "10.42.0.5", &json!({})));
        fake.apply(
            PODS,
            with_host_network(fake_api::pod("cniguard", "cniguard-x", NODE, "192.168.10.11", &json!({}))),
        );
    });
    harness.facts.set(node_facts());
    for interface in ["veth1a2b", "cali0c0ffee", "flannel.1"] {
        harness.packets.with_label_values(&[interface, "ingress", "ipv4_tcp"]).inc_by(7);
    }
    harness.localhost.with_label_values(&["cni-1111", "9500", "refused"]).inc();
    harness.localhost.with_label_values(&["", "9500", "refused"]).inc();

    let pods = |state: &str| value(&harness.scrape(), "cniguard_cluster_pods", &[("state", state)]);
    until("both pods mapped", Duration::from_secs(10), || (pods("mapped") == Some(2.0)).then_some(())).await;
    assert_eq!((pods("unmapped"), pods("host_network")), (Some(0.0), Some(1.0)));

    let families = harness.scrape();
    let packets = samples(&families, "cniguard_interface_packets_total");
    let pod_of = |interface: &str| {
        let (labels, value) = packets.iter().find(|(l, _)| l["interface"] == interface).unwrap();
        assert_eq!(value.to_string(), "7");
        (labels.get("namespace").cloned(), labels.get("pod").cloned())
    };
    assert_eq!(pod_of("veth1a2b"), (Some("financial-ml".into()), Some("mlserver-0".into())));
    assert_eq!(pod_of("cali0c0ffee"), (Some("kube-system".into()), Some("coredns-1".into())));
    assert_eq!(pod_of("flannel.1"), (None, None));
    let localhost = samples(&families, "cniguard_localhost_connect_failures_total");
    let in_pod = localhost.iter().find(|(l, _)| l["netns"] == "cni-1111").unwrap();
    assert_eq!((in_pod.0["namespace"].as_str(), in_pod.0["pod"].as_str()), ("financial-ml", "mlserver-0"));
    let on_node = localhost.iter().find(|(l, _)| l["netns"].is_empty()).unwrap();
    assert_eq!(on_node.0.len(), 3, "the node's own series gains nothing: {:?}", on_node.0);

    // Only this node's pods are read: every pods request of the identity watch carries the
    // field selector.
    let identity_requests: Vec<_> = harness
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.call.resource == "pods" && !r.query.contains_key("labelSelector"))
        .collect();
    assert!(!identity_requests.is_empty());
    for request in &identity_requests {
        assert_eq!(request.query.get("fieldSelector").map(String::as_str), Some("spec.nodeName=node-1"));
    }

    // The pod is deleted while its namespace still exists (the CNI tears it down later): its
    // labels go at once, the series stays.
    let deleted = tokio::time::Instant::now();
    harness.fake.delete(PODS, Some("financial-ml"), "mlserver-0");
    let labels_of = |interface: &str| {
        samples(&harness.scrape(), "cniguard_interface_packets_total")
            .into_iter()
            .find(|(l, _)| l["interface"] == interface)
            .map(|(l, _)| l)
            .unwrap()
    };
    until("mlserver-0's labels gone", Duration::from_mins(1), || {
        (!labels_of("veth1a2b").contains_key("pod")).then_some(())
    })
    .await;
    assert!(deleted.elapsed() < Duration::from_mins(1));
    assert_eq!(labels_of("veth1a2b").len(), 3);
    assert_eq!(labels_of("cali0c0ffee")["pod"], "coredns-1");
    assert_eq!((pods("mapped"), pods("unmapped")), (Some(1.0), Some(0.0)));

    // Re-created on Calico: the API has it before the CNI has plugged it in (unmapped); the
    // periodic rebuild maps it once its namespace and veth appear, with no pod change.
    harness.fake.apply(PODS, fake_api::pod("financial-ml", "mlserver-0", NODE, "10.244.1.8", &json!({})));
    until("re-created pod unmapped", Duration::from_secs(10), || {
        (pods("unmapped") == Some(1.0)).then_some(())
    })
    .await;
    let mut facts = node_facts();
    facts.namespaces.push(NetnsFacts {
        label: "cni-2222".into(),
        nsid: Some(2),
        addresses: vec!["10.244.1.8".parse().unwrap()],
    });
    facts.veths.push(HostVeth { name: "cali1234".into(), peer_nsid: 2 });
    harness.facts.set(facts);
    harness.packets.with_label_values(&["cali1234", "egress", "ipv4_udp"]).inc();
    until("re-created pod mapped", Duration::from_secs(11), || {
        (labels_of("cali1234").get("pod").map(String::as_str) == Some("mlserver-0")).then_some(())
    })
    .await;
    assert_eq!((pods("mapped"), pods("unmapped")), (Some(2.0), Some(0.0)));
}

// Migration cross-check.

#[tokio::test(start_paused = true)]
async fn the_node_label_is_checked_against_the_nodes_own_phase() {
    let harness = Harness::start(|fake| {
        fake.apply(NODES, fake_api::node(NODE, &json!({super::migration::MIGRATION_LABEL: "calico"})));
        fake.apply(NODES, fake_api::node("node-2", &json!({super::migration::MIGRATION_LABEL: "flannel"})));
        // Calico's CRDs are not installed yet: a state, not an error.
        fake.remove_resource(&installations());
        fake.remove_resource(&ippools());
    });
    harness.set_phase(Phase::Flannel);
    let disagreement = |h: &Harness| {
        value(&h.scrape(), "cniguard_migration_phase_disagreement", &[("source", "node_label")])
    };
    until("a disagreement", Duration::from_secs(10), || (disagreement(&harness) == Some(1.0)).then_some(()))
        .await;
    let families = harness.scrape();
    let views: BTreeSet<String> = samples(&families, "cniguard_cluster_phase")
        .into_iter()
        .map(|(l, v)| format!("{} {} {v}", l["source"], l["phase"]))
        .collect();
    let expected = [
        "node_label calico 1",
        "node_label flannel 0",
        "calico_objects calico 0",
        "calico_objects flannel 1",
    ];
    assert_eq!(views, expected.into_iter().map(str::to_owned).collect());
    let crd_errors = samples(&families, "cniguard_cluster_api_errors_total");
    assert_eq!(crd_errors, vec![], "a CRD that is not installed is no API error");

    // The node starts its cutover: mixed agrees with `calico`.
    harness.set_phase(Phase::Mixed);
    until("agreement", Duration::from_secs(10), || (disagreement(&harness) == Some(0.0)).then_some(())).await;

    // Only this node is read.
    for request in harness.fake.requests().iter().filter(|r| r.call.resource == "nodes") {
        assert_eq!(request.query.get("fieldSelector").map(String::as_str), Some("metadata.name=node-1"));
    }
}

#[tokio::test(start_paused = true)]
async fn without_the_label_calicos_objects_are_the_clusters_word() {
    let harness = Harness::start(|fake| {
        fake.apply(NODES, fake_api::node(NODE, &json!({"kubernetes.io/os": "linux"})));
        fake.apply(
            &ippools(),
            json!({
                "apiVersion": "crd.projectcalico.org/v1",
                "kind": "IPPool",
                "metadata": {"name": "new-pool"},
                "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet"},
            }),
        );
    });
    harness.set_phase(Phase::Flannel);
    let disagreement = |h: &Harness| {
        value(&h.scrape(), "cniguard_migration_phase_disagreement", &[("source", "calico_objects")])
    };
    until("a disagreement", Duration::from_secs(10), || (disagreement(&harness) == Some(1.0)).then_some(()))
        .await;
    assert_eq!(
        value(&harness.scrape(), "cniguard_migration_phase_disagreement", &[("source", "node_label")]),
        None
    );
    harness.set_phase(Phase::Calico);
    until("agreement", Duration::from_secs(10), || (disagreement(&harness) == Some(0.0)).then_some(())).await;
}

// Check targets.

fn echo(name: &str, node: &str, ip: &str) -> Value {
    fake_api::pod("cniguard", name, node, ip, &json!({"app.kubernetes.io/name": "cniguard-echo"}))
}

fn service(namespace: &str, name: &str, ip: &str) -> Value {
    fake_api::service(namespace, name, ip)
}

#[tokio::test(start_paused = true)]
async fn targets_are_the_echo_pods_on_other_nodes_and_the_critical_services() {
    let harness = Harness::start(|fake| {
        fake.apply(PODS, echo("cniguard-echo-a", NODE, "10.42.0.10"));
        fake.apply(PODS, echo("cniguard-echo-b", "node-2", "10.42.1.10"));
        fake.apply(PODS, pending(echo("cniguard-echo-c", "node-3", "10.42.2.10")));
        // On another node, but not an echo pod.
        fake.apply(PODS, fake_api::pod("financial-ml", "mlserver-0", "node-2", "10.42.1.5", &json!({})));
        fake.apply(SERVICES, service("financial-ml", "mlserver", "10.43.0.50"));
        fake.apply(SERVICES, service("kube-system", "kube-dns", "10.43.0.10"));
        // Same name as a critical Service, in another namespace.
        fake.apply(SERVICES, service("default", "seldon-scheduler", "10.43.0.99"));
    });
    let mut targets = harness.cluster.targets();
    let peer = |node: &str, pod: &str, ip: &str| PeerTarget {
        node: node.into(),
        pod: pod.into(),
        address: ip.parse().unwrap(),
        port: 9465,
    };
    let target = |namespace: &str, name: &str, ip: &str, port| ServiceTarget {
        name: name.into(),
        namespace: namespace.into(),
        address: ip.parse().unwrap(),
        port,
    };
    let current = |rx: &tokio::sync::watch::Receiver<ClusterTargets>| rx.borrow().clone();
    let expected = ClusterTargets {
        peers: vec![peer("node-2", "cniguard-echo-b", "10.42.1.10")],
        services: vec![
            target("financial-ml", "mlserver", "10.43.0.50", 9500),
            target("kube-system", "kube-dns", "10.43.0.10", 53),
        ],
    };
    until("first targets", Duration::from_secs(10), || (current(&targets) == expected).then_some(())).await;
    targets.mark_unchanged();
    let resolved = |service: &str| {
        value(&harness.scrape(), "cniguard_cluster_service_resolved", &[("service", service)])
    };
    assert_eq!(resolved("financial-ml/seldon-scheduler"), Some(0.0));
    assert_eq!(resolved("financial-ml/mlserver"), Some(1.0));

    // The scheduler appears, echo-c starts, echo-b goes: each is published.
    harness.fake.apply(SERVICES, service("financial-ml", "seldon-scheduler", "10.43.0.20"));
    harness.fake.apply(PODS, echo("cniguard-echo-c", "node-3", "10.42.2.10"));
    harness.fake.delete(PODS, Some("cniguard"), "cniguard-echo-b");
    let expected = ClusterTargets {
        peers: vec![peer("node-3", "cniguard-echo-c", "10.42.2.10")],
        services: vec![
            target("financial-ml", "seldon-scheduler", "10.43.0.20", 9004),
            target("financial-ml", "mlserver", "10.43.0.50", 9500),
            target("kube-system", "kube-dns", "10.43.0.10", 53),
        ],
    };
    until("updated targets", Duration::from_secs(10), || (current(&targets) == expected).then_some(())).await;
    assert!(targets.has_changed().unwrap());
    let families = harness.scrape();
    assert_eq!(value(&families, "cniguard_cluster_targets", &[("kind", "peer")]), Some(1.0));
    assert_eq!(value(&families, "cniguard_cluster_targets", &[("kind", "service")]), Some(3.0));

    // The echo pods are found by their label in every namespace; each Service by its name in
    // its namespace.
    let requests = harness.fake.requests();
    let echo_lists: Vec<_> = requests
        .iter()
        .filter(|r| r.call.resource == "pods" && r.query.contains_key("labelSelector"))
        .collect();
    assert!(
        echo_lists
            .iter()
            .all(|r| r.namespace.is_none()
                && r.query["labelSelector"] == "app.kubernetes.io/name=cniguard-echo")
    );
    let service_scopes: BTreeSet<(Option<String>, String)> = requests
        .iter()
        .filter(|r| r.call.resource == "services")
        .map(|r| (r.namespace.clone(), r.query["fieldSelector"].clone()))
        .collect();
    let expected_scopes: BTreeSet<(Option<String>, String)> =
        [("financial-ml", "seldon-scheduler"), ("financial-ml", "mlserver"), ("kube-system", "kube-dns")]
            .into_iter()
            .map(|(ns, name)| (Some(ns.to_owned()), format!("metadata.name={name}")))
            .collect();
    assert_eq!(service_scopes, expected_scopes);
}

#[tokio::test(start_paused = true)]
async fn node_local_mode_has_no_targets_and_records_nothing() {
    let cluster = Cluster::node_local();
    let mut targets = cluster.targets();
    assert_eq!(*targets.borrow(), ClusterTargets::default());
    cluster.events().record_trigger("connectivity_lost", true, "all checks failing");
    // The channel stays open and never changes.
    let waited = tokio::time::timeout(Duration::from_hours(1), targets.changed()).await;
    assert!(waited.is_err(), "a node-local target list changed");
}

// Events.

fn events_total(harness: &Harness, result: &str) -> Option<f64> {
    value(&harness.scrape(), "cniguard_cluster_events_total", &[("result", result)])
}

/// (trigger label, state label, type, message) of each Event created so far.
fn created(harness: &Harness) -> Vec<(String, String, String, String)> {
    harness
        .fake
        .created_events()
        .iter()
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&e["metadata"]["labels"]["cniguard.io/trigger"]),
                text(&e["metadata"]["labels"]["cniguard.io/state"]),
                text(&e["type"]),
                text(&e["message"]),
            )
        })
        .collect()
}

fn event(trigger: &str, state: &str, kind: &str, message: &str) -> (String, String, String, String) {
    (trigger.into(), state.into(), kind.into(), format!("rollback trigger {trigger} {state}: {message}"))
}

#[tokio::test(start_paused = true)]
async fn trigger_changes_become_events_on_the_node_at_most_one_a_minute_per_trigger() {
    let harness = Harness::start(|_| {});
    let events = harness.cluster.events();
    settle().await;

    events.record_trigger("connectivity_lost", true, "node-2 unreachable for 1800 s");
    settle().await;
    let first = harness.fake.created_events();
    assert_eq!(first.len(), 1);
    let first = &first[0];
    assert_eq!(first["reason"], "CniguardRollbackTrigger");
    assert_eq!(first["metadata"]["namespace"], "default");
    assert_eq!(
        first["involvedObject"],
        json!({"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "node-1"})
    );
    assert_eq!(first["source"], json!({"component": "cniguard", "host": "node-1"}));
    assert_eq!(
        (first["reportingComponent"].as_str(), first["action"].as_str()),
        (Some("cniguard"), Some("Activated"))
    );
    let posted: Vec<_> =
        harness.fake.requests().into_iter().filter(|r| r.call.resource == "events").collect();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].call.verb, "create");
    assert_eq!(posted[0].namespace.as_deref(), Some("default"));

    // Flapping inside the minute: held, each change replacing the last; another trigger is
    // not held back by this one.
    events.record_trigger("connectivity_lost", false, "node-2 reachable");
    events.record_trigger("connectivity_lost", true, "node-2 unreachable again");
    events.record_trigger("connectivity_lost", false, "node-2 reachable again");
    events.record_trigger("dns_failing", true, "SERVFAIL ratio 0.4");
    settle().await;
    assert_eq!(
        created(&harness),
        vec![
            event("connectivity_lost", "active", "Warning", "node-2 unreachable for 1800 s"),
            event("dns_failing", "active", "Warning", "SERVFAIL ratio 0.4"),
        ]
    );
    assert_eq!(events_total(&harness, "coalesced"), Some(2.0));

    // The minute ends: the latest state is written.
    tokio::time::advance(Duration::from_secs(59)).await;
    settle().await;
    assert_eq!(created(&harness).len(), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(
        created(&harness)[2],
        event("connectivity_lost", "cleared", "Normal", "node-2 reachable again")
    );
    assert_eq!(harness.fake.created_events()[2]["action"], "Cleared");

    // Active and cleared again within the next minute: back where the last Event left it,
    // so nothing new is written.
    events.record_trigger("connectivity_lost", true, "flap");
    events.record_trigger("connectivity_lost", false, "flap over");
    settle().await;
    tokio::time::advance(Duration::from_secs(61)).await;
    settle().await;
    assert_eq!(created(&harness).len(), 3);
    assert_eq!(events_total(&harness, "created"), Some(3.0));
    assert_eq!(events_total(&harness, "coalesced"), Some(4.0));
    assert_eq!(events_total(&harness, "failed"), None);
    assert_eq!(events_total(&harness, "dropped"), None);

    // Long after: a change is written at once.
    events.record_trigger("connectivity_lost", true, "node-3 unreachable");
    settle().await;
    assert_eq!(created(&harness)[3], event("connectivity_lost", "active", "Warning", "node-3 unreachable"));
}

#[tokio::test(start_paused = true)]
async fn findings_become_events_of_their_own_with_their_own_rate_limit() {
    let harness = Harness::start(|_| {});
    let events = harness.cluster.events();
    settle().await;

    events.record_trigger("connectivity_lost", true, "node-3 unreachable");
    events.record_finding(
        "vxlan_one_way",
        true,
        "192.168.20.13:4789: 40 sent, none back; fix: open 4789/udp",
    );
    settle().await;
    let created = harness.fake.created_events();
    assert_eq!(created.len(), 2, "a finding is not held back by a trigger: {created:?}");
    let finding = &created[1];
    assert_eq!(finding["reason"], "CniguardFinding");
    assert_eq!(finding["type"], "Warning");
    assert_eq!(finding["action"], "Raised");
    assert_eq!(finding["metadata"]["labels"]["cniguard.io/finding"], "vxlan_one_way");
    assert_eq!(finding["metadata"]["labels"]["cniguard.io/state"], "raised");
    assert_eq!(
        finding["message"],
        "finding vxlan_one_way raised: 192.168.20.13:4789: 40 sent, none back; fix: open 4789/udp"
    );
    assert_eq!(finding["involvedObject"]["kind"], "Node");

    // Cleared within the minute: held like a trigger's change, written when it ends.
    events.record_finding("vxlan_one_way", false, "192.168.20.13:4789");
    settle().await;
    assert_eq!(harness.fake.created_events().len(), 2);
    tokio::time::advance(Duration::from_mins(1)).await;
    settle().await;
    let created = harness.fake.created_events();
    assert_eq!(created.len(), 3);
    assert_eq!(
        (created[2]["reason"].as_str(), created[2]["action"].as_str()),
        (Some("CniguardFinding"), Some("Cleared"))
    );
}

// RBAC.

/// Log lines written while `f` runs (the test's thread: tokio's current-thread runtime runs
/// every task on it).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn rbac_denials_are_counted_and_logged_with_the_fix_and_nothing_stops() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let harness = Harness::start(|fake| {
        fake.apply(NODES, fake_api::node(NODE, &json!({super::migration::MIGRATION_LABEL: "flannel"})));
        fake.deny(PODS);
        fake.deny(EVENTS);
    });
    harness.set_phase(Phase::Flannel);
    harness.cluster.events().record_trigger("connectivity_lost", true, "all checks failing");
    // The clock does not move: each failed watch is counted once, before its backoff.
    settle().await;
    let families = harness.scrape();
    let errors: BTreeSet<String> = samples(&families, "cniguard_cluster_api_errors_total")
        .into_iter()
        .map(|(l, v)| format!("{} {} {v}", l["resource"], l["reason"]))
        .collect();
    // Two watches of pods (this node's, the echo pods) and one Event.
    let expected = ["pods forbidden 2", "events forbidden 1"];
    assert_eq!(errors, expected.into_iter().map(str::to_owned).collect());
    assert_eq!(events_total(&harness, "failed"), Some(1.0));

    let text = log.text();
    let refusals: Vec<&str> = text.lines().filter(|l| l.contains("Kubernetes API refused")).collect();
    assert_eq!(refusals.len(), 3, "{text}");
    for line in &refusals {
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("RBAC denies it"), "{line}");
        assert!(line.contains("deploy/rbac.yaml"), "{line}");
    }
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("refused to list/watch pods") && l.contains(r#"cannot list resource "pods""#)),
        "{text}"
    );
    assert!(refusals.iter().any(|l| l.contains("refused to create events")));

    // What is allowed goes on: the migration cross-check still works, and the watches retry.
    until("the node's label read", Duration::from_secs(10), || {
        value(&harness.scrape(), "cniguard_migration_phase_disagreement", &[("source", "node_label")])
    })
    .await;
    until("pods retried", Duration::from_mins(1), || {
        let retried = value(
            &harness.scrape(),
            "cniguard_cluster_api_errors_total",
            &[("resource", "pods"), ("reason", "forbidden")],
        )?;
        (retried >= 4.0).then_some(())
    })
    .await;
}

// Permissions: the ClusterRole, the calls cniguard makes and the README agree.

/// (API group, resource, verb) triples.
type Grants = BTreeSet<(String, String, String)>;

fn repository_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

/// Every YAML document of a manifest file, as JSON.
fn documents(path: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(&repository_file(path))
        .map(|document| Value::deserialize(document).unwrap_or_else(|err| panic!("{path}: {err}")))
        .filter(|document| !document.is_null())
        .collect()
}

/// What the ClusterRole and Role of `deploy/rbac.yaml` grant, expanded.
fn granted_by_manifests() -> Grants {
    use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
    let mut grants = Grants::new();
    for document in documents("deploy/rbac.yaml") {
        let rules = match document["kind"].as_str() {
            Some("ClusterRole") => serde_json::from_value::<ClusterRole>(document).unwrap().rules,
            Some("Role") => serde_json::from_value::<Role>(document).unwrap().rules,
            _ => continue,
        };
        for rule in rules.unwrap_or_default() {
            assert_eq!(rule.resource_names, None, "{rule:?}");
            assert_eq!(rule.non_resource_urls, None, "{rule:?}");
            for group in rule.api_groups.unwrap_or_default() {
                for resource in rule.resources.clone().unwrap_or_default() {
                    for verb in &rule.verbs {
                        assert!(!group.contains('*') && !resource.contains('*') && !verb.contains('*'));
                        grants.insert((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    grants
}

/// The README's permission table: `| API group | Resources | Verbs | Why |`.
fn granted_by_readme() -> Grants {
    let readme = repository_file("README.md");
    let section = readme.split("\n### Permissions\n").nth(1).expect("a `### Permissions` section");
    let mut grants = Grants::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).skip(2)
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let strip = |cell: &str| cell.trim_matches('`').to_owned();
        let group = match strip(cells[1]).as_str() {
            "core" | "\"\"" => String::new(),
            other => other.to_owned(),
        };
        for resource in cells[2].split(',').map(|r| strip(r.trim())) {
            for verb in cells[3].split(',').map(|v| strip(v.trim())) {
                grants.insert((group.clone(), resource.clone(), verb));
            }
        }
    }
    grants
}

/// Everything cluster mode calls in one run, with every part of it exercised.
async fn calls_made() -> Grants {
    let harness = Harness::start(|fake| {
        fake.apply(NODES, fake_api::node(NODE, &json!({})));
        fake.apply(PODS, echo("cniguard-echo-b", "node-2", "10.42.1.10"));
        fake.apply(SERVICES, service("kube-system", "kube-dns", "10.43.0.10"));
        fake.apply(
            &installations(),
            json!({"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "metadata": {"name": "default"}}),
        );
        fake.apply(
            &ippools(),
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": "p"}, "spec": {}}),
        );
    });
    harness.set_phase(Phase::Mixed);
    harness.cluster.events().record_trigger("connectivity_lost", true, "test");
    // Changes after the first listing, so that every collection is watched too.
    harness.fake.apply(PODS, echo("cniguard-echo-c", "node-3", "10.42.2.10"));
    harness.fake.apply(NODES, fake_api::node(NODE, &json!({"changed": "yes"})));
    harness.fake.apply(SERVICES, service("kube-system", "kube-dns", "10.43.0.11"));
    until("every call made", Duration::from_secs(30), || {
        let calls: BTreeSet<ApiCall> = harness.fake.requests().into_iter().map(|r| r.call).collect();
        (calls.len() >= 11).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    harness.fake.requests().into_iter().map(|r| (r.call.group, r.call.resource, r.call.verb)).collect()
}

#[tokio::test(start_paused = true)]
async fn the_cluster_role_the_calls_made_and_the_readme_agree() {
    let made = calls_made().await;
    let expected: Grants = [
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "events", "create"),
        ("operator.tigera.io", "installations", "list"),
        ("operator.tigera.io", "installations", "watch"),
        ("crd.projectcalico.org", "ippools", "list"),
        ("crd.projectcalico.org", "ippools", "watch"),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(made, expected, "the calls cniguard makes changed: update deploy/rbac.yaml and the README");
    assert_eq!(granted_by_manifests(), made, "deploy/rbac.yaml grants other than what cniguard calls");
    assert_eq!(granted_by_readme(), made, "the README's permission table differs from what cniguard calls");
}
