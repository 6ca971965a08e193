//! cniguard's eBPF programs. One module per probe; `packet` holds the parsing they share.
//!
//! Every program here observes only: it never changes, redirects or drops a packet, and a
//! full map or an unparsable frame is counted, not acted on.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist there;
// the intrinsic compiles to the BPF atomic add. The eBPF build runs with RUSTC_BOOTSTRAP
// already (for -Z build-std), see daemon/build.rs.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod cidr;
mod counters;
mod dns;
mod drops;
mod exchanges;
mod iface_stats;
mod kernel;
mod localhost;
mod map_health;
mod overlay;
mod packet;
mod scope;
mod sock_state;
mod tcp_health;
mod underlay;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

/// An empty classifier: the baseline that benchmarks and the closing notes compare each
/// probe's per-packet cost against (BPF_PROG_TEST_RUN on the same packet, same run).
#[classifier]
pub fn baseline_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this; it exists because no_std needs it.
    loop {}
}

/// Host builds exist only so that clippy and rust-analyzer check this crate with the rest of
/// the workspace; the real build targets bpfel-unknown-none (see daemon/build.rs).
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
