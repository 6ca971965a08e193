//! Reading kernel objects from tracing programs: an skb's device, namespace and IPv4 header;
//! a socket's namespace, addresses and ports. The offsets come from the running kernel's
//! BTF (see the daemon's `btf`).

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use probe_common::{kernel::KernelOffsets, sock_state::AF_INET};

#[unsafe(no_mangle)]
static KERNEL_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    skb_dev: 0,
    skb_sk: 0,
    dev_ifindex: 0,
    dev_net: 0,
    sock_net: 0,
    net_inum: 0,
    skb_tcp_segs: 0,
    skb_protocol: 0,
    skb_head: 0,
    skb_network_header: 0,
    sock_family: 0,
    sock_daddr: 0,
    sock_rcv_saddr: 0,
    sock_num: 0,
    sock_dport: 0,
    sock_protocol: 0,
    sock_sport: 0,
    tcp_srtt_us: 0,
    retransmit_err_arg: 0,
    skb_transport_header: 0,
    skb_data: 0,
    skb_len: 0,
    skb_data_len: 0,
    skb_end: 0,
    shinfo_nr_frags: 0,
    shinfo_frags: 0,
    frag_len: 0,
    frag_offset: 0,
    page_offset_base_at: 0,
    vmemmap_base_at: 0,
    page_struct_size: 0,
});

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PAGE_SHIFT: u64 = 12;
/// Offset of the source address in an IPv4 header.
const IPV4_SOURCE: u16 = 12;
/// Offset of the flags byte (CWR..FIN) in a TCP header.
const TCP_FLAGS: u16 = 13;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    KERNEL_OFFSETS.load()
}

#[inline(always)]
fn read<T>(base: u64, offset: u16) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails on a bad one.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T).ok() }
}

/// The namespace (its inode number) of the `struct net` at `net`.
#[inline(always)]
pub fn net_inum(net: u64) -> Option<u64> {
    read::<u32>(net, offsets().net_inum).map(u64::from)
}

/// The namespace of the socket at `sock` (full, request or timewait).
#[inline(always)]
pub fn sock_netns(sock: u64) -> Option<u64> {
    net_inum(read(sock, offsets().sock_net)?)
}

/// The index of the device at `device`.
#[inline(always)]
pub fn device_ifindex(device: u64) -> Option<u32> {
    read(device, offsets().dev_ifindex)
}

/// The namespace of the device at `device`.
#[inline(always)]
pub fn device_netns(device: u64) -> Option<u64> {
    net_inum(read(device, offsets().dev_net)?)
}

/// An IPv4 socket's ends; ports in host order.
pub struct SockEnds {
    pub local: [u8; 4],
    pub remote: [u8; 4],
    pub local_port: u16,
    pub remote_port: u16,
}

/// The ends of the full socket at `sock`, if it is an IPv4 one.
#[inline(always)]
pub fn sock_ends(sock: u64) -> Option<SockEnds> {
    let offsets = offsets();
    if read::<u16>(sock, offsets.sock_family)? != AF_INET {
        return None;
    }
    Some(SockEnds {
        local: read(sock, offsets.sock_rcv_saddr)?,
        remote: read(sock, offsets.sock_daddr)?,
        // `inet_sport`, not `skc_num`: the kernel zeroes `skc_num` (`inet_put_port`) before
        // it reports the change to TCP_CLOSE, so a closing socket would show port 0.
        local_port: u16::from_be(read(sock, offsets.sock_sport)?),
        remote_port: u16::from_be(read(sock, offsets.sock_dport)?),
    })
}

/// The remote IPv4 address of the socket at `sock`, if it is an IPv4 one.
#[inline(always)]
pub fn sock_peer(sock: u64) -> Option<[u8; 4]> {
    let offsets = offsets();
    if read::<u16>(sock, offsets.sock_family)? != AF_INET {
        return None;
    }
    read(sock, offsets.sock_daddr)
}

/// `sk_protocol` of the full socket at `sock`.
#[inline(always)]
pub fn sock_protocol(sock: u64) -> Option<u16> {
    read(sock, offsets().sock_protocol)
}

/// The smoothed RTT of the TCP socket at `sock`, in microseconds.
#[inline(always)]
pub fn tcp_srtt_us(sock: u64) -> Option<u32> {
    read::<u32>(sock, offsets().tcp_srtt_us).map(|scaled| scaled >> 3)
}

/// The ethertype of the skb at `skb`, in host order.
#[inline(always)]
pub fn skb_protocol(skb: u64) -> u16 {
    read::<u16>(skb, offsets().skb_protocol).map_or(0, u16::from_be)
}

/// The flags byte of the TCP header of the skb at `skb` (a received segment).
#[inline(always)]
pub fn skb_tcp_flags(skb: u64) -> Option<u8> {
    let offsets = offsets();
    let head: u64 = read(skb, offsets.skb_head)?;
    let transport: u16 = read(skb, offsets.skb_transport_header)?;
    read(head + u64::from(transport), TCP_FLAGS)
}

