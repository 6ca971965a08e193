//! `cargo xtask bench`: what cniguard costs, each number measured side by side with its
//! baseline in one run. Prints; asserts nothing.
//!
//! 1. Per packet: each classifier next to an empty classifier, through BPF_PROG_TEST_RUN
//!    (the kernel times the runs itself).
//! 2. Per loopback request/response in a pod-like namespace (the Seldon agent's path):
//!    median and p99 with the localhost hooks attached and without, rounds interleaved.
//! 3. Per loopback packet, by protocol (issue 14): the localhost programs' own run time (BPF
//!    stats) on an opaque request/response (timed turn by turn, no walk), on HTTP/1.1
//!    keep-alive calls and on gRPC-shaped HTTP/2 calls (the frame walk), rounds interleaved;
//!    the difference to the opaque row is what reading the protocol adds per packet.
//! 4. Per packet of non-loopback traffic (datagrams over a veth, received by a socket):
//!    what each localhost hook costs traffic it does not measure, from the programs' own
//!    run time (BPF stats), next to a classifier on the namespaces' `lo` (the other design
//!    for kernels without `bpf_get_netns_cookie` in `cgroup_skb`), and the datagram rate.
//! 5. Per dropped packet, under a drop storm: the `kfree_skb` program's own run time as the
//!    kernel accounts it (BPF stats, enabled through the stats fd for this run only), and
//!    the storm's packets per second with the program attached and without.
//! 6. `udp`: the whole daemon on the data path (issue 15): 64-byte UDP datagrams over a veth
//!    and over VXLAN on it, one sending thread of std `UdpSocket`s (no iperf3), 2 s per run,
//!    the rate counted at the receiving socket: without cniguard, with the real release
//!    daemon (every probe) in the receiving namespace, and with tcpdump on the underlay,
//!    rounds interleaved.
//! 7. `scale`: the real daemon in a node namespace with 1, 100 and 1,000 pod veths: time to
//!    ready and to every veth attached, idle CPU, RSS and its peak, time to stop on SIGTERM,
//!    and a CNI plugin's veth add and delete while it starts with 1,000 (issue 15).
//!
//! 6 and 7 start `target/release/cniguard` (`cargo build --release -p cniguard`; or
//! `CNIGUARD_BIN`) with `nsenter --net`, and are skipped when it is not built.

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use std::io::{Read as _, Write as _};

use anyhow::{Context as _, Result};
use cniguard_lab::netns::NetNs;
use cniguard_tests::http2;
use cniguard_tests::test_run::Classifiers;
use etherparse::{PacketBuilder, VlanId};

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 7;

fn frame(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = Vec::new();
    build(&mut frame);
    frame
}

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
}

/// (program, packet name, packet): each row is timed against `baseline_noop` on the same
/// packet.
fn rows() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let v4 = ([10, 42, 0, 5], [10, 244, 1, 9]);
    let nodes = ([192, 168, 20, 13], [192, 168, 10, 11]);
    let v6 = ([0xfd; 16], [0xfe; 16]);
    let payload = [0_u8; 64];
    let mut truncated = frame(|f| {
        eth()
            .single_vlan(VlanId::try_new(7).unwrap())
            .ipv4(v4.0, v4.1, 64)
            .udp(1, 2)
            .write(f, &payload)
            .unwrap();
    });
    truncated.truncate(30);
    let inner = frame(|f| eth().ipv4(v4.0, v4.1, 64).udp(40000, 7000).write(f, &payload).unwrap());
    let vxlan_payload: Vec<u8> =
        [0x08, 0, 0, 0, 0, 0x10, 0, 0].into_iter().chain(inner.iter().copied()).collect();
    let vxlan =
        frame(|f| eth().ipv4(nodes.0, nodes.1, 64).udp(51234, 4789).write(f, &vxlan_payload).unwrap());
    let keepalive: Vec<u8> = [0xff; 16].into_iter().chain([0, 19, 4]).collect();
    let bgp =
        frame(|f| eth().ipv4(nodes.0, nodes.1, 64).tcp(179, 40179, 1, 1024).write(f, &keepalive).unwrap());
    let plain =
        frame(|f| eth().ipv4(nodes.0, nodes.1, 64).tcp(40000, 443, 1, 1024).write(f, &payload).unwrap());
    // A query for `exists.cluster.local`, type A: each run stores it as outstanding (the
    // same key every time: the first insert wins, the others find it).
    let question: Vec<u8> = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        .into_iter()
        .chain(*b"\x06exists\x07cluster\x05local\x00\x00\x01\x00\x01")
        .collect();
    let dns_query =
        frame(|f| eth().ipv4(v4.0, [10, 43, 0, 10], 64).udp(40053, 53).write(f, &question).unwrap());
    vec![
        ("iface_stats_ingress", "ipv4/tcp 64B payload", plain.clone()),
        ("iface_stats_ingress", "ipv4/udp 64B payload", inner.clone()),
        (
            "iface_stats_ingress",
            "ipv6/tcp 64B payload",
            frame(|f| eth().ipv6(v6.0, v6.1, 64).tcp(1, 2, 1, 512).write(f, &payload).unwrap()),
        ),
        ("iface_stats_ingress", "malformed (cut in IP)", truncated),
        ("underlay_ingress", "neither VXLAN nor BGP", plain),
        ("underlay_ingress", "VXLAN 4789", vxlan),
        ("underlay_ingress", "BGP KEEPALIVE", bgp),
        ("overlay_ingress", "inner ipv4/udp", inner.clone()),
        ("dns_ingress", "not DNS (ipv4/udp)", inner),
        ("dns_ingress", "DNS query", dns_query),
    ]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "the benchmark loads eBPF programs: run it as root");
    // `cniguard-bench classifiers` (or `non-loopback`, `protocols`, `udp`, `scale`) runs that
    // part alone.
    match std::env::args().nth(1).as_deref() {
        Some("classifiers") => return classifiers(),
        Some("non-loopback") => return non_loopback(),
        Some("protocols") => return protocols(),
        Some("udp") => return udp(),
        Some("scale") => return scale(),
        _ => {}
    }
    classifiers()?;
    loopback()?;
    protocols()?;
    non_loopback()?;
    drop_storm()?;
    udp()?;
    scale()
}

