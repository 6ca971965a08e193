//! [`Fault::WrongVxlanAddress`]: its command line, inject and repair.

use std::fmt;

use anyhow::{Result, bail};

use super::wrong_router_id::{WRONG_ROUTER_ID, WRONG_ROUTER_ID_DEVICE};
use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, node_netns};
use crate::dataplane;
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "wrong-vxlan-address",
    about: "A node gets a second interface, and vxlan.calico sends from its address (Calico's first-found picked it)",
    params: &[FaultParam { name: "node", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::WrongVxlanAddress { node: values.text("node")? }),
};

pub(super) struct WrongVxlanAddress<'a> {
    pub(super) node: &'a str,
}

impl Effect for WrongVxlanAddress<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vxlan.calico on {} sends from {WRONG_ROUTER_ID} ({WRONG_ROUTER_ID_DEVICE})", self.node)
    }

    /// The second interface first, then `vxlan.calico` re-made as Felix makes it from the
    /// address it detected: `local` that address, `dev` its interface. Nothing it sends
    /// gets out (that interface leads nowhere), so its peers' VXLAN goes unanswered too.
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let node = lab.selected_nodes(Some(self.node))?[0];
        if !lab.state.calico[node] {
            bail!("{} is not on Calico: inject wrong-vxlan-address after its cutover", self.node);
        }
        let netns = node_netns(lab, self.node)?;
        if netns.ip(&["link", "show", "dev", WRONG_ROUTER_ID_DEVICE]).is_err() {
            netns.ip(&["link", "add", WRONG_ROUTER_ID_DEVICE, "type", "bridge"])?;
        }
        netns.ip(&["addr", "replace", &format!("{WRONG_ROUTER_ID}/24"), "dev", WRONG_ROUTER_ID_DEVICE])?;
        dataplane::calico_vxlan_device(&lab.state.topology, node, (WRONG_ROUTER_ID, WRONG_ROUTER_ID_DEVICE))?;
        // Its routes and FDB entries went with the old device.
        lab.sync_calico()
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        let node = lab.selected_nodes(Some(self.node))?[0];
        let address = lab.state.topology.nodes[node].address;
        if lab.state.calico[node] {
            dataplane::calico_vxlan_device(&lab.state.topology, node, (address, "eth0"))?;
            lab.sync_calico()?;
        }
        // The second interface stays while wrong-router-id uses it too.
        let shared =
            lab.state.faults.iter().any(|f| matches!(f, Fault::WrongRouterId { node } if node == self.node));
        if !shared {
            let _ = node_netns(lab, self.node)?.ip(&["link", "del", WRONG_ROUTER_ID_DEVICE]);
        }
        Ok(())
    }
}
