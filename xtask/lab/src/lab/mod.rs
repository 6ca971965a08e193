//! The migration lab: up on Flannel, cut over node by node to Calico, roll back, inject
//! faults and repair them, tear down. Its state is saved after every step, so each
//! `cargo xtask lab ...` command picks up where the last one left off, and every step can
//! be repeated without harm.
//!
//! [`Lab`] and its saved state live here; its methods live with their concern: `steps`
//! (up, cutover, rollback, down), `pods` (what runs in the pods), `observers` (cniguard,
//! Prometheus, Alertmanager and the rollback hook), `faults` (one module per fault, its
//! inject next to its repair) and `readings` (what tests, the demo and `status` read).

mod config;
mod faults;
mod observers;
mod pods;
mod programs;
mod readings;
mod steps;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::binaries::Binaries;
use crate::netns::remove_namespaces;
use crate::process::Processes;
use crate::topology::{Cni, Topology};

pub use config::{LAB_CNIGUARD_CONFIG, LAB_JUDGEMENT_CONFIG};
pub use faults::{
    FAULTS, Fault, FaultKind, FaultParam, FaultValues, OLD_API_SERVICE, OLD_CLUSTER_DNS, OVERLAPPING_ROUTE,
    ParamKind, WRONG_ROUTER_ID, WRONG_ROUTER_ID_DEVICE,
};
pub use observers::LAB_HOOK_FIRING_FOR_SECONDS;
pub use programs::{REQUIRED_PROGRAMS, check_programs};
pub use readings::NodePhase;

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub topology: Topology,
    pub binaries: Binaries,
    /// Logs, configuration, Prometheus' data and the saved state.
    pub state_dir: PathBuf,
    /// Extra arguments for every node's `cniguard run`.
    pub cniguard_args: Vec<String>,
    /// The configuration file every node's cniguard reads (as a DaemonSet's ConfigMap).
    pub cniguard_config: String,
    /// A launcher for one node's cniguard: the node's name, then a program and its first
    /// arguments, to which `--` and the node's usual command line are appended (the
    /// container tests run that node's agent in its pod under runc). `None`: plain processes.
    pub cniguard_launcher: Option<(String, Vec<String>)>,
}

/// A moment of the lab's story, for timelines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub step: String,
    /// Unix time in seconds.
    pub at: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct LabState {
    topology: Topology,
    binaries: Binaries,
    state_dir: PathBuf,
    cniguard_args: Vec<String>,
    cniguard_config: String,
    #[serde(default)]
    cniguard_launcher: Option<(String, Vec<String>)>,
    /// Per node: whether each dataplane is present.
    flannel: Vec<bool>,
    calico: Vec<bool>,
    /// Per pod: its live generations, the current one last.
    pods: BTreeMap<String, Vec<Cni>>,
    processes: Processes,
    faults: Vec<Fault>,
    paused: bool,
    events: Vec<Event>,
}

/// A running lab. Dropping one that [`Lab::up`] built tears it down, unless
/// [`Lab::keep_running`] handed it over to later commands.
pub struct Lab {
    state: LabState,
    owned: bool,
}

const STATE_FILE: &str = "lab.json";

impl Lab {
    /// Opens the lab saved in `state_dir` (for a command after `lab up`). Dropping it
    /// leaves the lab running.
    ///
    /// # Errors
    /// If there is no saved lab, or its state cannot be read.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no lab is up ({} is missing)", path.display()))?;
        let state =
            serde_json::from_str(&text).with_context(|| format!("{} is not a lab state", path.display()))?;
        Ok(Self { state, owned: false })
    }

    /// Leaves the lab running after this handle drops (`cargo xtask lab up`).
    ///
    /// # Errors
    /// If the state cannot be saved.
    pub fn keep_running(mut self) -> Result<()> {
        self.save()?;
        self.owned = false;
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let path = self.state.state_dir.join(STATE_FILE);
        let temporary = path.with_extension("json.new");
        std::fs::write(&temporary, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&temporary, &path)?;
        Ok(())
    }

    /// Adds a moment to the timeline (e.g. what cniguard concluded), and saves it.
    ///
    /// # Errors
    /// If the state cannot be saved.
    pub fn note(&mut self, step: &str) -> Result<()> {
        self.record(step);
        self.save()
    }

    fn record(&mut self, step: &str) {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        self.state.events.push(Event { step: step.to_owned(), at });
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.state.state_dir.join(format!("{name}.log"))
    }

    fn log_tail(&self, key: &str) -> String {
        let log = self.state.processes.record(key).map(|r| r.log.clone()).unwrap_or_default();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn teardown(&mut self) {
        self.owned = false;
        self.state.processes.stop_all();
        remove_namespaces(&self.state.topology.prefix);
        let _ = std::fs::remove_dir_all(&self.state.state_dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            if std::thread::panicking() {
                eprintln!("--- lab status at failure ---\n{}", self.status());
            }
            self.teardown();
        }
    }
}

fn cni_name(cni: Cni) -> &'static str {
    match cni {
        Cni::Flannel => "flannel",
        Cni::Calico => "calico",
    }
}