const STORM_PACKETS: u64 = 200_000;
const STORM_ROUNDS: usize = 5;

/// Datagrams from one namespace to another that drops every one of them in nftables: each
/// is a `kfree_skb` with reason NETFILTER_DROP.
fn drop_storm() -> Result<()> {
    let link = cniguard_lab::netns::QuietLink::new("veth-bs0", "veth-bs1")?;
    cniguard_tests::netfilter::nft(
        &link.b,
        "table inet cgbench {\n chain input { type filter hook input priority 0; udp dport 7777 drop; }\n}\n",
    )?;
    let offsets = cniguard::node::btf::Btf::kernel()?.kernel_offsets()?;
    let (silent, every_namespace) = (0_u8, 1_u8);
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("AYA_LOG_LEVEL", &silent, true)
        .override_global("COUNT_EVERY_NAMESPACE", &every_namespace, true)
        .override_global("KERNEL_OFFSETS", &offsets, true)
        .load(cniguard::node::ebpf::OBJECT)?;
    let program: &mut aya::programs::RawTracePoint =
        ebpf.program_mut("drops").context("no drops program")?.try_into()?;
    program.load()?;
    // Run-time accounting costs a little itself; it stays on only while this fd is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let socket = link.a.run(|| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    let target = std::net::SocketAddr::from((link.b_addr, 7777));
    let storm = || -> Result<f64> {
        let start = std::time::Instant::now();
        for _ in 0..STORM_PACKETS {
            socket.send_to(&[0x42; 64], target)?;
        }
        #[allow(clippy::cast_precision_loss, reason = "a few hundred thousand packets")]
        Ok(STORM_PACKETS as f64 / start.elapsed().as_secs_f64())
    };
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..STORM_ROUNDS {
        without.push(storm()?);
        let link_id = program.attach("kfree_skb")?;
        with.push(storm()?);
        program.detach(link_id)?;
    }
    let info = program.info()?;
    let middle = |mut rates: Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (without, with) = (middle(without), middle(with));
    println!();
    println!(
        "drop storm: {STORM_PACKETS} datagrams per round into an nftables drop, {STORM_ROUNDS} interleaved rounds"
    );
    #[allow(clippy::cast_precision_loss, reason = "run counts stay far below 2^52")]
    let per_run = info.run_time().as_nanos() as f64 / info.run_count().max(1) as f64;
    println!(
        "kfree_skb program: {} runs (every drop on the machine while attached), {per_run:.0} ns per run",
        info.run_count()
    );
    println!("{:<28} {:>14}", "", "drops per s");
    println!("{:<28} {without:>14.0}", "without cniguard");
    println!("{:<28} {with:>14.0}", "with the drops program");
    println!("{:<28} {:>14.3}", "ratio (with / without)", with / without);
    Ok(())
}

fn classifiers() -> Result<()> {
    let ns = NetNs::new("bench")?;
    ns.run(|| -> Result<()> {
        let mut classifiers = Classifiers::load(&[
            "baseline_noop",
            "iface_stats_ingress",
            "underlay_ingress",
            "overlay_ingress",
            "dns_ingress",
        ])?;
        classifiers.set_vxlan_ports(&[8472, 4789])?;
        classifiers.set_cidr_classes(&[([10, 42, 0, 0], 16), ([10, 244, 0, 0], 16), ([10, 96, 0, 0], 12)])?;
        println!("BPF_PROG_TEST_RUN, {REPEAT} runs per measurement, median of {ROUNDS} interleaved rounds");
        println!(
            "{:<20} {:<24} {:>12} {:>12} {:>10} {:>8}",
            "program", "packet", "noop ns/pkt", "probe ns/pkt", "extra ns", "ratio"
        );
        for (program, name, packet) in rows() {
            let (mut noop, mut probe) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                noop.push(classifiers.time("baseline_noop", &packet, REPEAT)?);
                probe.push(classifiers.time(program, &packet, REPEAT)?);
            }
            let (noop, probe) = (median(noop).as_nanos(), median(probe).as_nanos());
            #[allow(clippy::cast_precision_loss, reason = "nanoseconds per packet are small")]
            let ratio = probe as f64 / noop.max(1) as f64;
            println!(
                "{program:<20} {name:<24} {noop:>12} {probe:>12} {:>10} {ratio:>8.2}",
                probe.saturating_sub(noop)
            );
        }
        Ok(())
    })
}

const EXCHANGES: usize = 20_000;
const LOOPBACK_ROUNDS: usize = 5;

/// A 64-byte request and a 64-byte answer over 127.0.0.1:9500 (a watched port), over and
/// over on one connection, timed one exchange at a time from the client.
fn loopback() -> Result<()> {
    let ns = NetNs::new("bench-lo")?;
    ns.run(|| -> Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:9500")?;
        std::thread::spawn(move || -> std::io::Result<()> {
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut buffer = [0_u8; 64];
            loop {
                stream.read_exact(&mut buffer)?;
                stream.write_all(&buffer)?;
            }
        });
        let mut client = std::net::TcpStream::connect("127.0.0.1:9500")?;
        client.set_nodelay(true)?;
        let mut hooks = LocalhostHooks::load(Hook::CgroupSkb)?;
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..LOOPBACK_ROUNDS {
            hooks.detach();
            without.extend(exchanges(&mut client)?);
            hooks.attach()?;
            with.extend(exchanges(&mut client)?);
        }
        hooks.detach();
        let exchanged = hooks.responses_on(9500)?;
        println!();
        println!(
            "loopback request/response, 64 B each way, {} exchanges per case in {LOOPBACK_ROUNDS} interleaved rounds",
            EXCHANGES * LOOPBACK_ROUNDS
        );
        println!("{:<28} {:>12} {:>12}", "", "median us", "p99 us");
        let (median_without, p99_without) = percentiles(&mut without);
        let (median_with, p99_with) = percentiles(&mut with);
        println!("{:<28} {median_without:>12.2} {p99_without:>12.2}", "without cniguard");
        println!("{:<28} {median_with:>12.2} {p99_with:>12.2}", "with the localhost hooks");
        println!("{:<28} {:>12.2} {:>12.2}", "added", median_with - median_without, p99_with - p99_without);
        println!("(the hooks measured {exchanged} of the {} exchanges made while attached)", EXCHANGES * LOOPBACK_ROUNDS);
        Ok(())
    })
}

