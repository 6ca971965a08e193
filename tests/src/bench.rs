//! What `cniguard-bench`'s whole-daemon sections share: the release `cniguard` started in a
//! namespace with `nsenter`, a packet capture next to it, and what /proc says of a process.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cniguard_lab::cniguard::signal_and_reap;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::netns::{NetNs, QuietLink};
use nix::sys::signal::Signal;

/// How long anything here may take before the bench gives up (a bound on a hang, not a
/// measurement).
const PATIENCE: Duration = Duration::from_mins(3);

/// The `cniguard` binary built next to the running bench (`target/release/cniguard`), or
/// `CNIGUARD_BIN`.
///
/// # Errors
/// If it is not there: the message says how to build it.
pub fn daemon_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("CNIGUARD_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?.parent().context("the bench's directory")?.join("cniguard"),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release -p cniguard` (or set CNIGUARD_BIN)",
        path.display()
    );
    Ok(path)
}

/// `nsenter --net=/var/run/netns/<ns> <program>`: the program runs in that namespace and is
/// killed if the thread that started it exits (nsenter execs it, so the child's pid is the
/// program's).
#[must_use]
pub fn nsenter(ns: &NetNs, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={}", ns.path().display())).arg(program);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Two namespaces `<prefix>-<pid>-a` and `-b` joined by a veth pair with /30 addresses and
/// permanent neighbour entries, as [`QuietLink::new`] makes them, under the bench's own
/// prefix. Both namespaces go when the value drops.
///
/// # Errors
/// If a namespace, the link or an address cannot be set up.
pub fn quiet_link(prefix: &str, a_dev: &str, b_dev: &str) -> Result<QuietLink> {
    let pid = std::process::id();
    let a = NetNs::create(&format!("{prefix}-{pid}-a"), true)?;
    let b = NetNs::create(&format!("{prefix}-{pid}-b"), true)?;
    cniguard_lab::netns::veth_pair(&a, a_dev, &b, b_dev)?;
    let (a_addr, b_addr) = (std::net::Ipv4Addr::new(10, 199, 0, 1), std::net::Ipv4Addr::new(10, 199, 0, 2));
    a.ip(&["addr", "add", &format!("{a_addr}/30"), "dev", a_dev])?;
    b.ip(&["addr", "add", &format!("{b_addr}/30"), "dev", b_dev])?;
    let (a_mac, b_mac) = (a.mac(a_dev)?, b.mac(b_dev)?);
    a.ip(&["neigh", "replace", &b_addr.to_string(), "lladdr", &b_mac, "dev", a_dev, "nud", "permanent"])?;
    b.ip(&["neigh", "replace", &a_addr.to_string(), "lladdr", &a_mac, "dev", b_dev, "nud", "permanent"])?;
    Ok(QuietLink { a, b, a_dev: a_dev.to_owned(), b_dev: b_dev.to_owned(), a_addr, b_addr })
}

/// `ip -n <ns> -batch <file>` of `lines`.
///
/// # Errors
/// If a line fails.
pub fn ip_batch(ns: &NetNs, lines: impl IntoIterator<Item = String>) -> Result<()> {
    let path = std::env::temp_dir().join(format!("{}-batch", ns.name()));
    let mut text = lines.into_iter().collect::<Vec<_>>().join("\n");
    text.push('\n');
    std::fs::write(&path, text)?;
    let result = ns.ip(&["-batch", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    result.map(drop)
}

/// `cniguard run --config <file>` in a namespace, started with `nsenter`; SIGTERM (then
/// SIGKILL) on drop.
pub struct BenchDaemon {
    child: Option<Child>,
    ns: NetNs,
    address: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
    pub started: Instant,
}

impl BenchDaemon {
    /// Starts `binary` in `ns` with `config` (TOML) written to a file of its own, listening
    /// on `address` in that namespace (`listen` and `state_dir` are set here). Does not wait.
    ///
    /// # Errors
    /// If the files cannot be written or the process cannot start.
    pub fn spawn(binary: &Path, ns: &NetNs, address: SocketAddr, config: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-cniguard", ns.name()));
        std::fs::create_dir_all(dir.join("state"))?;
        let file = dir.join("cniguard.toml");
        let state = dir.join("state");
        std::fs::write(
            &file,
            format!("listen = \"{address}\"\nstate_dir = \"{}\"\n{config}", state.display()),
        )?;
        let log = dir.join("cniguard.log");
        let log_file = std::fs::File::create(&log)?;
        let mut command = nsenter(ns, binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let started = Instant::now();
        let child = command.spawn().context("starting cniguard with nsenter")?;
        Ok(Self { child: Some(child), ns: NetNs::existing(ns.name()), address, log, dir, started })
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What it logged so far: the last 40 lines (a start at 1,000 veths logs thousands).
    #[must_use]
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET path` from inside the namespace.
    ///
    /// # Errors
    /// If the connection fails.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.ns.http_get(self.address, path)
    }

    /// Polls `/readyz` every 10 ms until it answers 200; the time since the spawn.
    ///
    /// # Errors
    /// If the daemon exits first, or is not ready within a minute.
    pub fn wait_ready(&mut self) -> Result<Duration> {
        self.wait_until("ready", |daemon| Ok(matches!(daemon.get("/readyz"), Ok((200, _)))))
    }

    /// Polls `/metrics` until `done` holds of a scrape; the time since the spawn.
    ///
    /// # Errors
    /// If the daemon exits first, or `done` does not hold within a minute.
    pub fn wait_metrics(&mut self, what: &str, done: impl Fn(&Scrape) -> bool) -> Result<Duration> {
        self.wait_until(what, |daemon| {
            let (status, body) = daemon.get("/metrics")?;
            Ok(status == 200 && done(&Scrape::parse(&body)))
        })
    }

    fn wait_until(&mut self, what: &str, done: impl Fn(&Self) -> Result<bool>) -> Result<Duration> {
        loop {
            if done(self).unwrap_or(false) {
                return Ok(self.started.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("cniguard exited ({status}) before {what}; log:\n{}", self.log());
            }
            if self.started.elapsed() > PATIENCE {
                bail!("cniguard not {what} after {PATIENCE:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, and the time until it has exited.
    ///
    /// # Errors
    /// If it does not exit within a minute (it is killed), or exits unsuccessfully.
    pub fn stop(mut self) -> Result<Duration> {
        let mut child = self.child.take().context("already stopped")?;
        let start = Instant::now();
        let status = signal_and_reap(&mut child, Signal::SIGTERM, PATIENCE)?;
        let took = start.elapsed();
        anyhow::ensure!(status.success(), "cniguard exited with {status}; log:\n{}", self.log());
        Ok(took)
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(err) = signal_and_reap(&mut child, Signal::SIGTERM, PATIENCE)
        {
            eprintln!("cleanup: {err:#}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tcpdump -i <device> -w /dev/null <filter>` in a namespace, capturing from the moment
/// [`Capture::start`] returns.
pub struct Capture {
    child: Option<Child>,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Capture {
    /// Starts it and waits until it says it is listening.
    ///
    /// # Errors
    /// If tcpdump is missing (`cargo xtask setup` installs it), or exits first.
    pub fn start(ns: &NetNs, device: &str, filter: &[&str]) -> Result<Self> {
        let mut child = nsenter(ns, "tcpdump")
            .args(["-n", "-i", device, "-w", "/dev/null"])
            .args(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (cargo xtask setup installs it)")?;
        let stderr = child.stderr.take().context("tcpdump's stderr")?;
        let (lines, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let capture = Self { child: Some(child), stderr: receiver };
        let mut said = Vec::new();
        loop {
            match capture.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => return Ok(capture),
                Ok(line) => said.push(line),
                Err(_) => bail!("tcpdump did not start listening: {}", said.join("\n")),
            }
        }
    }

    /// SIGTERM; what tcpdump said at exit (its `packets captured` and `dropped by kernel`
    /// lines), in one line.
    ///
    /// # Errors
    /// If it does not exit.
    pub fn stop(mut self) -> Result<String> {
        let mut child = self.child.take().context("already stopped")?;
        signal_and_reap(&mut child, Signal::SIGTERM, PATIENCE)?;
        let mut said = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            said.push(line);
        }
        Ok(said.join(", "))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal_and_reap(&mut child, Signal::SIGTERM, PATIENCE);
        }
    }
}

/// A process's CPU time (user + system) from `/proc/<pid>/stat`.
///
/// # Errors
/// If the process is gone.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the parenthesised name: state is the 3rd field, utime the 14th.
    let (_, rest) = stat.rsplit_once(") ").context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
        + fields.get(12).context("no stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    Ok(Duration::from_micros(ticks * 1_000_000 / per_second))
}

/// `VmRSS` and `VmHWM` (the peak) of a process, in KiB.
///
/// # Errors
/// If the process is gone.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line =
            status.lines().find(|line| line.starts_with(name)).with_context(|| format!("no {name}"))?;
        Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The machine's 1-minute load average and its cores, for reading the numbers next to it
/// (whatever else runs on the machine shares the cores with the bench).
#[must_use]
pub fn load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("load average {} on {cores} cores", load.split_whitespace().next().unwrap_or("?"))
}
