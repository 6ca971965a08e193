//! Network namespaces as drop guards, and running code or programs inside them.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::names;

/// A network namespace created for a test, deleted (with any process left in it) on drop.
///
/// It starts quiet on purpose: loopback up, IPv6 off (no router or neighbour solicitations),
/// so that the only packets on its interfaces are the ones the test sends.
pub struct NetNs {
    name: String,
    /// Whether dropping this handle deletes the namespace.
    guard: bool,
}

impl NetNs {
    /// Creates `cgt-<pid>-<n>-<role>`, deleted when the handle drops.
    ///
    /// # Errors
    /// If `ip netns add` fails (not root, or no namespace support).
    pub fn new(role: &str) -> Result<Self> {
        Self::create(&names::unique(role), true)
    }

    /// Creates the namespace `name`; with `guard`, dropping the handle deletes it.
    ///
    /// # Errors
    /// If `ip netns add` fails (it exists already, not root, or no namespace support).
    pub fn create(name: &str, guard: bool) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self { name: name.to_owned(), guard };
        for key in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
            ns.sysctl(key, "1")?;
        }
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace that leaves it in place when dropped.
    #[must_use]
    pub fn existing(name: &str) -> Self {
        Self { name: name.to_owned(), guard: false }
    }

    /// Whether a namespace called `name` exists.
    #[must_use]
    pub fn exists(name: &str) -> bool {
        PathBuf::from("/var/run/netns").join(name).exists()
    }

    /// Deletes the namespace now, killing whatever still runs in it.
    pub fn delete(name: &str) {
        if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", name])) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
        }
        if Self::exists(name)
            && let Err(err) = run(Command::new("ip").args(["netns", "del", name]))
        {
            eprintln!("cleanup: could not delete namespace {name}: {err:#}");
        }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`; returns stdout.
    ///
    /// # Errors
    /// If the command fails; the error carries its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `tc -n <ns> <args>`; returns stdout.
    ///
    /// # Errors
    /// If the command fails; the error carries its stderr.
    pub fn tc(&self, args: &[&str]) -> Result<String> {
        run(Command::new("tc").args(["-n", &self.name]).args(args))
    }

    /// `bridge -n <ns> <args>`; returns stdout.
    ///
    /// # Errors
    /// If the command fails; the error carries its stderr.
    pub fn bridge(&self, args: &[&str]) -> Result<String> {
        run(Command::new("bridge").args(["-n", &self.name]).args(args))
    }

    /// Sets a sysctl of this namespace.
    ///
    /// # Errors
    /// If the key does not exist or cannot be written.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]))
        .map(drop)
    }

    /// A command that runs `program` inside this namespace (entered between fork and exec,
    /// without `ip netns exec`'s private /sys, so bpffs and tracefs stay visible). The
    /// process is killed if the thread that started it exits: a test that dies takes its
    /// processes along.
    ///
    /// # Errors
    /// If the namespace file cannot be opened.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        self.command_with(program, true)
    }

    /// Like [`Self::command`], but the process outlives its starter, in a session of its
    /// own: for `cargo xtask lab up`, whose processes run until `lab down`.
    ///
    /// # Errors
    /// If the namespace file cannot be opened.
    pub fn detached_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        self.command_with(program, false)
    }

    fn command_with(&self, program: impl AsRef<std::ffi::OsStr>, die_with_parent: bool) -> Result<Command> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        let mut command = Command::new(program);
        // SAFETY: only async-signal-safe calls (setns, prctl, setsid) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                if die_with_parent {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens belong here.
    ///
    /// # Panics
    /// If the namespace cannot be entered, or `f` panics.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).expect("open the namespace file");
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("enter the namespace");
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The kernel's own counters of `device` (`ip -s link`).
    ///
    /// # Errors
    /// If the device does not exist.
    pub fn link_stats(&self, device: &str) -> Result<LinkStats> {
        let json = self.ip(&["-s", "-j", "link", "show", "dev", device])?;
        let value: serde_json::Value = serde_json::from_str(&json)?;
        let stats = &value[0]["stats64"];
        let field = |dir: &str, name: &str| {
            stats[dir][name].as_u64().with_context(|| format!("no {dir}.{name} in `ip -s -j link` output"))
        };
        Ok(LinkStats {
            rx_packets: field("rx", "packets")?,
            rx_bytes: field("rx", "bytes")?,
            tx_packets: field("tx", "packets")?,
            tx_bytes: field("tx", "bytes")?,
        })
    }

    /// The index of `device` in this namespace.
    ///
    /// # Errors
    /// If the device does not exist.
    pub fn ifindex(&self, device: &str) -> Result<u32> {
        let json = self.ip(&["-j", "link", "show", "dev", device])?;
        let value: serde_json::Value = serde_json::from_str(&json)?;
        let index = value[0]["ifindex"].as_u64().context("no ifindex in `ip -j link` output")?;
        Ok(u32::try_from(index)?)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.guard {
            Self::delete(&self.name);
        }
    }
}

/// Packet and byte counters of a device, as the kernel counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl std::ops::Sub for LinkStats {
    type Output = Self;

    fn sub(self, before: Self) -> Self {
        Self {
            rx_packets: self.rx_packets - before.rx_packets,
            rx_bytes: self.rx_bytes - before.rx_bytes,
            tx_packets: self.tx_packets - before.tx_packets,
            tx_bytes: self.tx_bytes - before.tx_bytes,
        }
    }
}

/// Creates a veth pair: `a_name` in `a`, `b_name` in `b`, both up. Nothing touches the root
/// namespace: the pair is created inside `a`.
///
/// # Errors
/// If `ip link add` fails.
pub fn veth_pair(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<()> {
    a.ip(&["link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name()])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// Two namespaces joined by a veth pair with /30 addresses and permanent neighbour entries,
/// so that no ARP crosses the pair: its counters hold exactly the traffic a test sends.
pub struct QuietLink {
    pub a: NetNs,
    pub b: NetNs,
    pub a_dev: String,
    pub b_dev: String,
    pub a_addr: std::net::Ipv4Addr,
    pub b_addr: std::net::Ipv4Addr,
}

impl QuietLink {
    /// # Errors
    /// If a namespace, the link or an address cannot be set up.
    pub fn new(a_dev: &str, b_dev: &str) -> Result<Self> {
        let (a, b) = (NetNs::new("a")?, NetNs::new("b")?);
        veth_pair(&a, a_dev, &b, b_dev)?;
        let (a_addr, b_addr) =
            (std::net::Ipv4Addr::new(10, 199, 0, 1), std::net::Ipv4Addr::new(10, 199, 0, 2));
        a.ip(&["addr", "add", &format!("{a_addr}/30"), "dev", a_dev])?;
        b.ip(&["addr", "add", &format!("{b_addr}/30"), "dev", b_dev])?;
        let a_mac = a.mac(a_dev)?;
        let b_mac = b.mac(b_dev)?;
        a.ip(&["neigh", "replace", &b_addr.to_string(), "lladdr", &b_mac, "dev", a_dev, "nud", "permanent"])?;
        b.ip(&["neigh", "replace", &a_addr.to_string(), "lladdr", &a_mac, "dev", b_dev, "nud", "permanent"])?;
        Ok(Self { a, b, a_dev: a_dev.to_owned(), b_dev: b_dev.to_owned(), a_addr, b_addr })
    }
}

impl NetNs {
    /// The MAC address of `device`.
    ///
    /// # Errors
    /// If the device does not exist.
    pub fn mac(&self, device: &str) -> Result<String> {
        let json = self.ip(&["-j", "link", "show", "dev", device])?;
        let value: serde_json::Value = serde_json::from_str(&json)?;
        Ok(value[0]["address"].as_str().context("no address in `ip -j link` output")?.to_owned())
    }

    /// An HTTP/1.0 GET of `path` on `address`, from inside this namespace: the status and
    /// the body.
    ///
    /// # Errors
    /// If the connection fails or the answer is not HTTP.
    pub fn http_get(&self, address: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
        self.http(address, "GET", path, &[], "")
    }

    /// An HTTP/1.0 request with `headers` (`Name: value`) and `body`, from inside this
    /// namespace: the status and the body.
    ///
    /// # Errors
    /// If the connection fails or the answer is not HTTP.
    pub fn http(
        &self,
        address: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &str,
    ) -> Result<(u16, String)> {
        use std::io::{Read as _, Write as _};
        let length = format!("Content-Length: {}", body.len());
        let mut lines = vec![format!("{method} {path} HTTP/1.0"), format!("Host: {address}")];
        lines.extend(headers.iter().map(|h| (*h).to_owned()));
        if !body.is_empty() {
            lines.push(length);
        }
        let request = format!("{}\r\n\r\n{body}", lines.join("\r\n"));
        let raw = self.run(|| -> Result<String> {
            let mut stream =
                std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(5))?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(15)))?;
            // HTTP/1.0: the server closes after one response and never chunks it.
            stream.write_all(request.as_bytes())?;
            let mut raw = String::new();
            stream.read_to_string(&mut raw)?;
            Ok(raw)
        })?;
        let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers in the response")?;
        let status = head.split_whitespace().nth(1).context("no status line")?.parse()?;
        Ok((status, body.to_owned()))
    }
}

/// Runs a command to completion; its stdout, or an error with its stderr.
///
/// # Errors
/// If it cannot start or exits unsuccessfully.
pub fn run(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", command.get_program().display()))?;
    if !output.status.success() {
        // Some tools (birdc) report their errors on stdout.
        let message = [&output.stderr, &output.stdout]
            .map(|text| String::from_utf8_lossy(text).trim().to_owned())
            .join(" ");
        bail!(
            "{} {:?} failed ({}): {}",
            command.get_program().display(),
            command.get_args().collect::<Vec<_>>(),
            output.status,
            message.trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Kills the processes in, and deletes, every namespace whose name starts with `prefix`.
pub fn remove_namespaces(prefix: &str) {
    for name in namespaces_with_prefix(prefix) {
        NetNs::delete(&name);
    }
}

/// The namespaces whose name starts with `prefix`.
#[must_use]
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let list = run(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}