fn exchanges(client: &mut std::net::TcpStream) -> Result<Vec<Duration>> {
    let request = [0x5a_u8; 64];
    let mut answer = [0_u8; 64];
    let mut durations = Vec::with_capacity(EXCHANGES);
    for _ in 0..EXCHANGES {
        let start = std::time::Instant::now();
        client.write_all(&request)?;
        client.read_exact(&mut answer)?;
        durations.push(start.elapsed());
    }
    Ok(durations)
}

/// Median and 99th percentile in microseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short list"
        )]
        let index = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[index].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

const PROTOCOL_CALLS: usize = 10_000;
const PROTOCOL_ROUNDS: usize = 5;

/// What a watched loopback port carries in the per-protocol rows: each has its own port
/// and a server that speaks it.
#[derive(Clone, Copy)]
enum Wire {
    /// 64 bytes each way, no protocol the probe knows: timed turn by turn.
    Opaque,
    /// HTTP/1.1 keep-alive: a request line and its status line.
    Http1,
    /// gRPC-shaped HTTP/2: HEADERS and DATA out, HEADERS, DATA and trailers back.
    Http2,
}

impl Wire {
    const ALL: [Self; 3] = [Self::Opaque, Self::Http1, Self::Http2];

    const fn port(self) -> u16 {
        match self {
            Self::Opaque => 8080,
            Self::Http1 => 9000,
            Self::Http2 => 9500,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Opaque => "other (turn by turn)",
            Self::Http1 => "http1",
            Self::Http2 => "http2 (gRPC-shaped)",
        }
    }
}

const HTTP1_REQUEST: &[u8] =
    b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}";
const HTTP1_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

/// An HTTP/2 frame with `length` zero bytes of payload (the walk reads frame headers only).
fn h2_frame(into: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, length: usize) {
    into.extend(http2::frame(kind, flags, stream, &vec![0; length]));
}

/// A gRPC call's request on `stream`: HEADERS, then DATA with the 5-byte message prefix.
fn h2_request(stream: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    h2_frame(&mut bytes, http2::HEADERS, http2::END_HEADERS, stream, 16);
    h2_frame(&mut bytes, http2::DATA, http2::END_STREAM, stream, 5 + 8);
    bytes
}

/// Its response: HEADERS, DATA, and the trailers that end the stream.
fn h2_response(stream: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    h2_frame(&mut bytes, http2::HEADERS, http2::END_HEADERS, stream, 8);
    h2_frame(&mut bytes, http2::DATA, 0, stream, 5 + 8);
    h2_frame(&mut bytes, http2::HEADERS, http2::END_HEADERS | http2::END_STREAM, stream, 8);
    bytes
}

/// Serves `wire` on its loopback port, one connection, until the client goes.
fn serve(wire: Wire) -> Result<()> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", wire.port()))?;
    std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        match wire {
            Wire::Opaque => {
                let mut buffer = [0_u8; 64];
                loop {
                    stream.read_exact(&mut buffer)?;
                    stream.write_all(&buffer)?;
                }
            }
            Wire::Http1 => {
                let mut buffer = vec![0_u8; HTTP1_REQUEST.len()];
                loop {
                    stream.read_exact(&mut buffer)?;
                    stream.write_all(HTTP1_RESPONSE)?;
                }
            }
            Wire::Http2 => {
                let mut opening = vec![0_u8; http2::PREFACE.len() + 9];
                stream.read_exact(&mut opening)?;
                let mut settings = Vec::new();
                h2_frame(&mut settings, http2::SETTINGS, 0, 0, 0);
                h2_frame(&mut settings, http2::SETTINGS, http2::ACK, 0, 0);
                stream.write_all(&settings)?;
                let mut buffer = vec![0_u8; h2_request(1).len()];
                loop {
                    stream.read_exact(&mut buffer)?;
                    let id = u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]);
                    stream.write_all(&h2_response(id))?;
                }
            }
        }
    });
    Ok(())
}

/// A client of `wire`'s server, past the HTTP/2 preface and SETTINGS where there is one.
struct WireClient {
    wire: Wire,
    stream: std::net::TcpStream,
    next_stream_id: u32,
}

impl WireClient {
    fn connect(wire: Wire) -> Result<Self> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", wire.port()))?;
        stream.set_nodelay(true)?;
        if let Wire::Http2 = wire {
            let mut opening = http2::PREFACE.to_vec();
            h2_frame(&mut opening, http2::SETTINGS, 0, 0, 0);
            stream.write_all(&opening)?;
            stream.read_exact(&mut [0_u8; 18])?;
        }
        Ok(Self { wire, stream, next_stream_id: 1 })
    }

    fn calls(&mut self, count: usize) -> Result<()> {
        let mut answer = [0_u8; 128];
        for _ in 0..count {
            match self.wire {
                Wire::Opaque => {
                    self.stream.write_all(&[0x5a; 64])?;
                    self.stream.read_exact(&mut answer[..64])?;
                }
                Wire::Http1 => {
                    self.stream.write_all(HTTP1_REQUEST)?;
                    self.stream.read_exact(&mut answer[..HTTP1_RESPONSE.len()])?;
                }
                Wire::Http2 => {
                    let id = self.next_stream_id;
                    self.next_stream_id += 2;
                    self.stream.write_all(&h2_request(id))?;
                    self.stream.read_exact(&mut answer[..h2_response(id).len()])?;
                }
            }
        }
        Ok(())
    }
}

