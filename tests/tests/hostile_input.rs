//! Hostile and heavy input (issue 13, items 10 to 12 and 16): spoofed floods must not blind
//! the counts that matter, interface churn must not leak series or fill the drop map, a
//! NOTIFICATION flood stays inside its label and log bounds, and a clsact qdisc a killed
//! daemon left holding only cniguard's filters is removed by the next one.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use cniguard_lab::cniguard::Daemon;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::netns::{NetNs, QuietLink};
use cniguard_lab::require_root;
use cniguard_tests::tc::{self, Hook};
use etherparse::PacketBuilder;

/// A raw IPv4 socket in `ns` that sends whole IP packets, any source address included.
fn raw_socket(ns: &NetNs) -> OwnedFd {
    ns.run(|| {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

fn send_raw(socket: &OwnedFd, destination: Ipv4Addr, packet: &[u8]) {
    let address = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(destination.octets()) },
        sin_zero: [0; 8],
    };
    send_to(socket, packet, &address);
}

/// sendto(2) of `bytes` to `address`, a `sockaddr_*` of the socket's family; all of it.
fn send_to<A>(socket: &OwnedFd, bytes: &[u8], address: &A) {
    // SAFETY: the buffer and the address outlive the call; their lengths are given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            std::ptr::from_ref(address).cast(),
            u32::try_from(size_of::<A>()).unwrap(),
        )
    };
    assert_eq!(sent, isize::try_from(bytes.len()).unwrap(), "{}", std::io::Error::last_os_error());
}

/// The `n`-th of 5,000 spoofed addresses, in 10.200.0.0/16.
fn spoofed(n: usize) -> Ipv4Addr {
    let n = u16::try_from(n % 5000).unwrap();
    Ipv4Addr::new(10, 200, u8::try_from(n / 250).unwrap(), u8::try_from(n % 250 + 1).unwrap())
}

fn config_file(ns: &NetNs, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}-cniguard.toml", ns.name()));
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// DNS

const SPOOFED_ANSWERS: usize = 6000;
const OUTAGE_QUERIES: u16 = 491;
const RCODE_SERVFAIL: u8 = 2;

/// A DNS server in `ns` that answers every query with SERVFAIL; stops with the process.
fn servfail_server(ns: &NetNs, address: Ipv4Addr) {
    let socket = ns.run(|| UdpSocket::bind((address, 53)).unwrap());
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((length, from)) = socket.recv_from(&mut buffer) {
            let mut answer = buffer[..length].to_vec();
            answer[2] = 0x81; // QR, RD
            answer[3] = 0x80 | RCODE_SERVFAIL; // RA
            let _ = socket.send_to(&answer, from);
        }
    });
}