/// The address of the IPv4 header of the skb at `skb`, if it carries IPv4.
#[inline(always)]
pub fn skb_ipv4_header(skb: u64) -> Option<u64> {
    let offsets = offsets();
    if skb_protocol(skb) != ETH_P_IP {
        return None;
    }
    let head: u64 = read(skb, offsets.skb_head)?;
    let network: u16 = read(skb, offsets.skb_network_header)?;
    Some(head + u64::from(network))
}

/// The address of the IP header of the skb at `skb` and the IP version, if it carries IP.
#[inline(always)]
pub fn skb_ip_header(skb: u64) -> Option<(u64, u8)> {
    let offsets = offsets();
    let version = match skb_protocol(skb) {
        ETH_P_IP => 4,
        ETH_P_IPV6 => 6,
        _ => return None,
    };
    let head: u64 = read(skb, offsets.skb_head)?;
    let network: u16 = read(skb, offsets.skb_network_header)?;
    Some((head + u64::from(network), version))
}

/// A segment's payload in kernel memory, where it is contiguous: all in the linear part,
/// or all in the first page fragment (TCP puts its payload in fragments, of 32 KiB pages;
/// a segment spread over more is given short, and the walk counts it). Read with
/// `bpf_probe_read_kernel`. One piece only: a walk that had to find which piece each read
/// falls in cost the verifier three times the instructions it allows.
pub struct KernelPayload {
    address: u64,
    len: u32,
}

impl crate::exchanges::Payload for KernelPayload {
    #[inline(always)]
    fn len(&self) -> u32 {
        self.len
    }

    #[inline(always)]
    fn read<T>(&self, at: u32) -> Option<T> {
        if u64::from(at) + core::mem::size_of::<T>() as u64 > u64::from(self.len) {
            return None;
        }
        read_at(self.address + u64::from(at))
    }
}

/// The `length` payload bytes at `payload` in the skb at `skb` (see [`KernelPayload`]). A
/// fragment's bytes are found through the direct map (see
/// `KernelOffsets::page_offset_base_at`); where that is unknown, only the linear part.
#[inline(always)]
pub fn skb_payload(skb: u64, payload: u64, length: u32) -> KernelPayload {
    let mut found = KernelPayload { address: payload, len: 0 };
    let offsets = offsets();
    let (Some(data), Some(len), Some(data_len)) = (
        read::<u64>(skb, offsets.skb_data),
        read::<u32>(skb, offsets.skb_len),
        read::<u32>(skb, offsets.skb_data_len),
    ) else {
        return found;
    };
    let linear_end = data + u64::from(len.saturating_sub(data_len));
    found.len = (linear_end.saturating_sub(payload) as u32).min(length);
    if found.len != 0 || offsets.page_offset_base_at == 0 || offsets.page_struct_size == 0 {
        return found;
    }
    let (Some(head), Some(end), Some(direct_map), Some(vmemmap)) = (
        read::<u64>(skb, offsets.skb_head),
        read::<u32>(skb, offsets.skb_end),
        read_at::<u64>(offsets.page_offset_base_at),
        read_at::<u64>(offsets.vmemmap_base_at),
    ) else {
        return found;
    };
    let shared_info = head + u64::from(end);
    if read::<u8>(shared_info, offsets.shinfo_nr_frags).unwrap_or(0) == 0 {
        return found;
    }
    let fragment = shared_info + u64::from(offsets.shinfo_frags);
    let (Some(page), Some(fragment_len), Some(fragment_offset)) = (
        read_at::<u64>(fragment),
        read::<u32>(fragment, offsets.frag_len),
        read::<u32>(fragment, offsets.frag_offset),
    ) else {
        return found;
    };
    // `netmem_ref`'s low bits tell page from other memory; loopback's are pages.
    let page = page & !3;
    if page < vmemmap {
        return found;
    }
    found.address = direct_map
        + (((page - vmemmap) / offsets.page_struct_size) << PAGE_SHIFT)
        + u64::from(fragment_offset);
    found.len = fragment_len.min(length);
    found
}

/// `T` read from kernel memory at `address` (0 is refused).
#[inline(always)]
pub fn read_at<T>(address: u64) -> Option<T> {
    read(address, 0)
}

/// The source address of the IPv4 packet in the skb at `skb`.
#[inline(always)]
pub fn skb_ipv4_source(skb: u64) -> Option<[u8; 4]> {
    read(skb_ipv4_header(skb)?, IPV4_SOURCE)
}

/// The `(ifindex, namespace)` of the skb at `skb`: its device's, else its socket's
/// namespace with no device (0).
#[inline(always)]
pub fn skb_device(skb: u64) -> (u32, u64) {
    let offsets = offsets();
    let device: u64 = read(skb, offsets.skb_dev).unwrap_or(0);
    if device != 0 {
        let ifindex: u32 = read(device, offsets.dev_ifindex).unwrap_or(0);
        return (ifindex, device_netns(device).unwrap_or(0));
    }
    let sock: u64 = read(skb, offsets.skb_sk).unwrap_or(0);
    (0, sock_netns(sock).unwrap_or(0))
}

/// How many segments the TCP skb at `skb` carries (at least one).
#[inline(always)]
pub fn tcp_skb_segments(skb: u64) -> u16 {
    read::<u16>(skb, offsets().skb_tcp_segs).unwrap_or(1).max(1)
}
