//! This machine as the daemon finds it: its interfaces (netlink), its network namespaces,
//! the kernel's BTF, the eBPF object, and the preflight `cniguard check` runs.

pub mod btf;
pub mod ebpf;
pub mod interfaces;
pub mod namespaces;
pub mod preflight;
