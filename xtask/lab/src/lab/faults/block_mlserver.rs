//! [`Fault::BlockMlserver`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, add_fault_table, remove_fault_table};
use crate::lab::Lab;
use crate::topology::MLSERVER_PORT;

pub(super) const KIND: FaultKind = FaultKind {
    name: "block-mlserver",
    about: "Block 127.0.0.1:9500 inside the MLServer pod",
    params: &[],
    from_values: |_| Ok(Fault::BlockMlserver),
};

/// The pod whose loopback the fault blocks.
const POD: &str = "mlserver-0";

pub(super) struct BlockMlserver;

impl Effect for BlockMlserver {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block 127.0.0.1:{MLSERVER_PORT} in the MLServer pod")
    }

    fn inject(&self, lab: &mut Lab) -> Result<()> {
        add_fault_table(
            &lab.pod_netns_name(POD)?,
            &format!(
                " chain input {{ type filter hook input priority 0; iif \"lo\" tcp dport {MLSERVER_PORT} drop; }}\n"
            ),
        )
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        remove_fault_table(&lab.pod_netns_name(POD)?);
        Ok(())
    }
}
