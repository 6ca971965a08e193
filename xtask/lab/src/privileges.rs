//! Tests on the real kernel need root. Without it they skip with a message, except in CI
//! (`CI=true`), where a test that cannot do its job must fail.

/// Whether the test may run; panics in CI when it may not.
#[must_use]
pub fn kernel_tests_allowed(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if root {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (network namespaces, eBPF), and CI=true forbids skipping it"
    );
    eprintln!("SKIPPED {test}: needs root (network namespaces, eBPF); run the README's test command as root");
    false
}

/// Early return from a test that may not run here.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::privileges::kernel_tests_allowed(module_path!()) {
            return;
        }
    };
}
