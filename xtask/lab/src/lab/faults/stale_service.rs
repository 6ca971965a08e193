//! [`Fault::StaleService`]: its command line, inject and repair.

use std::fmt;

use anyhow::Result;

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind};
use crate::lab::Lab;
use crate::netns::NetNs;

pub(super) const KIND: FaultKind = FaultKind {
    name: "stale-service",
    about: "A pod keeps calling the old API ClusterIP (K3s' 10.43.0.1:443), as one created before the service range moved",
    params: &[FaultParam { name: "pod", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::StaleService { pod: values.text("pod")? }),
};

/// K3s' API ClusterIP before the service range moved: served nowhere in the lab.
pub const OLD_API_SERVICE: &str = "10.43.0.1:443";

/// Connects to the old API address four times a second, each attempt given up after a
/// second, as a client whose `KUBERNETES_SERVICE_HOST` is stale retries: one process, so
/// stopping it stops every attempt.
const CLIENT: &str = "import socket, time
while True:
    try:
        socket.create_connection(('10.43.0.1', 443), timeout=1).close()
    except OSError:
        pass
    time.sleep(0.25)
";

pub(super) struct StaleService<'a> {
    pub(super) pod: &'a str,
}

impl StaleService<'_> {
    fn process_key(&self) -> String {
        format!("fault/stale-service/{}", self.pod)
    }
}

impl Effect for StaleService<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} calls the old API address {OLD_API_SERVICE}", self.pod)
    }

    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let netns = NetNs::existing(&lab.pod_netns_name(self.pod)?);
        let key = self.process_key();
        let log = lab.log_file(&key.replace('/', "_"));
        let args = vec!["-c".to_owned(), CLIENT.to_owned()];
        lab.state.processes.start(&key, &netns, std::path::Path::new("/usr/bin/python3"), &args, log)?;
        Ok(())
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        lab.state.processes.stop(&self.process_key());
        Ok(())
    }
}
