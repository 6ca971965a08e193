//! Which CNI this node runs, from its own interfaces and routes: Flannel's `flannel.1`
//! and `cni0`, Calico's `vxlan.calico`, `cali*` pod interfaces and the routes BIRD installs.
//! Both at once is `mixed` (the cutover is under way on this node), neither is `unknown`
//! (a host without a cluster, as in the README's demo).

use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt as _;
use netlink_packet_route::route::{RouteAttribute, RouteProtocol};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use crate::metrics::{FamilyBuilder, catalogue};
use crate::node::interfaces::Interface;

const FLANNEL_VXLAN: &str = "flannel.1";
const FLANNEL_BRIDGE: &str = "cni0";
const CALICO_VXLAN: &str = "vxlan.calico";
const CALICO_POD_PREFIX: &str = "cali";
const FLANNEL_POD_PREFIX: &str = "veth";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Flannel,
    Mixed,
    Calico,
    Unknown,
}

impl Phase {
    pub const ALL: [Self; 4] = [Self::Flannel, Self::Mixed, Self::Calico, Self::Unknown];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Flannel => "flannel",
            Self::Mixed => "mixed",
            Self::Calico => "calico",
            Self::Unknown => "unknown",
        }
    }
}

/// What the node's devices and routes show.
#[allow(clippy::struct_excessive_bools, reason = "independent observations, each exported as its own series")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    pub flannel_vxlan: bool,
    pub flannel_bridge: bool,
    pub calico_vxlan: bool,
    /// Routes installed by BIRD (protocol `bird`): Calico's BGP is programming this node.
    pub bird_routes: bool,
    /// Pod interfaces by name: Flannel's `veth*`, Calico's `cali*`.
    pub flannel_pod_interfaces: usize,
    pub calico_pod_interfaces: usize,
}

impl Signals {
    /// Reads the node's IPv4 routes, next to its interfaces (`interfaces`: the daemon's table,
    /// kept current by link notifications, so no link dump: with a thousand pods that dump
    /// costs the kernel a peer-namespace lookup per veth).
    ///
    /// # Errors
    /// If the kernel refuses the route dump.
    pub async fn read<'a>(
        handle: &Handle,
        interfaces: impl Iterator<Item = &'a Interface> + Clone,
    ) -> Result<Self, rtnetlink::Error> {
        let mut routes =
            handle.route().get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()).execute();
        let mut bird_routes = false;
        while let Some(route) = routes.try_next().await? {
            // The main table only: BIRD's kernel protocol exports there by default.
            let main = route.header.table == 254
                || route.attributes.iter().any(|a| matches!(a, RouteAttribute::Table(254)));
            bird_routes |= main && route.header.protocol == RouteProtocol::Bird;
        }
        let named = |name: &str| interfaces.clone().any(|i| i.name == name);
        let pods = |prefix: &str| {
            interfaces.clone().filter(|i| i.name.starts_with(prefix) && i.peer_netnsid.is_some()).count()
        };
        Ok(Self {
            flannel_vxlan: named(FLANNEL_VXLAN),
            flannel_bridge: named(FLANNEL_BRIDGE),
            calico_vxlan: named(CALICO_VXLAN),
            bird_routes,
            flannel_pod_interfaces: pods(FLANNEL_POD_PREFIX),
            calico_pod_interfaces: pods(CALICO_POD_PREFIX),
        })
    }

    #[must_use]
    pub fn phase(&self) -> Phase {
        let flannel = self.flannel_vxlan || self.flannel_bridge;
        let calico = self.calico_vxlan || self.bird_routes || self.calico_pod_interfaces > 0;
        match (flannel, calico) {
            (true, false) => Phase::Flannel,
            (true, true) => Phase::Mixed,
            (false, true) => Phase::Calico,
            (false, false) => Phase::Unknown,
        }
    }
}

/// The phase and since when, kept across restarts by the baseline state file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    /// Unix time in seconds.
    pub since: f64,
    /// How many times the phase changed while cniguard watched (kept across restarts):
    /// `pod_to_pod_not_restored` counts its restore deadline from the latest change.
    #[serde(default)]
    pub changes: u32,
}

