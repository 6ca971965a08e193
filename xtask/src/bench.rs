//! `cargo xtask bench`: per-packet costs, measured side by side in one run.

use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

/// `sections` (none: all) are the bench's own names: classifiers, non-loopback, protocols,
/// udp, scale.
pub fn run(sections: &[String]) -> Result<()> {
    setup::run(&setup::SetupArgs { build_only: true })?;
    // The udp and scale sections run the release daemon itself.
    cmd::run(Command::new("cargo").args(["build", "--release", "--package", "cniguard"]))?;
    cmd::run(
        Command::new("cargo")
            .args(["run", "--release", "--package", "cniguard-tests", "--bin", "cniguard-bench", "--"])
            .args(sections),
    )
}
