//! `cniguard check`: what the kernel and the process must offer, one line per requirement,
//! each with a fix. `cniguard run` runs the same checks and refuses to start on a failure.

use std::fmt;
use std::path::Path;

/// Oldest kernel cniguard supports: CAP_BPF, CAP_PERFMON and BPF ring buffers arrived in 5.8.
pub const MIN_KERNEL: (u32, u32) = (5, 8);
/// tcx (multi-program tc through BPF links) arrived in 6.6; older kernels use netlink.
pub const TCX_KERNEL: (u32, u32) = (6, 6);

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Missing, but nothing the enabled probes need yet.
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub status: Status,
    pub requirement: &'static str,
    pub detail: String,
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{status}  {:<14} {}", self.requirement, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// Everything the checks found.
#[derive(Debug, Clone)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub kernel: Kernel,
}

impl Report {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.status != Status::Fail)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.status == Status::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// The running kernel's release string and version.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub release: String,
    pub version: Option<(u32, u32)>,
}

impl Kernel {
    #[must_use]
    pub fn running() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |release| release.trim().to_owned());
        let version = parse_version(&release);
        Self { release, version }
    }

    #[must_use]
    pub fn at_least(&self, (major, minor): (u32, u32)) -> bool {
        self.version.is_some_and(|v| v >= (major, minor))
    }
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Runs every check against this machine and this process.
#[must_use]
pub fn run() -> Report {
    let kernel = Kernel::running();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let capabilities = effective_capabilities();
    let mut findings = vec![kernel_finding(&kernel)];
    findings.push(present(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "BTF",
        "kernel type information at /sys/kernel/btf/vmlinux",
        "a kernel built with CONFIG_DEBUG_INFO_BTF=y (the tracepoint probes find kernel struct fields and tracepoint arguments with it)",
    ));
    findings.push(mounted(&mounts, "bpf", &["/sys/fs/bpf"], "bpffs", "mount -t bpf bpf /sys/fs/bpf"));
    findings.push(mounted(
        &mounts,
        "cgroup2",
        &[],
        "cgroup v2",
        "mount -t cgroup2 none /sys/fs/cgroup/unified (needed by socket-level probes)",
    ));
    let has = |cap: u32| capabilities.is_some_and(|set| set & (1 << cap) != 0);
    let sys_admin = has(CAP_SYS_ADMIN);
    for (cap, name, purpose, k8s) in [
        (CAP_BPF, "CAP_BPF", "load programs and create maps", "BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN", "attach to interfaces (tc)", "NET_ADMIN"),
        (CAP_PERFMON, "CAP_PERFMON", "attach tracepoints and read kernel data", "PERFMON"),
    ] {
        findings.push(capability_finding(
            name,
            purpose,
            k8s,
            has(cap),
            sys_admin && cap != CAP_NET_ADMIN,
            capabilities,
        ));
    }
    findings.push(setns_finding(crate::node::namespaces::can_enter()));
    Report { findings, kernel }
}

/// Whether pods' network namespaces can be entered (setns, CAP_SYS_ADMIN): without it the
/// daemon runs, but blind inside every pod; the finding says what is lost.
fn setns_finding(entered: std::io::Result<()>) -> Finding {
    match entered {
        Ok(()) => Finding {
            status: Status::Pass,
            requirement: "pod netns",
            detail: "can enter pods' network namespaces (setns with CAP_SYS_ADMIN)".to_owned(),
            fix: None,
        },
        Err(err) => Finding {
            status: Status::Warn,
            requirement: "pod netns",
            detail: format!(
                "cannot enter pods' network namespaces (setns: {err}; it needs CAP_SYS_ADMIN): lost are {}",
                crate::node::namespaces::LOST_WITHOUT_SETNS
            ),
            fix: Some(
                "run as root with CAP_SYS_ADMIN, or in Kubernetes securityContext.capabilities.add: [\"SYS_ADMIN\"] (deploy/daemonset.yaml has it)"
                    .to_owned(),
            ),
        },
    }
}

