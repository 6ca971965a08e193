//! The real `cniguard` binary in a namespace: its HTTP endpoint, and a drop guard that
//! runs it for a test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::binaries::Binaries;
use crate::exposition::Scrape;
use crate::netns::NetNs;

/// How long to wait for something the daemon should do promptly (attach, detach, become
/// ready). Generous on purpose: it bounds a hang, it does not measure speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A cniguard's HTTP endpoint, reached from inside its namespace.
pub struct Endpoint {
    pub netns: NetNs,
    pub address: SocketAddr,
}

impl Endpoint {
    /// # Errors
    /// If the connection fails or the answer is not HTTP.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.netns.http_get(self.address, path)
    }

    /// Scrapes and parses `/metrics`.
    ///
    /// # Errors
    /// If the request fails or does not answer 200.
    pub fn scrape(&self) -> Result<Scrape> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(Scrape::parse(&body))
    }

    /// Whether `/readyz` answers 200 now.
    #[must_use]
    pub fn ready(&self) -> bool {
        matches!(self.get("/readyz"), Ok((200, _)))
    }

    /// Scrapes until `done` holds, and returns that scrape.
    ///
    /// # Errors
    /// If it does not hold within [`PATIENCE`]; the error shows the last scrape.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let scrape = self.scrape()?;
            if done(&scrape) {
                return Ok(scrape);
            }
            if Instant::now() > deadline {
                bail!("{what}: not reached within {PATIENCE:?}\nlast scrape:\n{}", scrape.text);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A `cniguard run` started for a test; stopped with SIGTERM (then SIGKILL) on drop.
pub struct Daemon {
    child: Option<Child>,
    endpoint: Endpoint,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cniguard run <args>` inside `ns`, listening on 127.0.0.1:9464 of that
    /// namespace, and waits until it is ready.
    ///
    /// # Errors
    /// If it cannot start or does not become ready; the error holds its log.
    pub fn start(ns: &NetNs, args: &[&str]) -> Result<Self> {
        let daemon = Self::spawn(ns, args)?;
        daemon.wait_ready()?;
        Ok(daemon)
    }

    /// Starts it without waiting for readiness.
    ///
    /// # Errors
    /// If the process cannot be started.
    pub fn spawn(ns: &NetNs, args: &[&str]) -> Result<Self> {
        let address: SocketAddr = "127.0.0.1:9464".parse()?;
        let log = std::env::temp_dir().join(format!("{}.log", crate::names::unique("daemon")));
        let log_file = std::fs::File::create(&log)?;
        let mut command = ns.command(Binaries::beside_test_executable().cniguard)?;
        command.arg("run").args(["--listen", &address.to_string()]).args(args);
        command
            .env("RUST_LOG", "cniguard=debug,info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = command.spawn().context("starting cniguard")?;
        Ok(Self {
            child: Some(child),
            endpoint: Endpoint { netns: NetNs::existing(ns.name()), address },
            log,
        })
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the daemon logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// If the daemon exits first or is not ready within [`PATIENCE`].
    pub fn wait_ready(&self) -> Result<()> {
        self.wait_ready_within(PATIENCE)
    }

    /// Waits until `/readyz` answers 200, for as long as `patience`.
    ///
    /// # Errors
    /// If the daemon exits first or is not ready in time.
    pub fn wait_ready_within(&self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        while !self.endpoint.ready() {
            if !crate::process::alive(self.pid()) {
                bail!("cniguard exited; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("cniguard not ready after {patience:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// # Errors
    /// If the connection fails or the answer is not HTTP.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.endpoint.get(path)
    }

    /// # Errors
    /// If the request fails or does not answer 200.
    pub fn scrape(&self) -> Result<Scrape> {
        self.endpoint.scrape()
    }

    /// Scrapes until `done` holds, and returns that scrape.
    ///
    /// # Errors
    /// If it does not hold within [`PATIENCE`]; the error shows the last scrape and the log.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
        self.endpoint.wait_for(what, done).map_err(|err| err.context(format!("log:\n{}", self.log())))
    }

    /// The number of file descriptors the daemon holds open, TCP sockets left out: the
    /// HTTP listener and the connections of scrapes come and go with requests, while what
    /// could leak per interface (BPF links, netlink sockets, maps) is all counted.
    ///
    /// # Errors
    /// If /proc cannot be read.
    pub fn open_fds(&self) -> Result<usize> {
        let pid = self.pid();
        let mut tcp_inodes = std::collections::HashSet::new();
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
            tcp_inodes.extend(
                text.lines().skip(1).filter_map(|line| line.split_whitespace().nth(9).map(str::to_owned)),
            );
        }
        let mut count = 0;
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let target = std::fs::read_link(entry?.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            let tcp = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inode| tcp_inodes.contains(inode));
            count += usize::from(!tcp);
        }
        Ok(count)
    }

    /// SIGTERM, and the exit status once it has cleaned up.
    ///
    /// # Errors
    /// If it does not exit within [`PATIENCE`].
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    /// SIGTERM, and the exit status once it has cleaned up, leaving the value in place (a
    /// test that starts another daemon in its stead).
    ///
    /// # Errors
    /// If it does not exit within [`PATIENCE`], or has already stopped.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.signal_and_wait(Signal::SIGTERM)
    }

    /// SIGKILL: no chance to clean up, as after a crash or an OOM kill.
    ///
    /// # Errors
    /// If the process cannot be reaped.
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.signal_and_wait(Signal::SIGKILL)
    }

    fn signal_and_wait(&mut self, signal: Signal) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        signal_and_reap(&mut child, signal, PATIENCE).with_context(|| format!("log:\n{}", self.log()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(err) = self.signal_and_wait(Signal::SIGTERM)
        {
            eprintln!("cleanup: {err:#}");
        }
        if std::thread::panicking() {
            eprintln!("--- cniguard log ({}) ---\n{}", self.log.display(), self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Sends `signal` to `child` and reaps it, polling every millisecond (the bench times the
/// stop with this); SIGKILL and an error if it has not exited within `patience`.
///
/// # Errors
/// If the child cannot be waited for, or outlives `patience`.
pub fn signal_and_reap(child: &mut Child, signal: Signal, patience: Duration) -> Result<ExitStatus> {
    let _ = kill(Pid::from_raw(i32::try_from(child.id())?), signal);
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not exit after {signal}", child.id());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