/// The localhost programs' run time per loopback packet for each protocol they read, in
/// one namespace, rounds interleaved so the machine's noise falls on every row alike.
fn protocols() -> Result<()> {
    let ns = NetNs::new("bench-proto")?;
    ns.run(|| -> Result<()> {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        let mut hooks = LocalhostHooks::load(Hook::CgroupSkb)?;
        for wire in Wire::ALL {
            hooks.watch(wire.port())?;
            serve(wire)?;
        }
        // Attached before the connections open, so each is seen from its SYN.
        hooks.attach()?;
        let mut clients = Wire::ALL.map(WireClient::connect);
        let mut runs = [(0_u64, Duration::ZERO); Wire::ALL.len()];
        for _ in 0..PROTOCOL_ROUNDS {
            for (index, client) in clients.iter_mut().enumerate() {
                let client = client.as_mut().map_err(|err| anyhow::anyhow!("{err:#}"))?;
                let before = hooks.runs()?;
                client.calls(PROTOCOL_CALLS)?;
                let after = hooks.runs()?;
                runs[index].0 += after.0 - before.0;
                runs[index].1 += after.1.saturating_sub(before.1);
            }
        }
        hooks.detach();
        let calls = PROTOCOL_CALLS * PROTOCOL_ROUNDS;
        println!();
        println!(
            "loopback packets by protocol: {calls} calls per protocol on one connection each, {PROTOCOL_ROUNDS} interleaved rounds, cgroup_skb hooks (BPF stats)"
        );
        println!(
            "{:<24} {:>10} {:>10} {:>11} {:>12} {:>14} {:>10}",
            "", "runs", "runs/call", "ns per run", "ns per call", "added per run", "samples"
        );
        #[allow(clippy::cast_precision_loss, reason = "run counts stay far below 2^52")]
        let per_run = |(count, time): (u64, Duration)| time.as_nanos() as f64 / count.max(1) as f64;
        let floor = per_run(runs[0]);
        for (index, wire) in Wire::ALL.into_iter().enumerate() {
            let (count, time) = runs[index];
            #[allow(clippy::cast_precision_loss, reason = "run counts stay far below 2^52")]
            let (runs_per_call, per_call) =
                (count as f64 / calls as f64, time.as_nanos() as f64 / calls as f64);
            println!(
                "{:<24} {count:>10} {runs_per_call:>10.2} {:>11.0} {per_call:>12.0} {:>14.0} {:>10}",
                wire.name(),
                per_run(runs[index]),
                per_run(runs[index]) - floor,
                hooks.responses_on(wire.port())?
            );
        }
        println!("(runs: every run of the hooks while a row's calls ran, acknowledgements and the machine's other sockets included; samples: response samples recorded on the row's port, one per call expected)");
        Ok(())
    })
}

/// Where the localhost programs attach (`[localhost] hook`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    CgroupSkb,
    LoopbackXmit,
    NetDevStartXmit,
}

/// cniguard's localhost programs on one hook, attached and detached at will.
struct LocalhostHooks {
    ebpf: aya::Ebpf,
    hook: Hook,
    links: Vec<Box<dyn std::any::Any>>,
}

impl LocalhostHooks {
    /// Loads the programs of `hook`; the calling thread's namespace is the one the
    /// `cgroup_skb` programs know (as the daemon's inventory would).
    fn load(hook: Hook) -> Result<Self> {
        let offsets = cniguard::node::btf::Btf::kernel()?.kernel_offsets()?;
        let silent = 0_u8;
        let mut ebpf = aya::EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &silent, true)
            .override_global("KERNEL_OFFSETS", &offsets, true)
            .load(cniguard::node::ebpf::OBJECT)?;
        let mut ports: aya::maps::HashMap<_, u16, u8> =
            aya::maps::HashMap::try_from(ebpf.map_mut("LOCALHOST_PORTS").context("no map")?)?;
        ports.insert(9500, 1, 0)?;
        let inode = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
        let mut cookies: aya::maps::HashMap<_, u64, u64> =
            aya::maps::HashMap::try_from(ebpf.map_mut("NETNS_BY_COOKIE").context("no map")?)?;
        cookies.insert(cniguard::node::namespaces::own_cookie()?, inode, 0)?;
        match hook {
            Hook::CgroupSkb => {
                for name in ["localhost_egress", "localhost_ingress"] {
                    let program: &mut aya::programs::CgroupSkb =
                        ebpf.program_mut(name).context("no program")?.try_into()?;
                    program.load()?;
                }
            }
            Hook::LoopbackXmit => {
                let program: &mut aya::programs::FEntry =
                    ebpf.program_mut("localhost_xmit").context("no program")?.try_into()?;
                program.load("loopback_xmit", &aya::Btf::from_sys_fs()?)?;
            }
            Hook::NetDevStartXmit => {
                let program: &mut aya::programs::RawTracePoint =
                    ebpf.program_mut("localhost_dev_xmit").context("no program")?.try_into()?;
                program.load()?;
            }
        }
        Ok(Self { ebpf, hook, links: Vec::new() })
    }

    /// Adds `port` to the watched loopback ports.
    fn watch(&mut self, port: u16) -> Result<()> {
        let mut ports: aya::maps::HashMap<_, u16, u8> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut("LOCALHOST_PORTS").context("no map")?)?;
        ports.insert(port, 1, 0)?;
        Ok(())
    }

    fn programs(&self) -> &'static [&'static str] {
        match self.hook {
            Hook::CgroupSkb => &["localhost_egress", "localhost_ingress"],
            Hook::LoopbackXmit => &["localhost_xmit"],
            Hook::NetDevStartXmit => &["localhost_dev_xmit"],
        }
    }

    fn attach(&mut self) -> Result<()> {
        if self.hook == Hook::NetDevStartXmit {
            let program: &mut aya::programs::RawTracePoint =
                self.ebpf.program_mut("localhost_dev_xmit").context("no program")?.try_into()?;
            let link = program.attach("net_dev_start_xmit")?;
            self.links.push(Box::new(program.take_link(link)?));
            return Ok(());
        }
        if self.hook == Hook::LoopbackXmit {
            let program: &mut aya::programs::FEntry =
                self.ebpf.program_mut("localhost_xmit").context("no program")?.try_into()?;
            let link = program.attach()?;
            self.links.push(Box::new(program.take_link(link)?));
            return Ok(());
        }
        let root = std::fs::read_to_string("/proc/self/mounts")?
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].to_owned())
            })
            .context("no cgroup v2 mount")?;
        let cgroup = std::fs::File::open(root)?;
        for (name, attach_type) in [
            ("localhost_egress", aya::programs::CgroupSkbAttachType::Egress),
            ("localhost_ingress", aya::programs::CgroupSkbAttachType::Ingress),
        ] {
            let program: &mut aya::programs::CgroupSkb =
                self.ebpf.program_mut(name).context("no program")?.try_into()?;
            let link = program.attach(&cgroup, attach_type, aya::programs::CgroupAttachMode::Single)?;
            self.links.push(Box::new(program.take_link(link)?));
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.links.clear();
    }

    /// The programs' runs and run time so far (BPF stats must be on).
    fn runs(&self) -> Result<(u64, Duration)> {
        let mut total = (0, Duration::ZERO);
        for name in self.programs() {
            let info = match self.ebpf.program(name).context("no program")? {
                aya::programs::Program::CgroupSkb(program) => program.info()?,
                aya::programs::Program::FEntry(program) => program.info()?,
                aya::programs::Program::RawTracePoint(program) => program.info()?,
                _ => anyhow::bail!("{name}: not a localhost program"),
            };
            total = (total.0 + info.run_count(), total.1 + info.run_time());
        }
        Ok(total)
    }

    /// Response samples the programs recorded on `port` (all namespaces).
    fn responses_on(&self, port: u16) -> Result<u64> {
        let latency: aya::maps::PerCpuHashMap<
            _,
            probe_common::localhost::LatencyKey,
            probe_common::counters::Histogram,
        > = aya::maps::PerCpuHashMap::try_from(self.ebpf.map("LATENCY").context("no map")?)?;
        Ok(latency
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, _)| {
                key.port == port && key.kind == probe_common::localhost::LatencyKind::Response as u8
            })
            .map(|(_, per_cpu)| per_cpu.iter().map(|h| h.buckets.iter().sum::<u64>()).sum::<u64>())
            .sum())
    }
}

