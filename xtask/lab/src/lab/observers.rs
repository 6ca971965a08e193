//! What watches the lab: a cniguard on every node, Prometheus scraping them, Alertmanager
//! and `cniguard rollback-hook` acting on the rollback alert.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use nix::sys::signal::Signal;

use super::Lab;
use crate::cniguard::PATIENCE;
use crate::netns::NetNs;
use crate::services;
use crate::topology::{ALERTMANAGER_PORT, CNIGUARD_PORT, HOOK_ADDRESS};

/// The bearer token the lab's Alertmanager sends to its rollback hook.
const HOOK_TOKEN: &str = "cniguard-lab-token";
/// How long the lab's rollback alert must fire before the hook runs the rollback.
pub const LAB_HOOK_FIRING_FOR_SECONDS: u64 = 30;

impl Lab {
    /// Stops node `node`'s cniguard (with SIGKILL if `kill`: no chance to clean up or save,
    /// like a crash or an OOM kill) and starts it again; returns once it is ready.
    ///
    /// # Errors
    /// If it does not come back.
    pub fn restart_cniguard(&mut self, node: usize, kill: bool) -> Result<()> {
        let key = format!("cniguard/{}", self.state.topology.nodes[node].name);
        if kill {
            self.state.processes.signal(&key, Signal::SIGKILL);
        }
        self.state.processes.stop(&key);
        self.start_cniguard(node)?;
        self.save()?;
        self.wait_until_observed()
    }

