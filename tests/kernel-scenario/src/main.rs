//! The scenario `cargo xtask kernels` runs inside each kernel it boots: a node namespace
//! running `cniguard run` (host scope, as on a real node), a pod plugged into it by veth,
//! and a peer node across an underlay veth carrying Flannel's and Calico's VXLAN; exact
//! traffic for every probe, and one report line per count on stdout (the serial console).
//!
//! It builds on the lab's harness (`cniguard-lab`: namespaces, the daemon, scrapes); `ip`,
//! `bridge` and `nft` come from the host with their libraries. It expects to be the only
//! traffic on the machine, as in the guest: on a busy host the TCP counts would not add up.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cniguard_kernel_scenario::Report;
use cniguard_lab::binaries::Binaries;
use cniguard_lab::cniguard::Daemon;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::netns::{NetNs, veth_pair};
use cniguard_lab::traffic;

/// The node's end of the pod's veth, and the pod's.
const POD_VETH: &str = "veth-pod0";
const POD_DEVICE: &str = "eth0";
const NODE_POD_SIDE: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
const POD_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);
/// The underlay between the node and its peer (the lab's node addresses).
const UNDERLAY: &str = "eth0";
const NODE_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 11);
const PEER_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 12);
/// A DNS server the pod routes through the node, where the node throws packets away.
const BLACKHOLED: Ipv4Addr = Ipv4Addr::new(10, 198, 0, 53);

/// The daemon's configuration: short timeouts, so that timed-out DNS queries and
/// unanswered SYNs are counted within the boot.
/// How long the daemon may take to start in the guest.
const VERIFY_PATIENCE: Duration = Duration::from_mins(3);

/// The pod's nftables drop on `DROPPED_TCP` also makes the localhost probe's timeouts.
const CONFIG: &str = "[dns]\ntimeout_seconds = 1\n\n[localhost]\nconnect_timeout_seconds = 1\nports = [9000, 9500, 8080, 8081, 5202]\n";

/// How long a count may take to reach the daemon's metrics: it bounds a wait for a count
/// that never comes (a probe that misses it), it measures nothing.
const PATIENCE: Duration = Duration::from_secs(8);
/// How long the interface probes may take to attach, once the daemon is ready (generous:
/// the guest runs under emulation on a shared machine).
const ATTACH_PATIENCE: Duration = Duration::from_secs(30);

/// The global probes the daemon may turn off, with the words its `<what> is off: <reason>`
/// warning names them by (`daemon/src/daemon.rs`).
const OPTIONAL_PROBES: &[(&str, &str)] = &[
    ("sock_state", "BGP session state and Typha connections"),
    ("localhost", "localhost latency"),
    ("drops", "kernel drop counts"),
    ("tcp_health", "TCP retransmits, resets and RTT"),
];

/// Interface probes and an interface each must attach to.
const INTERFACE_PROBES: &[(&str, &str)] = &[
    ("iface_stats", POD_VETH),
    ("dns", POD_VETH),
    ("underlay", UNDERLAY),
    ("overlay", "flannel.1"),
    ("overlay", "vxlan.calico"),
];

