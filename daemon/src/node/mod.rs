//! This machine as the daemon finds it: its interfaces (netlink), its network namespaces,
//! the kernel's BTF, the eBPF object, and the preflight `cniguard check` runs.

pub mod btf;
pub mod ebpf;
pub mod interfaces;
pub mod kallsyms;
pub mod namespaces;
pub mod pod_facts;
pub mod preflight;

use std::path::PathBuf;

use anyhow::{Context as _, Result};

/// Where cgroup v2 is mounted (its root holds every process of the host).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(path))
        })
        .context("no cgroup v2 mount (mount -t cgroup2 none /sys/fs/cgroup/unified): the localhost probe needs one")
}