fn dns_query(id: u16) -> Vec<u8> {
    let mut message = id.to_be_bytes().to_vec();
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["svc", "cluster", "local"] {
        message.push(u8::try_from(label.len()).unwrap());
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    message
}

#[test]
fn spoofed_dns_answers_do_not_hide_a_servfail_outage() {
    require_root!();
    // a is the node (its veth end matches `veth*`), b the pod.
    let link = QuietLink::new("veth-hd0", "veth-hd1").unwrap();
    let daemon = Daemon::start(&link.a, &["--netns-scope", "node"]).unwrap();
    servfail_server(&link.a, link.a_addr);

    // 6,000 answers from port 53 of 5,000 spoofed servers, to a pod that asked none of them.
    let raw = raw_socket(&link.a);
    for n in 0..SPOOFED_ANSWERS {
        let id = u16::try_from(n % 65_536).unwrap();
        let mut answer = id.to_be_bytes().to_vec();
        answer.extend_from_slice(&[0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]);
        let builder = PacketBuilder::ipv4(spoofed(n).octets(), link.b_addr.octets(), 64).udp(53, 33_333);
        let mut packet = Vec::with_capacity(builder.size(answer.len()));
        builder.write(&mut packet, &answer).unwrap();
        send_raw(&raw, link.b_addr, &packet);
    }
    let unmatched = [("server", "unknown")];
    daemon
        .wait_for("the spoofed answers counted", |s| {
            s.count("cniguard_dns_unmatched_responses_total", &unmatched) == SPOOFED_ANSWERS as u64
        })
        .unwrap();

    // The outage: every query of the pod answered SERVFAIL.
    let server = link.a_addr;
    link.b.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for id in 0..OUTAGE_QUERIES {
            socket.send_to(&dns_query(id), (server, 53)).unwrap();
            let mut answer = [0u8; 512];
            let (length, _) = socket.recv_from(&mut answer).unwrap();
            assert!(length >= 12 && answer[3] & 0x0f == RCODE_SERVFAIL);
        }
    });
    let server = server.to_string();
    let servfail = [("server", server.as_str()), ("rcode", "SERVFAIL")];
    let scrape = daemon
        .wait_for("the outage counted", |s| {
            s.count("cniguard_dns_responses_total", &servfail) == u64::from(OUTAGE_QUERIES)
        })
        .unwrap();
    let text = &scrape.text;
    assert_eq!(scrape.count_sum("cniguard_dns_queries_total", &[]), u64::from(OUTAGE_QUERIES), "{text}");
    assert_eq!(scrape.count_sum("cniguard_dns_responses_total", &[]), u64::from(OUTAGE_QUERIES), "{text}");
    assert_eq!(scrape.count_sum("cniguard_dns_unmatched_responses_total", &[]), SPOOFED_ANSWERS as u64);
    assert_eq!(scrape.series("cniguard_dns_unmatched_responses_total", &[]).count(), 1, "{text}");
    assert_eq!(scrape.count_sum("cniguard_map_full_total", &[]), 0, "{text}");
    assert_eq!(scrape.count_sum("cniguard_label_overflow_total", &[]), 0, "{text}");
}

// ---------------------------------------------------------------------------------------
// BGP

const SPOOFED_SEGMENTS: usize = 5000;
const KEEPALIVES: usize = 40;
const SPOOFED_NOTIFICATIONS: usize = 3000;
const NOTIFICATION_CHUNK: usize = 500;
/// The daemon's NOTIFICATION log budget: 10 lines at once, then one a minute.
const LOG_BURST: u64 = 10;

fn bgp_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![0xff; 16];
    message.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    message.push(kind);
    message.extend_from_slice(body);
    message
}

const KEEPALIVE: u8 = 4;
const NOTIFICATION: u8 = 3;

/// Spoofed TCP segments to port 179 of `to`, each carrying `message(n)`.
fn spoof_bgp(link: &QuietLink, count: usize, message: impl Fn(usize) -> Vec<u8>) {
    let raw = raw_socket(&link.b);
    for n in 0..count {
        let builder = PacketBuilder::ipv4(spoofed(n).octets(), link.a_addr.octets(), 64)
            .tcp(40_000 + u16::try_from(n % 20_000).unwrap(), 179, 1, 512)
            .ack(1)
            .psh();
        let payload = message(n);
        let mut packet = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut packet, &payload).unwrap();
        send_raw(&raw, link.a_addr, &packet);
    }
}

fn messages(scrape: &Scrape, peer: &str, direction: &str, kind: &str) -> u64 {
    scrape.count("cniguard_bgp_messages_total", &[("peer", peer), ("direction", direction), ("type", kind)])
}

fn log_lines(daemon: &Daemon, needle: &str) -> u64 {
    daemon.log().lines().filter(|line| line.contains(needle)).count() as u64
}

