//! The migration lab and the harness under it.
//!
//! Everything here lives in network namespaces with a unique name prefix ([`names`]) and is
//! removed by drop guards, also when a test panics: namespaces ([`netns::NetNs`]) and the
//! processes in them ([`cniguard::Daemon`]). Nothing is created in, attached to or sent
//! through the root namespace.

pub mod binaries;
pub mod cniguard;
pub mod dataplane;
pub mod exposition;
pub mod lab;
pub mod mlserver;
pub mod names;
pub mod netns;
pub mod privileges;
pub mod process;
pub mod report;
pub mod services;
pub mod topology;
pub mod traffic;
pub mod workloads;
