//! Known amounts of traffic between test namespaces.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::netns::NetNs;

/// Sends `count` UDP datagrams of `payload` bytes from `from` to `to_addr:port` inside `to`,
/// and checks that every one arrived.
///
/// # Errors
/// If a socket fails or a datagram is lost.
pub fn udp(
    from: &NetNs,
    from_addr: Ipv4Addr,
    to: &NetNs,
    to_addr: Ipv4Addr,
    count: u64,
    payload: u64,
) -> Result<()> {
    let receiver = to.run(|| UdpSocket::bind((to_addr, 0)))?;
    receiver.set_read_timeout(Some(Duration::from_secs(5)))?;
    let destination = receiver.local_addr()?;
    let sender = from.run(|| UdpSocket::bind((from_addr, 0)))?;
    let payload = usize::try_from(payload)?;
    let data = vec![0x5a; payload];
    let mut buffer = vec![0; payload + 1];
    for _ in 0..count {
        sender.send_to(&data, destination)?;
        // One at a time: the receive buffer never overflows, so none is dropped.
        let length = receiver.recv(&mut buffer)?;
        ensure!(length == payload, "received {length} bytes, sent {payload}");
    }
    Ok(())
}

/// Opens a TCP connection from `from` to `to_addr` inside `to`, sends `bytes` bytes and
/// closes it; the server reads them all.
///
/// # Errors
/// If a socket fails or the server receives another amount.
pub fn tcp(from: &NetNs, to: &NetNs, to_addr: Ipv4Addr, bytes: u64) -> Result<()> {
    let bytes = usize::try_from(bytes)?;
    let listener = to.run(|| TcpListener::bind((to_addr, 0)))?;
    let address: SocketAddr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> Result<usize> {
        let (mut stream, _) = listener.accept()?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        Ok(received.len())
    });
    let mut client = from.run(|| TcpStream::connect_timeout(&address, Duration::from_secs(5)))?;
    client.write_all(&vec![0xa5; bytes])?;
    client.shutdown(std::net::Shutdown::Write)?;
    // Wait for the server's FIN too, so the whole exchange is over when this returns.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest)?;
    let received = server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    ensure!(received == bytes, "server received {received} bytes, client sent {bytes}");
    Ok(())
}

/// Closes `stream` with a RST rather than a FIN, as a crashing peer's kernel does when it
/// dies with the connection in use (SO_LINGER with a zero timeout, then drop it).
///
/// # Errors
/// If the kernel refuses the option.
pub fn abort(stream: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads the struct passed by reference, for its stated size.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>())?,
        )
    };
    ensure!(result == 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    Ok(())
}
