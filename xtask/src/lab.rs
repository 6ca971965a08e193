//! `cargo xtask lab ...`: the migration lab from the command line, and the demo that tells
//! the whole story (see `cniguard-lab` for what the lab is).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result};
use clap::builder::TypedValueParser as _;
use clap::error::ErrorKind;
use cniguard_lab::binaries::Binaries;
use cniguard_lab::lab::{
    FAULTS, Fault, FaultKind, FaultValues, LAB_CNIGUARD_CONFIG, LAB_JUDGEMENT_CONFIG, Lab, LabOptions,
    ParamKind,
};
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

/// A fault named on the command line. `inject` and `repair` take their subcommands from the
/// lab's table of faults ([`FAULTS`]): a name, its help and its parameters each.
#[derive(Debug, Clone)]
pub struct FaultArg(Fault);

impl clap::FromArgMatches for FaultArg {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let (name, matches) = matches
            .subcommand()
            .ok_or_else(|| clap::Error::raw(ErrorKind::MissingSubcommand, "no fault given"))?;
        let kind = FAULTS
            .iter()
            .find(|kind| kind.name == name)
            .ok_or_else(|| clap::Error::raw(ErrorKind::InvalidSubcommand, format!("no fault {name:?}")))?;
        // Every parameter is required or has a default, so each has a value here.
        let values: FaultValues = kind
            .params
            .iter()
            .filter_map(|param| Some((param.name.to_owned(), matches.get_one::<String>(param.name)?.clone())))
            .collect();
        let fault = kind.fault(&values).map_err(|err| clap::Error::raw(ErrorKind::ValueValidation, err))?;
        Ok(Self(fault))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Subcommand for FaultArg {
    fn augment_subcommands(command: clap::Command) -> clap::Command {
        command.subcommands(FAULTS.iter().map(fault_command))
    }

    fn augment_subcommands_for_update(command: clap::Command) -> clap::Command {
        Self::augment_subcommands(command)
    }

    fn has_subcommand(name: &str) -> bool {
        FAULTS.iter().any(|kind| kind.name == name)
    }
}

/// The subcommand of one fault, as `#[derive(clap::Subcommand)]` would make it.
fn fault_command(kind: &FaultKind) -> clap::Command {
    let args = kind.params.iter().map(|param| {
        // clap (without its `string` feature) keeps only `&'static str`s; the command line is
        // built once a run.
        let value_name: &'static str = param.name.to_uppercase().leak();
        let arg = clap::Arg::new(param.name).long(param.name).value_name(value_name);
        let arg = match param.kind {
            ParamKind::Text => arg.value_parser(clap::value_parser!(String)),
            // Checked as a number here, for clap's own error message; passed on as text.
            ParamKind::Number => arg.value_parser(clap::value_parser!(u32).map(|number| number.to_string())),
        };
        match param.default {
            Some(default) => arg.default_value(default),
            None => arg.required(true),
        }
    });
    clap::Command::new(kind.name).about(kind.about).args(args)
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
        LabCommand::Inject { fault } => step(|lab| lab.inject(&fault.0)),
        LabCommand::Repair { fault } => step(|lab| lab.repair(&fault.0)),
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
        cniguard_launcher: None,
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};
    use cniguard_lab::lab::Fault;

    use super::LabCommand;

    #[derive(Debug, clap::Parser)]
    struct LabCli {
        #[command(subcommand)]
        command: LabCommand,
    }

    fn injected(args: &[&str]) -> Fault {
        let cli = LabCli::try_parse_from(["lab", "inject"].iter().chain(args)).unwrap();
        match cli.command {
            LabCommand::Inject { fault } => fault.0,
            other => panic!("not an inject: {other:?}"),
        }
    }

    #[test]
    fn each_fault_subcommand_makes_the_fault_it_names() {
        let node = |name: &str| name.to_owned();
        assert_eq!(
            injected(&["block-vxlan", "--node", "node-3"]),
            Fault::BlockVxlan { node: node("node-3") }
        );
        assert_eq!(injected(&["stop-bird", "--node", "node-2"]), Fault::StopBird { node: node("node-2") });
        assert_eq!(injected(&["block-mlserver"]), Fault::BlockMlserver);
        assert_eq!(injected(&["stop-dns"]), Fault::StopDns);
        assert_eq!(injected(&["slow-mlserver"]), Fault::SlowMlserver { ms: 5 });
        assert_eq!(injected(&["slow-mlserver", "--ms", "20"]), Fault::SlowMlserver { ms: 20 });
        let pod = node("sink-3");
        assert_eq!(
            injected(&["veth-loss", "--pod", "sink-3"]),
            Fault::VethLoss { pod: pod.clone(), percent: 30 }
        );
        assert_eq!(
            injected(&["veth-loss", "--pod", "sink-3", "--percent", "100"]),
            Fault::VethLoss { pod, percent: 100 }
        );
    }

    #[test]
    fn the_command_line_is_well_formed() {
        LabCli::command().debug_assert();
    }
}