fn main() -> ExitCode {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    report(&Report::Kernel(release.trim().to_owned()));
    match run() {
        Ok(()) => {
            report(&Report::Done);
            ExitCode::SUCCESS
        }
        Err(err) => {
            report(&Report::Error(format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

fn report(line: &Report) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn check(probe: &str, aspect: &str, got: u64, want: u64) {
    report(&Report::Check { probe: probe.to_owned(), aspect: aspect.to_owned(), got, want });
}

/// The namespaces, the devices between them and the daemon. Fields drop in order: the
/// daemon stops before the namespaces go.
struct Setup {
    daemon: Daemon,
    node: NetNs,
    pod: NetNs,
    peer: NetNs,
    state: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The daemon's whole log, on the console log the host keeps, for whoever looks
        // into a count that came out wrong or a probe that is off (before `done`, which
        // ends the host's reading).
        let mut stdout = std::io::stdout().lock();
        for line in self.daemon.log().lines() {
            let _ = writeln!(stdout, "daemon-log: {line}");
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// One VXLAN overlay: its device, VNI and port, and each end's VTEP address and MAC.
struct Overlay {
    device: &'static str,
    vni: u32,
    port: u16,
    node: (Ipv4Addr, &'static str),
    peer: (Ipv4Addr, &'static str),
}

const FLANNEL: Overlay = Overlay {
    device: "flannel.1",
    vni: 1,
    port: 8472,
    node: (Ipv4Addr::new(10, 42, 1, 0), "02:42:01:00:00:01"),
    peer: (Ipv4Addr::new(10, 42, 2, 0), "02:42:02:00:00:01"),
};
const CALICO: Overlay = Overlay {
    device: "vxlan.calico",
    vni: 4096,
    port: 4789,
    node: (Ipv4Addr::new(10, 244, 1, 0), "02:44:01:00:00:01"),
    peer: (Ipv4Addr::new(10, 244, 2, 0), "02:44:02:00:00:01"),
};

fn run() -> Result<()> {
    let setup = Setup::new()?;
    let off = wait_for_probes(&setup)?;
    let on = |probe: &str| !off.iter().any(|p| p == probe);
    for (probe, phase) in [
        ("iface_stats", iface_stats as fn(&Setup) -> Result<()>),
        ("dns", dns),
        ("underlay", overlays),
        ("drops", drops),
        ("tcp_health", tcp_health),
        ("sock_state", sock_state),
        ("localhost", localhost),
    ] {
        if on(probe) {
            phase(&setup).with_context(|| format!("the {probe} phase"))?;
        }
    }
    Ok(())
}

impl Setup {
    fn new() -> Result<Self> {
        let (node, pod, peer) = (NetNs::new("node")?, NetNs::new("pod")?, NetNs::new("peer")?);
        quiet_pair(&node, POD_VETH, NODE_POD_SIDE, &pod, POD_DEVICE, POD_ADDRESS, 30)?;
        quiet_pair(&node, UNDERLAY, NODE_UNDERLAY, &peer, UNDERLAY, PEER_UNDERLAY, 24)?;
        for overlay in [&FLANNEL, &CALICO] {
            vxlan(&node, overlay, overlay.node, overlay.peer, NODE_UNDERLAY, PEER_UNDERLAY)?;
            vxlan(&peer, overlay, overlay.peer, overlay.node, PEER_UNDERLAY, NODE_UNDERLAY)?;
        }
        // The pod drops UDP to one port (the drops) and TCP to another (the SYNs that are
        // retransmitted).
        nft(
            &pod,
            &format!(
                "table inet cgt_drop {{\n chain input {{ type filter hook input priority 0; udp dport {DROPPED_UDP} drop; tcp dport {DROPPED_TCP} drop; }}\n}}\n"
            ),
        )?;
        let state = std::env::temp_dir().join(format!("{}-state", node.name()));
        std::fs::create_dir_all(&state)?;
        let config = state.join("cniguard.toml");
        std::fs::write(&config, CONFIG)?;
        // The default scope, host, as on a real node: the guest is a whole machine, and the
        // only traffic in it is the scenario's.
        let args = [
            "--config",
            config.to_str().context("a UTF-8 temp dir")?,
            "--state-dir",
            state.to_str().context("a UTF-8 temp dir")?,
        ];
        let daemon = Daemon::spawn(&node, &args)?;
        // The verifier runs under QEMU's emulation here, tens of times slower than on a
        // node (the localhost programs take about half a second to verify on hardware).
        daemon.wait_ready_within(VERIFY_PATIENCE)?;
        Ok(Self { daemon, node, pod, peer, state })
    }

    fn scrape(&self) -> Result<Scrape> {
        self.daemon.scrape()
    }

    /// Scrapes until `done` holds or [`PATIENCE`] has passed; the last scrape either way
    /// (the checks then show what was missing).
    fn settle(&self, done: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
        self.settle_within(PATIENCE, done)
    }

    fn settle_within(&self, patience: Duration, done: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
        let deadline = Instant::now() + patience;
        loop {
            let scrape = self.scrape()?;
            if done(&scrape) || Instant::now() > deadline {
                return Ok(scrape);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn namespaces(&self) -> [&NetNs; 3] {
        [&self.node, &self.pod, &self.peer]
    }
}

/// A veth pair with addresses and permanent neighbour entries: no ARP crosses it, so its
/// counters hold exactly the traffic sent.
fn quiet_pair(
    a: &NetNs,
    a_dev: &str,
    a_addr: Ipv4Addr,
    b: &NetNs,
    b_dev: &str,
    b_addr: Ipv4Addr,
    prefix: u8,
) -> Result<()> {
    veth_pair(a, a_dev, b, b_dev)?;
    a.ip(&["addr", "add", &format!("{a_addr}/{prefix}"), "dev", a_dev])?;
    b.ip(&["addr", "add", &format!("{b_addr}/{prefix}"), "dev", b_dev])?;
    let (a_mac, b_mac) = (a.mac(a_dev)?, b.mac(b_dev)?);
    a.ip(&["neigh", "replace", &b_addr.to_string(), "lladdr", &b_mac, "dev", a_dev, "nud", "permanent"])?;
    b.ip(&["neigh", "replace", &a_addr.to_string(), "lladdr", &a_mac, "dev", b_dev, "nud", "permanent"])?;
    Ok(())
}

/// The overlay's device in `ns`, as flanneld or Felix programs it: a static VTEP for the
/// other end (neighbour, FDB entry and route), no learning.
fn vxlan(
    ns: &NetNs,
    overlay: &Overlay,
    (address, mac): (Ipv4Addr, &str),
    (remote, remote_mac): (Ipv4Addr, &str),
    local_underlay: Ipv4Addr,
    remote_underlay: Ipv4Addr,
) -> Result<()> {
    let device = overlay.device;
    ns.ip(&[
        "link",
        "add",
        device,
        "type",
        "vxlan",
        "id",
        &overlay.vni.to_string(),
        "local",
        &local_underlay.to_string(),
        "dev",
        UNDERLAY,
        "dstport",
        &overlay.port.to_string(),
        "nolearning",
    ])?;
    ns.ip(&["link", "set", device, "address", mac])?;
    ns.ip(&["addr", "add", &format!("{address}/32"), "dev", device])?;
    ns.ip(&["link", "set", device, "up"])?;
    let remote = remote.to_string();
    ns.ip(&["neigh", "replace", &remote, "lladdr", remote_mac, "dev", device, "nud", "permanent"])?;
    ns.bridge(&[
        "fdb",
        "replace",
        remote_mac,
        "dev",
        device,
        "dst",
        &remote_underlay.to_string(),
        "self",
        "permanent",
    ])?;
    ns.ip(&["route", "replace", &format!("{remote}/32"), "dev", device])?;
    Ok(())
}

/// Waits until every interface probe is attached; reports the probes the daemon turned
/// off (or that never attached) with its reason, and returns their names.
fn wait_for_probes(setup: &Setup) -> Result<Vec<String>> {
    let attached = |s: &Scrape, probe: &str, interface: &str| {
        s.value("cniguard_probe_attached", &[("interface", interface), ("probe", probe)]) == Some(1.0)
    };
    let scrape =
        setup.settle_within(ATTACH_PATIENCE, |s| INTERFACE_PROBES.iter().all(|(p, i)| attached(s, p, i)))?;
    let log = setup.daemon.log();
    let mut off = Vec::new();
    for (probe, interface) in INTERFACE_PROBES {
        if !attached(&scrape, probe, interface) && !off.iter().any(|p| p == probe) {
            let reason = last_warning(&log, interface)
                .unwrap_or_else(|| format!("not attached to {interface}, and nothing in the log says why"));
            report(&Report::Off { probe: (*probe).to_owned(), reason });
            off.push((*probe).to_owned());
        }
    }
    for (probe, what) in OPTIONAL_PROBES {
        let unsupported = scrape
            .count("cniguard_probe_attach_errors_total", &[("probe", probe), ("reason", "unsupported")]);
        if unsupported > 0 {
            let reason = off_reason(&log, what)
                .unwrap_or_else(|| format!("counted as unsupported; no `{what} is off` in the log"));
            report(&Report::Off { probe: (*probe).to_owned(), reason });
            off.push((*probe).to_owned());
        }
    }
    Ok(off)
}

/// The reason of the daemon's `<what> is off: <reason>` warning, shortened to the words
/// that say what the kernel refused.
fn off_reason(log: &str, what: &str) -> Option<String> {
    let marker = format!("{what} is off: ");
    let start = log.find(&marker)? + marker.len();
    let mut lines = log[start..].lines();
    let mut message = vec![lines.next()?.trim()];
    // A verifier log continues on the lines after, up to the next log record.
    message.extend(lines.take_while(|l| !starts_log_record(l)).map(str::trim).filter(|l| !l.is_empty()));
    Some(shorten(&message))
}

/// Whether `line` begins a new record of the daemon's log (`2026-12-01T20:35:00.1Z  WARN ...`).
fn starts_log_record(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 10 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-'
}

/// The line of a verifier log that names the refusal (its last, before the statistics),
/// or else the innermost cause of an error chain (after the last `: `).
fn shorten(message: &[&str]) -> String {
    // After the refusal: the verifier's statistics, and the error the syscall returned.
    let statistics =
        ["processed ", "verification time", "stack depth", "max_states_per_insn", "-- END", ": "];
    if message.len() > 1
        && let Some(line) = message[1..].iter().rev().find(|l| !statistics.iter().any(|s| l.starts_with(s)))
    {
        return (*line).to_owned();
    }
    let first = message[0];
    first.rsplit_once(": ").map_or(first, |(_, cause)| cause).to_owned()
}

/// The daemon's last warning that names `interface`.
fn last_warning(log: &str, interface: &str) -> Option<String> {
    log.lines()
        .rev()
        .find(|l| l.contains("WARN") && l.contains(interface))
        .map(|l| l.split_once(": ").map_or(l, |(_, m)| m).to_owned())
}

const SENT: u64 = 37;
const RECEIVED: u64 = 23;
const PAYLOAD: u64 = 300;
/// Ethernet, IPv4 and UDP headers.
const UDP_OVERHEAD: u64 = 14 + 20 + 8;
const TCP_BYTES: u64 = 200_000;

/// Interface packets and bytes on the pod's veth: exact UDP each way, and totals equal to
/// the kernel's own counters of the device.
fn iface_stats(setup: &Setup) -> Result<()> {
    const PACKETS: &str = "cniguard_interface_packets_total";
    const BYTES: &str = "cniguard_interface_bytes_total";
    let (node, pod) = (&setup.node, &setup.pod);
    let before = (setup.scrape()?, node.link_stats(POD_VETH)?);
    traffic::udp(node, NODE_POD_SIDE, pod, POD_ADDRESS, SENT, PAYLOAD)?;
    traffic::udp(pod, POD_ADDRESS, node, NODE_POD_SIDE, RECEIVED, PAYLOAD)?;
    traffic::tcp(node, pod, POD_ADDRESS, TCP_BYTES)?;
    let kernel = node.link_stats(POD_VETH)? - before.1;
    let total = |s: &Scrape, metric: &str, direction: &str| {
        s.count_sum(metric, &[("interface", POD_VETH), ("direction", direction)])
    };
    let delta = |s: &Scrape, metric: &str, direction: &str| {
        total(s, metric, direction) - total(&before.0, metric, direction)
    };
    let scrape = setup.settle(|s| {
        delta(s, PACKETS, "egress") + delta(s, PACKETS, "ingress") >= kernel.tx_packets + kernel.rx_packets
    })?;
    let udp = |s: &Scrape, metric: &str, direction: &str| {
        s.count(metric, &[("interface", POD_VETH), ("direction", direction), ("protocol", "ipv4_udp")])
    };
    let udp_delta =
        |metric: &str, direction: &str| udp(&scrape, metric, direction) - udp(&before.0, metric, direction);
    check("iface_stats", "udp_egress_packets", udp_delta(PACKETS, "egress"), SENT);
    check("iface_stats", "udp_egress_bytes", udp_delta(BYTES, "egress"), SENT * (PAYLOAD + UDP_OVERHEAD));
    check("iface_stats", "udp_ingress_packets", udp_delta(PACKETS, "ingress"), RECEIVED);
    check(
        "iface_stats",
        "udp_ingress_bytes",
        udp_delta(BYTES, "ingress"),
        RECEIVED * (PAYLOAD + UDP_OVERHEAD),
    );
    check("iface_stats", "egress_packets_as_kernel", delta(&scrape, PACKETS, "egress"), kernel.tx_packets);
    check("iface_stats", "egress_bytes_as_kernel", delta(&scrape, BYTES, "egress"), kernel.tx_bytes);
    check("iface_stats", "ingress_packets_as_kernel", delta(&scrape, PACKETS, "ingress"), kernel.rx_packets);
    check("iface_stats", "ingress_bytes_as_kernel", delta(&scrape, BYTES, "ingress"), kernel.rx_bytes);
    Ok(())
}

/// A DNS server for the pod, in the node: `exists.cluster.local` answers NOERROR with one
/// address, any other name NXDOMAIN. Stopped on drop.
struct DnsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    fn start(ns: &NetNs, address: Ipv4Addr) -> Result<Self> {
        let socket = ns.run(|| UdpSocket::bind((address, 53)))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut query = [0; 512];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((length, from)) = socket.recv_from(&mut query)
                    && let Some(answer) = dns_answer(&query[..length])
                {
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const EXISTING_NAME: &str = "exists.cluster.local";

/// The answer to a one-question query: the question echoed, NOERROR with an A record for
/// [`EXISTING_NAME`], NXDOMAIN for any other name; `None` for what is not a query.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let (mut at, mut labels) = (12, Vec::new());
    loop {
        let length = usize::from(*query.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        labels.push(std::str::from_utf8(query.get(at..at + length)?).ok()?);
        at += length;
    }
    let question = query.get(12..at + 4)?;
    let found = labels.join(".") == EXISTING_NAME;
    let mut answer = query[..2].to_vec();
    answer.extend_from_slice(&[0x81, if found { 0x80 } else { 0x83 }, 0, 1, 0, u8::from(found), 0, 0, 0, 0]);
    answer.extend_from_slice(question);
    if found {
        // A pointer to the question's name, type A, class IN, TTL 30, 10.42.1.7.
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 42, 1, 7]);
    }
    Some(answer)
}

/// A type A query for `name` with DNS id `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut message = id.to_be_bytes().to_vec();
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        message.push(u8::try_from(label.len()).unwrap_or(0));
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    message
}

/// Asks `server` from `ns`; the answer's response code, or `None` after `wait`.
fn ask(ns: &NetNs, server: Ipv4Addr, id: u16, name: &str, wait: Duration) -> Result<Option<u8>> {
    ns.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(wait))?;
        socket.send_to(&dns_query(id, name), (server, 53))?;
        let mut answer = [0; 512];
        Ok(socket
            .recv(&mut answer)
            .ok()
            .filter(|&n| n >= 12 && answer[..2] == id.to_be_bytes())
            .map(|_| answer[3] & 0x0f))
    })
}

/// DNS on the pod's veth: queries by server, answers by response code, timeouts of a
/// blackholed server, latency samples.
fn dns(setup: &Setup) -> Result<()> {
    let (existing, missing, blackholed) = (12_u64, 5_u64, 3_u64);
    let _server = DnsServer::start(&setup.node, NODE_POD_SIDE)?;
    setup.pod.ip(&["route", "add", &format!("{BLACKHOLED}/32"), "via", &NODE_POD_SIDE.to_string()])?;
    setup.node.ip(&["route", "add", "blackhole", &format!("{BLACKHOLED}/32")])?;
    let before = setup.scrape()?;
    let mut id = 0x100;
    for (count, server, name, rcode) in [
        (existing, NODE_POD_SIDE, EXISTING_NAME, Some(0)),
        (missing, NODE_POD_SIDE, "missing.cluster.local", Some(3)),
        (blackholed, BLACKHOLED, EXISTING_NAME, None),
    ] {
        let wait = if rcode.is_some() { Duration::from_secs(5) } else { Duration::from_millis(100) };
        for _ in 0..count {
            id += 1;
            let answer = ask(&setup.pod, server, id, name, wait)?;
            if answer != rcode {
                bail!("query {id} for {name} to {server}: answer {answer:?}, expected {rcode:?}");
            }
        }
    }
    let (server, dead) = (NODE_POD_SIDE.to_string(), BLACKHOLED.to_string());
    let count = |s: &Scrape, metric: &str, labels: &[(&str, &str)]| s.count_sum(metric, labels);
    let delta = |s: &Scrape, metric: &str, labels: &[(&str, &str)]| {
        count(s, metric, labels) - count(&before, metric, labels)
    };
    let timeouts = [("server", dead.as_str())];
    let scrape = setup.settle(|s| delta(s, "cniguard_dns_timeouts_total", &timeouts) >= blackholed)?;
    let queries =
        |to: &str| delta(&scrape, "cniguard_dns_queries_total", &[("interface", POD_VETH), ("server", to)]);
    check("dns", "queries", queries(&server), existing + missing);
    check("dns", "queries_to_blackholed", queries(&dead), blackholed);
    let responses = |rcode: &str| {
        delta(&scrape, "cniguard_dns_responses_total", &[("server", &server), ("rcode", rcode)])
    };
    check("dns", "responses_noerror", responses("NOERROR"), existing);
    check("dns", "responses_nxdomain", responses("NXDOMAIN"), missing);
    check("dns", "timeouts", delta(&scrape, "cniguard_dns_timeouts_total", &timeouts), blackholed);
    check(
        "dns",
        "latency_samples",
        delta(&scrape, "cniguard_dns_latency_seconds_count", &[("server", &server)]),
        existing + missing,
    );
    Ok(())
}

/// Outer Ethernet, IPv4, UDP and VXLAN headers around the inner Ethernet, IPv4, UDP and a
/// 100-byte payload.
const OVERLAY_PAYLOAD: u64 = 100;
const VXLAN_FRAME: u64 = 14 + 20 + 8 + 8 + 14 + 20 + 8 + OVERLAY_PAYLOAD;

/// VXLAN on the underlay by port, VNI and peer (underlay), and the inner traffic by CIDR
/// (overlay), for Flannel's overlay and Calico's, each way.
fn overlays(setup: &Setup) -> Result<()> {
    let before = setup.scrape()?;
    let mut all = 0;
    for (overlay, out, back, cidr) in [(&FLANNEL, 30, 20, "old_pods"), (&CALICO, 25, 15, "new_pods")] {
        traffic::udp(&setup.node, overlay.node.0, &setup.peer, overlay.peer.0, out, OVERLAY_PAYLOAD)?;
        traffic::udp(&setup.peer, overlay.peer.0, &setup.node, overlay.node.0, back, OVERLAY_PAYLOAD)?;
        all += out + back;
        let (port, vni, peer) =
            (overlay.port.to_string(), overlay.vni.to_string(), PEER_UNDERLAY.to_string());
        let inner = [("device", overlay.device), ("src_cidr", cidr), ("dst_cidr", cidr)];
        let scrape = setup.settle(|s| {
            s.count("cniguard_overlay_packets_total", &inner)
                >= before.count("cniguard_overlay_packets_total", &inner) + out + back
        })?;
        let vxlan = |metric: &str, direction: &str| {
            let labels = [
                ("interface", UNDERLAY),
                ("direction", direction),
                ("port", port.as_str()),
                ("vni", vni.as_str()),
                ("peer", peer.as_str()),
            ];
            scrape.count(metric, &labels) - before.count(metric, &labels)
        };
        let name = |aspect: &str| format!("{}_{aspect}", overlay.port);
        check("underlay", &name("egress_packets"), vxlan("cniguard_vxlan_packets_total", "egress"), out);
        check(
            "underlay",
            &name("egress_bytes"),
            vxlan("cniguard_vxlan_bytes_total", "egress"),
            out * VXLAN_FRAME,
        );
        check("underlay", &name("ingress_packets"), vxlan("cniguard_vxlan_packets_total", "ingress"), back);
        check(
            "underlay",
            &name("ingress_bytes"),
            vxlan("cniguard_vxlan_bytes_total", "ingress"),
            back * VXLAN_FRAME,
        );
        let inner_delta = scrape.count("cniguard_overlay_packets_total", &inner)
            - before.count("cniguard_overlay_packets_total", &inner);
        check("overlay", &format!("{}_{cidr}", overlay.device), inner_delta, out + back);
    }
    let scrape = setup.scrape()?;
    let total = |s: &Scrape| s.count_sum("cniguard_vxlan_packets_total", &[]);
    check("underlay", "all_vxlan_packets", total(&scrape) - total(&before), all);
    let overlay_total = |s: &Scrape| s.count_sum("cniguard_overlay_packets_total", &[]);
    check("overlay", "all_inner_packets", overlay_total(&scrape) - overlay_total(&before), all);
    Ok(())
}

/// nftables in `ns`, from a ruleset on stdin.
fn nft(ns: &NetNs, ruleset: &str) -> Result<()> {
    let mut child =
        ns.command("nft")?.args(["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().context("nft's stdin")?.write_all(ruleset.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Port the pod's nftables drops UDP to, and one it drops TCP SYNs to.
const DROPPED_UDP: u16 = 7777;
const DROPPED_TCP: u16 = 5202;

/// Sends `count` datagrams from `from` to `to`:`port`, without waiting for any answer.
fn spray(from: &NetNs, to: Ipv4Addr, port: u16, count: u64) -> Result<()> {
    let socket = from.run(|| UdpSocket::bind("0.0.0.0:0"))?;
    for _ in 0..count {
        // An ICMP error from an earlier datagram may surface here: it is not ours to count.
        let _ = socket.send_to(&[0x42; 32], (to, port));
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Drops by the kernel's reason, device and namespace: the pod's nftables drops, and
/// packets the pod has no route to forward. A kernel before 5.17 gives no reasons: there
/// the same drops are counted as `NONE_GIVEN`, and exactly by the function they died in.
fn drops(setup: &Setup) -> Result<()> {
    let (dropped, unroutable) = (25, 7);
    let pod = setup.pod.name();
    let reasons = kernel_gives_drop_reasons();
    let (netfilter, no_route) = if reasons {
        (
            vec![
                ("reason", "NETFILTER_DROP"),
                ("interface", POD_DEVICE),
                ("netns", pod),
                ("protocol", "ipv4"),
            ],
            vec![("reason", "IP_INNOROUTES"), ("netns", pod)],
        )
    } else {
        (
            vec![("reason", "NONE_GIVEN"), ("function", "nf_hook_slow")],
            vec![("reason", "NONE_GIVEN"), ("function", "ip_error")],
        )
    };
    let metric = if reasons { "cniguard_drops_total" } else { "cniguard_drops_by_location_total" };
    let drops = |s: &Scrape, labels: &[(&str, &str)]| s.count_sum(metric, labels);
    let before = setup.scrape()?;
    spray(&setup.node, POD_ADDRESS, DROPPED_UDP, dropped)?;
    setup.pod.sysctl("net.ipv4.ip_forward", "1")?;
    setup.node.ip(&["route", "add", "10.250.0.0/24", "via", &POD_ADDRESS.to_string()])?;
    spray(&setup.node, Ipv4Addr::new(10, 250, 0, 1), 9, unroutable)?;
    let delta = |s: &Scrape, labels: &[(&str, &str)]| drops(s, labels) - drops(&before, labels);
    let scrape = setup.settle(|s| delta(s, &netfilter) >= dropped && delta(s, &no_route) >= unroutable)?;
    check("drops", "netfilter_drop", delta(&scrape, &netfilter), dropped);
    check("drops", "ip_innoroutes", delta(&scrape, &no_route), unroutable);
    if !reasons {
        // Every one of them is also in the total, on the pod's device.
        let total = [("reason", "NONE_GIVEN"), ("netns", pod)];
        let all = |s: &Scrape| s.count_sum("cniguard_drops_total", &total);
        check(
            "drops",
            "none_given_at_least",
            (all(&scrape) - all(&before)).min(dropped + unroutable),
            dropped + unroutable,
        );
    }
    Ok(())
}

/// Whether this kernel's `kfree_skb` tracepoint has a reason (5.17 and later). The test
/// may go by the version; the daemon finds out from the kernel's BTF.
fn kernel_gives_drop_reasons() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release.split(['.', '-']).map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (5, 17)
}

/// A counter of the `Tcp:` lines of `/proc/net/snmp` in `ns`.
fn tcp_counter(ns: &NetNs, name: &str) -> Result<u64> {
    let snmp = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?;
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next().context("no Tcp: header")?, tcp.next().context("no Tcp: values")?);
    let index = names.split_whitespace().position(|n| n == name).with_context(|| format!("no Tcp {name}"))?;
    Ok(values.split_whitespace().nth(index).context("a short Tcp: line")?.parse()?)
}

fn tcp_counters(setup: &Setup, name: &str) -> Result<u64> {
    setup.namespaces().iter().map(|ns| tcp_counter(ns, name)).sum()
}

const CLOSED_PORT: u16 = 5999;
const REFUSED_CONNECTS: u64 = 4;

/// Retransmits and resets, each against the kernel's own counters in the namespaces in
/// scope: SYNs the pod's nftables drops are retransmitted once (the node allows one
/// retry), and connects to a closed port of the node are answered with a reset.
fn tcp_health(setup: &Setup) -> Result<()> {
    let retransmits = |s: &Scrape| s.count_sum("cniguard_tcp_retransmits_total", &[]);
    let resets =
        |s: &Scrape, direction: &str| s.count_sum("cniguard_tcp_resets_total", &[("direction", direction)]);
    let before = (setup.scrape()?, tcp_counters(setup, "RetransSegs")?, tcp_counters(setup, "OutRsts")?);
    setup.node.sysctl("net.ipv4.tcp_syn_retries", "1")?;
    let target = SocketAddr::from((POD_ADDRESS, DROPPED_TCP));
    std::thread::scope(|scope| {
        let attempts: Vec<_> =
            (0..2).map(|_| scope.spawn(|| setup.node.run(|| TcpStream::connect(target)))).collect();
        for attempt in attempts {
            if attempt.join().is_ok_and(|connected| connected.is_ok()) {
                bail!("a connect to {target} got through the pod's nftables drop");
            }
        }
        Ok(())
    })?;
    for _ in 0..REFUSED_CONNECTS {
        if setup.pod.run(|| TcpStream::connect((NODE_POD_SIDE, CLOSED_PORT))).is_ok() {
            bail!("something listens on {NODE_POD_SIDE}:{CLOSED_PORT}");
        }
    }
    let kernel_retransmits = tcp_counters(setup, "RetransSegs")? - before.1;
    let kernel_resets = tcp_counters(setup, "OutRsts")? - before.2;
    let scrape = setup.settle(|s| {
        retransmits(s) - retransmits(&before.0) >= kernel_retransmits
            && resets(s, "sent") - resets(&before.0, "sent") >= kernel_resets
            && resets(s, "received") - resets(&before.0, "received") >= REFUSED_CONNECTS
    })?;
    check("tcp_health", "retransmits", retransmits(&scrape) - retransmits(&before.0), kernel_retransmits);
    check("tcp_health", "resets_sent", resets(&scrape, "sent") - resets(&before.0, "sent"), kernel_resets);
    check(
        "tcp_health",
        "resets_received",
        resets(&scrape, "received") - resets(&before.0, "received"),
        REFUSED_CONNECTS,
    );
    Ok(())
}

const BGP_PORT: u16 = 179;

/// A BGP session (TCP on port 179) from the node to its peer goes up, then the peer tears
/// it down with a reset (a crashed speaker): `cniguard_bgp_session_up` goes 1, then 0.
fn sock_state(setup: &Setup) -> Result<()> {
    let peer = PEER_UNDERLAY.to_string();
    // A gauge of 0 or 1; absent reads as 0 (no session seen up).
    let up = |s: &Scrape| s.count("cniguard_bgp_session_up", &[("peer", peer.as_str())]);
    let listener = setup.peer.run(|| TcpListener::bind((PEER_UNDERLAY, BGP_PORT)))?;
    let session = setup.node.run(|| TcpStream::connect((PEER_UNDERLAY, BGP_PORT)))?;
    let (accepted, _) = listener.accept()?;
    let scrape = setup.settle(|s| up(s) == 1)?;
    check("sock_state", "session_up", up(&scrape), 1);
    cniguard_lab::traffic::abort(&accepted)?;
    drop(accepted);
    let scrape = setup.settle(|s| up(s) == 0)?;
    check("sock_state", "down_after_rst", up(&scrape), 0);
    drop(session);
    Ok(())
}

/// A `cniguard-workload` process in a namespace, with its stats file; killed on drop.
struct Workload {
    child: Child,
    stats: PathBuf,
}

impl Workload {
    fn start(setup: &Setup, name: &str, args: &[&str]) -> Result<Self> {
        let stats = setup.state.join(format!("{name}.json"));
        let child = setup
            .pod
            .command(Binaries::beside_test_executable().workload)?
            .args(args)
            .arg("--stats")
            .arg(&stats)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let workload = Self { child, stats };
        workload.wait_for(name, |stats| stats.is_some())?;
        Ok(workload)
    }

    fn stats(&self) -> Option<serde_json::Value> {
        std::fs::read_to_string(&self.stats).ok().and_then(|text| serde_json::from_str(&text).ok())
    }

    fn wait_for(&self, name: &str, done: impl Fn(Option<serde_json::Value>) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self.stats()) {
            if Instant::now() > deadline {
                bail!("{name}: {:?}", self.stats());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits for a `--count` workload to exit; its final stats.
    fn finish(mut self, name: &str) -> Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_mins(1);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("{name} did not finish: {:?}", self.stats());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stats().with_context(|| format!("{name} left no stats"))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stats);
    }
}

/// `streams` concurrent streams of `calls` gRPC calls each on one HTTP/2 connection to a
/// server on 127.0.0.1:9500 that answers after 5 ms.
fn grpc_calls(setup: &Setup, streams: u64, calls: u64) -> Result<()> {
    let _server = Workload::start(
        setup,
        "grpc-server",
        &["grpc-server", "--listen", "127.0.0.1:9500", "--delay-ms", "5"],
    )?;
    let grpc = Workload::start(
        setup,
        "seldon-agent",
        &[
            "seldon-agent",
            "--grpc",
            "127.0.0.1:9500",
            "--skip-setup",
            "--streams",
            &streams.to_string(),
            "--calls",
            &calls.to_string(),
            "--rounds",
            "1",
        ],
    )?
    .finish("seldon-agent")?;
    if grpc["grpc_ok"].as_u64() != Some(streams * calls) {
        bail!("the gRPC calls failed: {grpc}");
    }
    Ok(())
}

/// In-pod loopback TCP: HTTP/1.1 exchanges with an MLServer on 127.0.0.1:9000 that
/// answers after 5 ms (one connection each), gRPC calls multiplexed on one HTTP/2
/// connection to a server on 9500 that answers after 5 ms (the stand-in: the real
/// MLServer needs Python, which these machines lack), connects refused on a port nothing
/// listens on, connects whose SYNs the pod's nftables drops (timeouts), and a connection
/// reset mid-answer.
fn localhost(setup: &Setup) -> Result<()> {
    let (exchanges, refused, timeouts) = (12, 5, 3);
    let (streams, calls) = (3, 7);
    let pod = setup.pod.name();
    let _server =
        Workload::start(setup, "mlserver", &["mlserver", "--listen", "127.0.0.1:9000", "--delay-ms", "5"])?;
    grpc_calls(setup, streams, calls)?;
    let agent = |name: &str, target: &str, count: u64| {
        let count = count.to_string();
        let args = [
            "agent",
            "--target",
            target,
            "--rate",
            "50",
            "--count",
            &count,
            "--requests-per-connection",
            "1",
            "--connect-timeout-ms",
            "1000",
        ];
        Workload::start(setup, name, &args)?.finish(name)
    };
    let ok = agent("agent", "127.0.0.1:9000", exchanges)?;
    if ok["ok"].as_u64() != Some(exchanges) {
        bail!("the agent's exchanges with the MLServer failed: {ok}");
    }
    let failed = agent("refused-agent", "127.0.0.1:8081", refused)?;
    if failed["refused"].as_u64() != Some(refused) {
        bail!("connects to a closed port were not refused: {failed}");
    }
    let unanswered = agent("timeout-agent", &format!("127.0.0.1:{DROPPED_TCP}"), timeouts)?;
    if unanswered["connect_timeouts"].as_u64() != Some(timeouts) {
        bail!("connects whose SYNs are dropped did not time out: {unanswered}");
    }
    // A server that dies mid-answer: the open connection is reset.
    let listener = setup.pod.run(|| TcpListener::bind("127.0.0.1:8080"))?;
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut request = [0; 1024];
        let _ = stream.read(&mut request)?;
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")?;
        cniguard_lab::traffic::abort(&stream)
    });
    let mut client = setup.pod.run(|| TcpStream::connect("127.0.0.1:8080"))?;
    client.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")?;
    server.join().map_err(|_| anyhow::anyhow!("the resetting server panicked"))??;
    let mut answer = Vec::new();
    if client.read_to_end(&mut answer).is_ok() {
        bail!("the client saw no reset");
    }
    let histogram = |s: &Scrape, metric: &str, port: &str| {
        s.count(&format!("cniguard_localhost_{metric}_seconds_count"), &[("netns", pod), ("port", port)])
    };
    let failures = |s: &Scrape, port: &str, reason: &str| {
        s.count(
            "cniguard_localhost_connect_failures_total",
            &[("netns", pod), ("port", port), ("reason", reason)],
        )
    };
    // The servers wait 5 ms before answering: every response is in a bucket above 5 ms.
    let below_delay = |s: &Scrape, port: &str| {
        s.count(
            "cniguard_localhost_response_seconds_bucket",
            &[("netns", pod), ("port", port), ("le", "0.005")],
        )
    };
    let http2 = |s: &Scrape| {
        s.count(
            "cniguard_localhost_response_seconds_count",
            &[("netns", pod), ("port", "9500"), ("protocol", "http2")],
        )
    };
    let dropped = DROPPED_TCP.to_string();
    let scrape = setup.settle(|s| {
        histogram(s, "response", "9000") >= exchanges
            && http2(s) >= streams * calls
            && failures(s, "8081", "refused") >= refused
            && failures(s, &dropped, "timeout") >= timeouts
            && failures(s, "8080", "reset") >= 1
    })?;
    check("localhost", "responses", histogram(&scrape, "response", "9000"), exchanges);
    check(
        "localhost",
        "responses_above_5ms",
        histogram(&scrape, "response", "9000").saturating_sub(below_delay(&scrape, "9000")),
        exchanges,
    );
    check("localhost", "connects", histogram(&scrape, "connect", "9000"), exchanges);
    check("localhost", "grpc_calls", http2(&scrape), streams * calls);
    check(
        "localhost",
        "grpc_above_5ms",
        http2(&scrape).saturating_sub(below_delay(&scrape, "9500")),
        streams * calls,
    );
    check("localhost", "grpc_connects", histogram(&scrape, "connect", "9500"), 1);
    check("localhost", "refused", failures(&scrape, "8081", "refused"), refused);
    check("localhost", "timeouts", failures(&scrape, &dropped, "timeout"), timeouts);
    check("localhost", "reset", failures(&scrape, "8080", "reset"), 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{dns_answer, dns_query, off_reason, shorten};

    #[test]
    fn the_dns_server_answers_the_existing_name_and_nxdomain_otherwise() {
        let answer = dns_answer(&dns_query(7, "exists.cluster.local")).unwrap();
        assert_eq!((answer[..2].to_vec(), answer[3] & 0x0f, answer[7]), (vec![0, 7], 0, 1));
        let answer = dns_answer(&dns_query(8, "missing.cluster.local")).unwrap();
        assert_eq!((answer[3] & 0x0f, answer[7]), (3, 0));
        assert_eq!(dns_answer(&[0xde, 0xad]), None);
        assert_eq!(dns_answer(&answer), None, "an answer is not a query");
    }

    #[test]
    fn the_reason_is_the_verifiers_refusal_or_the_innermost_cause() {
        let log = "2026-12-01T20:00:00.1Z  WARN cniguard::daemon: localhost latency is off: loading localhost_egress: the BPF_PROG_LOAD syscall failed. Verifier output: 0: (bf) r6 = r1\n\
                   1: (85) call bpf_get_netns_cookie#122\nunknown func bpf_get_netns_cookie#122\nprocessed 2 insns (limit 1000000)\n: Invalid argument (os error 22)\n\n\
                   2026-12-01T20:00:00.2Z  INFO cniguard::daemon: next\n";
        assert_eq!(off_reason(log, "localhost latency").unwrap(), "unknown func bpf_get_netns_cookie#122");
        let log = "2026-12-01T20:00:00.1Z  WARN cniguard::daemon: kernel drop counts is off: reading drop reasons: no enum skb_drop_reason in the kernel's BTF\n";
        assert_eq!(
            off_reason(log, "kernel drop counts").unwrap(),
            "no enum skb_drop_reason in the kernel's BTF"
        );
        assert_eq!(off_reason(log, "localhost latency"), None);
        assert_eq!(shorten(&["plain"]), "plain");
    }
}
