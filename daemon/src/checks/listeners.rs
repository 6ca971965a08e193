//! Why a localhost call fails. Loopback never crosses the CNI, so a refused or timed-out
//! `127.0.0.1` call is the pod's own doing; which, the listening sockets tell. They are read
//! with sock_diag (`netlink-packet-sock-diag` over `netlink-sys`) from inside the pod's
//! namespace, on the checked port, and set against the address the client uses and what
//! the check saw.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// A TCP socket in LISTEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub address: IpAddr,
    pub port: u16,
    /// An IPv6 socket that takes no IPv4 connections (IPV6_V6ONLY).
    pub v6_only: bool,
}

impl Listener {
    /// Whether a connection to `to` (a loopback address) reaches this socket.
    #[must_use]
    pub fn accepts(&self, to: IpAddr) -> bool {
        match (self.address, to) {
            (IpAddr::V4(bound), IpAddr::V4(to)) => bound.is_unspecified() || bound == to,
            (IpAddr::V6(bound), IpAddr::V6(to)) => bound.is_unspecified() || bound == to,
            // A dual-stack socket: `::` takes IPv4 too, and `::ffff:a.b.c.d` is that
            // IPv4 address (how gRPC's core binds 127.0.0.1).
            (IpAddr::V6(bound), IpAddr::V4(to)) => {
                (bound.is_unspecified() && !self.v6_only)
                    || bound.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified() || v4 == to)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    /// `127.0.0.1:9500`, `[::1]:9000`.
    #[must_use]
    pub fn display(&self) -> String {
        std::net::SocketAddr::new(self.address, self.port).to_string()
    }
}

/// What the check's call met: the `cause` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The check passed.
    None,
    /// No socket listens on the port, on any address.
    NothingListens,
    /// Something listens on the port, but on another address than loopback (the pod's).
    PodAddressOnly,
    /// Listens on `::1` only, and the client calls `127.0.0.1`.
    Ipv6LoopbackOnly,
    /// Listens on `127.0.0.1` only, and the client calls `::1`.
    Ipv4LoopbackOnly,
    /// Listening where the client calls, connected, but no answer in time.
    Slow,
    /// Listening where the client calls, but the SYN went unanswered (a filter, or a full
    /// accept queue).
    Filtered,
    /// It answered: not ready (an HTTP or gRPC status, a model not loaded).
    NotReady,
    /// Anything else (a reset, an answer in another protocol).
    Other,
}

impl Cause {
    pub const ALL: [Self; 9] = [
        Self::None,
        Self::NothingListens,
        Self::PodAddressOnly,
        Self::Ipv6LoopbackOnly,
        Self::Ipv4LoopbackOnly,
        Self::Slow,
        Self::Filtered,
        Self::NotReady,
        Self::Other,
    ];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::NothingListens => "nothing_listens",
            Self::PodAddressOnly => "pod_address_only",
            Self::Ipv6LoopbackOnly => "ipv6_loopback_only",
            Self::Ipv4LoopbackOnly => "ipv4_loopback_only",
            Self::Slow => "slow",
            Self::Filtered => "filtered",
            Self::NotReady => "not_ready",
            Self::Other => "other",
        }
    }

    /// What `cniguard status` prints.
    #[must_use]
    pub const fn explain(self) -> &'static str {
        match self {
            Self::None => "healthy",
            Self::NothingListens => "nothing listens on the port",
            Self::PodAddressOnly => "listens only on the pod's address, not on loopback",
            Self::Ipv6LoopbackOnly => "listens on ::1 only; the client uses 127.0.0.1",
            Self::Ipv4LoopbackOnly => "listens on 127.0.0.1 only; the client uses ::1",
            Self::Slow => "up but slow: connected, no answer in time",
            Self::Filtered => "listening, but the SYN went unanswered (filtered or backlog full)",
            Self::NotReady => "up, answers not ready",
            Self::Other => "listening; the call failed otherwise",
        }
    }
}

/// How far the check's call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Healthy,
    /// The connect failed (refused, or timed out when `timeout`).
    ConnectFailed {
        timeout: bool,
    },
    /// Connected; no answer within the timeout.
    AnswerTimeout,
    /// Answered, not ready.
    NotReady,
    Other,
}

