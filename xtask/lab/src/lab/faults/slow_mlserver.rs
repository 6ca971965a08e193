//! [`Fault::SlowMlserver`]: its command line, inject and repair, and the delay the
//! MLServer's plan reads from it.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind};
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "slow-mlserver",
    about: "Make the MLServer's model answer late (a known delay on the pod's loopback path)",
    params: &[FaultParam { name: "ms", kind: ParamKind::Number, default: Some("5") }],
    from_values: |values| Ok(Fault::SlowMlserver { ms: values.number("ms")? }),
};

pub(super) struct SlowMlserver {
    pub(super) ms: u32,
}

impl Effect for SlowMlserver {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "make the MLServer's model answer {} ms late", self.ms)
    }

    /// The MLServer restarts with its model's predict delayed ([`Lab::mlserver_delay_ms`]):
    /// a new folder, a new command line.
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        lab.reconcile_workloads()
    }

    /// The MLServer restarts without the delay.
    fn repair(&self, lab: &mut Lab) -> Result<()> {
        lab.reconcile_workloads()
    }
}

impl Lab {
    /// How late the MLServer answers while the fault is in place, in milliseconds.
    pub(in crate::lab) fn mlserver_delay_ms(&self) -> u32 {
        self.state
            .faults
            .iter()
            .find_map(|fault| match fault {
                Fault::SlowMlserver { ms } => Some(*ms),
                _ => None,
            })
            .unwrap_or(0)
    }
}
