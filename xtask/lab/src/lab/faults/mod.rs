//! The faults the lab can inject and repair. Each has a module of its own with everything
//! about it side by side: its name on the command line (also its tag in the saved state),
//! what it does (inject) and how that is taken back (repair). [`FAULTS`] lists them for
//! `cargo xtask lab inject|repair`, whose subcommands are made from it.

mod bgp_wrong_as;
mod block_mlserver;
mod block_vxlan;
mod flannel_leftover;
mod low_underlay_mtu;
mod old_address_pod;
mod reject_bgp;
mod route_overlap;
mod slow_mlserver;
mod stale_dns;
mod stale_service;
mod stop_bird;
mod stop_dns;
mod veth_loss;
mod wrong_router_id;
mod wrong_vxlan_address;

pub use route_overlap::OVERLAPPING_ROUTE;
pub use stale_dns::OLD_CLUSTER_DNS;
pub use stale_service::OLD_API_SERVICE;
pub use wrong_router_id::{WRONG_ROUTER_ID, WRONG_ROUTER_ID_DEVICE};

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::Lab;
use crate::netns::run;

/// A fault `inject` can introduce and `repair` can take back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// nftables on the node drops VXLAN (UDP 8472 and 4789) both ways.
    BlockVxlan { node: String },
    /// BIRD stops on the node: its BGP sessions go down.
    StopBird { node: String },
    /// Inside the MLServer pod, 127.0.0.1:9500 stops answering: the problem the runbook
    /// migrates away from.
    BlockMlserver,
    /// The cluster DNS server stops.
    StopDns,
    /// The MLServer's model answers `ms` late: a known delay on the pod's loopback path to
    /// it. (The kernels this runs on lack sch_netem, so the delay is the server's: the
    /// `slow` model's predict waits it.)
    SlowMlserver { ms: u32 },
    /// nftables drops `percent`% of the packets towards a pod, at random, on its veth.
    VethLoss { pod: String, percent: u32 },
    /// A firewall on `node` answers `peer`'s BGP with TCP resets, both ways of the session.
    RejectBgp { node: String, peer: String },
    /// Flannel's `flannel.1` is left behind on a node after its cutover.
    FlannelLeftover { node: String },
    /// A route of the node's own network into Calico's pod range.
    RouteOverlap { node: String },
    /// A pod keeps asking the cluster DNS of before the service range moved.
    StaleDns { pod: String },
    /// BIRD on `node` expects the wrong AS of `peer`: their session never comes up.
    BgpWrongAs { node: String, peer: String },
    /// BIRD on `node` announces another of its interfaces' addresses as its router id.
    WrongRouterId { node: String },
    /// The node's underlay link gets MTU `mtu`; its VXLAN device keeps its own.
    LowUnderlayMtu { node: String, mtu: u32 },
    /// A pod keeps calling the API ClusterIP of before the service range moved.
    StaleService { pod: String },
    /// A copy of a pod stays on its Flannel address after its node's cutover.
    OldAddressPod { pod: String },
    /// `vxlan.calico` on `node` sends from another of its interfaces' addresses.
    WrongVxlanAddress { node: String },
}

/// Every fault as the command line offers it, in the order of its help.
pub const FAULTS: &[FaultKind] = &[
    block_vxlan::KIND,
    stop_bird::KIND,
    block_mlserver::KIND,
    stop_dns::KIND,
    slow_mlserver::KIND,
    veth_loss::KIND,
    reject_bgp::KIND,
    flannel_leftover::KIND,
    route_overlap::KIND,
    stale_dns::KIND,
    bgp_wrong_as::KIND,
    wrong_router_id::KIND,
    low_underlay_mtu::KIND,
    stale_service::KIND,
    old_address_pod::KIND,
    wrong_vxlan_address::KIND,
];

