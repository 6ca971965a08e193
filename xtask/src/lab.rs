//! `cargo xtask lab ...`: the migration lab from the command line, and the demo that tells
//! the whole story (see `cniguard-lab` for what the lab is).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result};
use cniguard_lab::binaries::Binaries;
use cniguard_lab::lab::{Fault, LAB_CNIGUARD_CONFIG, LAB_JUDGEMENT_CONFIG, Lab, LabOptions};
use cniguard_lab::netns::{namespaces_with_prefix, remove_namespaces};
use cniguard_lab::topology::Topology;

use crate::checks::LEFTOVER_PREFIXES;
use crate::workspace::workspace_root;
use crate::{cmd, setup};

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build the cluster on Flannel, start its workloads, a cniguard per node and Prometheus.
    Up,
    /// Cut a node (default: every node, in order) over to Calico.
    Cutover {
        #[arg(long)]
        node: Option<String>,
    },
    /// Take a node (default: every node, the last cut over first) back to Flannel.
    Rollback {
        #[arg(long)]
        node: Option<String>,
    },
    /// Introduce a fault.
    Inject {
        #[command(subcommand)]
        fault: FaultArg,
    },
    /// Take a fault back.
    Repair {
        #[command(subcommand)]
        fault: FaultArg,
    },
    /// Nodes, phases, pods, processes and faults of the running lab.
    Status,
    /// Stop everything and remove the lab.
    Down {
        /// Also remove what earlier runs and killed tests left behind (every cglab-* and
        /// cgt-* namespace, with the processes in it).
        #[arg(long)]
        clean: bool,
    },
    /// The whole story, unattended: up on Flannel, cutover node by node, a fault and its
    /// repair, then a timeline of what cniguard measured, read from Prometheus.
    Demo,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum FaultArg {
    /// Drop VXLAN (UDP 8472 and 4789) on a node.
    BlockVxlan {
        #[arg(long)]
        node: String,
    },
    /// Stop BIRD on a node (its BGP sessions go down).
    StopBird {
        #[arg(long)]
        node: String,
    },
    /// Block 127.0.0.1:9500 inside the MLServer pod.
    BlockMlserver,
    /// Stop the cluster DNS server.
    StopDns,
    /// Make the MLServer answer late (a known delay on the pod's loopback path).
    SlowMlserver {
        #[arg(long, default_value_t = 5)]
        ms: u32,
    },
    /// Lose a share of the packets towards a pod, on its veth (nftables).
    VethLoss {
        #[arg(long)]
        pod: String,
        #[arg(long, default_value_t = 30)]
        percent: u32,
    },
}

impl From<FaultArg> for Fault {
    fn from(arg: FaultArg) -> Self {
        match arg {
            FaultArg::BlockVxlan { node } => Self::BlockVxlan { node },
            FaultArg::StopBird { node } => Self::StopBird { node },
            FaultArg::BlockMlserver => Self::BlockMlserver,
            FaultArg::StopDns => Self::StopDns,
            FaultArg::SlowMlserver { ms } => Self::SlowMlserver { ms },
            FaultArg::VethLoss { pod, percent } => Self::VethLoss { pod, percent },
        }
    }
}

/// Where `cargo xtask lab` keeps the running lab's state.
fn state_dir() -> PathBuf {
    workspace_root().join("target").join("lab")
}

pub fn run(command: LabCommand) -> Result<()> {
    match command {
        LabCommand::Up => {
            let lab = Lab::up(prepare()?)?;
            print!("{}", lab.status());
            lab.keep_running()
        }
        LabCommand::Cutover { node } => step(|lab| lab.cutover(node.as_deref())),
        LabCommand::Rollback { node } => step(|lab| lab.rollback(node.as_deref())),
        LabCommand::Inject { fault } => step(|lab| lab.inject(&fault.into())),
        LabCommand::Repair { fault } => step(|lab| lab.repair(&fault.into())),
        LabCommand::Status => {
            print!("{}", Lab::open(&state_dir())?.status());
            Ok(())
        }
        LabCommand::Down { clean } => down(clean),
        LabCommand::Demo => crate::demo::run(prepare()?),
    }
}

/// Opens the running lab, applies `change`, prints the new status.
fn step(change: impl FnOnce(&mut Lab) -> Result<()>) -> Result<()> {
    let mut lab = Lab::open(&state_dir()).context("run `cargo xtask lab up` first")?;
    change(&mut lab)?;
    print!("{}", lab.status());
    Ok(())
}

fn down(clean: bool) -> Result<()> {
    match Lab::open(&state_dir()) {
        Ok(lab) => {
            println!("lab: down ({})", lab.topology().prefix);
            lab.down();
        }
        Err(_) if clean => {}
        Err(err) => return Err(err.context("nothing to take down (`--clean` removes leftovers of any run)")),
    }
    if clean {
        for prefix in LEFTOVER_PREFIXES {
            let leftovers = namespaces_with_prefix(prefix);
            if !leftovers.is_empty() {
                println!("lab: removing leftovers: {}", leftovers.join(" "));
            }
            remove_namespaces(prefix);
        }
        let _ = std::fs::remove_dir_all(state_dir());
    }
    Ok(())
}

/// Setup, a release build of the binaries the lab runs, and the lab's options.
fn prepare() -> Result<LabOptions> {
    setup::run(&setup::SetupArgs { build_only: false })?;
    cmd::run(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "cniguard",
        "--package",
        "cniguard-workload",
    ]))?;
    let binaries = Binaries::in_target(&workspace_root().join("target"), "release")?;
    // One lab per machine at a time; the pid makes leftovers of an earlier run distinct.
    let prefix = format!("cglab-{:x}", std::process::id());
    Ok(LabOptions {
        topology: Topology::standard(&prefix),
        binaries,
        state_dir: state_dir(),
        cniguard_args: Vec::new(),
        cniguard_config: format!("{LAB_CNIGUARD_CONFIG}{LAB_JUDGEMENT_CONFIG}"),
    })
}
