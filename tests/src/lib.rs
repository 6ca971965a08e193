//! What cniguard's tests on the real kernel add to the lab's harness (`cniguard-lab`):
//! BPF_PROG_TEST_RUN of the classifiers, reading what is attached at tc hooks, and nftables
//! rules in test namespaces, the DaemonSets' pods under runc (`pod`), a real browser for
//! the live page (`browser`), and what the bench's whole-daemon sections share (`bench`).

pub mod bench;
pub mod browser;
pub mod http2;
pub mod lab_support;
pub mod netfilter;
pub mod pod;
pub mod tc;
pub mod test_run;
