//! `dns`: on the pod-facing interfaces (the node's end of each pod's veth), DNS queries
//! coming from pods (ingress, to port 53) and answers going back to them (egress, from port
//! 53), over UDP and TCP. A query is remembered by client, server, ports and DNS id; the
//! answer that matches it gives the latency and its response code. Userspace turns queries
//! left unanswered into timeouts.
//!
//! A DNS server running in a pod on this node sees its queries arrive on egress and its
//! answers leave on ingress of its own veth: those are the other pods' messages, already
//! counted on theirs, so only the client's side counts.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{HashMap, PerCpuHashMap},
    programs::TcContext,
};
use probe_common::{
    Direction,
    counters::Histogram,
    dns::{
        DNS_COUNTS_MAX_ENTRIES, DNS_HEADER_LEN, DNS_LATENCY_MAX_ENTRIES, DNS_PORT, DNS_SERVERS_MAX_ENTRIES,
        DnsCountKey, DnsOutcome, DnsTransport, PENDING_MAX_ENTRIES, Pending, PendingKey,
    },
    map_health::MapId,
};

use crate::{
    counters::{add, record_latency},
    map_health::record_full,
    packet::{self, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, TCP_MIN_HLEN, UDP_HLEN},
};

/// Queries waiting for their answer.
#[map]
static DNS_PENDING: HashMap<PendingKey, Pending> = HashMap::with_max_entries(PENDING_MAX_ENTRIES, 0);

#[map]
static DNS_COUNTS: PerCpuHashMap<DnsCountKey, u64> =
    PerCpuHashMap::with_max_entries(DNS_COUNTS_MAX_ENTRIES, 0);

/// The servers pods have sent queries to. Answers from any other address are unsolicited:
/// counted without a per-source key, so spoofed sources cannot fill `DNS_COUNTS`.
#[map]
static DNS_SERVERS: HashMap<[u8; 4], u8> = HashMap::with_max_entries(DNS_SERVERS_MAX_ENTRIES, 0);

/// Query-to-answer time by server address.
#[map]
static DNS_LATENCY: PerCpuHashMap<[u8; 4], Histogram> =
    PerCpuHashMap::with_max_entries(DNS_LATENCY_MAX_ENTRIES, 0);

const EEXIST: i32 = 17;
/// The QR bit (in the first flags byte): set in answers.
const QR: u8 = 0x80;
/// TCP carries each DNS message after a two-byte length.
const TCP_LENGTH_PREFIX: usize = 2;

#[classifier]
pub fn dns_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dns_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

/// A DNS message's place in the packet.
struct Message {
    transport: DnsTransport,
    source_port: u16,
    destination_port: u16,
    /// Where the DNS header starts, and where the message's bytes in this packet end.
    start: usize,
    end: usize,
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) {
    let len = ctx.len() as usize;
    let Some((ETH_P_IP, l3)) = packet::ethernet(ctx) else { return };
    // Broken IP headers are iface_stats' business (`malformed`): nothing DNS can be read.
    let Some(ip) = packet::ipv4(ctx, l3, len) else { return };
    if ip.later_fragment {
        return;
    }
    let Some(message) = message(ctx, ip.protocol, ip.l4, ip.end) else { return };
    let (query, server, client, server_port, client_port) = match direction {
        Direction::Ingress if message.destination_port == DNS_PORT => {
            (true, ip.destination, ip.source, message.destination_port, message.source_port)
        }
        Direction::Egress if message.source_port == DNS_PORT => {
            (false, ip.source, ip.destination, message.source_port, message.destination_port)
        }
        _ => return,
    };
    // SAFETY: the kernel hands this program its __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let header = if message.start + DNS_HEADER_LEN <= message.end {
        packet::read::<[u8; 6]>(ctx, message.start)
    } else {
        None
    };
    let Some(header) = header.filter(|h| plausible(h, query)) else {
        let key = DnsCountKey {
            server: [0; 4],
            ifindex,
            outcome: DnsOutcome::Malformed as u8,
            rcode: 0,
            direction: direction as u8,
            _pad: 0,
        };
        add(&DNS_COUNTS, &key, 1, MapId::DnsCounts);
        return;
    };
    let key = PendingKey {
        client,
        server,
        client_port,
        server_port,
        id: u16::from_be_bytes([header[0], header[1]]),
        transport: message.transport as u8,
        _pad: 0,
    };
    if query {
        sent(&key, ifindex);
    } else {
        answered(&key, header[3] & 0x0f, message.transport);
    }
}

