//! Project automation for cniguard: `cargo xtask <command>` (see the README).

mod cmd;
mod setup;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "cniguard's build, test, lab and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, bpf-linker, eBPF toolchain).
    Setup(setup::SetupArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup(args) => setup::run(&args),
    }
}
