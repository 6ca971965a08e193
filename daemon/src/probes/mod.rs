//! The probe registry: which eBPF programs make up each probe, where they attach, and the
//! collector that turns their maps into metrics.
//!
//! Adding a probe means: its programs in `probe-ebpf/src/<probe>.rs`, its map types in
//! `probe-common/src/<probe>.rs`, a module here that takes its maps and registers its
//! collector, and one line in [`interface_probes`].

pub mod attach;
pub mod bgp_codes;
pub mod dns;
pub mod drops;
pub mod iface_stats;
pub mod localhost;
pub mod map_health;
pub mod overlay;
pub mod shared;
pub mod sock_state;
pub mod tcp_health;
pub mod underlay;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Result;
use aya::Ebpf;
use probe_common::Direction;

use crate::config::Settings;
use crate::metrics::DaemonMetrics;
use crate::metrics::labels::PeerLabels;
use crate::node::interfaces::{Interface, InterfaceTable};

/// A classifier of an interface probe and the tc hook it runs at.
#[derive(Debug, Clone, Copy)]
pub struct TcProgram {
    /// The program's function name in `probe-ebpf` (also its tc filter name in netlink mode).
    pub function: &'static str,
    pub direction: Direction,
}

/// A probe whose classifiers attach to the interfaces it selects.
pub trait InterfaceProbe: Send + Sync {
    /// The `probe` label value.
    fn name(&self) -> &'static str;
    fn programs(&self) -> &'static [TcProgram];
    /// Whether to attach to `interface`, given every interface of the namespace (an
    /// underlay is known by the VXLAN devices that send through it).
    fn wants(&self, interface: &Interface, all: &InterfaceTable) -> bool;
    /// Sees the interface table after every change, before attachments follow it.
    fn observe_interfaces(&self, _all: &InterfaceTable) {}
    /// Drops the state of interfaces for which `keep` is false (gone, or no longer watched),
    /// so their series leave /metrics and their map entries are reclaimed.
    fn retain_interfaces(&self, keep: &dyn Fn(u32) -> bool);
}

/// Names of the interfaces probes are attached to, by index: the `interface` label.
/// Collectors only report interfaces listed here, so a series ends when its interface goes.
#[derive(Clone, Default)]
pub struct AttachedInterfaces(Arc<RwLock<HashMap<u32, String>>>);

impl AttachedInterfaces {
    pub fn insert(&self, index: u32, name: &str) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(index, name.to_owned());
    }

    pub fn remove(&self, index: u32) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).remove(&index);
    }

    #[must_use]
    pub fn name(&self, index: u32) -> Option<String> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(&index).cloned()
    }

    #[must_use]
    pub fn contains(&self, index: u32) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains_key(&index)
    }

    /// Replaces every entry.
    pub fn replace(&self, names: impl IntoIterator<Item = (u32, String)>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = names.into_iter().collect();
    }
}

/// Takes each interface probe's maps out of `ebpf` and registers its collector.
///
/// # Errors
/// If a map the probes expect is missing from the object (a build mismatch).
pub fn interface_probes(
    ebpf: &mut Ebpf,
    settings: &Settings,
    attached: &AttachedInterfaces,
    peers: &Arc<PeerLabels>,
    classes: &Arc<shared::CidrClasses>,
    metrics: &DaemonMetrics,
) -> Result<Vec<Arc<dyn InterfaceProbe>>> {
    map_health::register(ebpf, metrics)?;
    Ok(vec![
        iface_stats::IfaceStats::register(ebpf, settings.interfaces.clone(), attached, metrics)?,
        underlay::Underlay::register(
            ebpf,
            settings.vxlan_ports.clone(),
            settings.underlay_interfaces.clone(),
            attached,
            peers.clone(),
            metrics,
        )?,
        overlay::Overlay::register(ebpf, classes.clone(), attached, metrics)?,
        dns::Dns::register(
            ebpf,
            settings.dns.interfaces.clone(),
            settings.dns.timeout,
            attached,
            peers.clone(),
            metrics,
        )?,
    ])
}
