//! cniguard: eBPF network diagnostics for a Flannel to Calico CNI cutover.
//!
//! `probe-ebpf` holds the kernel side; this crate loads it (`ebpf`), wires each probe's maps
//! to metrics (`probes`), follows interfaces (`interfaces`, `attach`) and serves the result
//! (`server`). `daemon` ties them together for `cniguard run`; `preflight` is `cniguard check`.

pub mod attach;
pub mod baseline;
pub mod bgp_codes;
pub mod btf;
pub mod checks;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod ebpf;
pub mod interfaces;
pub mod labels;
pub mod metrics;
pub mod namespaces;
pub mod phase;
pub mod preflight;
pub mod probes;
pub mod rollback_hook;
pub mod server;
pub mod state_file;
pub mod status;
pub mod triggers;
