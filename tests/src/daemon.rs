//! The real `cniguard` binary, started inside a test namespace as a drop guard.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::exposition::Scrape;
use crate::netns::NetNs;

/// How long to wait for something the daemon should do promptly (attach, detach, become
/// ready). Generous on purpose: it bounds a hang, it does not measure speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Where the `cniguard` binary is: `CNIGUARD_BIN`, else next to the test executable
/// (`cargo test --workspace` builds it there, because `daemon/tests` needs it too).
///
/// # Panics
/// If it is not there.
#[must_use]
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CNIGUARD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let binary = dir.join("cniguard");
    assert!(
        binary.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo xtask test`), or set CNIGUARD_BIN",
        binary.display()
    );
    binary
}

/// A running `cniguard run`; stopped with SIGTERM (then SIGKILL) on drop.
pub struct Daemon {
    child: Option<Child>,
    netns: PathBuf,
    listen: SocketAddr,
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
        let listen: SocketAddr = "127.0.0.1:9464".parse()?;
        let log = std::env::temp_dir().join(format!("{}.log", crate::names::unique("daemon")));
        let log_file = std::fs::File::create(&log)?;
        let mut command = ns.command(binary())?;
        command.arg("run").args(["--listen", &listen.to_string()]).args(args);
        command
            .env("RUST_LOG", "cniguard=debug,info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = command.spawn().context("starting cniguard")?;
        Ok(Self { child: Some(child), netns: ns.path(), listen, log })
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
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("cniguard not ready after {PATIENCE:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_running(&self) -> Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.pid())?);
        if kill(pid, None).is_err()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        {
            bail!("cniguard exited; log:\n{}", self.log());
        }
        Ok(())
    }

    /// An HTTP GET on the daemon's listen address, from inside its namespace.
    ///
    /// # Errors
    /// If the connection fails or the answer is not HTTP.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let (netns, listen) = (self.netns.clone(), self.listen);
        let raw = std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<String> {
                    let file = std::fs::File::open(&netns)?;
                    nix::sched::setns(std::os::fd::AsFd::as_fd(&file), nix::sched::CloneFlags::CLONE_NEWNET)?;
                    let mut stream = TcpStream::connect_timeout(&listen, Duration::from_secs(5))?;
                    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                    // HTTP/1.0: the server closes after one response and never chunks it.
                    write!(stream, "GET {path} HTTP/1.0\r\nHost: cniguard\r\n\r\n")?;
                    let mut raw = String::new();
                    stream.read_to_string(&mut raw)?;
                    Ok(raw)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("HTTP client thread panicked"))?
        })?;
        let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers in the response")?;
        let status = head.split_whitespace().nth(1).context("no status line")?.parse()?;
        Ok((status, body.to_owned()))
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

    /// Scrapes until `done` holds, and returns that scrape.
    ///
    /// # Errors
    /// If it does not hold within [`PATIENCE`]; the error shows the last scrape and the log.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let scrape = self.scrape()?;
            if done(&scrape) {
                return Ok(scrape);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not reached within {PATIENCE:?}\nlast scrape:\n{}\nlog:\n{}",
                    scrape.text,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
        let _ = kill(Pid::from_raw(i32::try_from(child.id())?), signal);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("cniguard did not exit after {signal}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