impl PhaseRecord {
    /// `phase` as observed now: the same record if it has not changed.
    #[must_use]
    pub fn observe(previous: Option<Self>, phase: Phase) -> Self {
        match previous {
            Some(record) if record.phase == phase => record,
            _ => Self {
                phase,
                since: unix_now(),
                changes: previous.map_or(0, |record| record.changes.saturating_add(1)),
            },
        }
    }
}

#[must_use]
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Exports the phase, when it last changed, and the signals it was read from.
pub struct PhaseCollector {
    state: std::sync::Arc<std::sync::RwLock<Option<(PhaseRecord, Signals)>>>,
    phase: Desc,
    changed: Desc,
    signal: Desc,
    pods: Desc,
}

/// The latest reading, shared with the collector.
pub type SharedPhase = std::sync::Arc<std::sync::RwLock<Option<(PhaseRecord, Signals)>>>;

impl PhaseCollector {
    #[must_use]
    pub fn new(state: SharedPhase) -> Self {
        Self {
            state,
            phase: catalogue::MIGRATION_PHASE.desc(),
            changed: catalogue::MIGRATION_PHASE_CHANGED_TIMESTAMP_SECONDS.desc(),
            signal: catalogue::MIGRATION_SIGNAL.desc(),
            pods: catalogue::MIGRATION_POD_INTERFACES.desc(),
        }
    }
}

impl Collector for PhaseCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.phase, &self.changed, &self.signal, &self.pods]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some((record, signals)) = *self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
        else {
            return Vec::new();
        };
        let mut phase = FamilyBuilder::gauge(&self.phase, &["phase"]);
        for candidate in Phase::ALL {
            phase.sample(&[candidate.label()], f64::from(u8::from(candidate == record.phase)));
        }
        let mut changed = FamilyBuilder::gauge(&self.changed, &[]);
        changed.sample(&[], record.since);
        let mut signal = FamilyBuilder::gauge(&self.signal, &["signal"]);
        for (name, present) in [
            ("flannel_vxlan", signals.flannel_vxlan),
            ("flannel_bridge", signals.flannel_bridge),
            ("calico_vxlan", signals.calico_vxlan),
            ("bird_routes", signals.bird_routes),
        ] {
            signal.sample(&[name], f64::from(u8::from(present)));
        }
        let mut pods = FamilyBuilder::gauge(&self.pods, &["cni"]);
        #[allow(clippy::cast_precision_loss, reason = "interface counts are small")]
        {
            pods.sample(&["flannel"], signals.flannel_pod_interfaces as f64);
            pods.sample(&["calico"], signals.calico_pod_interfaces as f64);
        }
        [phase.build(), changed.build(), signal.build(), pods.build()].into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_follows_the_signals() {
        let flannel = Signals {
            flannel_vxlan: true,
            flannel_bridge: true,
            flannel_pod_interfaces: 3,
            ..Signals::default()
        };
        assert_eq!(flannel.phase(), Phase::Flannel);
        let mixed = Signals { calico_vxlan: true, bird_routes: true, ..flannel };
        assert_eq!(mixed.phase(), Phase::Mixed);
        let calico = Signals { calico_vxlan: true, calico_pod_interfaces: 3, ..Signals::default() };
        assert_eq!(calico.phase(), Phase::Calico);
        // Plain veths (a host running containers, no CNI) are no sign of Flannel.
        let bare = Signals { flannel_pod_interfaces: 2, ..Signals::default() };
        assert_eq!(bare.phase(), Phase::Unknown);
    }

    #[test]
    fn a_phase_keeps_its_start_until_it_changes() {
        let first = PhaseRecord { phase: Phase::Flannel, since: 1000.0, changes: 0 };
        assert_eq!(PhaseRecord::observe(Some(first), Phase::Flannel), first);
        let next = PhaseRecord::observe(Some(first), Phase::Mixed);
        assert_eq!(next.phase, Phase::Mixed);
        assert!(next.since > first.since);
        assert_eq!(next.changes, 1, "the restore deadline counts from a change");
        assert_eq!(PhaseRecord::observe(None, Phase::Calico).changes, 0, "a first look is no change");
    }
}
