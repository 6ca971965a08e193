//! [`Fault::StopDns`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind};
use crate::lab::Lab;

pub(super) const KIND: FaultKind = FaultKind {
    name: "stop-dns",
    about: "Stop the cluster DNS server",
    params: &[],
    from_values: |_| Ok(Fault::StopDns),
};

pub(super) struct StopDns;

impl Effect for StopDns {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stop the cluster DNS")
    }

    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let dns_keys: Vec<String> =
            lab.planned_workloads().into_iter().filter(|p| self.stops(&p.key)).map(|p| p.key).collect();
        for key in dns_keys {
            lab.state.processes.stop(&key);
        }
        Ok(())
    }

    /// The DNS server starts again.
    fn repair(&self, lab: &mut Lab) -> Result<()> {
        lab.reconcile_workloads()
    }

    fn stops(&self, key: &str) -> bool {
        key.ends_with("/dns")
    }
}
