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
}

impl NetNs {
    /// Creates `cgt-<pid>-<n>-<role>`.
    ///
    /// # Errors
    /// If `ip netns add` fails (not root, or no namespace support).
    pub fn new(role: &str) -> Result<Self> {
        let ns = Self { name: names::unique(role) };
        run(Command::new("ip").args(["netns", "add", &ns.name]))?;
        for key in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
            ns.sysctl(key, "1")?;
        }
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
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
    /// without `ip netns exec`'s private /sys, so bpffs and tracefs stay visible).
    ///
    /// # Errors
    /// If the namespace file cannot be opened.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        let mut command = Command::new(program);
        // SAFETY: only async-signal-safe calls (setns, prctl) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                // The test's process dies: so does everything it started.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
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
        // Whatever a failed test left running in here goes first.
        if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", &self.name])) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
        }
        if let Err(err) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("cleanup: could not delete namespace {}: {err:#}", self.name);
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
        let a_mac = mac(&a, a_dev)?;
        let b_mac = mac(&b, b_dev)?;
        a.ip(&["neigh", "replace", &b_addr.to_string(), "lladdr", &b_mac, "dev", a_dev, "nud", "permanent"])?;
        b.ip(&["neigh", "replace", &a_addr.to_string(), "lladdr", &a_mac, "dev", b_dev, "nud", "permanent"])?;
        Ok(Self { a, b, a_dev: a_dev.to_owned(), b_dev: b_dev.to_owned(), a_addr, b_addr })
    }
}

fn mac(ns: &NetNs, device: &str) -> Result<String> {
    let json = ns.ip(&["-j", "link", "show", "dev", device])?;
    let value: serde_json::Value = serde_json::from_str(&json)?;
    Ok(value[0]["address"].as_str().context("no address in `ip -j link` output")?.to_owned())
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
        bail!(
            "{} {:?} failed ({}): {}",
            command.get_program().display(),
            command.get_args().collect::<Vec<_>>(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
