//! [`Fault::BlockVxlan`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, add_fault_table, remove_fault_table};
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "block-vxlan",
    about: "Drop VXLAN (UDP 8472 and 4789) on a node",
    params: &[FaultParam { name: "node", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::BlockVxlan { node: values.text("node")? }),
};

pub(super) struct BlockVxlan<'a> {
    pub(super) node: &'a str,
}

impl BlockVxlan<'_> {
    fn node_netns(&self, lab: &Lab) -> Result<String> {
        Ok(lab.state.topology.node_netns(lab.selected_nodes(Some(self.node))?[0]))
    }
}

impl Effect for BlockVxlan<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block VXLAN on {}", self.node)
    }

    fn inject(&self, lab: &mut Lab) -> Result<()> {
        add_fault_table(
            &self.node_netns(lab)?,
            " chain output { type filter hook output priority 0; udp dport { 8472, 4789 } drop; }\n chain input { type filter hook input priority 0; udp dport { 8472, 4789 } drop; }\n",
        )
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        remove_fault_table(&self.node_netns(lab)?);
        Ok(())
    }
}
