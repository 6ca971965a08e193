//! `cargo xtask run`: build cniguard and run it on this host, as an operator would.

use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

pub fn run(args: &[String]) -> Result<()> {
    setup::run(&setup::SetupArgs { build_only: true })?;
    cmd::run(Command::new("cargo").args(["build", "--release", "--package", "cniguard"]))?;
    let binary = "target/release/cniguard";
    cmd::run(Command::new(binary).arg("check"))?;
    println!(
        "run: cniguard serves http://127.0.0.1:9464/metrics; it attaches to CNI interfaces \
         (veth*, cali*, cni0, flannel.1, vxlan.calico) as they appear. Ctrl-C stops it and detaches."
    );
    cmd::run(Command::new(binary).arg("run").args(args))
}
