//! The probes: one module per probe, each turning its eBPF programs' maps into metrics
//! (and, for those that feed judgement, typed signals), listed once in [`registry`], which
//! starts them all; `attach` follows interfaces for the classifier probes.
//!
//! Adding a probe means: its programs in `probe-ebpf/src/<probe>.rs`, its map types in
//! `probe-common/src/<probe>.rs`, a module here with its `SPEC`, and one row in
//! [`PROBES`] (DEVELOPERS.md, "Adding a probe").

pub mod attach;
pub mod bgp_codes;
pub mod cidr;
pub mod dns;
pub mod drops;
pub mod iface_stats;
pub mod localhost;
pub mod map_health;
pub mod overlay;
pub mod registry;
pub mod shared;
pub mod sock_state;
pub mod tcp_health;
pub mod underlay;

use probe_common::Direction;

use self::registry::ProbeSpec;
use crate::node::interfaces::{Interface, InterfaceTable};

/// Every probe, in start order: the maps every program shares first, then the classifiers
/// (attached per interface by `attach`), then the probes that attach once at start.
pub const PROBES: &[&ProbeSpec] = &[
    &map_health::SPEC,
    &iface_stats::SPEC,
    &underlay::SPEC,
    &overlay::SPEC,
    &dns::SPEC,
    &sock_state::SPEC,
    &localhost::SPEC,
    &drops::SPEC,
    &tcp_health::SPEC,
];

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
