//! nftables rules inside a test namespace: the tests' way to drop and lose packets (this
//! kernel has no netem).

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, ensure};
use cniguard_lab::netns::NetNs;

/// Loads `ruleset` (`nft -f` syntax) into `ns`'s nftables; it goes with the namespace.
///
/// # Errors
/// If nft is missing or refuses the ruleset.
pub fn nft(ns: &NetNs, ruleset: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running nft (Debian package nftables)")?;
    child.stdin.take().context("nft's stdin")?.write_all(ruleset.as_bytes())?;
    ensure!(child.wait()?.success(), "nft refused:\n{ruleset}");
    Ok(())
}
