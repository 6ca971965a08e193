//! `sock_state`: BGP session state and Typha connection attempts, from the sockets
//! themselves (the `inet_sock_set_state` raw tracepoint), not guessed from packets.
//!
//! The tracepoint fires for every namespace on the kernel. A socket belongs to this node
//! when its local address is one of the node's own: on a real node that is every socket of
//! the host, in the lab it keeps another node's BGP sessions out of this node's metrics.
//! Sessions already established when the daemon starts are read from
//! `/proc/self/net/tcp`, so a restart mid-migration does not report them down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::raw_trace_point::RawTracePointLink;
use probe_common::sock_state::SockStateEvent;
use probe_common::underlay::BGP_PORT;
use prometheus::IntCounterVec;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use tokio::io::unix::AsyncFd;

use super::cidr::Cidr;
use super::registry::{Need, ProbeSpec, Programs, Started};
use super::shared::attach_raw_tracepoint;
use crate::judgement::signals::{Attempts, Session, SignalSource, Totals};
use crate::metrics::labels::PeerLabels;
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::btf::Btf;

pub const NAME: &str = "sock_state";
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_CLOSE: u8 = 7;

/// The node's own IPv4 addresses, kept current by the daemon.
pub type LocalAddresses = Arc<RwLock<BTreeSet<Ipv4Addr>>>;

/// A TCP connection by its ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Connection {
    local: Ipv4Addr,
    local_port: u16,
    remote: Ipv4Addr,
    remote_port: u16,
}

#[derive(Default)]
struct Sessions {
    /// The state of every BGP socket of this node.
    bgp: BTreeMap<Connection, u8>,
    /// Every BGP peer seen, so a session that went down still shows `0`.
    peers: BTreeSet<Ipv4Addr>,
    /// Connections this node opened to each peer's port 179, by how they ended.
    attempts: BTreeMap<Ipv4Addr, Attempts>,
    /// Connections this node opened to Typha.
    typha: Attempts,
    /// Connections opened to an old service range, by its address and port and the
    /// address they came from; at most `MAX_OLD_SERVICE_CONNECTIONS`.
    old_services: BTreeMap<(SocketAddrV4, Ipv4Addr), Attempts>,
}

/// Where connections to the old service ranges are followed from: a bound on memory,
/// whatever the pods try.
const MAX_OLD_SERVICE_CONNECTIONS: usize = 1024;

/// The old service ranges and the ports connections to them are followed on.
pub struct OldServices {
    pub cidrs: Vec<Cidr>,
    pub ports: Vec<u16>,
}

impl OldServices {
    fn watches(&self, remote: Ipv4Addr, port: u16) -> bool {
        self.ports.contains(&port) && self.cidrs.iter().any(|cidr| cidr.contains(remote))
    }
}

/// The running probe: its tracepoint link and what it has learnt.
pub struct SockState {
    _link: RawTracePointLink,
    sessions: Arc<Mutex<Sessions>>,
}

/// Sessions and connection attempts, for the findings (`bgp_blocked`, `typha_unreachable`).
impl SignalSource for SockState {
    fn add_to(&self, totals: &mut Totals) {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        for peer in &sessions.peers {
            totals.bgp.insert(
                *peer,
                Session {
                    up: session_up(&sessions, *peer),
                    attempts: sessions.attempts.get(peer).copied().unwrap_or_default(),
                },
            );
        }
        totals.typha.established += sessions.typha.established;
        totals.typha.failed += sessions.typha.failed;
        totals.old_service_connections.extend(sessions.old_services.iter().map(|(k, v)| (*k, *v)));
    }
}

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "BGP session state and Typha connections",
    loses: "cniguard_bgp_session_* and cniguard_tcp_connections_total: BGP session state and Typha connections",
    programs: Programs::All(&["sock_state"]),
    needs: &[Need::Btf],
    required: false,
    prepare: None,
    start: |context| {
        let (cidrs, ports) = context.settings.old_services.clone();
        let probe = SockState::start(
            context.ebpf,
            context.btf()?,
            context.settings.typha_port,
            OldServices { cidrs, ports },
            context.addresses.clone(),
            context.peers.clone(),
            context.metrics,
        )?;
        tracing::info!(bgp_peers = probe.known_peers(), "BGP sessions followed");
        let probe = Arc::new(probe);
        context.signals.publish(probe.clone());
        Ok(Started::Running(Box::new(probe)))
    },
};

