//! `sock_state`: TCP state changes of sockets on watched ports (BGP, Typha), from the
//! `inet_sock_set_state` raw tracepoint, to userspace through a ring buffer. Sessions
//! change state rarely, so an event per change is cheap; everything else returns after
//! reading two ports.

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::{HashMap, RingBuf},
    programs::RawTracePointContext,
};
use probe_common::{
    map_health::MapId,
    sock_state::{IPPROTO_TCP, SockStateEvent, WATCHED_PORTS_MAX_ENTRIES},
};

use crate::{kernel, map_health::record_full};

/// Ports whose sockets are reported (either end); filled by the daemon.
#[map]
static WATCHED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(WATCHED_PORTS_MAX_ENTRIES, 0);

#[map]
static SOCK_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// `inet_sock_set_state(sk, oldstate, newstate)`: positions checked in the kernel's BTF.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_state(ctx: RawTracePointContext) -> u32 {
    let sock: u64 = ctx.arg(0);
    let Some(ends) = kernel::sock_ends(sock) else { return 0 };
    if WATCHED_PORTS.get_ptr(ends.local_port).is_none() && WATCHED_PORTS.get_ptr(ends.remote_port).is_none() {
        return 0;
    }
    if kernel::sock_protocol(sock) != Some(IPPROTO_TCP) {
        return 0;
    }
    let event = SockStateEvent {
        saddr: ends.local,
        daddr: ends.remote,
        sport: ends.local_port,
        dport: ends.remote_port,
        // TCP states run from 1 to 12.
        oldstate: ctx.arg::<u64>(1) as u8,
        newstate: ctx.arg::<u64>(2) as u8,
        _pad: [0; 2],
    };
    if SOCK_EVENTS.output::<SockStateEvent>(&event, 0).is_err() {
        record_full(MapId::SockEvents);
    }
    0
}
