//! [`Fault::BgpWrongAs`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind};
use crate::lab::Lab;
use crate::services::WRONG_AS;

pub(super) const KIND: FaultKind = FaultKind {
    name: "bgp-wrong-as",
    about: "A node's BIRD expects the wrong AS of a peer: TCP 179 connects, the OPEN is refused",
    params: &[
        FaultParam { name: "node", kind: ParamKind::Text, default: None },
        FaultParam { name: "peer", kind: ParamKind::Text, default: None },
    ],
    from_values: |values| Ok(Fault::BgpWrongAs { node: values.text("node")?, peer: values.text("peer")? }),
};

pub(super) struct BgpWrongAs<'a> {
    pub(super) node: &'a str,
    pub(super) peer: &'a str,
}

impl Effect for BgpWrongAs<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BIRD on {} expects AS {WRONG_AS} of {}", self.node, self.peer)
    }

    /// The node's BIRD configuration is written again with the fault listed, and reloaded:
    /// BIRD restarts that one session, and each attempt after ends with its NOTIFICATION
    /// (open message error / bad peer AS).
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        lab.selected_nodes(Some(self.node))?;
        lab.selected_nodes(Some(self.peer))?;
        lab.sync_calico()
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        lab.sync_calico()
    }
}