impl SockState {
    /// Loads and attaches the tracepoint program, reads the sessions already up, and starts
    /// following state changes.
    ///
    /// # Errors
    /// If the program cannot load or attach, or a map is missing.
    pub fn start(
        ebpf: &mut Ebpf,
        btf: &Btf,
        typha_port: u16,
        old_services: OldServices,
        addresses: LocalAddresses,
        peers: Arc<PeerLabels>,
        metrics: &DaemonMetrics,
    ) -> Result<Self> {
        let mut watched: HashMap<MapData, u16, u8> = HashMap::try_from(
            ebpf.take_map("WATCHED_PORTS").context("the eBPF object has no WATCHED_PORTS map")?,
        )?;
        watched.insert(BGP_PORT, 1, 0)?;
        watched.insert(typha_port, 1, 0)?;
        for port in &old_services.ports {
            watched.insert(port, 1, 0)?;
        }
        let events = RingBuf::try_from(
            ebpf.take_map("SOCK_EVENTS").context("the eBPF object has no SOCK_EVENTS map")?,
        )?;
        let (link, _) =
            attach_raw_tracepoint(ebpf, btf, NAME, "inet_sock_set_state", &["sock*", "int", "int"])?;

        let sessions = Arc::new(Mutex::new(Sessions::default()));
        {
            let local = addresses.read().unwrap_or_else(PoisonError::into_inner);
            let mut sessions = sessions.lock().unwrap_or_else(PoisonError::into_inner);
            for (connection, state) in established_bgp_sockets() {
                if local.contains(&connection.local) {
                    sessions.peers.insert(connection.remote);
                    sessions.bgp.insert(connection, state);
                }
            }
        }
        {
            // Real peers come first for label slots.
            let sessions = sessions.lock().unwrap_or_else(PoisonError::into_inner);
            for peer in sessions.peers.iter().filter(|p| session_up(&sessions, **p)) {
                peers.set_established(*peer, true);
            }
        }
        let transitions = catalogue::BGP_SESSION_TRANSITIONS_TOTAL.int_counter_vec()?;
        let connections = catalogue::TCP_CONNECTIONS_TOTAL.int_counter_vec()?;
        metrics.registry.register(Box::new(transitions.clone()))?;
        metrics.registry.register(Box::new(connections.clone()))?;
        metrics.registry.register(Box::new(SessionCollector {
            sessions: sessions.clone(),
            peers: peers.clone(),
            up: catalogue::BGP_SESSION_UP.desc(),
        }))?;
        let handler = EventHandler {
            sessions: sessions.clone(),
            addresses,
            peers,
            transitions,
            connections,
            typha_port,
            old_services,
        };
        follow(events, handler)?;
        Ok(Self { _link: link, sessions })
    }

    /// How many BGP peers this node has seen (for the start-up log line).
    #[must_use]
    pub fn known_peers(&self) -> usize {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).peers.len()
    }
}

struct EventHandler {
    sessions: Arc<Mutex<Sessions>>,
    addresses: LocalAddresses,
    peers: Arc<PeerLabels>,
    transitions: IntCounterVec,
    connections: IntCounterVec,
    typha_port: u16,
    old_services: OldServices,
}

impl EventHandler {
    fn handle(&self, event: &SockStateEvent) {
        let connection = Connection {
            local: Ipv4Addr::from(event.saddr),
            local_port: event.sport,
            remote: Ipv4Addr::from(event.daddr),
            remote_port: event.dport,
        };
        // A pod's connection, from its own namespace: which node's pod it is, the findings
        // tell from the node's routes.
        if event.oldstate == TCP_SYN_SENT
            && self.old_services.watches(connection.remote, connection.remote_port)
        {
            let key = (SocketAddrV4::new(connection.remote, connection.remote_port), connection.local);
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            if sessions.old_services.len() < MAX_OLD_SERVICE_CONNECTIONS
                || sessions.old_services.contains_key(&key)
            {
                sessions.old_services.entry(key).or_default().count(event.newstate == TCP_ESTABLISHED);
            }
        }
        if !self.addresses.read().unwrap_or_else(PoisonError::into_inner).contains(&connection.local) {
            return; // another namespace's socket (or a listener on 0.0.0.0)
        }
        if connection.local_port == BGP_PORT || connection.remote_port == BGP_PORT {
            self.bgp(connection, event);
        }
        if connection.remote_port == self.typha_port && event.oldstate == TCP_SYN_SENT {
            let established = event.newstate == TCP_ESTABLISHED;
            let result = if established { "established" } else { "failed" };
            self.connections.with_label_values(&[&self.typha_port.to_string(), result]).inc();
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            sessions.typha.count(established);
        }
    }

