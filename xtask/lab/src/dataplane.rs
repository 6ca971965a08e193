//! The devices, addresses, routes and neighbour entries of the lab, as Flannel, Calico and
//! a plain routed underlay would program them. Every function here can run twice: it
//! replaces what exists rather than failing on it.
//!
//! The whole lab is quiet by construction: neighbour entries are permanent and bridges know
//! every MAC in advance, so no ARP and no flooded frame crosses a device. The only packets
//! on the lab's devices are the ones its workloads (or a test) send.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::netns::NetNs;
use crate::topology::{
    CALICO_GATEWAY, CALICO_HOST_MAC, CALICO_VNI, CALICO_VXLAN_PORT, Cni, FLANNEL_VNI, FLANNEL_VXLAN_PORT,
    Pod, Topology,
};

pub const FLANNEL_DEVICE: &str = "flannel.1";
pub const FLANNEL_BRIDGE: &str = "cni0";
pub const CALICO_DEVICE: &str = "vxlan.calico";

fn exists(ns: &NetNs, device: &str) -> bool {
    ns.ip(&["link", "show", "dev", device]).is_ok()
}

/// Runs `ip` and ignores the failure: for removing what may already be gone.
fn ip_quietly(ns: &NetNs, args: &[&str]) {
    let _ = ns.ip(args);
}