impl Fault {
    /// The fault's own module, with its parameters.
    fn effect(&self) -> Box<dyn Effect + '_> {
        match self {
            Self::BlockVxlan { node } => Box::new(block_vxlan::BlockVxlan { node }),
            Self::StopBird { node } => Box::new(stop_bird::StopBird { node }),
            Self::BlockMlserver => Box::new(block_mlserver::BlockMlserver),
            Self::StopDns => Box::new(stop_dns::StopDns),
            Self::SlowMlserver { ms } => Box::new(slow_mlserver::SlowMlserver { ms: *ms }),
            Self::VethLoss { pod, percent } => Box::new(veth_loss::VethLoss { pod, percent: *percent }),
            Self::RejectBgp { node, peer } => Box::new(reject_bgp::RejectBgp { node, peer }),
            Self::FlannelLeftover { node } => Box::new(flannel_leftover::FlannelLeftover { node }),
            Self::RouteOverlap { node } => Box::new(route_overlap::RouteOverlap { node }),
            Self::StaleDns { pod } => Box::new(stale_dns::StaleDns { pod }),
            Self::BgpWrongAs { node, peer } => Box::new(bgp_wrong_as::BgpWrongAs { node, peer }),
            Self::WrongRouterId { node } => Box::new(wrong_router_id::WrongRouterId { node }),
            Self::StaleService { pod } => Box::new(stale_service::StaleService { pod }),
            Self::OldAddressPod { pod } => Box::new(old_address_pod::OldAddressPod { pod }),
            Self::WrongVxlanAddress { node } => Box::new(wrong_vxlan_address::WrongVxlanAddress { node }),
            Self::LowUnderlayMtu { node, mtu } => {
                Box::new(low_underlay_mtu::LowUnderlayMtu { node, mtu: *mtu })
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.effect().describe(f)
    }
}

/// What a fault does to the lab, and how that is taken back.
trait Effect {
    /// What it does, in a few words, for the lab's output and timeline.
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    /// Makes it so. The lab lists the fault already, so what this (re)starts sees it.
    fn inject(&self, lab: &mut Lab) -> Result<()>;
    /// Takes it back. The lab no longer lists the fault.
    fn repair(&self, lab: &mut Lab) -> Result<()>;
    /// Whether it stops the process under `key` on purpose.
    fn stops(&self, _key: &str) -> bool {
        false
    }
}

/// A fault as the command line names it: `cargo xtask lab inject <name> [--<param> <value>]`.
#[derive(Debug)]
pub struct FaultKind {
    /// The subcommand, and the fault's tag in the saved state.
    pub name: &'static str,
    /// What it does, for the subcommand's help.
    pub about: &'static str,
    pub params: &'static [FaultParam],
    from_values: fn(&FaultValues) -> Result<Fault>,
}

impl FaultKind {
    /// The fault, from its parameters' values.
    ///
    /// # Errors
    /// If a parameter is missing or a number is not one.
    pub fn fault(&self, values: &FaultValues) -> Result<Fault> {
        (self.from_values)(values)
    }
}

/// A parameter of a fault: `--<name> <value>`.
#[derive(Debug)]
pub struct FaultParam {
    pub name: &'static str,
    pub kind: ParamKind,
    /// The value when it is left out; a parameter without one is required.
    pub default: Option<&'static str>,
}

/// What a fault parameter's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Any text: a node's or a pod's name.
    Text,
    /// A whole number (u32).
    Number,
}

/// The values given for a fault's parameters, by name.
#[derive(Debug, Default)]
pub struct FaultValues(BTreeMap<String, String>);

impl FromIterator<(String, String)> for FaultValues {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(values: I) -> Self {
        Self(values.into_iter().collect())
    }
}

impl FaultValues {
    fn text(&self, name: &str) -> Result<String> {
        self.0.get(name).cloned().with_context(|| format!("--{name} is missing"))
    }

    fn number(&self, name: &str) -> Result<u32> {
        let text = self.text(name)?;
        text.parse().with_context(|| format!("--{name} {text:?} is not a whole number"))
    }
}

impl Lab {
    /// Introduces `fault` (again is a no-op).
    ///
    /// # Errors
    /// If its target does not exist or the change fails.
    pub fn inject(&mut self, fault: &Fault) -> Result<()> {
        if self.state.faults.contains(fault) {
            println!("lab: already injected: {fault}");
            return Ok(());
        }
        println!("lab: inject: {fault}");
        self.state.faults.push(fault.clone());
        if let Err(err) = fault.effect().inject(self) {
            self.state.faults.pop();
            return Err(err);
        }
        self.record(&format!("inject: {fault}"));
        self.save()
    }

