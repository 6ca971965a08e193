//! Where the programs the lab starts live: `cniguard`, `cniguard-workload` and the real
//! MLServer (`cargo xtask setup`'s virtualenv).

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binaries {
    pub cniguard: PathBuf,
    pub workload: PathBuf,
    /// The real MLServer the lab's MLServer pod runs: where it should be (the target
    /// directory's `mlserver-venv`, or `CNIGUARD_MLSERVER`); [`crate::lab::Lab::up`] says
    /// how to install it if it is not there.
    #[serde(default)]
    pub mlserver: PathBuf,
}

impl Binaries {
    /// The ones `cargo test --workspace` built next to the running test executable
    /// (`target/<profile>/`), and the MLServer of `target/`'s virtualenv; `CNIGUARD_BIN`,
    /// `CNIGUARD_WORKLOAD_BIN` and `CNIGUARD_MLSERVER` override.
    ///
    /// # Panics
    /// If `cniguard` or `cniguard-workload` is missing: the message says how to build it.
    /// (MLServer may be missing where no lab runs: the kernel matrix's VMs have no Python.)
    #[must_use]
    pub fn beside_test_executable() -> Self {
        let exe = std::env::current_exe().expect("the test executable's path");
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_owned();
        let find = |variable: &str, name: &str| {
            let path = std::env::var_os(variable).map_or_else(|| dir.join(name), PathBuf::from);
            assert!(
                path.is_file(),
                "{} is missing: run the tests with `cargo test --workspace` (or `cargo xtask test`), or set {variable}",
                path.display()
            );
            path
        };
        Self {
            cniguard: find("CNIGUARD_BIN", "cniguard"),
            workload: find("CNIGUARD_WORKLOAD_BIN", "cniguard-workload"),
            mlserver: crate::mlserver::expected_program(dir.parent().unwrap_or(&dir)),
        }
    }

    /// The ones in `target_dir/<profile>/`, and the MLServer of `target_dir`'s virtualenv.
    ///
    /// # Errors
    /// If one is missing.
    pub fn in_target(target_dir: &Path, profile: &str) -> Result<Self> {
        let dir = target_dir.join(profile);
        let binaries = Self {
            cniguard: dir.join("cniguard"),
            workload: dir.join("cniguard-workload"),
            mlserver: crate::mlserver::program(target_dir)?,
        };
        for path in [&binaries.cniguard, &binaries.workload] {
            ensure!(path.is_file(), "{} is missing (cargo build --{profile} --workspace)", path.display());
        }
        Ok(binaries)
    }
}
