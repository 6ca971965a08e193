//! [`Fault::WrongRouterId`]: its command line, inject and repair.

use std::fmt;
use std::net::Ipv4Addr;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, node_netns};
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "wrong-router-id",
    about: "A node gets a second interface, and BIRD announces its address as the router id (Calico's first-found picked it)",
    params: &[FaultParam { name: "node", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::WrongRouterId { node: values.text("node")? }),
};

/// The address a NAT interface of a VM gets (VirtualBox, Vagrant): the classic wrong pick.
pub const WRONG_ROUTER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The interface that holds it: a bridge (this kernel has no dummy devices), never up.
pub const WRONG_ROUTER_ID_DEVICE: &str = "eth1";

pub(super) struct WrongRouterId<'a> {
    pub(super) node: &'a str,
}

impl Effect for WrongRouterId<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BIRD on {} announces router id {WRONG_ROUTER_ID} ({WRONG_ROUTER_ID_DEVICE})", self.node)
    }

    /// The second interface first, then BIRD reloaded with its address as router id: BIRD
    /// restarts its sessions, and every OPEN after announces it. The sessions still come up
    /// (peers accept any identifier but their own): only the identifier is wrong.
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let netns = node_netns(lab, self.node)?;
        if netns.ip(&["link", "show", "dev", WRONG_ROUTER_ID_DEVICE]).is_err() {
            netns.ip(&["link", "add", WRONG_ROUTER_ID_DEVICE, "type", "bridge"])?;
        }
        netns.ip(&["addr", "replace", &format!("{WRONG_ROUTER_ID}/24"), "dev", WRONG_ROUTER_ID_DEVICE])?;
        lab.sync_calico()
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        lab.sync_calico()?;
        let netns = node_netns(lab, self.node)?;
        let _ = netns.ip(&["link", "del", WRONG_ROUTER_ID_DEVICE]);
        Ok(())
    }
}
