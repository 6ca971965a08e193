//! [`Fault::OldAddressPod`]: its command line, inject and repair.

use std::fmt;

use anyhow::{Context as _, Result, bail};

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, start_workload};
use crate::lab::Lab;
use crate::netns::NetNs;
use crate::topology::Cni;

pub(super) const KIND: FaultKind = FaultKind {
    name: "old-address-pod",
    about: "After its node's cutover, a copy of a pod is left on its Flannel address (10.42/16) and its veth, never re-created, still sending",
    params: &[FaultParam { name: "pod", kind: ParamKind::Text, default: None }],
    from_values: |values| Ok(Fault::OldAddressPod { pod: values.text("pod")? }),
};

pub(super) struct OldAddressPod<'a> {
    pub(super) pod: &'a str,
}

/// The MAC the pod keeps for its gateway: Flannel's `cni0`, gone with Flannel.
const GONE_BRIDGE_MAC: &str = "0a:58:0a:2a:00:01";
/// Datagrams per second the left-behind pod sends (to another pod's old address).
const RATE: &str = "20";

impl OldAddressPod<'_> {
    fn process_key(&self) -> String {
        format!("fault/old-address-pod/{}", self.pod)
    }

    /// Its namespace, under the lab's prefix (so `lab down` removes it).
    fn netns(&self, lab: &Lab) -> Result<String> {
        let topology = &lab.state.topology;
        let spec = topology.pod(self.pod).with_context(|| format!("no pod {:?} in the lab", self.pod))?;
        Ok(topology.left_behind_netns(spec))
    }
}

impl Effect for OldAddressPod<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} left behind on its Flannel address", self.pod)
    }

    /// What a node keeps of a pod the playbook forgot to re-create once `cni0` is gone: its
    /// namespace with the old address and route, its `veth*` with no bridge above it, and
    /// its process sending (into nothing: no route on the node leads back to it).
    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let topology = lab.state.topology.clone();
        let spec = topology.pod(self.pod).with_context(|| format!("no pod {:?} in the lab", self.pod))?;
        let node = &topology.nodes[spec.node];
        if lab.pod_cni(self.pod) != Some(Cni::Calico) || lab.state.flannel[spec.node] {
            bail!(
                "{} is not cut over yet: inject old-address-pod after `cargo xtask lab cutover --node {}`",
                self.pod,
                node.name
            );
        }
        let address = node.pod_address(Cni::Flannel, spec.host);
        let gateway = node.pod_address(Cni::Flannel, 1).to_string();
        let host = topology.left_behind_veth(spec);
        let name = self.netns(lab)?;
        let pod_ns = NetNs::create(&name, false)?;
        let node_ns = NetNs::existing(&topology.node_netns(spec.node));
        node_ns.ip(&["link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &name])?;
        node_ns.ip(&["link", "set", &host, "up"])?;
        pod_ns.ip(&["link", "set", "eth0", "up"])?;
        pod_ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        pod_ns.ip(&["route", "add", "default", "via", &gateway])?;
        pod_ns.ip(&[
            "neigh",
            "replace",
            &gateway,
            "lladdr",
            GONE_BRIDGE_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        // Any other pod's old address: the traffic never gets past the node's veth.
        let peer = topology.pods.iter().find(|p| p.name != spec.name).map_or(gateway.clone(), |p| {
            topology.nodes[p.node].pod_address(Cni::Flannel, p.host).to_string()
        });
        start_workload(
            lab,
            &self.process_key(),
            &pod_ns,
            &["udp-send", "--to", &format!("{peer}:7777"), "--rate", RATE],
        )
    }

    /// The fix the finding names: the pod goes (its Calico generation already runs).
    fn repair(&self, lab: &mut Lab) -> Result<()> {
        lab.state.processes.stop(&self.process_key());
        // The veth goes with the namespace.
        NetNs::delete(&self.netns(lab)?);
        Ok(())
    }
}
