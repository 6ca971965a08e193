//! [`Fault::RouteOverlap`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, node_netns};
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "route-overlap",
    about: "Route a piece of Calico's pod range (10.244.250.0/24) through a node's own network",
    params: &[FaultParam { name: "node", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::RouteOverlap { node: values.text("node")? }),
};

pub(super) struct RouteOverlap<'a> {
    pub(super) node: &'a str,
}

/// Inside the lab's new pod CIDR, 10.244.0.0/16, and outside every node's pod blocks.
pub const OVERLAPPING_ROUTE: &str = "10.244.250.0/24";

impl Effect for RouteOverlap<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {OVERLAPPING_ROUTE} through eth0 on {}", self.node)
    }

    /// As a node network that overlaps the pod range does: a route on the node's own NIC.
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        node_netns(lab, self.node)?.ip(&["route", "add", OVERLAPPING_ROUTE, "dev", "eth0"])?;
        Ok(())
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        let _ = node_netns(lab, self.node)?.ip(&["route", "delete", OVERLAPPING_ROUTE, "dev", "eth0"]);
        Ok(())
    }
}