fn kernel_finding(kernel: &Kernel) -> Finding {
    let (min_major, min_minor) = MIN_KERNEL;
    let attach = if kernel.at_least(TCX_KERNEL) {
        "netlink attach; tcx available"
    } else {
        "netlink attach (tcx needs 6.6)"
    };
    if kernel.at_least(MIN_KERNEL) {
        Finding {
            status: Status::Pass,
            requirement: "kernel",
            detail: format!("{} (>= {min_major}.{min_minor}; {attach})", kernel.release),
            fix: None,
        }
    } else {
        Finding {
            status: Status::Fail,
            requirement: "kernel",
            detail: format!("{} is older than {min_major}.{min_minor}", kernel.release),
            fix: Some(format!("run on Linux {min_major}.{min_minor} or newer")),
        }
    }
}

fn present(found: bool, requirement: &'static str, what: &str, fix: &str) -> Finding {
    Finding {
        status: if found { Status::Pass } else { Status::Warn },
        requirement,
        detail: if found { what.to_owned() } else { format!("missing: {what}") },
        fix: (!found).then(|| fix.to_owned()),
    }
}

/// Whether a filesystem of `fstype` is mounted at one of `paths` (anywhere if empty).
fn mounted(mounts: &str, fstype: &str, paths: &[&str], requirement: &'static str, fix: &str) -> Finding {
    let found = mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == fstype && (paths.is_empty() || paths.contains(&path))).then(|| path.to_owned())
    });
    match found {
        Some(path) => {
            Finding { status: Status::Pass, requirement, detail: format!("mounted at {path}"), fix: None }
        }
        None => Finding {
            status: Status::Warn,
            requirement,
            detail: "not mounted".to_owned(),
            fix: Some(fix.to_owned()),
        },
    }
}

fn capability_finding(
    name: &'static str,
    purpose: &str,
    k8s: &str,
    held: bool,
    covered_by_sys_admin: bool,
    capabilities: Option<u64>,
) -> Finding {
    if held || covered_by_sys_admin {
        let via = if held { "" } else { " through CAP_SYS_ADMIN" };
        return Finding {
            status: Status::Pass,
            requirement: name,
            detail: format!("held{via} ({purpose})"),
            fix: None,
        };
    }
    let detail = match capabilities {
        Some(_) => format!("missing from the effective set (needed to {purpose})"),
        None => "cannot read /proc/self/status to tell".to_owned(),
    };
    Finding {
        status: Status::Fail,
        requirement: name,
        detail,
        fix: Some(format!(
            "run as root, or grant it: setcap cap_{}+ep, or in Kubernetes securityContext.capabilities.add: [\"{k8s}\"]",
            name.trim_start_matches("CAP_").to_ascii_lowercase()
        )),
    }
}

/// The effective capability set of this process (`CapEff` in /proc/self/status).
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn missing_capability_names_itself_and_the_fix() {
        let finding = capability_finding("CAP_BPF", "load programs", "BPF", false, false, Some(0));
        let line = finding.to_string();
        assert!(line.starts_with("FAIL  CAP_BPF"), "{line}");
        assert!(line.contains("setcap cap_bpf+ep"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn refused_setns_says_what_is_lost() {
        let line = setns_finding(Err(std::io::Error::from_raw_os_error(libc::EPERM))).to_string();
        assert!(line.starts_with("warn  pod netns"), "{line}");
        for lost in [
            "active checks",
            "localhost health check",
            "per-namespace counters",
            "capabilities.add: [\"SYS_ADMIN\"]",
        ] {
            assert!(line.contains(lost), "{lost} in {line}");
        }
        assert!(!line.contains('\n'));
        assert_eq!(setns_finding(Ok(())).status, Status::Pass);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let finding =
            capability_finding("CAP_BPF", "load programs", "BPF", false, true, Some(1 << CAP_SYS_ADMIN));
        assert_eq!(finding.status, Status::Pass);
        assert!(finding.detail.contains("through CAP_SYS_ADMIN"));
    }
}