/// The router with one bridge per subnet, the node namespaces and the monitoring
/// namespace, each plugged into its subnet with an `eth0`.
pub fn build_underlay(topology: &Topology) -> Result<()> {
    let router = NetNs::create(&topology.router_netns(), false)?;
    router.sysctl("net.ipv4.ip_forward", "1")?;
    for subnet in &topology.subnets {
        router.ip(&["link", "add", &subnet.bridge, "type", "bridge"])?;
        router.ip(&[
            "addr",
            "add",
            &format!("{}/{}", subnet.gateway, subnet.prefix_len),
            "dev",
            &subnet.bridge,
        ])?;
        router.ip(&["link", "set", &subnet.bridge, "up"])?;
    }
    let mut hosts: Vec<(NetNs, String, usize, Ipv4Addr)> = Vec::new();
    for (index, node) in topology.nodes.iter().enumerate() {
        let ns = NetNs::create(&topology.node_netns(index), false)?;
        for key in ["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
            ns.sysctl(key, if key.ends_with("forward") { "1" } else { "0" })?;
        }
        hosts.push((ns, node.name.clone(), node.subnet, node.address));
    }
    hosts.push((NetNs::create(&topology.monitor_netns(), false)?, "mon".into(), 0, topology.monitor_address));

    for (ns, port, subnet, address) in &hosts {
        let subnet = &topology.subnets[*subnet];
        router.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        router.ip(&["link", "set", port, "master", &subnet.bridge, "up"])?;
        ns.ip(&["addr", "add", &format!("{address}/{}", subnet.prefix_len), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &subnet.gateway.to_string()])?;
    }
    // Permanent neighbours and bridge entries: the underlay never needs ARP or flooding.
    for (ns, port, subnet_index, address) in &hosts {
        let subnet = &topology.subnets[*subnet_index];
        let mac = ns.mac("eth0")?;
        router.bridge(&["fdb", "replace", &mac, "dev", port, "master", "static"])?;
        router.ip(&[
            "neigh",
            "replace",
            &address.to_string(),
            "lladdr",
            &mac,
            "dev",
            &subnet.bridge,
            "nud",
            "permanent",
        ])?;
        let gateway_mac = router.mac(&subnet.bridge)?;
        ns.ip(&[
            "neigh",
            "replace",
            &subnet.gateway.to_string(),
            "lladdr",
            &gateway_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        for (peer, _, peer_subnet, peer_address) in &hosts {
            if peer_subnet == subnet_index && peer_address != address {
                let peer_mac = peer.mac("eth0")?;
                let peer_address = peer_address.to_string();
                ns.ip(&[
                    "neigh",
                    "replace",
                    &peer_address,
                    "lladdr",
                    &peer_mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
            }
        }
    }
    Ok(())
}

/// Flannel on `node`: the cni0 bridge and flannel.1 (VNI 1, UDP 8472), with the route,
/// neighbour and FDB entries flanneld programs for every other Flannel node in `peers`.
pub fn enable_flannel(topology: &Topology, node: usize, peers: &[usize]) -> Result<()> {
    let ns = NetNs::existing(&topology.node_netns(node));
    let spec = &topology.nodes[node];
    if !exists(&ns, FLANNEL_BRIDGE) {
        ns.ip(&["link", "add", FLANNEL_BRIDGE, "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{}/24", spec.pod_address(Cni::Flannel, 1)), "dev", FLANNEL_BRIDGE])?;
        ns.ip(&["link", "set", FLANNEL_BRIDGE, "up"])?;
    }
    if !exists(&ns, FLANNEL_DEVICE) {
        vxlan_device(
            &ns,
            FLANNEL_DEVICE,
            FLANNEL_VNI,
            FLANNEL_VXLAN_PORT,
            (spec.address, "eth0"),
            &spec.flannel_vtep_mac(),
        )?;
        ns.ip(&["addr", "add", &format!("{}/32", spec.flannel_network()), "dev", FLANNEL_DEVICE])?;
        ns.ip(&["link", "set", FLANNEL_DEVICE, "up"])?;
    }
    for &peer in peers.iter().filter(|&&p| p != node) {
        let peer = &topology.nodes[peer];
        overlay_route(
            &ns,
            FLANNEL_DEVICE,
            &format!("{}/24", peer.flannel_network()),
            peer.flannel_network(),
            &peer.flannel_vtep_mac(),
            peer.address,
        )?;
    }
    Ok(())
}

/// Removes what [`enable_flannel`] made on `node`.
pub fn disable_flannel(topology: &Topology, node: usize) {
    let ns = NetNs::existing(&topology.node_netns(node));
    ip_quietly(&ns, &["link", "del", FLANNEL_DEVICE]);
    ip_quietly(&ns, &["link", "del", FLANNEL_BRIDGE]);
}

/// Forgets Flannel node `peer` on `node` (flanneld does so when the peer's lease goes).
pub fn forget_flannel_peer(topology: &Topology, node: usize, peer: usize) {
    let ns = NetNs::existing(&topology.node_netns(node));
    let peer = &topology.nodes[peer];
    forget_overlay_route(
        &ns,
        FLANNEL_DEVICE,
        &format!("{}/24", peer.flannel_network()),
        peer.flannel_network(),
        &peer.flannel_vtep_mac(),
    );
}

/// Calico on `node`: the blackhole route for its block, and vxlan.calico (VNI 4096, UDP
/// 4789) with routes to the blocks of Calico `peers` in other subnets, as Felix programs
/// them with VXLANCrossSubnet. Routes within the subnet come from BIRD.
pub fn enable_calico(topology: &Topology, node: usize, peers: &[usize]) -> Result<()> {
    let ns = NetNs::existing(&topology.node_netns(node));
    let spec = &topology.nodes[node];
    ns.ip(&["route", "replace", "blackhole", &format!("{}/26", spec.calico_block())])?;
    if !exists(&ns, CALICO_DEVICE) {
        calico_vxlan_device(topology, node, (spec.address, "eth0"))?;
    }
    for &peer in peers.iter().filter(|&&p| p != node && topology.nodes[p].subnet != spec.subnet) {
        let peer = &topology.nodes[peer];
        overlay_route(
            &ns,
            CALICO_DEVICE,
            &format!("{}/26", peer.calico_block()),
            peer.calico_block(),
            &peer.calico_vtep_mac(),
            peer.address,
        )?;
    }
    Ok(())
}

/// `vxlan.calico` on `node` as Felix makes it, sending from `local` through `dev` (the
/// node's own address and underlay unless a fault says otherwise); one there already goes.
///
/// # Errors
/// If `ip` fails.
pub fn calico_vxlan_device(topology: &Topology, node: usize, local: (Ipv4Addr, &str)) -> Result<()> {
    let ns = NetNs::existing(&topology.node_netns(node));
    let spec = &topology.nodes[node];
    ip_quietly(&ns, &["link", "del", CALICO_DEVICE]);
    vxlan_device(&ns, CALICO_DEVICE, CALICO_VNI, CALICO_VXLAN_PORT, local, &spec.calico_vtep_mac())?;
    ns.ip(&["addr", "add", &format!("{}/32", spec.calico_block()), "dev", CALICO_DEVICE])?;
    ns.ip(&["link", "set", CALICO_DEVICE, "up"])?;
    Ok(())
}

pub fn disable_calico(topology: &Topology, node: usize) {
    let ns = NetNs::existing(&topology.node_netns(node));
    ip_quietly(&ns, &["link", "del", CALICO_DEVICE]);
    ip_quietly(&ns, &["route", "del", "blackhole", &format!("{}/26", topology.nodes[node].calico_block())]);
}

/// Forgets Calico node `peer` on `node` (its VXLAN route, if it was across subnets).
pub fn forget_calico_peer(topology: &Topology, node: usize, peer: usize) {
    let ns = NetNs::existing(&topology.node_netns(node));
    let peer = &topology.nodes[peer];
    forget_overlay_route(
        &ns,
        CALICO_DEVICE,
        &format!("{}/26", peer.calico_block()),
        peer.calico_block(),
        &peer.calico_vtep_mac(),
    );
}

fn vxlan_device(
    ns: &NetNs,
    name: &str,
    vni: u32,
    port: u16,
    (local, dev): (Ipv4Addr, &str),
    mac: &str,
) -> Result<()> {
    let (vni, port, local) = (vni.to_string(), port.to_string(), local.to_string());
    ns.ip(&[
        "link",
        "add",
        name,
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        &local,
        "dev",
        dev,
        "dstport",
        &port,
        "nolearning",
    ])?;
    ns.ip(&["link", "set", name, "address", mac])?;
    Ok(())
}

/// A route to `network` through the VXLAN `device` with a static VTEP: next hop, its MAC,
/// and the FDB entry sending that MAC to the peer's underlay address.
fn overlay_route(
    ns: &NetNs,
    device: &str,
    network: &str,
    vtep: Ipv4Addr,
    vtep_mac: &str,
    underlay: Ipv4Addr,
) -> Result<()> {
    let vtep = vtep.to_string();
    ns.ip(&["neigh", "replace", &vtep, "lladdr", vtep_mac, "dev", device, "nud", "permanent"])?;
    ns.bridge(&[
        "fdb",
        "replace",
        vtep_mac,
        "dev",
        device,
        "dst",
        &underlay.to_string(),
        "self",
        "permanent",
    ])?;
    ns.ip(&["route", "replace", network, "via", &vtep, "dev", device, "onlink"])?;
    Ok(())
}

fn forget_overlay_route(ns: &NetNs, device: &str, network: &str, vtep: Ipv4Addr, vtep_mac: &str) {
    ip_quietly(ns, &["route", "del", network, "dev", device]);
    ip_quietly(ns, &["neigh", "del", &vtep.to_string(), "dev", device]);
    let _ = ns.bridge(&["fdb", "del", vtep_mac, "dev", device, "self"]);
}

/// Creates `pod` under `cni` on its node: its namespace, its veth (`veth*` on cni0 for
/// Flannel, `cali*` with proxy ARP and a /32 route for Calico) and its routes.
pub fn create_pod(topology: &Topology, pod: &Pod, cni: Cni) -> Result<()> {
    let node_ns = NetNs::existing(&topology.node_netns(pod.node));
    let pod_netns = topology.pod_netns(pod, cni);
    if NetNs::exists(&pod_netns) {
        return Ok(());
    }
    let pod_ns = NetNs::create(&pod_netns, false)?;
    let host = topology.host_veth(pod, cni);
    let node = &topology.nodes[pod.node];
    let address = node.pod_address(cni, pod.host);
    node_ns.ip(&["link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", pod_ns.name()])?;
    let pod_mac = pod_ns.mac("eth0")?;
    pod_ns.ip(&["link", "set", "eth0", "up"])?;
    match cni {
        Cni::Flannel => {
            let gateway = node.pod_address(Cni::Flannel, 1).to_string();
            node_ns.ip(&["link", "set", &host, "master", FLANNEL_BRIDGE, "up"])?;
            node_ns.bridge(&["fdb", "replace", &pod_mac, "dev", &host, "master", "static"])?;
            node_ns.ip(&[
                "neigh",
                "replace",
                &address.to_string(),
                "lladdr",
                &pod_mac,
                "dev",
                FLANNEL_BRIDGE,
                "nud",
                "permanent",
            ])?;
            pod_ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            pod_ns.ip(&["route", "add", "default", "via", &gateway])?;
            let bridge_mac = node_ns.mac(FLANNEL_BRIDGE)?;
            pod_ns.ip(&[
                "neigh",
                "replace",
                &gateway,
                "lladdr",
                &bridge_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        Cni::Calico => {
            node_ns.ip(&["link", "set", &host, "address", CALICO_HOST_MAC])?;
            node_ns.ip(&["link", "set", &host, "up"])?;
            node_ns.sysctl(&format!("net.ipv4.conf.{host}.proxy_arp"), "1")?;
            node_ns.ip(&["route", "replace", &format!("{address}/32"), "dev", &host, "scope", "link"])?;
            node_ns.ip(&[
                "neigh",
                "replace",
                &address.to_string(),
                "lladdr",
                &pod_mac,
                "dev",
                &host,
                "nud",
                "permanent",
            ])?;
            let gateway = CALICO_GATEWAY.to_string();
            pod_ns.ip(&["addr", "add", &format!("{address}/32"), "dev", "eth0"])?;
            pod_ns.ip(&["route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
            pod_ns.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
            pod_ns.ip(&[
                "neigh",
                "replace",
                &gateway,
                "lladdr",
                CALICO_HOST_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
    }
    Ok(())
}

/// Deletes `pod`'s `cni` generation: its namespace (and with it the veth pair).
pub fn delete_pod(topology: &Topology, pod: &Pod, cni: Cni) {
    NetNs::delete(&topology.pod_netns(pod, cni));
    if cni == Cni::Flannel {
        let node_ns = NetNs::existing(&topology.node_netns(pod.node));
        let address = topology.nodes[pod.node].pod_address(cni, pod.host).to_string();
        ip_quietly(&node_ns, &["neigh", "del", &address, "dev", FLANNEL_BRIDGE]);
    }
}
