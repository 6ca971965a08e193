//! The statically linked programs, built once for everything that needs them: the image
//! (`cargo xtask image`) and the kernel matrix's guests (`cargo xtask kernels`). One cargo
//! invocation with one set of flags, so the second user finds everything built.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::cmd;

/// The target the static programs are built for (glibc, `+crt-static`).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds cniguard, the lab's workload and the kernel scenario, statically linked as the
/// Containerfile builds cniguard; returns the directory they are in.
pub fn build(root: &Path) -> Result<PathBuf> {
    cmd::run(
        Command::new("cargo")
            .current_dir(root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args(["build", "--release", "--locked", "--target", TARGET])
            .args(["-p", "cniguard", "--bin", "cniguard"])
            .args(["-p", "cniguard-workload", "--bin", "cniguard-workload"])
            .args(["-p", "cniguard-kernel-scenario", "--bin", "cniguard-kernel-scenario"]),
    )?;
    Ok(root.join("target").join(TARGET).join("release"))
}
