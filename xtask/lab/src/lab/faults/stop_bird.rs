//! [`Fault::StopBird`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind};
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "stop-bird",
    about: "Stop BIRD on a node (its BGP sessions go down)",
    params: &[FaultParam { name: "node", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::StopBird { node: values.text("node")? }),
};

pub(super) struct StopBird<'a> {
    pub(super) node: &'a str,
}

impl StopBird<'_> {
    fn process_key(&self) -> String {
        format!("bird/{}", self.node)
    }
}

impl Effect for StopBird<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stop BIRD on {}", self.node)
    }

    fn inject(&self, lab: &mut Lab) -> Result<()> {
        lab.selected_nodes(Some(self.node))?;
        lab.state.processes.stop(&self.process_key());
        Ok(())
    }

    /// BIRD starts again, meshed with the Calico nodes there are now.
    fn repair(&self, lab: &mut Lab) -> Result<()> {
        lab.sync_calico()
    }

    fn stops(&self, key: &str) -> bool {
        key == self.process_key()
    }
}
