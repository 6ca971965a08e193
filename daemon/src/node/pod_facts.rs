//! The pods of this node as the kernel shows them: each network namespace's addresses,
//! and the node's interfaces whose far end is in another namespace (a pod's veth, whatever
//! the CNI names it). Cluster mode maps them to the API's pods; the findings read which
//! pods still hold an address of the old pod range.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};

use crate::node::namespaces::{self, Inventory};

/// A network namespace of this host other than the daemon's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsFacts {
    /// Its `netns` label value.
    pub label: String,
    /// The id the daemon's namespace gives it, if any (the far end of a veth has one).
    pub nsid: Option<i32>,
    pub addresses: Vec<Ipv4Addr>,
}

/// A node interface whose far end is in another namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVeth {
    pub name: String,
    pub peer_nsid: i32,
}

/// What the kernel says, for the mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub namespaces: Vec<NetnsFacts>,
    pub veths: Vec<HostVeth>,
}

impl NodeFacts {
    /// The node-side interfaces leading into `namespace`.
    pub fn veths_of<'a>(&'a self, namespace: &NetnsFacts) -> impl Iterator<Item = &'a str> + 'a {
        let nsid = namespace.nsid;
        self.veths.iter().filter(move |v| Some(v.peer_nsid) == nsid).map(|v| v.name.as_str())
    }
}

/// Reads every namespace's addresses (from a thread inside it) and id, and the node's
/// veths, for the namespaces of `inventory` other than the daemon's own.
///
/// # Errors
/// If the node's interfaces cannot be listed.
pub async fn gather(handle: &rtnetlink::Handle, inventory: &Inventory) -> Result<NodeFacts> {
    let others: Vec<_> = inventory.by_netns.values().filter(|ns| !ns.own).cloned().collect();
    let mut namespaces = Vec::new();
    for namespace in others {
        let path = namespace.path.clone();
        // A namespace that vanished meanwhile is skipped: its pod is going too.
        let Some(addresses) = tokio::task::spawn_blocking(move || {
            namespaces::in_namespace(&path, ipv4_addresses).and_then(Result::ok)
        })
        .await
        .context("reading a namespace's addresses")?
        else {
            continue;
        };
        let nsid = namespaces::nsid(handle, &namespace.path).await;
        namespaces.push(NetnsFacts { label: namespace.label(), nsid, addresses });
    }
    let veths = crate::node::interfaces::list(handle)
        .await
        .context("listing the node's interfaces")?
        .into_iter()
        .filter_map(|i| Some(HostVeth { peer_nsid: i.peer_netnsid?, name: i.name }))
        .collect();
    Ok(NodeFacts { namespaces, veths })
}

/// The IPv4 addresses of the calling thread's namespace.
fn ipv4_addresses() -> nix::Result<Vec<Ipv4Addr>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|entry| entry.address?.as_sockaddr_in().map(nix::sys::socket::SockaddrIn::ip))
        .collect())
}