    fn bgp(&self, connection: Connection, event: &SockStateEvent) {
        let peer = connection.remote;
        let label = self.peers.label(catalogue::BGP_SESSION_TRANSITIONS_TOTAL.name, peer);
        self.transitions.with_label_values(&[label.as_str(), tcp_state_name(event.newstate)]).inc();
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.peers.insert(peer);
        if connection.remote_port == BGP_PORT && event.oldstate == TCP_SYN_SENT {
            sessions.attempts.entry(peer).or_default().count(event.newstate == TCP_ESTABLISHED);
        }
        let was_up = session_up(&sessions, peer);
        if event.newstate == TCP_CLOSE {
            sessions.bgp.remove(&connection);
        } else {
            sessions.bgp.insert(connection, event.newstate);
        }
        let is_up = session_up(&sessions, peer);
        if was_up != is_up {
            // Real peers come first for label slots.
            self.peers.set_established(peer, is_up);
            let state = if is_up { "established" } else { "down" };
            tracing::info!(peer = %peer, "BGP session {state}");
        }
    }
}

fn session_up(sessions: &Sessions, peer: Ipv4Addr) -> bool {
    sessions.bgp.iter().any(|(c, state)| c.remote == peer && *state == TCP_ESTABLISHED)
}

/// Hands every event of the ring buffer to `handler`, for as long as the daemon runs.
fn follow(ring: RingBuf<MapData>, handler: EventHandler) -> Result<()> {
    // SAFETY: the ring buffer owns its fd, which stays open and the same while it lives, and
    // the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("polling the socket state ring buffer: {err}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = ring.readable_mut().await else { return };
            while let Some(item) = guard.get_inner_mut().next() {
                if item.len() >= size_of::<SockStateEvent>() {
                    // SAFETY: the program writes exactly this #[repr(C)] plain-data struct.
                    let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SockStateEvent>()) };
                    handler.handle(&event);
                }
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Established TCP sockets on the BGP port in the daemon's namespace, from
/// `/proc/self/net/tcp`.
fn established_bgp_sockets() -> Vec<(Connection, u8)> {
    let text = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(parse_proc_tcp_line)
        .filter(|(c, state)| {
            *state == TCP_ESTABLISHED && (c.local_port == BGP_PORT || c.remote_port == BGP_PORT)
        })
        .collect()
}

/// `sl local_address rem_address st ...`, addresses as `AABBCCDD:PORT` in hex, the address
/// in the kernel's byte order.
fn parse_proc_tcp_line(line: &str) -> Option<(Connection, u8)> {
    let mut fields = line.split_whitespace().skip(1);
    let endpoint = |text: &str| -> Option<(Ipv4Addr, u16)> {
        let (address, port) = text.split_once(':')?;
        let address = u32::from_str_radix(address, 16).ok()?;
        Some((Ipv4Addr::from(address.to_ne_bytes()), u16::from_str_radix(port, 16).ok()?))
    };
    let (local, local_port) = endpoint(fields.next()?)?;
    let (remote, remote_port) = endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    Some((Connection { local, local_port, remote, remote_port }, state))
}

/// The `state` label value of a Linux TCP state.
fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        _ => "unknown",
    }
}

struct SessionCollector {
    sessions: Arc<Mutex<Sessions>>,
    peers: Arc<PeerLabels>,
    up: Desc,
}

impl Collector for SessionCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.up]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let mut up: BTreeMap<String, bool> = BTreeMap::new();
        for peer in &sessions.peers {
            let label = self.peers.label(catalogue::BGP_SESSION_UP.name, *peer);
            // Folded peers: `other` is up while any of them is.
            *up.entry(label).or_default() |= session_up(&sessions, *peer);
        }
        let mut family = FamilyBuilder::gauge(&self.up, &["peer"]);
        for (peer, is_up) in &up {
            family.sample(&[peer], f64::from(u8::from(*is_up)));
        }
        family.build().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        // 192.168.10.11:41234 -> 192.168.10.12:179, ESTABLISHED.
        let local = u32::from_ne_bytes([192, 168, 10, 11]);
        let remote = u32::from_ne_bytes([192, 168, 10, 12]);
        let line = format!(
            "   3: {local:08X}:A112 {remote:08X}:00B3 01 00000000:00000000 00:00000000 00000000     0        0 12345"
        );
        let (connection, state) = parse_proc_tcp_line(&line).unwrap();
        assert_eq!(state, TCP_ESTABLISHED);
        assert_eq!(connection.local, Ipv4Addr::new(192, 168, 10, 11));
        assert_eq!(connection.local_port, 0xa112);
        assert_eq!(connection.remote, Ipv4Addr::new(192, 168, 10, 12));
        assert_eq!(connection.remote_port, BGP_PORT);
    }
}
