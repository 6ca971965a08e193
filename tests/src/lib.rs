//! What cniguard's tests on the real kernel add to the lab's harness (`cniguard-lab`):
//! BPF_PROG_TEST_RUN of the classifiers, and reading what is attached at tc hooks.

pub mod lab_support;
pub mod tc;
pub mod test_run;