const NON_LOOPBACK_DATAGRAMS: u64 = 200_000;
const NON_LOOPBACK_ROUNDS: usize = 5;

/// Datagrams from one namespace to a socket in another over a veth: traffic the localhost
/// probe does not measure. Each hook attached in turn, rounds interleaved with none; the
/// programs' run time per datagram, as the kernel accounts it.
fn non_loopback() -> Result<()> {
    let link = cniguard_lab::netns::QuietLink::new("veth-bn0", "veth-bn1")?;
    let receiver = link.b.run(|| std::net::UdpSocket::bind("0.0.0.0:7777"))?;
    std::thread::spawn(move || {
        let mut buffer = [0_u8; 128];
        while receiver.recv(&mut buffer).is_ok() {}
    });
    let socket = link.a.run(|| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    let target = std::net::SocketAddr::from((link.b_addr, 7777));
    let send = || -> Result<f64> {
        let start = std::time::Instant::now();
        for _ in 0..NON_LOOPBACK_DATAGRAMS {
            socket.send_to(&[0x42; 64], target)?;
        }
        #[allow(clippy::cast_precision_loss, reason = "a few hundred thousand datagrams")]
        Ok(NON_LOOPBACK_DATAGRAMS as f64 / start.elapsed().as_secs_f64())
    };
    // The other design: a classifier on each namespace's `lo` (an empty one stands in).
    let mut lo = aya::EbpfLoader::new()
        .override_global("AYA_LOG_LEVEL", &0_u8, true)
        .load(cniguard::node::ebpf::OBJECT)?;
    let noop: &mut aya::programs::SchedClassifier =
        lo.program_mut("baseline_noop").context("no program")?.try_into()?;
    noop.load()?;
    let mut lo_links = Vec::new();
    for ns in [&link.a, &link.b] {
        ns.run(|| -> Result<()> {
            let _ = aya::programs::tc::qdisc_add_clsact("lo");
            for attach_type in [aya::programs::TcAttachType::Ingress, aya::programs::TcAttachType::Egress] {
                let id = noop.attach("lo", attach_type)?;
                lo_links.push(noop.take_link(id)?);
            }
            Ok(())
        })?;
    }
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let names =
        ["cgroup_skb (egress + ingress)", "fentry loopback_xmit", "raw tracepoint net_dev_start_xmit"];
    let mut hooks: Vec<Result<LocalhostHooks>> = [Hook::CgroupSkb, Hook::LoopbackXmit, Hook::NetDevStartXmit]
        .into_iter()
        .map(LocalhostHooks::load)
        .collect();
    let mut rates = vec![Vec::new(); hooks.len() + 1];
    let mut runs = vec![(0, Duration::ZERO); hooks.len()];
    for _ in 0..NON_LOOPBACK_ROUNDS {
        rates[0].push(send()?);
        for (index, hook) in hooks.iter_mut().enumerate() {
            let Ok(hook) = hook else { continue };
            let before = hook.runs()?;
            hook.attach()?;
            rates[index + 1].push(send()?);
            hook.detach();
            let after = hook.runs()?;
            runs[index].0 += after.0 - before.0;
            runs[index].1 += after.1.saturating_sub(before.1);
        }
    }
    let lo_info = noop.info()?;
    drop(lo_links);
    let middle = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let total = NON_LOOPBACK_DATAGRAMS * NON_LOOPBACK_ROUNDS as u64;
    println!();
    println!(
        "non-loopback traffic: {NON_LOOPBACK_DATAGRAMS} UDP datagrams over a veth to a socket per round, {NON_LOOPBACK_ROUNDS} interleaved rounds, {total} per hook"
    );
    println!("{:<36} {:>10} {:>11} {:>13} {:>13}", "", "runs", "ns per run", "ns per dgram", "dgrams per s");
    println!(
        "{:<36} {:>10} {:>11} {:>13} {:>13.0}",
        "no localhost hook",
        "-",
        "-",
        "-",
        middle(&mut rates[0])
    );
    for (index, name) in names.iter().enumerate() {
        if let Err(err) = &hooks[index] {
            println!("{name:<36} this kernel refuses it: {err:#}");
            continue;
        }
        let (count, time) = runs[index];
        #[allow(clippy::cast_precision_loss, reason = "run counts stay far below 2^52")]
        let (per_run, per_datagram) =
            (time.as_nanos() as f64 / count.max(1) as f64, time.as_nanos() as f64 / total as f64);
        println!(
            "{name:<36} {count:>10} {per_run:>11.0} {per_datagram:>13.1} {:>13.0}",
            middle(&mut rates[index + 1])
        );
    }
    println!(
        "{:<36} {:>10} {:>11} {:>13} {:>13}",
        "classifier on lo (other design)",
        lo_info.run_count(),
        "-",
        "0.0",
        "-"
    );
    println!("(runs are every run on the machine while attached: loopback traffic of others included)");
    Ok(())
}

const UDP_RUN: Duration = Duration::from_secs(2);
const UDP_PAIRS: usize = 5;
const UDP_PORT: u16 = 7777;
const VXLAN_DEV: &str = "vxlan-cgb";

/// How a run's traffic goes from A to B.
#[derive(Clone, Copy)]
enum Route {
    Veth,
    Vxlan,
}

/// One case of the `udp` section: a path, and what watches it.
#[derive(Clone, Copy)]
enum UdpCase {
    Without(Route),
    Cniguard(Route),
    Tcpdump,
}

impl UdpCase {
    const ALL: [Self; 5] = [
        Self::Without(Route::Veth),
        Self::Cniguard(Route::Veth),
        Self::Without(Route::Vxlan),
        Self::Cniguard(Route::Vxlan),
        Self::Tcpdump,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::Without(Route::Veth) => "veth, without",
            Self::Cniguard(Route::Veth) => "veth, with cniguard",
            Self::Without(Route::Vxlan) => "VXLAN, without",
            Self::Cniguard(Route::Vxlan) => "VXLAN, with cniguard",
            Self::Tcpdump => "VXLAN, with tcpdump",
        }
    }

    /// The row its ratio is taken against.
    const fn baseline(self) -> usize {
        match self {
            Self::Without(Route::Veth) | Self::Cniguard(Route::Veth) => 0,
            _ => 2,
        }
    }
}