    pub(super) fn start_cniguard(&mut self, node: usize) -> Result<()> {
        let spec = &self.state.topology.nodes[node];
        let key = format!("cniguard/{}", spec.name);
        // One file per node, written whole before it is renamed into place: a daemon
        // starting while another node's file is rewritten must never read half of it (an
        // empty file is a valid configuration: every default, silently).
        let config = self.state.state_dir.join(format!("cniguard-{}.toml", spec.name));
        let partial = config.with_extension("toml.tmp");
        let text = self
            .state
            .cniguard_config
            .replace("{state_dir}", &self.state.state_dir.display().to_string())
            .replace("{node}", &spec.name);
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, &config)?;
        // NODE_NAME, as the DaemonSet sets it from the pod's spec.nodeName: the node's name in
        // `cniguard status` and its state files (one kernel, one host name, three nodes).
        let mut args = vec![
            format!("NODE_NAME={}", spec.name),
            self.state.binaries.cniguard.display().to_string(),
            "run".to_owned(),
            "--listen".into(),
            format!("{}:{CNIGUARD_PORT}", spec.address),
            "--config".into(),
            config.display().to_string(),
            "--state-dir".into(),
            self.state.state_dir.join(format!("cniguard-{}", spec.name)).display().to_string(),
        ];
        args.extend(self.state.cniguard_args.iter().cloned());
        let mut program = PathBuf::from("/usr/bin/env");
        if let Some((_, launcher)) = self.state.cniguard_launcher.as_ref().filter(|(n, _)| *n == spec.name)
            && let Some((launcher, launcher_args)) = launcher.split_first()
        {
            let mut wrapped = launcher_args.to_vec();
            wrapped.extend(["--".to_owned(), program.display().to_string()]);
            wrapped.append(&mut args);
            args = wrapped;
            program = PathBuf::from(launcher);
        }
        let log = self.log_file(&format!("cniguard-{}", spec.name));
        let netns = NetNs::existing(&self.state.topology.node_netns(node));
        self.state.processes.start(&key, &netns, &program, &args, log)?;
        Ok(())
    }

    pub(super) fn start_prometheus(&mut self) -> Result<()> {
        let config = self.state.state_dir.join("prometheus.yml");
        let rules = self.state.state_dir.join("cniguard.rules.yaml");
        std::fs::write(&rules, services::SHIPPED_RULES)?;
        let alertmanager = SocketAddr::from((self.state.topology.monitor_address, ALERTMANAGER_PORT));
        std::fs::write(
            &config,
            services::prometheus_config(&self.state.topology, &rules.display().to_string(), alertmanager),
        )?;
        let data = self.state.state_dir.join("prometheus-data");
        std::fs::create_dir_all(&data)?;
        let args = services::prometheus_args(
            &self.state.topology,
            &config.display().to_string(),
            &data.display().to_string(),
        );
        let log = self.log_file("prometheus");
        let netns = NetNs::existing(&self.state.topology.monitor_netns());
        self.state.processes.start("prometheus", &netns, Path::new("prometheus"), &args, log)?;
        Ok(())
    }

    /// Alertmanager and `cniguard rollback-hook` in the monitoring namespace: the rollback
    /// alert goes to the hook, which (armed) runs a stand-in for the runbook's rollback
    /// playbook that appends a line to `rollback-runs`.
    pub(super) fn start_alerting(&mut self) -> Result<()> {
        let dir = &self.state.state_dir;
        let token = dir.join("hook-token");
        std::fs::write(&token, format!("{HOOK_TOKEN}\n"))?;
        let config = dir.join("alertmanager.yml");
        std::fs::write(&config, services::alertmanager_config(HOOK_ADDRESS, &token.display().to_string()))?;
        std::fs::create_dir_all(dir.join("alertmanager-data"))?;
        let netns = NetNs::existing(&self.state.topology.monitor_netns());
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.join("alertmanager-data").display()),
            format!("--web.listen-address={}:{ALERTMANAGER_PORT}", self.state.topology.monitor_address),
            "--cluster.listen-address=".into(),
            "--log.level=warn".into(),
        ];
        let log = self.log_file("alertmanager");
        self.state.processes.start(
            "alertmanager",
            &netns,
            Path::new("prometheus-alertmanager"),
            &args,
            log,
        )?;
        let runs = self.rollback_runs_file().display().to_string();
        let args = vec![
            "rollback-hook".into(),
            "--listen".into(),
            HOOK_ADDRESS.to_string(),
            "--token-file".into(),
            token.display().to_string(),
            // Longer than the lab's node-by-node cutover disrupts cross-node traffic (the
            // triggers fire then, with their `for` of seconds): the hook rides that out,
            // as production's 5 minutes ride out a real cutover's blips.
            "--firing-for-seconds".into(),
            LAB_HOOK_FIRING_FOR_SECONDS.to_string(),
            "--arm".into(),
            "--state-dir".into(),
            dir.join("rollback-hook").display().to_string(),
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            format!("echo \"stand-in rollback playbook ran at $(date +%s)\" >> {runs}"),
        ];
        let log = self.log_file("rollback-hook");
        let program = self.state.binaries.cniguard.clone();
        self.state.processes.start("rollback-hook", &netns, &program, &args, log)?;
        Ok(())
    }

    pub(super) fn rollback_runs_file(&self) -> PathBuf {
        self.state.state_dir.join("rollback-runs")
    }

    /// How many times the rollback hook ran the (stand-in) rollback.
    #[must_use]
    pub fn rollback_runs(&self) -> usize {
        std::fs::read_to_string(self.rollback_runs_file()).map_or(0, |text| text.lines().count())
    }

    /// The namespace the rollback hook listens in, at [`HOOK_ADDRESS`].
    #[must_use]
    pub fn rollback_hook_netns(&self) -> NetNs {
        NetNs::existing(&self.state.topology.monitor_netns())
    }

    /// The last lines of the rollback hook's log (it logs every decision).
    #[must_use]
    pub fn rollback_hook_log(&self) -> String {
        self.log_tail("rollback-hook")
    }

    /// Waits until every cniguard is ready and Prometheus scrapes all of them.
    pub(super) fn wait_until_observed(&self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        for node in 0..self.state.topology.nodes.len() {
            let endpoint = self.cniguard(node);
            while !endpoint.ready() {
                let key = format!("cniguard/{}", self.state.topology.nodes[node].name);
                ensure!(self.state.processes.is_running(&key), "{key} exited:\n{}", self.log_tail(&key));
                ensure!(
                    Instant::now() < deadline,
                    "{key} not ready within {PATIENCE:?}:\n{}",
                    self.log_tail(&key)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let prometheus = self.prometheus();
        let deadline = Instant::now() + Duration::from_mins(1);
        while !prometheus.all_targets_up(self.state.topology.nodes.len()) {
            ensure!(
                self.state.processes.is_running("prometheus"),
                "Prometheus exited:\n{}",
                self.log_tail("prometheus")
            );
            ensure!(
                Instant::now() < deadline,
                "Prometheus does not scrape every node:\n{}",
                self.log_tail("prometheus")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    /// The last lines of node `node`'s cniguard log, for a test's failure message.
    #[must_use]
    pub fn cniguard_log(&self, node: usize) -> String {
        self.log_tail(&format!("cniguard/{}", self.state.topology.nodes[node].name))
    }
}
