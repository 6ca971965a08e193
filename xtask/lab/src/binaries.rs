//! Where the programs the lab starts live: `cniguard` and `cniguard-workload`.

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binaries {
    pub cniguard: PathBuf,
    pub workload: PathBuf,
}

impl Binaries {
    /// The ones `cargo test --workspace` built next to the running test executable
    /// (`target/<profile>/`); `CNIGUARD_BIN` and `CNIGUARD_WORKLOAD_BIN` override.
    ///
    /// # Panics
    /// If one is missing: the message says how to build it.
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
        }
    }

    /// The ones in `target_dir/<profile>/`.
    ///
    /// # Errors
    /// If one is missing.
    pub fn in_target(target_dir: &Path, profile: &str) -> Result<Self> {
        let dir = target_dir.join(profile);
        let binaries = Self { cniguard: dir.join("cniguard"), workload: dir.join("cniguard-workload") };
        for path in [&binaries.cniguard, &binaries.workload] {
            ensure!(path.is_file(), "{} is missing (cargo build --{profile} --workspace)", path.display());
        }
        Ok(binaries)
    }
}
