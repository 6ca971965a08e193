//! Project automation for cniguard: `cargo xtask <command>` (see the README).

mod bench;
mod checks;
mod cmd;
mod demo;
mod image;
mod kernels;
mod lab;
mod run;
mod setup;
mod static_build;
mod workspace;

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
    /// Everything CI runs: setup, rustfmt, clippy, every test on the real kernel.
    Test,
    /// Build cniguard and run it on this host (arguments go to `cniguard run`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The image from this checkout (static binary, the Containerfile's final stage) into
    /// target/image/: its root filesystem, config and an OCI archive for `k3s ctr`.
    Image,
    /// What cniguard costs, each figure next to its baseline in one run: per packet, per
    /// loopback call, datagram rates over veth and VXLAN, startup, stop, idle CPU and memory
    /// at 1 to 1,000 veths. A section name (e.g. `scale`) runs that one alone.
    Bench { sections: Vec<String> },
    /// Every probe on Debian's 5.10, 6.1 and 6.12 kernels, each booted under QEMU: a kernel
    /// by probe table (also part of `test`).
    Kernels,
    /// The migration lab: a K3s-like cluster in namespaces, cut over from Flannel to Calico.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup(args) => setup::run(&args),
        Task::Test => checks::run(),
        Task::Run { args } => run::run(&args),
        Task::Image => image::run(),
        Task::Bench { sections } => bench::run(&sections),
        Task::Kernels => setup::run(&setup::SetupArgs { build_only: false }).and_then(|()| kernels::run()),
        Task::Lab { command } => lab::run(command),
    }
}
