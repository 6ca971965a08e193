//! The rollback command: the operator's argv, without a shell, in a process group of its
//! own, its output appended to a log file in the state directory. It is never killed when
//! the hook stops (no `kill_on_drop`, no pipe to the hook that would break): a stop of the
//! hook must not leave a half-done rollback. Only `--command-timeout-seconds` ends it (its
//! process group gets SIGTERM, then SIGKILL 10 s later).

use std::io::{Read as _, Seek as _};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

pub const LOG_FILE: &str = "rollback-command.log";

/// A started command.
pub struct Running {
    child: tokio::process::Child,
    pub pid: u32,
    log: std::path::PathBuf,
    log_start: u64,
}

/// Starts the command in its own process group.
pub fn start(command: &[String], state_dir: &Path) -> std::io::Result<Running> {
    let Some((program, args)) = command.split_first() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"));
    };
    let log = state_dir.join(LOG_FILE);
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let log_start = file.metadata().map_or(0, |m| m.len());
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        // Its own group: a signal to the hook's group (a terminal's Ctrl-C, a supervisor
        // killing the group) does not reach it, and a timeout can end all of it.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    Ok(Running { child, pid, log, log_start })
}

impl Running {
    /// Waits for the end; returns the `result` label.
    pub async fn finish(mut self, timeout: Duration) -> &'static str {
        let Ok(status) = tokio::time::timeout(timeout, self.child.wait()).await else {
            tracing::error!(
                pid = self.pid,
                "the rollback command ran over {}s: ending its process group",
                timeout.as_secs()
            );
            let group = Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
            let _ = killpg(group, Signal::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
                let _ = killpg(group, Signal::SIGKILL);
            }
            let _ = self.child.wait().await;
            return "failed";
        };
        let output = self.output_tail();
        match status {
            Ok(status) if status.success() => {
                tracing::warn!(%output, "the rollback command succeeded");
                "succeeded"
            }
            Ok(status) => {
                tracing::error!(%status, %output, "the rollback command failed");
                "failed"
            }
            Err(err) => {
                tracing::error!("cannot wait for the rollback command: {err}");
                "failed"
            }
        }
    }

    /// The last 2000 bytes this run wrote to the log.
    fn output_tail(&self) -> String {
        let mut text = Vec::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut file| {
            let end = file.seek(std::io::SeekFrom::End(0))?;
            file.seek(std::io::SeekFrom::Start(end.saturating_sub(2000).max(self.log_start)))?;
            file.read_to_end(&mut text)
        });
        String::from_utf8_lossy(&text).trim().to_owned()
    }
}
