//! Which namespaces this daemon counts: every one (a real node), or those it put in
//! `SCOPE` (a lab node, one of several on a kernel). Shared by every program that sees
//! traffic of all namespaces (socket hooks, tracepoints).

use aya_ebpf::{Global, macros::map, maps::HashMap};
use probe_common::localhost::SCOPE_MAX_ENTRIES;

/// 1: every namespace counts; 0: only those in `SCOPE`.
#[unsafe(no_mangle)]
static COUNT_EVERY_NAMESPACE: Global<u8> = Global::new(1);

/// Namespaces (inode numbers) within this daemon's scope; filled by the daemon.
#[map]
static SCOPE: HashMap<u64, u8> = HashMap::with_max_entries(SCOPE_MAX_ENTRIES, 0);

#[inline(always)]
pub fn in_scope(netns: u64) -> bool {
    COUNT_EVERY_NAMESPACE.load() != 0 || SCOPE.get_ptr(netns).is_some()
}
