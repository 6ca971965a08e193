//! DNS on a pod's veth against a real dnsmasq: exact counts of answers by response code,
//! of timeouts from a blackholed server, of latency samples and of garbage on port 53.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cniguard_lab::cniguard::Daemon;
use cniguard_lab::exposition::Scrape;
use cniguard_lab::netns::{NetNs, QuietLink};
use cniguard_lab::require_root;
use cniguard_lab::services::dnsmasq_args;
use cniguard_tests::lab_support::assert_promtool_accepts;

/// An address the pod routes through the node, where the node throws packets away.
const BLACKHOLED: Ipv4Addr = Ipv4Addr::new(10, 198, 0, 53);
const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;

/// dnsmasq in `ns`, answering for `exists.cluster.local`; killed on drop.
struct Dnsmasq {
    child: Child,
    dir: std::path::PathBuf,
}

impl Dnsmasq {
    fn start(ns: &NetNs, listen: Ipv4Addr) -> Self {
        let dir = std::env::temp_dir().join(format!("cgt-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        let pid_file = dir.join("dnsmasq.pid");
        std::fs::write(&hosts, "10.42.1.7 exists.cluster.local\n").unwrap();
        let args = dnsmasq_args(listen, hosts.to_str().unwrap(), pid_file.to_str().unwrap());
        let child = ns
            .command("dnsmasq")
            .unwrap()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self { child, dir };
        // dnsmasq writes its pid file once its sockets are bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pid_file.exists() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A type A query for `name` with DNS id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.split('.') {
        message.push(u8::try_from(label.len()).unwrap());
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    message
}

/// Asks `server` over UDP from `ns`; the answer's response code, or `None` after `wait`.
fn ask_udp(ns: &NetNs, server: Ipv4Addr, id: u16, name: &str, wait: Duration) -> Option<u8> {
    ns.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_read_timeout(Some(wait)).unwrap();
        socket.send_to(&query(id, name), (server, 53)).unwrap();
        let mut answer = [0; 512];
        let len = socket.recv(&mut answer).ok()?;
        assert!(len >= 12 && answer[..2] == id.to_be_bytes(), "the answer to query {id}");
        Some(answer[3] & 0x0f)
    })
}

/// Asks `server` over TCP from `ns`: the answer's response code.
fn ask_tcp(ns: &NetNs, server: Ipv4Addr, id: u16, name: &str) -> u8 {
    ns.run(|| {
        let mut stream = TcpStream::connect(SocketAddr::from((server, 53))).unwrap();
        let message = query(id, name);
        let mut framed = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&message);
        stream.write_all(&framed).unwrap();
        let mut length = [0; 2];
        stream.read_exact(&mut length).unwrap();
        let mut answer = vec![0; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut answer).unwrap();
        answer[3] & 0x0f
    })
}

#[test]
fn answers_timeouts_latency_and_garbage_are_counted_exactly() {
    require_root!();
    // a is the node (its end of the veth matches `veth*`), b the pod.
    let link = QuietLink::new("veth-dns0", "veth-dns1").unwrap();
    let daemon = Daemon::start(&link.a, &["--netns-scope", "node"]).unwrap();
    let _dnsmasq = Dnsmasq::start(&link.a, link.a_addr);
    link.b.ip(&["route", "add", &format!("{BLACKHOLED}/32"), "via", &link.a_addr.to_string()]).unwrap();
    link.a.ip(&["route", "add", "blackhole", &format!("{BLACKHOLED}/32")]).unwrap();
    let server = link.a_addr.to_string();
    let server = server.as_str();

    let (existing, missing, over_tcp, blackholed, garbage) = (12_u64, 5_u64, 3_u64, 4_u64, 6_u64);
    let mut id = 0x100;
    let mut next_id = || {
        id += 1;
        id
    };
    for _ in 0..existing {
        let rcode = ask_udp(&link.b, link.a_addr, next_id(), "exists.cluster.local", Duration::from_secs(5));
        assert_eq!(rcode, Some(RCODE_NOERROR));
    }
    for _ in 0..missing {
        let rcode = ask_udp(&link.b, link.a_addr, next_id(), "missing.cluster.local", Duration::from_secs(5));
        assert_eq!(rcode, Some(RCODE_NXDOMAIN));
    }
    for _ in 0..over_tcp {
        assert_eq!(ask_tcp(&link.b, link.a_addr, next_id(), "exists.cluster.local"), RCODE_NOERROR);
    }
    for _ in 0..blackholed {
        let rcode =
            ask_udp(&link.b, BLACKHOLED, next_id(), "exists.cluster.local", Duration::from_millis(100));
        assert_eq!(rcode, None, "the blackholed server cannot answer");
    }
    // Too short for a DNS header, and an answer where a question belongs.
    link.b.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for round in 0..garbage {
            let payload = if round % 2 == 0 { vec![0xde, 0xad, 0xbe, 0xef] } else { vec![0xff; 40] };
            socket.send_to(&payload, (link.a_addr, 53)).unwrap();
        }
    });

    let count = |s: &Scrape, name: &str, labels: &[(&str, &str)]| s.count_sum(name, labels);
    let scrape = daemon
        .wait_for("every timeout", |s| count(s, "cniguard_dns_timeouts_total", &[]) >= blackholed)
        .unwrap();
    let text = &scrape.text;
    let queries = |server: &str| {
        count(&scrape, "cniguard_dns_queries_total", &[("server", server), ("interface", "veth-dns0")])
    };
    assert_eq!(queries(server), existing + missing + over_tcp, "{text}");
    assert_eq!(queries(&BLACKHOLED.to_string()), blackholed, "{text}");
    let responses =
        |rcode: &str| count(&scrape, "cniguard_dns_responses_total", &[("server", server), ("rcode", rcode)]);
    assert_eq!(responses("NOERROR"), existing + over_tcp, "{text}");
    assert_eq!(responses("NXDOMAIN"), missing, "{text}");
    assert_eq!(count(&scrape, "cniguard_dns_responses_total", &[]), existing + missing + over_tcp, "{text}");
    assert_eq!(
        count(&scrape, "cniguard_dns_timeouts_total", &[("server", &BLACKHOLED.to_string())]),
        blackholed,
        "{text}"
    );
    assert_eq!(count(&scrape, "cniguard_dns_timeouts_total", &[("server", server)]), 0, "{text}");
    assert_eq!(
        count(&scrape, "cniguard_dns_latency_seconds_count", &[("server", server)]),
        existing + missing + over_tcp,
        "{text}"
    );
    assert_eq!(
        count(
            &scrape,
            "cniguard_dns_malformed_total",
            &[("interface", "veth-dns0"), ("direction", "ingress")]
        ),
        garbage,
        "{text}"
    );
    assert_eq!(count(&scrape, "cniguard_dns_unmatched_responses_total", &[]), 0, "{text}");
    assert_promtool_accepts(text);
}
