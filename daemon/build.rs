//! Builds `probe-ebpf` for the BPF target and leaves the object in `OUT_DIR`, where
//! `src/lib.rs` embeds it, and installs the live page's charting library from the npm
//! registry (`npm ci` in `page/`, against its lock file) when it is missing, so that one
//! `cargo build` yields a self-contained `cniguard`.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

/// The rustup toolchain `cargo xtask setup` links (see xtask/src/setup.rs).
const DEFAULT_BPF_TOOLCHAIN: &str = "cniguard-bpf";

fn main() -> Result<()> {
    page_library()?;
    println!("cargo::rerun-if-env-changed=CNIGUARD_BPF_TOOLCHAIN");
    let toolchain =
        std::env::var("CNIGUARD_BPF_TOOLCHAIN").unwrap_or_else(|_| DEFAULT_BPF_TOOLCHAIN.to_owned());
    let found = Command::new("rustup")
        .args(["run", &toolchain, "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        bail!(
            "the eBPF toolchain `{toolchain}` is not installed: run `cargo xtask setup` once \
             (it installs a compiler that can build `core` for bpfel-unknown-none, bpf-linker, \
             and links them as `{toolchain}`)"
        );
    }

    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    // aya-build watches probe-ebpf; the shared types are an input too.
    println!("cargo::rerun-if-changed={manifest_dir}/../probe-common");
    // The linked toolchain may be a stable release (Debian's): build-std still needs -Z.
    // aya-build relays every line the inner cargo prints as a warning; errors still come
    // through its JSON messages.
    // SAFETY: the build script has not started any thread that could read the environment.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        std::env::set_var("CARGO_TERM_QUIET", "true");
    }
    let root_dir = format!("{manifest_dir}/../probe-ebpf");
    let probes = aya_build::Package { name: "probe-ebpf", root_dir: &root_dir, ..Default::default() };
    aya_build::build_ebpf([probes], aya_build::Toolchain::Custom(&toolchain))
}

/// uPlot in `page/node_modules`, as the lock file pins it: `src/live/page.rs` embeds it.
fn page_library() -> Result<()> {
    let page = format!("{}/page", env!("CARGO_MANIFEST_DIR"));
    for input in ["package.json", "package-lock.json", "src"] {
        println!("cargo::rerun-if-changed={page}/{input}");
    }
    let library = format!("{page}/node_modules/uplot/dist/uPlot.iife.min.js");
    println!("cargo::rerun-if-changed={library}");
    if std::path::Path::new(&library).exists() {
        return Ok(());
    }
    let installed = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(&page)
        .stdout(Stdio::null())
        .status();
    match installed {
        Ok(status) if status.success() && std::path::Path::new(&library).exists() => Ok(()),
        Ok(status) => bail!(
            "`npm ci` in {page} failed ({status}): the live page needs uPlot from the npm registry; \
             run `cargo xtask setup`, or `npm ci` there by hand and read its error"
        ),
        Err(err) => bail!(
            "npm is not installed ({err}): the live page needs uPlot from the npm registry; \
             run `cargo xtask setup` (it installs Debian's npm)"
        ),
    }
}
