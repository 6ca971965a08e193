//! [`Fault::FlannelLeftover`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, node_netns};
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "flannel-leftover",
    about: "Leave Flannel's flannel.1 behind on a node after its cutover",
    params: &[FaultParam { name: "node", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::FlannelLeftover { node: values.text("node")? }),
};

pub(super) struct FlannelLeftover<'a> {
    pub(super) node: &'a str,
}

const DEVICE: &str = "flannel.1";

impl Effect for FlannelLeftover<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "leave {DEVICE} behind on {}", self.node)
    }

    /// The device as Flannel's VXLAN backend makes it (VNI 1, port 8472, no learning), and
    /// up: what a node keeps when Flannel is stopped without its cleanup.
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let netns = node_netns(lab, self.node)?;
        netns.ip(&[
            "link",
            "add",
            DEVICE,
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "dev",
            "eth0",
            "nolearning",
        ])?;
        netns.ip(&["link", "set", DEVICE, "up"])?;
        Ok(())
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        // Gone already (the node rolled back and forth) is fine.
        let _ = node_netns(lab, self.node)?.ip(&["link", "delete", DEVICE]);
        Ok(())
    }
}
