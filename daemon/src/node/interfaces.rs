//! Which interfaces exist, which of them to watch, and the netlink notifications that say
//! when they come and go.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, PoisonError, RwLock};

use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt as _, TryStreamExt as _};
use globset::{Glob, GlobMatcher};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{Handle, MulticastGroup};

/// A network interface of the daemon's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    /// The driver kind netlink reports (`veth`, `bridge`, `vxlan`, ...). Physical NICs and
    /// loopback report none.
    pub kind: Option<String>,
    pub loopback: bool,
    /// For a VXLAN device: its VNI, UDP port and underlay device.
    pub vxlan: Option<Vxlan>,
    /// For a veth whose other end is in another namespace: that namespace's id as this
    /// namespace knows it (`link-netnsid`).
    pub peer_netnsid: Option<i32>,
}

/// What netlink says about a VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    /// The index of the device it sends through (`dev` when it was created), if set.
    pub underlay: Option<u32>,
    /// The source address of what it sends (`local`), if set: Calico's is the node's
    /// address as it detected it.
    pub local: Option<std::net::Ipv4Addr>,
}

/// Every interface of the daemon's namespace, by index.
pub type InterfaceTable = std::collections::BTreeMap<u32, Interface>;

impl Interface {
    /// Loopback and physical NICs carry the node's own traffic, not the CNI's.
    #[must_use]
    pub fn is_host_device(&self) -> bool {
        self.loopback || self.kind.is_none()
    }

    fn from_message(message: &LinkMessage) -> Option<Self> {
        // PF_BRIDGE messages report a bridge port's state (cni0's veths move to forwarding
        // seconds after they join): they carry no link info, and read as a link they would
        // make every pod veth look like a physical NIC, detached until the next resync.
        if message.header.interface_family == netlink_packet_route::AddressFamily::Bridge {
            return None;
        }
        let mut name = None;
        let mut kind = None;
        let mut vxlan = None;
        let mut peer_netnsid = None;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkNetNsId(id) => peer_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(attributes)) => {
                                vxlan = Some(Vxlan::from_attributes(attributes));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Self {
            index: message.header.index,
            name: name?,
            kind,
            loopback: message.header.link_layer_type == LinkLayerType::Loopback,
            vxlan,
            peer_netnsid,
        })
    }
}

impl Vxlan {
    /// The kernel's default VXLAN port when none is set (IANA's is 4789, Linux's 8472).
    const LINUX_DEFAULT_PORT: u16 = 8472;

    fn from_attributes(attributes: &[InfoVxlan]) -> Self {
        let mut vxlan = Self { vni: 0, port: Self::LINUX_DEFAULT_PORT, underlay: None, local: None };
        for attribute in attributes {
            match attribute {
                InfoVxlan::Id(vni) => vxlan.vni = *vni,
                InfoVxlan::Port(port) => vxlan.port = *port,
                InfoVxlan::Link(index) if *index != 0 => vxlan.underlay = Some(*index),
                InfoVxlan::Local(address) if !address.is_unspecified() => vxlan.local = Some(*address),
                _ => {}
            }
        }
        vxlan
    }
}

/// Interface name patterns from the configuration.
///
/// A wildcard never selects loopback or a physical NIC: those are attached only when a
/// pattern names them exactly, so `*` cannot put a probe on the node's uplink by accident.
#[derive(Debug, Clone)]
pub struct InterfaceSelector {
    patterns: Vec<NamePattern>,
}

#[derive(Debug, Clone)]
struct NamePattern {
    text: String,
    matcher: GlobMatcher,
    literal: bool,
}

