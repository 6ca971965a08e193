//! Unique names for what tests create, under one prefix that cleanup can find.

use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace a test creates starts with this; `cargo xtask lab down --clean` removes
/// whatever a killed test run left behind under it.
pub const TEST_PREFIX: &str = "cgt-";

/// A name unique to this process and call: `cgt-<pid>-<n>-<role>`.
#[must_use]
pub fn unique(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{TEST_PREFIX}{}-{n}-{role}", std::process::id())
}
