//! [`Fault::VethLoss`]: its command line, inject and repair.

use std::fmt::{self, Write as _};

use anyhow::{Result, ensure};

use super::{Effect, Fault, FaultKind, FaultParam, ParamKind, delete_nft_table, nft};
use crate::lab::Lab;
use crate::topology::Cni;

pub(super) const KIND: FaultKind = FaultKind {
    name: "veth-loss",
    about: "Lose a share of the packets towards a pod, on its veth (nftables)",
    params: &[
        FaultParam { name: "pod", kind: ParamKind::Text, default: None },
        FaultParam { name: "percent", kind: ParamKind::Number, default: Some("30") },
    ],
    from_values: |values| {
        Ok(Fault::VethLoss { pod: values.text("pod")?, percent: values.number("percent")? })
    },
};

/// The nftables table of the loss, in the pod's node namespace.
const LOSS_TABLE: &str = "cniguard_lab_loss";

pub(super) struct VethLoss<'a> {
    pub(super) pod: &'a str,
    pub(super) percent: u32,
}

impl Effect for VethLoss<'_> {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lose {}% of packets to {}", self.percent, self.pod)
    }

    fn inject(&self, lab: &mut Lab) -> Result<()> {
        let percent = self.percent;
        ensure!((1..=100).contains(&percent), "a loss of {percent}% makes no sense: give 1 to 100");
        let (node_ns, veth) = lab.host_side(self.pod)?;
        nft(node_ns.name(), &loss_ruleset(lab.pod_cni(self.pod), &veth, percent))
    }

    fn repair(&self, lab: &mut Lab) -> Result<()> {
        let (node_ns, _) = lab.host_side(self.pod)?;
        delete_nft_table(node_ns.name(), loss_family(lab.pod_cni(self.pod)), LOSS_TABLE);
        Ok(())
    }
}

/// The nftables family that sees packets leave through a pod's veth: Flannel bridges them
/// from cni0 (bridge family), Calico routes them (inet).
fn loss_family(cni: Option<Cni>) -> &'static str {
    if cni == Some(Cni::Flannel) { "bridge" } else { "inet" }
}

/// Drops `percent`% of the packets sent through `veth`, chosen at random per packet.
fn loss_ruleset(cni: Option<Cni>, veth: &str, percent: u32) -> String {
    let family = loss_family(cni);
    // Bridged frames from cni0 itself pass the bridge's output hook, forwarded ones its
    // forward hook; routed ones the inet forward hook.
    let hooks: &[&str] = if family == "bridge" { &["forward", "output"] } else { &["forward"] };
    // nftables compares `numgen random mod 100` with 0-99 only: all means no draw at all.
    let draw = if percent >= 100 { String::new() } else { format!("numgen random mod 100 < {percent} ") };
    let mut ruleset = format!("table {family} {LOSS_TABLE} {{\n");
    for hook in hooks {
        let _ = writeln!(
            ruleset,
            " chain {hook} {{ type filter hook {hook} priority 0; oifname \"{veth}\" {draw}drop; }}"
        );
    }
    ruleset.push_str("}\n");
    ruleset
}
