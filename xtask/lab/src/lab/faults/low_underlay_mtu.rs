//! [`Fault::LowUnderlayMtu`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, node_netns};
use crate::lab::Lab;
use crate::netns::NetNs;

pub(super) const KIND: FaultKind = FaultKind {
    name: "low-underlay-mtu",
    about: "A node's underlay link (its eth0 and the router's end) gets a lower MTU; vxlan.calico keeps its own",
    params: &[
        FaultParam { name: "node", kind: ParamKind::Text, default: None },
        FaultParam { name: "mtu", kind: ParamKind::Number, default: Some("1400") },
    ],
    from_values: |values| {
        Ok(Fault::LowUnderlayMtu { node: values.text("node")?, mtu: values.number("mtu")? })
    },
};

/// The lab's underlay MTU: veth's default.
const UNDERLAY_MTU: u32 = 1500;

pub(super) struct LowUnderlayMtu<'a> {
    pub(super) node: &'a str,
    pub(super) mtu: u32,
}

impl LowUnderlayMtu<'_> {
    /// Both ends of the node's link, as a narrower network would be (a VPN, a cloud's 1460).
    fn set(&self, lab: &Lab, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        let node = node_netns(lab, self.node)?;
        node.ip(&["link", "set", "dev", "eth0", "mtu", &mtu])?;
        let router = NetNs::existing(&lab.state.topology.router_netns());
        router.ip(&["link", "set", "dev", self.node, "mtu", &mtu])?;
        Ok(())
    }
}

impl Effect for LowUnderlayMtu<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MTU {} on {}'s underlay link", self.mtu, self.node)
    }

    fn inject(&self, lab: &mut Lab) -> Result<()> {
        self.set(lab, self.mtu)
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        self.set(lab, UNDERLAY_MTU)
    }
}
