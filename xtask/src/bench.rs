//! `cargo xtask bench`: per-packet costs, measured side by side in one run.

use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

pub fn run() -> Result<()> {
    setup::run(&setup::SetupArgs { build_only: true })?;
    cmd::run(Command::new("cargo").args([
        "run",
        "--release",
        "--package",
        "cniguard-tests",
        "--bin",
        "cniguard-bench",
    ]))
}
