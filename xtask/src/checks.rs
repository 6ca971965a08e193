//! `cargo xtask test`: everything CI runs, in the order a failure is cheapest to read.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, setup};

/// Namespace prefixes of the tests and the lab: anything left under them after a run is a
/// leak, and a leak fails the run.
pub const LEFTOVER_PREFIXES: &[&str] = &["cgt-", "cglab-"];

pub fn run() -> Result<()> {
    setup::run(&setup::SetupArgs { build_only: false })?;
    // Leftovers of an earlier, killed run are not this run's leak: report them with the
    // command that removes them, and judge this run only by what it adds.
    let before = leftover_namespaces();
    if !before.is_empty() {
        println!(
            "test: warning: {} namespaces left by an earlier run ({}); `cargo xtask lab down --clean` removes them",
            before.len(),
            before.join(" ")
        );
    }
    cmd::run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    cmd::run(Command::new("cargo").args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let ci = std::env::var("CI").unwrap_or_default();
    println!("test: CI={ci:?} (with CI=true a test that cannot run fails instead of skipping)");
    // Tests build the daemon binary next to themselves (`cargo test --workspace`).
    cmd::run(Command::new("cargo").args(["test", "--workspace"]))?;
    let leftovers: Vec<String> =
        leftover_namespaces().into_iter().filter(|name| !before.contains(name)).collect();
    if !leftovers.is_empty() {
        bail!("tests left namespaces behind: {}", leftovers.join(" "));
    }
    println!("test: all passed, nothing left behind");
    Ok(())
}

/// Namespaces under the test and lab prefixes that exist now.
pub fn leftover_namespaces() -> Vec<String> {
    let list = cmd::output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| LEFTOVER_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .map(str::to_owned)
        .collect()
}
