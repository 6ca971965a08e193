//! The real MLServer (`mlserver`, pinned, installed by `cargo xtask setup` into
//! `target/mlserver-venv`) as Seldon Core v2 runs it: HTTP on 9000, gRPC on 9500, with the
//! lab's model, `slow`, a custom runtime whose predict waits a delay the lab sets.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};

/// The version `cargo xtask setup` installs.
pub const VERSION: &str = "1.7.1";
/// Where setup puts the virtualenv, under the target directory.
pub const VENV: &str = "mlserver-venv";
/// Seldon Core v2's MLServer ports (`operator/config/serverconfigs/mlserver.yaml`).
pub const HTTP_PORT: u16 = 9000;
pub const GRPC_PORT: u16 = 9500;
/// The lab's model.
pub const MODEL: &str = "slow";

const RUNTIME: &str = include_str!("mlserver/slow_model.py");

/// The `mlserver` program in `target_dir`'s virtualenv; `CNIGUARD_MLSERVER` overrides.
///
/// # Errors
/// If it is not there: the message says how to install it.
pub fn program(target_dir: &Path) -> Result<PathBuf> {
    let path = expected_program(target_dir);
    ensure_installed(&path)?;
    Ok(path)
}

/// Where [`program`] looks, whether or not it is there.
#[must_use]
pub fn expected_program(target_dir: &Path) -> PathBuf {
    std::env::var_os("CNIGUARD_MLSERVER")
        .map_or_else(|| target_dir.join(VENV).join("bin").join("mlserver"), PathBuf::from)
}

/// Checks that the `mlserver` program at `path` is there.
///
/// # Errors
/// If it is not: the message says how to install it.
pub fn ensure_installed(path: &Path) -> Result<()> {
    ensure!(
        path.is_file(),
        "{} is missing: `cargo xtask setup` installs mlserver=={VERSION} there (or set CNIGUARD_MLSERVER)",
        path.display()
    );
    Ok(())
}

/// [`program`] for a test executable in `target/<profile>/deps/`.
///
/// # Errors
/// If it is not installed.
pub fn beside_test_executable() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).context("target/<profile>/deps/<test>")?;
    program(target)
}

/// One MLServer's settings: where it binds, its ports, its model's delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// MLServer binds both ports on this one address (`0.0.0.0` in Seldon's pods).
    pub host: IpAddr,
    pub http_port: u16,
    pub grpc_port: u16,
    pub delay_ms: u32,
}

impl Server {
    /// Seldon's ports on `host`, the model waiting `delay_ms`.
    #[must_use]
    pub fn seldon(host: IpAddr, delay_ms: u32) -> Self {
        Self { host, http_port: HTTP_PORT, grpc_port: GRPC_PORT, delay_ms }
    }

    /// Writes the server's `settings.json` and its model repository into `dir` (replacing
    /// what is there); `mlserver start <dir>` serves it.
    ///
    /// # Errors
    /// If a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let model_dir = dir.join("models").join(MODEL);
        std::fs::create_dir_all(&model_dir).with_context(|| format!("creating {}", model_dir.display()))?;
        let settings = serde_json::json!({
            "host": self.host.to_string(),
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            // No metrics server (a third port) and no inference worker processes: one
            // process, as small and quick to start as MLServer goes.
            "metrics_endpoint": null,
            "parallel_workers": 0,
            "load_models_at_startup": true,
            "model_repository_root": dir.join("models"),
        });
        let model = serde_json::json!({
            "name": MODEL,
            "implementation": "slow_model.SlowModel",
            "parameters": { "extra": { "delay_ms": self.delay_ms } },
        });
        for (path, text) in [
            (dir.join("settings.json"), settings.to_string()),
            (model_dir.join("model-settings.json"), model.to_string()),
            (model_dir.join("slow_model.py"), RUNTIME.to_owned()),
        ] {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// The arguments that start MLServer on the folder [`Server::write`] filled.
#[must_use]
pub fn start_args(dir: &Path) -> Vec<String> {
    vec!["start".into(), dir.display().to_string()]
}
