//! The harness for cniguard's tests on the real kernel.
//!
//! Everything a test creates lives in network namespaces with a unique name prefix
//! ([`names`]) and is removed by a drop guard, also when the test panics: namespaces
//! ([`netns::NetNs`]), daemon processes ([`daemon::Daemon`]). Nothing is created in, attached
//! to or sent through the root namespace.

pub mod daemon;
pub mod exposition;
pub mod names;
pub mod netns;
pub mod privileges;
pub mod tc;
pub mod test_run;
pub mod traffic;
