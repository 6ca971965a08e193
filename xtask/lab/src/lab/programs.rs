//! The programs the lab runs, and the check that they are installed before it starts.

use anyhow::{Result, ensure};

/// The programs the lab runs, with the Debian package that has each.
pub const REQUIRED_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("bridge", "iproute2"),
    ("bird", "bird2"),
    ("birdc", "bird2"),
    ("dnsmasq", "dnsmasq"),
    ("prometheus", "prometheus"),
    ("nft", "nftables"),
    ("prometheus-alertmanager", "prometheus-alertmanager"),
];

/// Checks that every required program is on `path` (the `PATH` variable's value).
///
/// # Errors
/// Names every missing program and its package, and how to install them.
pub fn check_programs(path: &std::ffi::OsStr) -> Result<()> {
    let missing: Vec<String> = REQUIRED_PROGRAMS
        .iter()
        .filter(|(program, _)| !std::env::split_paths(path).any(|dir| dir.join(program).is_file()))
        .map(|(program, package)| format!("{program} (Debian package {package})"))
        .collect();
    ensure!(
        missing.is_empty(),
        "the lab cannot start: missing {}. Run `cargo xtask setup` (as root) to install them",
        missing.join(", ")
    );
    Ok(())
}
