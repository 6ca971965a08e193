//! Kubernetes Events on this node's Node object when a rollback trigger becomes active or
//! clears (reason `CniguardRollbackTrigger`), so `kubectl describe node` and `kubectl get
//! events` tell the story of the cutover next to the kubelet's own.
//!
//! Rate limit: at most one Event per trigger per `[cluster] event_interval_seconds`. A
//! change inside the interval is held, replaced by any later one, and written when the
//! interval ends unless the trigger is back where its last Event left it: the last Event
//! of a trigger always tells its current state, and a flapping trigger writes one Event a
//! minute, not one per flap. The caller never waits: changes go through a queue of
//! [`QUEUE`] to a task of their own, and a change that finds the queue full is dropped
//! and counted.
//!
//! Events are created with the core v1 API (create only: kube's `Recorder` also patches
//! repeated Events, which would need `patch` too), in `default` and with the node's name
//! as the involved object's uid, the way the kubelet records node Events.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;
use prometheus::{IntCounterVec, Registry};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::api::{ApiFailure, ApiMetrics};
use crate::metrics::catalogue;

pub const REASON: &str = "CniguardRollbackTrigger";
/// Where Events about cluster-scoped objects (Nodes) live.
pub const EVENTS_NAMESPACE: &str = "default";
/// Changes waiting for the writer; beyond it they are dropped rather than block a caller.
pub const QUEUE: usize = 64;
const COMPONENT: &str = "cniguard";

/// A trigger's change, as the trigger engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TriggerChange {
    /// The trigger's name, or the finding's.
    trigger: String,
    /// A finding (reason `CniguardFinding`), not a rollback trigger.
    finding: bool,
    active: bool,
    message: String,
}

impl TriggerChange {
    /// What the rate limit is kept by: a trigger, or a finding.
    fn key(&self) -> String {
        if self.finding { format!("finding/{}", self.trigger) } else { self.trigger.clone() }
    }
}

pub const FINDING_REASON: &str = "CniguardFinding";

/// Records rollback trigger changes as Events on this node. Cloneable; in node-local mode
/// (`node_local`) it does nothing.
#[derive(Clone, Debug)]
pub struct EventRecorder {
    sender: Option<mpsc::Sender<TriggerChange>>,
    outcomes: Option<IntCounterVec>,
}

impl EventRecorder {
    /// The recorder of node-local mode: every call is a no-op.
    #[must_use]
    pub fn node_local() -> Self {
        Self { sender: None, outcomes: None }
    }

    /// Records that rollback trigger `trigger` became active (`active`) or cleared, with a
    /// human-readable `message` (the numbers behind it). Never blocks and never fails:
    /// errors are logged and counted by the writer.
    pub fn record_trigger(&self, trigger: &str, active: bool, message: &str) {
        let change = TriggerChange {
            trigger: trigger.to_owned(),
            finding: false,
            active,
            message: message.to_owned(),
        };
        self.send(change);
    }

    /// Records that finding `finding` was raised (`raised`) or cleared, with its evidence
    /// and fix in `message`; rate-limited like the triggers, per finding.
    pub fn record_finding(&self, finding: &str, raised: bool, message: &str) {
        let change = TriggerChange {
            trigger: finding.to_owned(),
            finding: true,
            active: raised,
            message: message.to_owned(),
        };
        self.send(change);
    }

    fn send(&self, change: TriggerChange) {
        let Some(sender) = &self.sender else { return };
        let (trigger, active) = (change.trigger.clone(), change.active);
        if let Err(err) = sender.try_send(change) {
            if let Some(outcomes) = &self.outcomes {
                outcomes.with_label_values(&["dropped"]).inc();
            }
            tracing::warn!(trigger, active, "Event not recorded: {err}");
        }
    }

    /// Starts the writer for Events on Node `node`.
    ///
    /// # Errors
    /// If the metric is already registered.
    pub fn start(
        client: kube::Client,
        node: String,
        interval: Duration,
        api_metrics: ApiMetrics,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let outcomes = catalogue::CLUSTER_EVENTS_TOTAL.int_counter_vec()?;
        registry.register(Box::new(outcomes.clone()))?;
        let (sender, receiver) = mpsc::channel(QUEUE);
        let writer = Writer {
            api: Api::namespaced(client, EVENTS_NAMESPACE),
            node,
            interval,
            api_metrics,
            outcomes: outcomes.clone(),
            last: HashMap::new(),
            held: HashMap::new(),
        };
        tokio::spawn(writer.run(receiver));
        Ok(Self { sender: Some(sender), outcomes: Some(outcomes) })
    }
}

