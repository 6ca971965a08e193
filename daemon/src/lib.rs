//! cniguard: eBPF network diagnostics for a Flannel to Calico CNI cutover.
//!
//! The crate is laid out by concern, each in a room of its own:
//!
//! - `node`: this machine as the daemon finds it (interfaces, namespaces, the kernel's BTF,
//!   the eBPF object, `cniguard check`'s preflight);
//! - `probes`: the probe table (`probes::registry`), attaching classifiers, and one module
//!   per probe that turns its maps into metrics and typed signals;
//! - `judgement`: what the measurements mean for the cutover (phase, baselines, signals,
//!   active checks, rollback triggers, `/status`);
//! - `diagnose`: the findings, the named causes of a failing cutover with their fixes;
//! - `cluster`: cluster mode, with kube;
//! - `metrics`: the metric catalogue and the helpers collectors build families with;
//! - `config`: the TOML root, which composes every room's own section;
//! - `daemon`: the composition root of `cniguard run`; `cli`: the commands.

pub mod checks;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod diagnose;
pub mod heap;
pub mod judgement;
pub mod live;
pub mod metrics;
pub mod node;
pub mod probes;
pub mod rollback_hook;
pub mod server;
pub mod state_file;

/// cniguard's version (`cniguard_build_info`, `/status`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