/// Sent and received datagrams per second of one run.
#[derive(Clone, Copy)]
struct UdpRate {
    sent: f64,
    received: f64,
}

/// The two namespaces of the `udp` section, the datagram counter of B's receiver, and A's
/// sending socket.
struct UdpLab {
    link: cniguard_lab::netns::QuietLink,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::net::UdpSocket,
}

impl UdpLab {
    fn new() -> Result<Self> {
        let link = cniguard_tests::bench::quiet_link("cgb-udp", "veth-cgbu0", "veth-cgbu1")?;
        // VXLAN 42 on port 4789 between the veth's addresses, inner addresses in 10.244.42/24,
        // with permanent neighbours so no ARP crosses the tunnel.
        let ends = [
            (&link.a, link.a_addr, link.b_addr, &link.a_dev, 1),
            (&link.b, link.b_addr, link.a_addr, &link.b_dev, 2),
        ];
        for (ns, local, remote, dev, host) in ends {
            let (local, remote) = (local.to_string(), remote.to_string());
            ns.ip(&[
                "link", "add", VXLAN_DEV, "type", "vxlan", "id", "42", "dstport", "4789", "local", &local,
                "remote", &remote, "dev", dev,
            ])?;
            ns.ip(&["addr", "add", &format!("10.244.42.{host}/24"), "dev", VXLAN_DEV])?;
            ns.ip(&["link", "set", VXLAN_DEV, "up"])?;
        }
        for (ns, peer, host) in [(&link.a, &link.b, 2), (&link.b, &link.a, 1)] {
            let mac = peer.mac(VXLAN_DEV)?;
            let address = format!("10.244.42.{host}");
            ns.ip(&["neigh", "replace", &address, "lladdr", &mac, "dev", VXLAN_DEV, "nud", "permanent"])?;
        }
        let socket = link.b.run(|| -> std::io::Result<std::net::UdpSocket> {
            let socket = std::net::UdpSocket::bind(("0.0.0.0", UDP_PORT))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(socket)
        })?;
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buffer = [0_u8; 128];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if socket.recv(&mut buffer).is_ok() {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let sender = link.a.run(|| std::net::UdpSocket::bind("0.0.0.0:0"))?;
        Ok(Self { link, received, stop, sender })
    }

    /// 64-byte datagrams from A to B's socket for [`UDP_RUN`], as fast as one thread sends
    /// them; received counted at B's socket.
    fn run(&self, route: Route) -> UdpRate {
        let target = match route {
            Route::Veth => std::net::SocketAddr::from((self.link.b_addr, UDP_PORT)),
            Route::Vxlan => std::net::SocketAddr::from(([10, 244, 42, 2], UDP_PORT)),
        };
        let before = self.received.load(std::sync::atomic::Ordering::Relaxed);
        let start = std::time::Instant::now();
        let mut sent = 0_u64;
        while start.elapsed() < UDP_RUN {
            for _ in 0..256 {
                sent += u64::from(self.sender.send_to(&[0x42; 64], target).is_ok());
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        // What is still queued at B's socket is counted in this run.
        std::thread::sleep(Duration::from_millis(100));
        let received = self.received.load(std::sync::atomic::Ordering::Relaxed) - before;
        UdpRate { sent: sent as f64 / elapsed, received: received as f64 / elapsed }
    }
}

impl Drop for UdpLab {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `cniguard-bench udp`: 64-byte UDP datagrams from one namespace to a socket in another,
/// over a veth and over VXLAN on that veth, with the real daemon (every probe, release
/// build) running in the receiving namespace and without, and with tcpdump capturing the
/// VXLAN traffic on the underlay veth instead. One sending thread (std `UdpSocket`), for a
/// fixed 2 s per run; the rate is what B's socket received over that time (sent/s shown
/// too). Rounds interleaved: each of 5 rounds runs without, with tcpdump, then starts
/// cniguard, waits until it is ready and attached, runs with it, and stops it.
fn udp() -> Result<()> {
    let binary = match cniguard_tests::bench::daemon_binary() {
        Ok(binary) => binary,
        Err(err) => {
            println!();
            println!("udp: skipped: {err:#}");
            return Ok(());
        }
    };
    let lab = UdpLab::new()?;
    let config = format!(
        "interfaces = [\"{b}\", \"{VXLAN_DEV}\"]\nunderlay_interfaces = [\"{b}\"]\nvxlan_ports = [4789]\nnetns_scope = \"node\"\n[dns]\ninterfaces = [\"{b}\"]\n",
        b = lab.link.b_dev
    );
    let address: std::net::SocketAddr = "127.0.0.1:9464".parse()?;
    let mut rates = vec![Vec::new(); UdpCase::ALL.len()];
    let (mut attached, mut capture_said) = (String::new(), String::new());
    let started = std::time::Instant::now();
    for _ in 0..UDP_PAIRS {
        rates[0].push(lab.run(Route::Veth));
        rates[2].push(lab.run(Route::Vxlan));
        let capture =
            cniguard_tests::bench::Capture::start(&lab.link.b, &lab.link.b_dev, &["udp", "port", "4789"])?;
        rates[4].push(lab.run(Route::Vxlan));
        capture_said = capture.stop()?;
        let mut daemon = cniguard_tests::bench::BenchDaemon::spawn(&binary, &lab.link.b, address, &config)?;
        daemon.wait_ready()?;
        let b_dev = lab.link.b_dev.clone();
        daemon.wait_metrics("attached to both devices", |scrape| {
            [b_dev.as_str(), VXLAN_DEV]
                .iter()
                .all(|device| scrape.series("cniguard_probe_attached", &[("interface", device)]).count() > 0)
        })?;
        let (_, body) = daemon.get("/metrics")?;
        let scrape = cniguard_lab::exposition::Scrape::parse(&body);
        attached = [b_dev.as_str(), VXLAN_DEV]
            .iter()
            .map(|device| {
                let labels = [("interface", *device)];
                let probes: Vec<&str> = scrape
                    .series("cniguard_probe_attached", &labels)
                    .map(|s| s.labels["probe"].as_str())
                    .collect();
                format!("{device}: {}", probes.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        rates[1].push(lab.run(Route::Veth));
        rates[3].push(lab.run(Route::Vxlan));
        daemon.stop()?;
    }
    let summary = |rates: &[UdpRate], field: fn(&UdpRate) -> f64| {
        let mut values: Vec<f64> = rates.iter().map(field).collect();
        values.sort_by(f64::total_cmp);
        (values[values.len() / 2], values[0], values[values.len() - 1])
    };
    println!();
    println!(
        "UDP, 64 B datagrams from namespace A to a socket in B, one sending thread, {UDP_PAIRS} interleaved rounds of {UDP_RUN:?} per case ({:.0} s in all, {} at the end)",
        started.elapsed().as_secs_f64(),
        cniguard_tests::bench::load()
    );
    println!("cniguard (release, every probe) in B: {attached}");
    println!(
        "{:<24} {:>14} {:>23} {:>7} {:>14} {:>7}",
        "", "received/s", "min..max", "ratio", "sent/s", "ratio"
    );
    for (index, case) in UdpCase::ALL.into_iter().enumerate() {
        let (received, low, high) = summary(&rates[index], |r| r.received);
        let (sent, ..) = summary(&rates[index], |r| r.sent);
        let (base_received, ..) = summary(&rates[case.baseline()], |r| r.received);
        let (base_sent, ..) = summary(&rates[case.baseline()], |r| r.sent);
        println!(
            "{:<24} {received:>14.0} {:>23} {:>7.3} {sent:>14.0} {:>7.3}",
            case.name(),
            format!("{low:.0}..{high:.0}"),
            received / base_received,
            sent / base_sent
        );
    }
    println!(
        "(medians; ratio: to the same path without; tcpdump -w /dev/null on B's veth, `udp port 4789`, last round: {capture_said})"
    );
    Ok(())
}

const SCALE_VETHS: [usize; 3] = [1, 100, 1_000];
const SCALE_MODES: [&str; 2] = ["netlink", "tcx"];
const SCALE_IDLE: Duration = Duration::from_secs(10);
const CNI_OPERATIONS_WITHOUT: usize = 10;

/// A second of CPU under this share of a core ends the work that follows the start (the
/// netlink notifications of the CNI operations, with 1,000 veths) before the idle window.
const SETTLED_PERCENT: f64 = 5.0;
const SETTLE_AT_MOST: Duration = Duration::from_mins(1);

/// Waits, one second at a time, until a second in which `pid` used under
/// [`SETTLED_PERCENT`] of a core (at most [`SETTLE_AT_MOST`]); how long that took before
/// that quiet second.
fn settle(pid: u32) -> Result<Duration> {
    let start = std::time::Instant::now();
    loop {
        let (at, before) = (start.elapsed(), cniguard_tests::bench::cpu_time(pid)?);
        std::thread::sleep(Duration::from_secs(1));
        let used = cniguard_tests::bench::cpu_time(pid)?.saturating_sub(before);
        if used.as_secs_f64() * 100.0 < SETTLED_PERCENT || start.elapsed() > SETTLE_AT_MOST {
            return Ok(at);
        }
    }
}

/// One row of the `scale` section.
struct ScaleRow {
    mode: &'static str,
    veths: usize,
    ready: Duration,
    attached: Duration,
    stop: Duration,
    /// From all attached until a second in which it used under [`SETTLED_PERCENT`] of a core.
    settled: Duration,
    idle_percent: f64,
    rss_kib: u64,
    peak_kib: u64,
}

/// A node namespace with `veths` pod veths (`veth<8 hex>`, as Flannel names them) whose
/// peers all sit in one shared pods namespace; both go when the values drop.
fn pod_veths(veths: usize) -> Result<(NetNs, NetNs)> {
    let pid = std::process::id();
    let node = NetNs::create(&format!("cgb-scale-{pid}-{veths}-node"), true)?;
    let pods = NetNs::create(&format!("cgb-scale-{pid}-{veths}-pods"), true)?;
    cniguard_tests::bench::ip_batch(
        &node,
        (0..veths)
            .map(|i| format!("link add veth{i:08x} type veth peer name p{i:08x} netns {}", pods.name())),
    )?;
    cniguard_tests::bench::ip_batch(&node, (0..veths).map(|i| format!("link set veth{i:08x} up")))?;
    cniguard_tests::bench::ip_batch(&pods, (0..veths).map(|i| format!("link set p{i:08x} up")))?;
    Ok((node, pods))
}

/// What a CNI plugin does to the node's namespace for a pod: one veth pair added, then
/// deleted (two `ip` runs), timed together.
fn cni_operation(node: &NetNs) -> Result<Duration> {
    let start = std::time::Instant::now();
    node.ip(&["link", "add", "cgb-x", "type", "veth", "peer", "name", "cgb-y"])?;
    node.ip(&["link", "del", "cgb-x"])?;
    Ok(start.elapsed())
}

/// Whether every probe attached to pod veths is attached to all `veths` of them.
fn all_attached(scrape: &cniguard_lab::exposition::Scrape, veths: usize) -> bool {
    let mut per_probe = std::collections::BTreeMap::<&str, usize>::new();
    for sample in scrape.series("cniguard_probe_attached", &[]) {
        if sample.labels["interface"].starts_with("veth") && sample.value > 0.0 {
            *per_probe.entry(sample.labels["probe"].as_str()).or_default() += 1;
        }
    }
    !per_probe.is_empty() && per_probe.values().all(|&count| count == veths)
}

/// `cniguard-bench scale`: the real daemon (release, defaults, `netns_scope = "node"`) in a
/// node namespace with 1, 100 and 1,000 pod veths: from spawn to `/readyz` 200 and to every
/// veth attached by every probe that attaches to them (`cniguard_probe_attached`), once it
/// has settled its idle CPU over 10 s and its memory after that, and SIGTERM to exit. With 1,000 veths, a CNI
/// plugin's veth add and delete in the node's namespace, timed over and over while cniguard
/// starts, and without cniguard.
fn scale() -> Result<()> {
    let binary = match cniguard_tests::bench::daemon_binary() {
        Ok(binary) => binary,
        Err(err) => {
            println!();
            println!("scale: skipped: {err:#}");
            return Ok(());
        }
    };
    let address: std::net::SocketAddr = "127.0.0.1:9464".parse()?;
    let mut rows = Vec::new();
    let (mut cni_without, mut cni_during) = (Vec::new(), Vec::new());
    // Both ways of attaching, side by side: what each costs at scale decides `auto`.
    for (mode, veths) in SCALE_MODES.into_iter().flat_map(|mode| SCALE_VETHS.map(|veths| (mode, veths))) {
        let config = format!("netns_scope = \"node\"\ntc_attach = \"{mode}\"\n");
        let config = config.as_str();
        let (node, _pods) = pod_veths(veths)?;
        let last = veths == *SCALE_VETHS.last().unwrap_or(&0);
        if last && cni_without.is_empty() {
            for _ in 0..CNI_OPERATIONS_WITHOUT {
                cni_without.push(cni_operation(&node)?);
            }
        }
        let mut daemon = cniguard_tests::bench::BenchDaemon::spawn(&binary, &node, address, config)?;
        let stop_operations = std::sync::atomic::AtomicBool::new(false);
        let (ready, attached) = std::thread::scope(|scope| -> Result<(Duration, Duration)> {
            let operations = last.then(|| {
                scope.spawn(|| -> Result<Vec<Duration>> {
                    let mut times = Vec::new();
                    while !stop_operations.load(std::sync::atomic::Ordering::Relaxed) {
                        times.push(cni_operation(&node)?);
                    }
                    Ok(times)
                })
            });
            let waited = daemon.wait_ready().and_then(|ready| {
                Ok((ready, daemon.wait_metrics("attached to every veth", |s| all_attached(s, veths))?))
            });
            stop_operations.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(operations) = operations {
                let times = operations.join().map_err(|_| anyhow::anyhow!("the CNI thread panicked"))??;
                cni_during.push((mode, times));
            }
            waited
        })?;
        let pid = daemon.pid();
        let settled = settle(pid)?;
        let before = cniguard_tests::bench::cpu_time(pid)?;
        std::thread::sleep(SCALE_IDLE);
        let used = cniguard_tests::bench::cpu_time(pid)?.saturating_sub(before);
        let (rss_kib, peak_kib) = cniguard_tests::bench::memory_kib(pid)?;
        let stop = daemon.stop()?;
        rows.push(ScaleRow {
            mode,
            veths,
            ready,
            attached,
            stop,
            settled,
            idle_percent: used.as_secs_f64() / SCALE_IDLE.as_secs_f64() * 100.0,
            rss_kib,
            peak_kib,
        });
    }
    print_scale(&rows, cni_without, cni_during);
    Ok(())
}

fn print_scale(rows: &[ScaleRow], cni_without: Vec<Duration>, cni_during: Vec<(&str, Vec<Duration>)>) {
    println!();
    println!(
        "scale: cniguard (release, default interfaces, netns_scope = \"node\") in a node namespace with N pod veths, peers in one pods namespace; idle over {SCALE_IDLE:?}; {} at the end",
        cniguard_tests::bench::load()
    );
    println!(
        "{:>8} {:>7} {:>9} {:>15} {:>8} {:>10} {:>12} {:>9} {:>14}",
        "attach",
        "veths",
        "ready s",
        "all attached s",
        "stop s",
        "settle s",
        "idle % core",
        "RSS MiB",
        "peak RSS MiB"
    );
    for row in rows {
        println!(
            "{:>8} {:>7} {:>9.3} {:>15.3} {:>8.3} {:>10.0} {:>12.2} {:>9.1} {:>14.1}",
            row.mode,
            row.veths,
            row.ready.as_secs_f64(),
            row.attached.as_secs_f64(),
            row.stop.as_secs_f64(),
            row.settled.as_secs_f64(),
            row.idle_percent,
            row.rss_kib as f64 / 1024.0,
            row.peak_kib as f64 / 1024.0
        );
    }
    let millis = |mut times: Vec<Duration>| -> String {
        times.sort();
        match (times.first(), times.get(times.len() / 2), times.last()) {
            (Some(low), Some(middle), Some(high)) => format!(
                "median {:.1} ms, {:.1}..{:.1} ms over {}",
                middle.as_secs_f64() * 1e3,
                low.as_secs_f64() * 1e3,
                high.as_secs_f64() * 1e3,
                times.len()
            ),
            _ => "none".to_owned(),
        }
    };
    println!(
        "(settle s: from all attached until a second under {SETTLED_PERCENT}% of a core, before the idle window; RSS after it, peak since the start)"
    );
    let veths = SCALE_VETHS.last().unwrap_or(&0);
    println!("CNI operation (veth add + del, two `ip` runs) with {veths} veths:");
    println!("  without cniguard: {}", millis(cni_without));
    for (mode, times) in cni_during {
        println!("  while cniguard starts ({mode}): {}", millis(times));
    }
}