#[test]
fn spoofed_bgp_sources_do_not_hide_a_real_peers_keepalives() {
    require_root!();
    // a is the node, its veth the underlay; b the peer, with a real TCP session to a:179.
    let link = QuietLink::new("hb0", "hb1").unwrap();
    let config = config_file(&link.a, "interfaces = []\nunderlay_interfaces = [\"hb0\"]\n");
    let started = std::time::Instant::now();
    let daemon =
        Daemon::start(&link.a, &["--netns-scope", "node", "--config", config.to_str().unwrap()]).unwrap();
    let listener = link.a.run(|| TcpListener::bind((link.a_addr, 179)).unwrap());

    spoof_bgp(&link, SPOOFED_SEGMENTS, |_| bgp_message(KEEPALIVE, &[]));
    daemon
        .wait_for("the spoofed keepalives counted", |s| {
            messages(s, "unknown", "ingress", "keepalive") == SPOOFED_SEGMENTS as u64
        })
        .unwrap();

    let server = link.a_addr;
    let mut client = link.b.run(|| TcpStream::connect((server, 179)).unwrap());
    client.set_nodelay(true).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    accepted.set_nodelay(true).unwrap();
    let peer = link.b_addr.to_string();
    daemon
        .wait_for("the session up", |s| s.value("cniguard_bgp_session_up", &[("peer", &peer)]) == Some(1.0))
        .unwrap();
    // Ping-pong, so that every message travels in a segment of its own.
    let keepalive = bgp_message(KEEPALIVE, &[]);
    let mut buffer = [0u8; 19];
    for _ in 0..KEEPALIVES {
        client.write_all(&keepalive).unwrap();
        accepted.read_exact(&mut buffer).unwrap();
        accepted.write_all(&keepalive).unwrap();
        client.read_exact(&mut buffer).unwrap();
    }
    let scrape = daemon
        .wait_for("the real keepalives counted", |s| {
            messages(s, &peer, "ingress", "keepalive") == KEEPALIVES as u64
                && messages(s, &peer, "egress", "keepalive") == KEEPALIVES as u64
        })
        .unwrap();
    assert_eq!(messages(&scrape, "unknown", "ingress", "keepalive"), SPOOFED_SEGMENTS as u64);
    // The spoofed sources took neither map room nor label slots.
    let peers: Vec<String> = scrape
        .series("cniguard_bgp_messages_total", &[])
        .map(|s| s.labels["peer"].clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(peers, ["10.199.0.2", "unknown"], "{}", scrape.text);
    assert_eq!(scrape.count_sum("cniguard_map_full_total", &[]), 0, "{}", scrape.text);
    assert_eq!(scrape.count_sum("cniguard_label_overflow_total", &[]), 0, "{}", scrape.text);

    // A NOTIFICATION flood with every code and subcode from 300 spoofed sources: one series
    // per named code and subcode at most, and every one logged or counted as suppressed.
    // In chunks the ring buffer holds, waiting for each to be read.
    for chunk in 0..SPOOFED_NOTIFICATIONS / NOTIFICATION_CHUNK {
        spoof_bgp(&link, NOTIFICATION_CHUNK, |n| {
            let n = n + chunk * NOTIFICATION_CHUNK;
            bgp_message(NOTIFICATION, &[u8::try_from(n % 256).unwrap(), u8::try_from(n * 7 % 256).unwrap()])
        });
        let sent = ((chunk + 1) * NOTIFICATION_CHUNK) as u64;
        daemon
            .wait_for("a chunk of NOTIFICATIONs counted", |s| {
                s.count_sum("cniguard_bgp_notifications_total", &[]) == sent
            })
            .unwrap();
    }
    // And one from the real peer.
    client.write_all(&bgp_message(NOTIFICATION, &[6, 2])).unwrap();
    let total = SPOOFED_NOTIFICATIONS as u64 + 1;
    let scrape = daemon
        .wait_for("the NOTIFICATIONs counted", |s| {
            s.count_sum("cniguard_bgp_notifications_total", &[]) == total
        })
        .unwrap();
    let text = &scrape.text;
    assert_eq!(
        scrape.count_sum("cniguard_bgp_notifications_total", &[("peer", "unknown")]),
        SPOOFED_NOTIFICATIONS as u64,
        "{text}"
    );
    assert_eq!(
        scrape.count(
            "cniguard_bgp_notifications_total",
            &[("peer", &peer), ("code", "cease"), ("subcode", "administrative_shutdown")]
        ),
        1,
        "{text}"
    );
    let series = scrape.series("cniguard_bgp_notifications_total", &[]).count();
    assert!(series <= 45 + 1, "{series} series:\n{text}");
    let suppressed = scrape.count("cniguard_log_lines_suppressed_total", &[("event", "bgp_notification")]);
    assert_eq!(log_lines(&daemon, "BGP NOTIFICATION") + suppressed, total, "{text}");
    let budget = LOG_BURST + started.elapsed().as_secs() / 60 + 1;
    assert!(total - suppressed <= budget, "{suppressed} suppressed: more lines than the budget of {budget}");
}

// ---------------------------------------------------------------------------------------
// Interface churn

const BATCHES: usize = 18;
const PAIRS_PER_BATCH: usize = 500;
const LIVE_DROPS: u64 = 7;

/// One frame out of `device`, whose peer is down: veth drops it.
fn drop_one(socket: &OwnedFd, ifindex: u32) {
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are all it needs.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
    address.sll_ifindex = i32::try_from(ifindex).unwrap();
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]); // local experimental ethertype
    frame.extend_from_slice(&[0; 46]);
    send_to(socket, &frame, &address);
}