/// Whether the first six header bytes (id, flags, question count) fit a query from a pod
/// (a standard QUERY with one question) or an answer (at most one question echoed).
#[inline(always)]
fn plausible(header: &[u8; 6], query: bool) -> bool {
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let opcode = (header[2] >> 3) & 0x0f;
    if query {
        header[2] & QR == 0 && opcode == 0 && questions == 1
    } else {
        header[2] & QR != 0 && questions <= 1
    }
}

/// The DNS message in a UDP datagram or at the start of a TCP segment's data.
#[inline(always)]
fn message(ctx: &TcContext, protocol: u8, l4: usize, end: usize) -> Option<Message> {
    let source_port = packet::load_be16(ctx, l4)?;
    let destination_port = packet::load_be16(ctx, l4 + 2)?;
    if source_port != DNS_PORT && destination_port != DNS_PORT {
        return None;
    }
    match protocol {
        IPPROTO_UDP => {
            let length = usize::from(packet::load_be16(ctx, l4 + 4)?);
            if length < UDP_HLEN || l4 + length > end {
                return None;
            }
            Some(Message {
                transport: DnsTransport::Udp,
                source_port,
                destination_port,
                start: l4 + UDP_HLEN,
                end: l4 + length,
            })
        }
        IPPROTO_TCP => {
            let header_len = usize::from(packet::read::<u8>(ctx, l4 + 12)? >> 4) * 4;
            let data = l4 + header_len;
            // Handshakes and bare ACKs carry no message.
            if header_len < TCP_MIN_HLEN || data >= end {
                return None;
            }
            let length = usize::from(packet::load_be16(ctx, data)?);
            let start = data + TCP_LENGTH_PREFIX;
            // The message may go on in later segments; a length below the header's is bad.
            let message_end = if start + length < end { start + length } else { end };
            Some(Message {
                transport: DnsTransport::Tcp,
                source_port,
                destination_port,
                start,
                end: message_end,
            })
        }
        _ => None,
    }
}

#[inline(always)]
fn count(server: [u8; 4], ifindex: u32, outcome: DnsOutcome, rcode: u8) {
    let key = DnsCountKey { server, ifindex, outcome: outcome as u8, rcode, direction: 0, _pad: 0 };
    add(&DNS_COUNTS, &key, 1, MapId::DnsCounts);
}

#[inline(always)]
fn sent(key: &PendingKey, ifindex: u32) {
    count(key.server, ifindex, DnsOutcome::Query, 0);
    if DNS_SERVERS.get_ptr(key.server).is_none() && DNS_SERVERS.insert(key.server, 1, 0).is_err() {
        record_full(MapId::DnsServers);
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let pending = Pending { sent_ns: unsafe { bpf_ktime_get_ns() }, ifindex, _pad: 0 };
    // A retry with the same id and port keeps the first attempt's time: what the pod waits.
    if let Err(err) = DNS_PENDING.insert(key, pending, u64::from(BPF_NOEXIST))
        && err != -EEXIST
    {
        record_full(MapId::DnsPending);
        count(key.server, 0, DnsOutcome::Untracked, 0);
    }
}

/// Answers are counted without their interface: their series have no `interface` label,
/// and must not shrink when a pod's veth goes.
#[inline(always)]
fn answered(key: &PendingKey, rcode: u8, transport: DnsTransport) {
    // SAFETY: the value is copied out at once; a concurrent delete frees it only after
    // this program's RCU read section.
    let Some(sent_ns) = (unsafe { DNS_PENDING.get(key) }).map(|pending| pending.sent_ns) else {
        // A TCP answer longer than one segment continues in segments that look like
        // nothing: only UDP, one message per datagram, says "unmatched" for sure.
        if transport == DnsTransport::Udp {
            count(unmatched_server(&key.server), 0, DnsOutcome::Unmatched, 0);
        }
        return;
    };
    // Userspace may have just expired it: then it is a timeout, and this answer is late.
    if DNS_PENDING.remove(key).is_err() {
        count(unmatched_server(&key.server), 0, DnsOutcome::Unmatched, 0);
        return;
    }
    count(key.server, 0, DnsOutcome::Response, rcode);
    // SAFETY: as above.
    let now = unsafe { bpf_ktime_get_ns() };
    record_latency(&DNS_LATENCY, &key.server, now.saturating_sub(sent_ns), MapId::DnsLatency);
}

/// The key an unmatched answer from `server` counts under: its address if the pods have
/// queried it, else 0.0.0.0 (one key for every unsolicited source).
#[inline(always)]
fn unmatched_server(server: &[u8; 4]) -> [u8; 4] {
    if DNS_SERVERS.get_ptr(server).is_some() { *server } else { [0; 4] }
}