impl InterfaceSelector {
    /// # Errors
    /// A one-line message naming the first invalid pattern and why it is invalid.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let patterns = patterns
            .iter()
            .map(|pattern| {
                let text = pattern.as_ref();
                if text.is_empty() {
                    return Err("an empty interface pattern matches nothing; remove it".to_owned());
                }
                let glob = Glob::new(text)
                    .map_err(|err| format!("invalid interface pattern `{text}`: {}", err.kind()))?;
                Ok(NamePattern {
                    text: text.to_owned(),
                    matcher: glob.compile_matcher(),
                    literal: !text.contains(['*', '?', '[', ']', '{', '}', '\\']),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    #[must_use]
    pub fn selects(&self, interface: &Interface) -> bool {
        if interface.is_host_device() {
            self.patterns.iter().any(|p| p.literal && p.text == interface.name)
        } else {
            self.patterns.iter().any(|p| p.matcher.is_match(&interface.name))
        }
    }

    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| p.text.as_str())
    }
}

/// Every interface of the namespace `handle` talks to, now.
///
/// # Errors
/// If the kernel refuses the dump.
pub async fn list(handle: &Handle) -> Result<Vec<Interface>, rtnetlink::Error> {
    let mut links = handle.link().get().execute();
    let mut interfaces = Vec::new();
    while let Some(message) = links.try_next().await? {
        interfaces.extend(Interface::from_message(&message));
    }
    Ok(interfaces)
}

/// Every interface of the namespace with its MTU (the findings compare a tunnel's with
/// its underlay's).
///
/// # Errors
/// If the kernel refuses the dump.
pub async fn list_with_mtu(handle: &Handle) -> Result<Vec<(Interface, u32)>, rtnetlink::Error> {
    let mut links = handle.link().get().execute();
    let mut interfaces = Vec::new();
    while let Some(message) = links.try_next().await? {
        let mtu = message.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        });
        interfaces.extend(Interface::from_message(&message).map(|i| (i, mtu.unwrap_or(0))));
    }
    Ok(interfaces)
}

/// What a link notification means for the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// The interface exists now, new or changed (renamed, brought up or down).
    Present(Interface),
    /// The interface with this index is gone (deleted, or moved to another namespace).
    Gone(u32),
}

/// Netlink link notifications for the daemon's namespace, and full listings on demand.
pub struct LinkWatcher {
    handle: Handle,
    notifications: UnboundedReceiver<(
        netlink_packet_core::NetlinkMessage<RouteNetlinkMessage>,
        netlink_sys::SocketAddr,
    )>,
}

/// Room for a burst of notifications (interface churn) before the kernel drops some; the
/// periodic listing repairs what is lost anyway.
const NOTIFICATION_BUFFER_BYTES: usize = 4 << 20;

impl LinkWatcher {
    /// Subscribes to link notifications. Subscribe before listing, so that nothing that
    /// happens in between is missed.
    ///
    /// # Errors
    /// If the netlink socket cannot be opened (no `CAP_NET_ADMIN` is not needed for this, so
    /// this only fails when the kernel is out of resources).
    pub fn start() -> io::Result<Self> {
        let (mut connection, handle, notifications) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
        // A best effort: without it the default buffer still works, with more resyncs.
        let _ = connection.socket_mut().socket_mut().set_rx_buf_sz(NOTIFICATION_BUFFER_BYTES);
        tokio::spawn(connection);
        Ok(Self { handle, notifications })
    }

    /// The netlink handle, for requests beyond links (qdiscs and filters).
    #[must_use]
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Every interface of the namespace now.
    ///
    /// # Errors
    /// If the kernel refuses the dump.
    pub async fn list(&self) -> Result<Vec<Interface>, rtnetlink::Error> {
        list(&self.handle).await
    }

    /// The IPv4 addresses of the namespace: the node's own, to tell its sockets from those of
    /// other namespaces when a kernel-wide tracepoint reports them.
    ///
    /// # Errors
    /// If the kernel refuses the dump.
    pub async fn ipv4_addresses(
        &self,
    ) -> Result<std::collections::BTreeSet<std::net::Ipv4Addr>, rtnetlink::Error> {
        use netlink_packet_route::AddressFamily;
        use netlink_packet_route::address::AddressAttribute;
        let mut dump = self.handle.address().get().execute();
        let mut addresses = std::collections::BTreeSet::new();
        while let Some(message) = dump.try_next().await? {
            if message.header.family != AddressFamily::Inet {
                continue;
            }
            for attribute in &message.attributes {
                if let AddressAttribute::Local(std::net::IpAddr::V4(address))
                | AddressAttribute::Address(std::net::IpAddr::V4(address)) = attribute
                {
                    addresses.insert(*address);
                }
            }
        }
        Ok(addresses)
    }

