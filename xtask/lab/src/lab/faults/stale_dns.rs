//! [`Fault::StaleDns`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, start_workload};
use crate::lab::Lab;
use crate::netns::NetNs;

pub(super) const KIND: FaultKind = FaultKind {
    name: "stale-dns",
    about: "A pod keeps asking the old cluster DNS (K3s' 10.43.0.10), as one created before the service range moved",
    params: &[FaultParam { name: "pod", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::StaleDns { pod: values.text("pod")? }),
};

pub(super) struct StaleDns<'a> {
    pub(super) pod: &'a str,
}

/// K3s' cluster DNS before the service range moved (10.43.0.0/16 to 10.96.0.0/12): no
/// longer served anywhere in the lab.
pub const OLD_CLUSTER_DNS: &str = "10.43.0.10";

impl StaleDns<'_> {
    fn process_key(&self) -> String {
        format!("fault/stale-dns/{}", self.pod)
    }
}

impl Effect for StaleDns<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} asks the old cluster DNS {OLD_CLUSTER_DNS}", self.pod)
    }

    /// A DNS client in the pod, as its resolv.conf of before the move would have it ask.
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let netns = NetNs::existing(&lab.pod_netns_name(self.pod)?);
        let server = format!("{OLD_CLUSTER_DNS}:53");
        let args = [
            "dns-client",
            "--server",
            &server,
            "--name",
            "kubernetes.default.svc.cluster.local",
            "--rate",
            "4",
            "--timeout-ms",
            "500",
        ];
        start_workload(lab, &self.process_key(), &netns, &args)
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        lab.state.processes.stop(&self.process_key());
        Ok(())
    }
}
