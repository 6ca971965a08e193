//! `cargo xtask image`: the image from this checkout, without a registry.
//!
//! The Containerfile has two ways in to one final stage. Its `build` stage needs a Rust
//! image from a registry; this task builds the same statically linked binary here instead
//! (the same command as that stage, stripped and checked static the same way) and hands it
//! to the Containerfile as the only file of a build context, with `--build-arg
//! BINARY=local`. buildah runs in a storage of its own under `target/image/`, removed when
//! it is done, so nothing is left in the machine's image store. What it leaves:
//!
//! * `target/image/rootfs/`: the image's root filesystem (what an OCI bundle runs);
//! * `target/image/config.json`: the image's OCI config (user, entrypoint, environment);
//! * `target/image/cniguard-<version>.oci.tar`: the image as an OCI archive, for
//!   `k3s ctr images import` on a node.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;
use crate::static_build::TARGET;
use crate::workspace::workspace_root;

/// The image's name, as the DaemonSets' `image:` names it.
pub const IMAGE: &str = "cniguard:0.1.0";

/// Where the image's files go.
pub fn image_dir() -> PathBuf {
    workspace_root().join("target").join("image")
}

pub fn run() -> Result<()> {
    let dir = image_dir();
    build(&dir)?;
    println!("image: {IMAGE}: {}/rootfs, config.json and {}", dir.display(), archive_name());
    println!("image: on a K3s node: sudo k3s ctr images import {}", dir.join(archive_name()).display());
    Ok(())
}

fn archive_name() -> String {
    format!("cniguard-{}.oci.tar", IMAGE.rsplit(':').next().unwrap_or("latest"))
}

/// Builds the static binary and the image from it into `dir`.
pub fn build(dir: &Path) -> Result<()> {
    if std::env::consts::ARCH != "x86_64" {
        bail!("cargo xtask image builds for {TARGET}; this machine is {}", std::env::consts::ARCH);
    }
    let root = workspace_root();
    let built = crate::static_build::build(&root)?.join("cniguard");
    let _ = std::fs::remove_dir_all(dir);
    let context = dir.join("context");
    std::fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let binary = context.join("cniguard");
    cmd::run(Command::new("strip").arg("-o").arg(&binary).arg(&built))?;
    let dynamic = cmd::output(Command::new("readelf").arg("-d").arg(&binary)).unwrap_or_default();
    if dynamic.contains("NEEDED") {
        bail!("{} is not statically linked:\n{dynamic}", binary.display());
    }
    let store = Store::new(dir.join("storage"));
    let result = store.build_and_export(&root.join("Containerfile"), &context, dir);
    store.remove();
    std::fs::remove_dir_all(&context)?;
    result
}

/// A buildah storage of this task's own, removed whole afterwards.
struct Store {
    dir: PathBuf,
}

impl Store {
    fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn buildah(&self) -> Command {
        let mut command = Command::new("buildah");
        command.arg("--root").arg(self.dir.join("root")).arg("--runroot").arg(self.dir.join("run"));
        command
    }

    fn build_and_export(&self, containerfile: &Path, context: &Path, dir: &Path) -> Result<()> {
        let image = format!("localhost/{IMAGE}");
        let rootfs = dir.join("rootfs");
        cmd::run(
            self.buildah()
                .args(["build", "--layers=false", "--build-arg", "BINARY=local", "-t", &image, "-f"])
                .arg(containerfile)
                .arg("--output")
                .arg(format!("type=local,dest={}", rootfs.display()))
                .arg(context),
        )?;
        let inspect = cmd::output(self.buildah().args(["inspect", "--type", "image", &image]))
            .context("buildah inspect of the image just built")?;
        let inspect: serde_json::Value = serde_json::from_str(&inspect)?;
        let config = &inspect["OCIv1"]["config"];
        if config.is_null() {
            bail!("buildah inspect shows no OCI config for {image}");
        }
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config)?)?;
        cmd::run(
            self.buildah()
                .args(["push", &image])
                // The full name, which the kubelet's `image: cniguard:0.1.0` normalizes to,
                // so that `ctr images import` names it so.
                .arg(format!("oci-archive:{}:docker.io/library/{IMAGE}", dir.join(archive_name()).display())),
        )
    }

    /// Removes buildah's working containers and images, then the storage itself.
    fn remove(&self) {
        let _ = self.buildah().args(["rm", "--all"]).output();
        let _ = self.buildah().args(["rmi", "--all", "--force"]).output();
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("image: warning: could not remove {}: {err}", self.dir.display());
        }
    }
}