    /// Takes `fault` back (a fault not in place is a no-op).
    ///
    /// # Errors
    /// If the change fails.
    pub fn repair(&mut self, fault: &Fault) -> Result<()> {
        if !self.state.faults.contains(fault) {
            println!("lab: not injected: {fault}");
            return Ok(());
        }
        println!("lab: repair: {fault}");
        self.state.faults.retain(|f| f != fault);
        fault.effect().repair(self)?;
        self.record(&format!("repair: {fault}"));
        self.save()
    }

    /// Whether a fault stopped the process under `key` on purpose: not a sign of a broken
    /// lab, and not to be started again until its repair.
    pub(super) fn stopped_by_fault(&self, key: &str) -> bool {
        self.state.faults.iter().any(|fault| fault.effect().stops(key))
    }
}

/// The namespace of the node named `node`.
/// Starts the lab's workload program as process `key` inside `netns`: `args`, then
/// `--stats FILE` (in the lab's state directory, named after the key); it logs to the
/// key's log file.
fn start_workload(lab: &mut Lab, key: &str, netns: &crate::netns::NetNs, args: &[&str]) -> Result<()> {
    let file_name = key.replace('/', "_");
    let stats = lab.state.state_dir.join(format!("{file_name}.json")).display().to_string();
    let args: Vec<String> =
        args.iter().map(|arg| (*arg).to_owned()).chain(["--stats".to_owned(), stats]).collect();
    let log = lab.log_file(&file_name);
    let program = lab.state.binaries.workload.clone();
    lab.state.processes.start(key, netns, &program, &args, log)?;
    Ok(())
}

fn node_netns(lab: &Lab, node: &str) -> Result<crate::netns::NetNs> {
    Ok(crate::netns::NetNs::existing(&lab.state.topology.node_netns(lab.selected_nodes(Some(node))?[0])))
}

/// The nftables table the lab's faults add: one per namespace, removed whole on repair.
const FAULT_TABLE: &str = "cniguard_lab_fault";

/// Loads the fault table (inet family) with `chains` inside `netns`.
fn add_fault_table(netns: &str, chains: &str) -> Result<()> {
    nft(netns, &format!("table inet {FAULT_TABLE} {{\n{chains}}}\n"))
}

/// Removes the fault table from `netns`.
fn remove_fault_table(netns: &str) {
    delete_nft_table(netns, "inet", FAULT_TABLE);
}

/// Loads an nftables ruleset inside `netns`.
fn nft(netns: &str, ruleset: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("nft stdin")?.write_all(ruleset.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("nft in {netns}: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Removes a fault's table; one already gone (a repeated repair) is fine.
fn delete_nft_table(netns: &str, family: &str, table: &str) {
    let _ = run(std::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "delete", "table", family, table]));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each parameter's default, or a name for those without one.
    fn sample_values(kind: &FaultKind) -> FaultValues {
        kind.params
            .iter()
            .map(|param| (param.name.to_owned(), param.default.unwrap_or("node-1").to_owned()))
            .collect()
    }

    #[test]
    fn every_fault_on_the_command_line_is_saved_under_its_name() {
        let mut names: Vec<&str> = FAULTS.iter().map(|kind| kind.name).collect();
        for kind in FAULTS {
            let fault = kind.fault(&sample_values(kind)).unwrap();
            assert_eq!(serde_json::to_value(&fault).unwrap()["fault"], kind.name);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAULTS.len());
    }

    #[test]
    fn a_missing_parameter_or_a_number_that_is_none_is_named() {
        let err = block_vxlan::KIND.fault(&FaultValues::default()).unwrap_err();
        assert_eq!(err.to_string(), "--node is missing");
        let values = [("ms".to_owned(), "soon".to_owned())].into_iter().collect();
        let err = slow_mlserver::KIND.fault(&values).unwrap_err();
        assert_eq!(err.to_string(), "--ms \"soon\" is not a whole number");
    }
}