    /// The next change, or `None` once the notification stream has ended.
    pub async fn next(&mut self) -> Option<LinkChange> {
        loop {
            let (message, _) = self.notifications.next().await?;
            let NetlinkPayload::InnerMessage(message) = message.payload else {
                continue;
            };
            match message {
                RouteNetlinkMessage::NewLink(link) => {
                    if let Some(interface) = Interface::from_message(&link) {
                        return Some(LinkChange::Present(interface));
                    }
                }
                RouteNetlinkMessage::DelLink(link) => return Some(LinkChange::Gone(link.header.index)),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(name: &str, kind: Option<&str>) -> Interface {
        Interface {
            index: 7,
            name: name.into(),
            kind: kind.map(Into::into),
            loopback: name == "lo",
            vxlan: None,
            peer_netnsid: None,
        }
    }

    #[test]
    fn wildcards_select_cni_devices_only() {
        let selector = InterfaceSelector::new(&["veth*", "cali*", "*"]).unwrap();
        assert!(selector.selects(&interface("veth1a2b", Some("veth"))));
        assert!(selector.selects(&interface("cali12ab", Some("veth"))));
        assert!(!selector.selects(&interface("eth0", None)), "a wildcard must not pick a NIC");
        assert!(!selector.selects(&interface("lo", None)), "a wildcard must not pick loopback");
    }

    #[test]
    fn host_devices_need_their_exact_name() {
        let selector = InterfaceSelector::new(&["lo", "ens3"]).unwrap();
        assert!(selector.selects(&interface("lo", None)));
        assert!(selector.selects(&interface("ens3", None)));
        assert!(!selector.selects(&interface("ens4", None)));
    }

    #[test]
    fn bridge_port_notifications_are_not_links() {
        let mut message = LinkMessage::default();
        message.header.index = 5;
        message.attributes.push(LinkAttribute::IfName("veth1a2b3c4d".into()));
        assert!(Interface::from_message(&message).is_some());
        message.header.interface_family = netlink_packet_route::AddressFamily::Bridge;
        assert!(Interface::from_message(&message).is_none());
    }

    #[test]
    fn invalid_pattern_is_named() {
        let err = InterfaceSelector::new(&["veth*", "cali[0-"]).unwrap_err();
        assert!(err.starts_with("invalid interface pattern `cali[0-`"), "{err}");
        assert!(!err.contains('\n'));
    }
}

/// Names of the interfaces probes are attached to, by index: the `interface` label.
/// Collectors only report interfaces listed here, so a series ends when its interface goes.
#[derive(Clone, Default)]
pub struct AttachedInterfaces(Arc<RwLock<HashMap<u32, String>>>);

impl AttachedInterfaces {
    pub fn insert(&self, index: u32, name: &str) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(index, name.to_owned());
    }

    pub fn remove(&self, index: u32) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).remove(&index);
    }

    #[must_use]
    pub fn name(&self, index: u32) -> Option<String> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(&index).cloned()
    }

    #[must_use]
    pub fn contains(&self, index: u32) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains_key(&index)
    }

    /// Every entry, as `(index, name)`.
    #[must_use]
    pub fn entries(&self) -> Vec<(u32, String)> {
        let names = self.0.read().unwrap_or_else(PoisonError::into_inner);
        names.iter().map(|(index, name)| (*index, name.clone())).collect()
    }

    /// Replaces every entry.
    pub fn replace(&self, names: impl IntoIterator<Item = (u32, String)>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = names.into_iter().collect();
    }
}
