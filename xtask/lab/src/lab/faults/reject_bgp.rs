//! [`Fault::RejectBgp`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, add_fault_table, remove_fault_table};
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "reject-bgp",
    about: "A firewall on a node answers a peer's BGP (TCP 179) with TCP resets",
    params: &[
        FaultParam { name: "node", kind: ParamKind::Text, default: None },
        FaultParam { name: "peer", kind: ParamKind::Text, default: None },
    ],
    from_values: |values| Ok(Fault::RejectBgp { node: values.text("node")?, peer: values.text("peer")? }),
};

pub(super) struct RejectBgp<'a> {
    pub(super) node: &'a str,
    pub(super) peer: &'a str,
}

impl Effect for RejectBgp<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reject BGP from {} on {} with TCP resets", self.peer, self.node)
    }

    /// Both ways of the session, as a host firewall's `reject with tcp-reset` rule does:
    /// the peer's connections to 179 and its answers from 179.
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let node = lab.selected_nodes(Some(self.node))?[0];
        let peer = lab.state.topology.nodes[lab.selected_nodes(Some(self.peer))?[0]].address;
        add_fault_table(
            &lab.state.topology.node_netns(node),
            &format!(
                " chain input {{ type filter hook input priority 0; ip saddr {peer} tcp dport 179 reject with tcp reset; ip saddr {peer} tcp sport 179 reject with tcp reset; }}\n"
            ),
        )
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        let node = lab.selected_nodes(Some(self.node))?[0];
        remove_fault_table(&lab.state.topology.node_netns(node));
        Ok(())
    }
}