fn packet_socket(ns: &NetNs) -> OwnedFd {
    ns.run(|| {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

fn batch(ns: &NetNs, lines: impl Iterator<Item = String>) {
    let path = std::env::temp_dir().join(format!("{}-batch", ns.name()));
    std::fs::write(&path, lines.collect::<Vec<_>>().join("\n") + "\n").unwrap();
    ns.ip(&["-batch", path.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(path);
}

/// The drops counted on the churned interfaces (by name, or by number once unnamed).
fn churn_series(scrape: &Scrape) -> u64 {
    let churned = |interface: &str| {
        interface.starts_with("cgc")
            || (!interface.is_empty() && interface.bytes().all(|b| b.is_ascii_digit()))
    };
    let labels: Vec<String> = scrape
        .series("cniguard_drops_total", &[])
        .map(|s| s.labels["interface"].clone())
        .filter(|interface| churned(interface))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    labels.iter().map(|interface| scrape.count_sum("cniguard_drops_total", &[("interface", interface)])).sum()
}

#[test]
fn drop_series_and_entries_of_deleted_interfaces_go_with_them() {
    require_root!();
    let node = NetNs::new("churn-drops").unwrap();
    // No IPv6 chatter on the new links: their only drops are the test's.
    node.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    node.sysctl("net.ipv6.conf.default.disable_ipv6", "1").unwrap();
    // Nothing attached: only the drops probe sees these interfaces.
    let config = config_file(&node, "interfaces = []\n");
    let daemon =
        Daemon::start(&node, &["--netns-scope", "node", "--config", config.to_str().unwrap()]).unwrap();
    let socket = packet_socket(&node);
    node.ip(&["link", "add", "cglive", "type", "veth", "peer", "name", "cglivep"]).unwrap();
    node.ip(&["link", "set", "cglive", "up"]).unwrap();
    let live = node.ifindex("cglive").unwrap();

    for round in 0..BATCHES {
        let names: Vec<String> = (0..PAIRS_PER_BATCH).map(|i| format!("cgc{round}x{i}")).collect();
        batch(&node, names.iter().map(|n| format!("link add {n} type veth peer name {n}p")));
        batch(&node, names.iter().map(|n| format!("link set {n} up")));
        let indexes: Vec<u32> =
            node.run(|| names.iter().map(|n| nix::net::if_::if_nametoindex(n.as_str()).unwrap()).collect());
        for index in indexes {
            drop_one(&socket, index);
        }
        daemon.wait_for("the batch's drops counted", |s| churn_series(s) == PAIRS_PER_BATCH as u64).unwrap();
        batch(&node, names.iter().map(|n| format!("link del {n}")));
        daemon.wait_for("the batch's series gone", |s| churn_series(s) == 0).unwrap();
    }

    for _ in 0..LIVE_DROPS {
        drop_one(&socket, live);
    }
    let scrape = daemon
        .wait_for("the live interface's drops counted", |s| {
            s.count_sum("cniguard_drops_total", &[("interface", "cglive")]) == LIVE_DROPS
        })
        .unwrap();
    assert_eq!(scrape.count("cniguard_map_full_total", &[("map", "drops")]), 0, "{}", scrape.text);
    assert_eq!(churn_series(&scrape), 0, "{}", scrape.text);
    let _ = std::fs::remove_file(config);
}

// ---------------------------------------------------------------------------------------
// A clsact qdisc left by kill -9 in netlink mode

const QDISC_DEVICE: &str = "veth-hq0";
const NETLINK: &[&str] = &["--tc-attach", "netlink"];

fn attached(link: &QuietLink) -> Daemon {
    let daemon = Daemon::start(&link.a, NETLINK).unwrap();
    daemon
        .wait_for("attached", |s| {
            s.value("cniguard_probe_attached", &[("interface", QDISC_DEVICE), ("probe", "iface_stats")])
                == Some(1.0)
        })
        .unwrap();
    daemon
}

fn copies(link: &QuietLink) -> usize {
    tc::cniguard_copies(&link.a, QDISC_DEVICE, Hook::Ingress, "iface_stats_ingress").unwrap()
        + tc::cniguard_copies(&link.a, QDISC_DEVICE, Hook::Egress, "iface_stats_egress").unwrap()
}

#[test]
fn a_clsact_left_by_kill_9_is_removed_unless_another_filter_uses_it() {
    require_root!();
    let link = QuietLink::new(QDISC_DEVICE, "veth-hq1").unwrap();
    assert!(!tc::has_clsact(&link.a, QDISC_DEVICE).unwrap());

    // Killed: its filters and its qdisc stay behind.
    attached(&link).kill().unwrap();
    assert!(tc::has_clsact(&link.a, QDISC_DEVICE).unwrap());
    assert_eq!(copies(&link), 2);
    // The next daemon takes the leftovers over and removes them as its own on SIGTERM.
    let daemon = attached(&link);
    assert_eq!(copies(&link), 2, "a second copy stacked");
    assert_eq!(log_lines(&daemon, "removed filters a previous cniguard left"), 1, "{}", daemon.log());
    assert!(daemon.stop().unwrap().success());
    assert!(!tc::has_clsact(&link.a, QDISC_DEVICE).unwrap(), "the leftover clsact stayed");
    assert_eq!(copies(&link), 0);

    // Killed again, and another program adds a filter to the qdisc meanwhile: it stays.
    attached(&link).kill().unwrap();
    link.a
        .tc(&[
            "filter",
            "add",
            "dev",
            QDISC_DEVICE,
            "ingress",
            "prio",
            "9",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "classid",
            "ffff:1",
        ])
        .unwrap();
    let daemon = attached(&link);
    assert_eq!(copies(&link), 2);
    assert!(daemon.stop().unwrap().success());
    assert_eq!(copies(&link), 0);
    assert!(tc::has_clsact(&link.a, QDISC_DEVICE).unwrap(), "a qdisc with a foreign filter was removed");
    let foreign = tc::filters(&link.a, QDISC_DEVICE, Hook::Ingress).unwrap();
    assert_eq!(foreign.iter().filter(|line| line.contains(" u32 ") && line.contains("flowid")).count(), 1);
}

// ---------------------------------------------------------------------------------------
// The daemon's own HTTP

/// The server's connection limit.
const MAX_CONNECTIONS: usize = 64;

#[test]
fn idle_clients_take_at_most_the_connection_limit_and_are_timed_out() {
    require_root!();
    let node = NetNs::new("http-limits").unwrap();
    let config = config_file(&node, "interfaces = []\n");
    let daemon =
        Daemon::start(&node, &["--netns-scope", "node", "--config", config.to_str().unwrap()]).unwrap();
    // Clients that connect and never send a byte.
    let idle: Vec<TcpStream> =
        node.run(|| (0..MAX_CONNECTIONS).map(|_| TcpStream::connect("127.0.0.1:9464").unwrap()).collect());
    // One more is closed at once, before it sends anything.
    let mut refused = node.run(|| TcpStream::connect("127.0.0.1:9464").unwrap());
    let mut byte = [0u8; 1];
    assert_eq!(refused.read(&mut byte).unwrap_or(0), 0, "the connection over the limit was served");
    // The idle ones are closed by the header timeout, every one of them.
    let closed = idle
        .into_iter()
        .filter(|stream| {
            let mut stream = stream;
            stream.read(&mut byte).unwrap_or(0) == 0
        })
        .count();
    assert_eq!(closed, MAX_CONNECTIONS);
    // And the endpoint serves again.
    let scrape = daemon.scrape().unwrap();
    assert_eq!(scrape.count("cniguard_http_connections_refused_total", &[]), 1, "{}", scrape.text);
    let _ = std::fs::remove_file(config);
}

// ---------------------------------------------------------------------------------------
// Attach failures that are not a vanished interface

/// Sets the soft open-files limit of `pid` (the hard one stays: raising it back would take
/// CAP_SYS_RESOURCE); returns the old soft limit.
fn set_open_files_limit(pid: u32, limit: u64) -> u64 {
    let pid = i32::try_from(pid).unwrap();
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: the struct outlives the call; a null new limit only reads.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &raw mut old) }, 0);
    let new = libc::rlimit { rlim_cur: limit, rlim_max: old.rlim_max };
    // SAFETY: as above.
    let result = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &raw const new, std::ptr::null_mut()) };
    assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

#[test]
fn an_attach_that_fails_for_want_of_file_descriptors_is_an_error_and_retried_soon() {
    require_root!();
    let node = NetNs::new("attach-retry").unwrap();
    // A resync far away: only the retry can attach. tcx: each link is a file descriptor (a
    // cls_bpf filter is not, so netlink attaches do not run out of them).
    let config = config_file(
        &node,
        "interfaces = [\"veth-ar*\"]\nresync_interval_seconds = 3600\ntc_attach = \"tcx\"\n",
    );
    let daemon =
        Daemon::start(&node, &["--netns-scope", "node", "--config", config.to_str().unwrap()]).unwrap();
    let pid = daemon.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    let old = set_open_files_limit(pid, open);
    node.ip(&["link", "add", "veth-ar0", "type", "veth", "peer", "name", "veth-ar1"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log_lines(&daemon, "attach failed") == 0 {
        assert!(std::time::Instant::now() < deadline, "no attach failure logged:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    set_open_files_limit(pid, old);
    let attached = |s: &Scrape| {
        ["veth-ar0", "veth-ar1"].iter().all(|device| {
            s.value("cniguard_probe_attached", &[("interface", device), ("probe", "iface_stats")])
                == Some(1.0)
        })
    };
    let scrape = daemon.wait_for("attached by a retry", attached).unwrap();
    let errors = |reason: &str| scrape.count_sum("cniguard_probe_attach_errors_total", &[("reason", reason)]);
    assert_eq!(errors("interface_gone"), 0, "{}", scrape.text);
    assert_eq!(errors("other"), log_lines(&daemon, "attach failed"), "{}", daemon.log());
    assert_eq!(
        daemon.log().lines().filter(|l| l.contains("attach failed") && !l.contains("ERROR")).count(),
        0,
        "an attach failure logged below ERROR"
    );
    let _ = std::fs::remove_file(config);
}