/// The last Event written for a trigger.
struct Written {
    at: Instant,
    active: bool,
}

struct Writer {
    api: Api<Event>,
    node: String,
    interval: Duration,
    api_metrics: ApiMetrics,
    outcomes: IntCounterVec,
    last: HashMap<String, Written>,
    /// Changes waiting for their trigger's interval to end.
    held: HashMap<String, TriggerChange>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<TriggerChange>) {
        loop {
            let next_due = self
                .held
                .keys()
                .filter_map(|trigger| self.last.get(trigger).map(|w| w.at + self.interval))
                .min();
            let change = tokio::select! {
                change = receiver.recv() => match change {
                    Some(change) => change,
                    None => return,
                },
                () = sleep_until(next_due) => {
                    self.flush_due().await;
                    continue;
                }
            };
            match self.last.get(&change.key()) {
                Some(written) if written.at.elapsed() < self.interval => {
                    if let Some(superseded) = self.held.insert(change.key(), change) {
                        drop(superseded);
                        self.outcomes.with_label_values(&["coalesced"]).inc();
                    }
                }
                _ => self.write(change).await,
            }
        }
    }

    /// Writes the held changes whose interval has ended.
    async fn flush_due(&mut self) {
        let due: Vec<String> = self
            .held
            .keys()
            .filter(|trigger| self.last.get(*trigger).is_none_or(|w| w.at.elapsed() >= self.interval))
            .cloned()
            .collect();
        for trigger in due {
            let Some(change) = self.held.remove(&trigger) else { continue };
            if self.last.get(&trigger).is_some_and(|w| w.active == change.active) {
                // Back where the last Event left it: nothing new to tell.
                self.outcomes.with_label_values(&["coalesced"]).inc();
                continue;
            }
            self.write(change).await;
        }
    }

    async fn write(&mut self, change: TriggerChange) {
        let event = self.event(&change);
        // The interval starts with the attempt: a failing API is not hammered either.
        self.last.insert(change.key(), Written { at: Instant::now(), active: change.active });
        match self.api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                self.outcomes.with_label_values(&["created"]).inc();
                tracing::info!(
                    trigger = change.trigger,
                    active = change.active,
                    node = self.node,
                    "Event recorded"
                );
            }
            Err(err) => {
                self.outcomes.with_label_values(&["failed"]).inc();
                self.api_metrics.failed("events", "create", ApiFailure::from_client(&err), &err);
            }
        }
    }

    fn event(&self, change: &TriggerChange) -> Event {
        let now = Time(k8s_openapi::chrono::Utc::now());
        let (state, kind, action) = match (change.finding, change.active) {
            (false, true) => ("active", "Warning", "Activated"),
            (true, true) => ("raised", "Warning", "Raised"),
            (_, false) => ("cleared", "Normal", "Cleared"),
        };
        let (label, reason, what) = if change.finding {
            ("cniguard.io/finding", FINDING_REASON, "finding")
        } else {
            ("cniguard.io/trigger", REASON, "rollback trigger")
        };
        Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.cniguard-", self.node)),
                namespace: Some(EVENTS_NAMESPACE.to_owned()),
                labels: Some(
                    [
                        (label.to_owned(), label_value(&change.trigger)),
                        ("cniguard.io/state".to_owned(), state.to_owned()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                uid: Some(self.node.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(format!("{what} {} {state}: {}", change.trigger, change.message)),
            type_: Some(kind.into()),
            action: Some(action.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource { component: Some(COMPONENT.into()), host: Some(self.node.clone()) }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.node.clone()),
            ..Event::default()
        }
    }
}

/// A label value is at most 63 characters of `[A-Za-z0-9_.-]`: a trigger name is one
/// already; anything else is replaced rather than failing the Event.
fn label_value(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' })
        .take(63)
        .collect::<String>()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_kept_valid() {
        assert_eq!(label_value("connectivity_lost"), "connectivity_lost");
        assert_eq!(label_value("dns failing!"), "dns_failing");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn node_local_recorder_does_nothing() {
        // No runtime, no API: must neither panic nor block.
        EventRecorder::node_local().record_trigger("connectivity_lost", true, "all checks failing");
    }
}