/// The cause of what the check saw calling `client` (a loopback address), given the
/// sockets listening on its port.
#[must_use]
pub fn cause(listeners: &[Listener], client: IpAddr, seen: Seen) -> Cause {
    if seen == Seen::Healthy {
        return Cause::None;
    }
    if listeners.iter().any(|l| l.accepts(client)) {
        return match seen {
            Seen::AnswerTimeout => Cause::Slow,
            Seen::ConnectFailed { timeout: true } => Cause::Filtered,
            Seen::NotReady => Cause::NotReady,
            Seen::Healthy | Seen::ConnectFailed { timeout: false } | Seen::Other => Cause::Other,
        };
    }
    let other_loopback: IpAddr = match client {
        IpAddr::V4(_) => Ipv6Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv4Addr::LOCALHOST.into(),
    };
    if listeners.iter().any(|l| l.accepts(other_loopback)) {
        return if client.is_ipv4() { Cause::Ipv6LoopbackOnly } else { Cause::Ipv4LoopbackOnly };
    }
    if listeners.is_empty() { Cause::NothingListens } else { Cause::PodAddressOnly }
}

/// The TCP sockets listening on `port` in the current thread's network namespace, IPv4 and
/// IPv6, read with sock_diag.
pub fn listening(port: u16) -> std::io::Result<Vec<Listener>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump(&socket, family, port, &mut found)?;
    }
    Ok(found)
}

fn dump(socket: &Socket, family: u8, port: u16, found: &mut Vec<Listener>) -> std::io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    socket_id.source_port = port;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            // INET_DIAG_SKV6ONLY comes without asking; no extension needed.
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let mut receive = vec![0_u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                .map_err(|err| std::io::Error::other(format!("sock_diag answer: {err}")))?;
            let length = usize::try_from(message.header.length).unwrap_or(0);
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let id = &response.header.socket_id;
                    // The kernel filters by state; the port is filtered here (a dump's
                    // socket id is not a filter).
                    if id.source_port == port {
                        let v6_only = response.nlas.iter().any(|nla| matches!(nla, Nla::SkV6Only(true)));
                        found.push(Listener { address: id.source_address, port, v6_only });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(err) => {
                    return Err(std::io::Error::other(format!("sock_diag: {err:?}")));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(address: &str, v6_only: bool) -> Listener {
        Listener { address: address.parse().unwrap(), port: 9500, v6_only }
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    #[test]
    fn what_each_socket_accepts() {
        assert!(listener("127.0.0.1", false).accepts(V4));
        assert!(!listener("127.0.0.1", false).accepts(V6));
        assert!(listener("0.0.0.0", false).accepts(V4));
        assert!(!listener("10.42.0.5", false).accepts(V4));
        assert!(listener("::1", true).accepts(V6));
        assert!(!listener("::1", false).accepts(V4));
        assert!(listener("::", false).accepts(V4));
        assert!(!listener("::", true).accepts(V4));
        assert!(listener("::", true).accepts(V6));
        // gRPC core binding 127.0.0.1 on an IPv6 socket.
        assert!(listener("::ffff:127.0.0.1", false).accepts(V4));
        assert!(!listener("::ffff:127.0.0.1", false).accepts(V6));
    }

    #[test]
    fn the_cause_of_each_failure() {
        let refused = Seen::ConnectFailed { timeout: false };
        assert_eq!(cause(&[], V4, refused), Cause::NothingListens);
        assert_eq!(cause(&[listener("10.42.0.5", false)], V4, refused), Cause::PodAddressOnly);
        assert_eq!(cause(&[listener("::1", true)], V4, refused), Cause::Ipv6LoopbackOnly);
        assert_eq!(cause(&[listener("127.0.0.1", false)], V6, refused), Cause::Ipv4LoopbackOnly);
        let serving = [listener("127.0.0.1", false)];
        assert_eq!(cause(&serving, V4, Seen::AnswerTimeout), Cause::Slow);
        assert_eq!(cause(&serving, V4, Seen::ConnectFailed { timeout: true }), Cause::Filtered);
        assert_eq!(cause(&serving, V4, Seen::NotReady), Cause::NotReady);
        assert_eq!(cause(&serving, V4, Seen::Healthy), Cause::None);
        assert_eq!(cause(&[], V4, Seen::Healthy), Cause::None);
    }
}
