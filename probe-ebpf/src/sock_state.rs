//! `sock_state`: TCP state changes of sockets on watched ports (BGP, Typha), from the
//! `sock:inet_sock_set_state` tracepoint, to userspace through a ring buffer. Sessions
//! change state rarely, so an event per change is cheap; everything else returns after
//! reading two ports.

use aya_ebpf::{
    Global,
    macros::{map, tracepoint},
    maps::{HashMap, RingBuf},
    programs::TracePointContext,
};
use probe_common::{
    map_health::MapId,
    sock_state::{AF_INET, IPPROTO_TCP, SockStateEvent, SockStateFields, WATCHED_PORTS_MAX_ENTRIES},
};

use crate::map_health::record_full;

/// Where the tracepoint's fields are, read from its format file by the daemon before load.
#[unsafe(no_mangle)]
static SOCK_STATE_FIELDS: Global<SockStateFields> = Global::new(SockStateFields {
    oldstate: 0,
    newstate: 0,
    sport: 0,
    dport: 0,
    family: 0,
    protocol: 0,
    saddr: 0,
    daddr: 0,
});

/// Ports whose sockets are reported (either end); filled by the daemon.
#[map]
static WATCHED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(WATCHED_PORTS_MAX_ENTRIES, 0);

#[map]
static SOCK_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[tracepoint]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    let fields = SOCK_STATE_FIELDS.load();
    // SAFETY: the offsets come from this kernel's format file of this tracepoint.
    let read = |offset: u16| unsafe { ctx.read_at::<u16>(usize::from(offset)) };
    let (Ok(sport), Ok(dport)) = (read(fields.sport), read(fields.dport)) else { return 0 };
    if WATCHED_PORTS.get_ptr(sport).is_none() && WATCHED_PORTS.get_ptr(dport).is_none() {
        return 0;
    }
    if read(fields.protocol) != Ok(IPPROTO_TCP) || read(fields.family) != Ok(AF_INET) {
        return 0;
    }
    // SAFETY: as above.
    let event = unsafe {
        let (Ok(oldstate), Ok(newstate)) = (
            ctx.read_at::<i32>(usize::from(fields.oldstate)),
            ctx.read_at::<i32>(usize::from(fields.newstate)),
        ) else {
            return 0;
        };
        let (Ok(saddr), Ok(daddr)) = (
            ctx.read_at::<[u8; 4]>(usize::from(fields.saddr)),
            ctx.read_at::<[u8; 4]>(usize::from(fields.daddr)),
        ) else {
            return 0;
        };
        SockStateEvent {
            saddr,
            daddr,
            sport,
            dport,
            // TCP states run from 1 to 12.
            oldstate: oldstate as u8,
            newstate: newstate as u8,
            _pad: [0; 2],
        }
    };
    if SOCK_EVENTS.output::<SockStateEvent>(&event, 0).is_err() {
        record_full(MapId::SockEvents);
    }
    0
}
