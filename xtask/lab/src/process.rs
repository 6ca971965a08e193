//! The lab's long-running processes (cniguard, BIRD, dnsmasq, Prometheus, workloads),
//! started inside namespaces, in sessions of their own so they outlive `cargo xtask lab
//! up`, and remembered by key and pid so that any later command can stop them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::netns::NetNs;

/// Whether `pid` is a live process (not gone, not a zombie).
#[must_use]
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    if raw == 0 || kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name, which may itself contain spaces.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub netns: String,
    pub log: PathBuf,
    pub command: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Processes {
    records: BTreeMap<String, ProcessRecord>,
    /// Handles of the processes this very program started, to reap them.
    #[serde(skip)]
    children: HashMap<String, Child>,
}

impl Processes {
    /// Starts `program args` in `netns` under `key`, its output appended to `log`. A
    /// process already running under `key` with the same command is left alone (so every
    /// lab step can be repeated); one with another command is replaced.
    ///
    /// # Errors
    /// If the process cannot be started.
    pub fn start(
        &mut self,
        key: &str,
        netns: &NetNs,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<u32> {
        if self.is_current(key, netns, program, args) {
            return Ok(self.records[key].pid);
        }
        self.stop(key);
        let mut command_line = vec![program.display().to_string()];
        command_line.extend(args.iter().cloned());
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = netns
            .detached_command(program)?
            .args(args)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {key}: {}", command_line.join(" ")))?;
        let pid = child.id();
        self.records.insert(
            key.to_owned(),
            ProcessRecord { pid, netns: netns.name().to_owned(), log, command: command_line },
        );
        self.children.insert(key.to_owned(), child);
        Ok(pid)
    }

    /// Whether `key` runs exactly this command in this namespace already.
    #[must_use]
    pub fn is_current(&self, key: &str, netns: &NetNs, program: &Path, args: &[String]) -> bool {
        self.records.get(key).is_some_and(|record| {
            record.netns == netns.name()
                && record.command.first().map(String::as_str) == Some(&*program.display().to_string())
                && record.command[1..] == *args
                && alive(record.pid)
        })
    }

    /// Stops the process under `key`: SIGTERM, then SIGKILL if it lingers.
    pub fn stop(&mut self, key: &str) {
        let Some(record) = self.records.remove(key) else { return };
        let child = self.children.remove(key);
        stop_pid(record.pid, child);
    }

    /// Sends `signal` to the process under `key` (SIGSTOP and SIGCONT pause and resume it).
    pub fn signal(&self, key: &str, signal: Signal) {
        if let Some(record) = self.records.get(key)
            && let Ok(pid) = i32::try_from(record.pid)
        {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    #[must_use]
    pub fn is_running(&self, key: &str) -> bool {
        self.records.get(key).is_some_and(|r| alive(r.pid))
    }

    #[must_use]
    pub fn record(&self, key: &str) -> Option<&ProcessRecord> {
        self.records.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.records.keys().map(String::as_str)
    }

    /// Stops every process, newest-started order not mattering: each is independent.
    pub fn stop_all(&mut self) {
        let keys: Vec<String> = self.records.keys().cloned().collect();
        for key in keys {
            self.stop(&key);
        }
    }
}

fn stop_pid(pid: u32, mut child: Option<Child>) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    // A paused process only handles SIGTERM once it runs again.
    let _ = kill(Pid::from_raw(raw), Signal::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        if let Some(child) = child.as_mut() {
            let _ = child.try_wait();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
    if let Some(mut child) = child {
        let _ = child.wait();
    }
}
