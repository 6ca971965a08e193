//! Where fields of kernel objects are on the running kernel, for the raw tracepoint
//! programs, which get the tracepoint's arguments (an skb, a socket) and read what they
//! need from them. Looked up in the kernel's BTF by the daemon and written into the
//! programs before they load.

use crate::{assert_size, impl_pod};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sk_buff`: `dev` and `sk`.
    pub skb_dev: u16,
    pub skb_sk: u16,
    /// `struct net_device`: `ifindex` and `nd_net.net`.
    pub dev_ifindex: u16,
    pub dev_net: u16,
    /// `struct sock` (`__sk_common.skc_net.net`).
    pub sock_net: u16,
    /// `struct net`: `ns.inum`, the namespace's inode number, which is how cniguard names a
    /// namespace everywhere (userspace reads it from nsfs; it exists on every kernel, where
    /// `net_cookie` is only generated on demand before 5.12 and has no syscall before 5.14).
    pub net_inum: u16,
    /// `struct sk_buff.cb` plus `struct tcp_skb_cb.tcp_gso_segs`: how many segments a TCP
    /// skb carries (`tcp_skb_pcount`), which is what the kernel's retransmit counter adds.
    pub skb_tcp_segs: u16,
    /// `struct sk_buff`: `protocol` (big-endian ethertype), `head` and `network_header`
    /// (the IP header is at `head + network_header`).
    pub skb_protocol: u16,
    pub skb_head: u16,
    pub skb_network_header: u16,
    /// `struct sock_common`, at the start of full, request and timewait sockets alike:
    /// family, remote and local IPv4 address, local port (host order), remote port
    /// (network order).
    pub sock_family: u16,
    pub sock_daddr: u16,
    pub sock_rcv_saddr: u16,
    pub sock_num: u16,
    pub sock_dport: u16,
    /// `struct sock`: `sk_protocol`.
    pub sock_protocol: u16,
    /// `struct inet_sock`: `inet_sport`, the local port (network order) of a full socket.
    /// Unlike `skc_num`, which `inet_put_port` zeroes before the kernel reports the change
    /// to `TCP_CLOSE`, it still holds the port when a socket closes.
    pub sock_sport: u16,
    /// `struct tcp_sock`: `srtt_us` (the smoothed RTT in microseconds, times 8).
    pub tcp_srtt_us: u16,
    /// 2 if the third argument of `tcp_retransmit_skb` is its result (`err`), 0 if the
    /// kernel's tracepoint has none (then it fires only for retransmissions that went out).
    pub retransmit_err_arg: u16,
    /// `struct sk_buff`: `transport_header` (the TCP header is at `head + transport_header`).
    pub skb_transport_header: u16,
    /// `struct sk_buff`: `data` (pointer), `len` and `data_len` (the linear part is
    /// `len - data_len` bytes from `data`), `end` (the shared info is at `head + end`).
    pub skb_data: u16,
    pub skb_len: u16,
    pub skb_data_len: u16,
    pub skb_end: u16,
    /// `struct skb_shared_info`: `nr_frags` (u8) and `frags`, an array of 16-byte
    /// fragments (`bio_vec` or `skb_frag`): the page at 0, then length and offset.
    pub shinfo_nr_frags: u16,
    pub shinfo_frags: u16,
    pub frag_len: u16,
    pub frag_offset: u16,
    /// Where `page_offset_base` and `vmemmap_base` are (x86-64, from `/proc/kallsyms`): a
    /// fragment's page `p` is at `page_offset_base + (p - vmemmap_base) / page_struct_size
    /// * 4096`. Zero where unknown: then payload outside the linear part cannot be read.
    pub page_offset_base_at: u64,
    pub vmemmap_base_at: u64,
    /// `sizeof(struct page)`.
    pub page_struct_size: u64,
}

assert_size!(KernelOffsets, 80);
impl_pod!(KernelOffsets);
