//! What the findings are judged on, gathered once per evaluation: the probes' typed totals
//! now and at the start of the window (a bounded ring of earlier readings), the node's
//! devices as the phase reader saw them, its routes, and the in-pod health checks.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Instant;

use futures::TryStreamExt as _;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::checks::health::LocalhostStatus;
use crate::judgement::phase;
use crate::judgement::signals::{Totals, VxlanFlow};
use crate::probes::cidr::Cidr;

/// Everything one evaluation reads.
#[derive(Debug, Clone)]
pub struct Observations {
    /// The totals at the start of the window (or the earliest kept, early on) and now.
    pub before: Totals,
    pub now: Totals,
    /// The reading one evaluation ago: what flows *now*, not only somewhere in the window.
    pub previous: Totals,
    pub window_seconds: f64,
    pub min_packets: f64,
    pub min_attempts: f64,
    pub typha_port: u16,
    /// The node's devices, as the phase reader last saw them.
    pub phase: Option<phase::Signals>,
    /// How long the node has been in its current phase, and which.
    pub phase_age: Option<(phase::Phase, f64)>,
    /// The latest in-pod health check of each pod and port.
    pub localhost: Vec<LocalhostStatus>,
    /// The node's IPv4 routes in its main table.
    pub routes: Vec<Route>,
    /// The node's IPv4 addresses, with their devices' names.
    pub addresses: Vec<(Ipv4Addr, String)>,
    /// The node's devices with their MTUs.
    pub links: Vec<Link>,
    /// The address plan.
    pub cidrs: Vec<Cidr>,
    /// The service ranges of before the cutover.
    pub old_service_cidrs: Vec<Cidr>,
    /// The pod ranges of before the cutover.
    pub old_pod_cidrs: Vec<Cidr>,
    /// This node's pods with their addresses and node-side devices; read only while the
    /// node is on Calico (the only phase a finding reads them in).
    pub pods: Vec<PodAddresses>,
}

/// One pod namespace of this node, as `pods_on_old_addresses` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddresses {
    /// Its `netns` label.
    pub netns: String,
    pub addresses: Vec<Ipv4Addr>,
    /// Its node-side interfaces (a veth, whatever the CNI calls it).
    pub devices: Vec<String>,
}

impl PodAddresses {
    /// This node's pods, from the kernel's facts.
    #[must_use]
    pub fn of(facts: &crate::node::pod_facts::NodeFacts) -> Vec<Self> {
        facts
            .namespaces
            .iter()
            .map(|namespace| Self {
                netns: namespace.label.clone(),
                addresses: namespace.addresses.iter().copied().filter(|a| !a.is_loopback()).collect(),
                devices: facts.veths_of(namespace).map(str::to_owned).collect(),
            })
            .collect()
    }
}

impl Observations {
    /// VXLAN packets per flow within the window.
    #[must_use]
    pub fn vxlan_window(&self) -> Vec<(VxlanFlow, f64)> {
        Self::vxlan_since(&self.before, &self.now)
    }

    /// VXLAN packets per flow since the previous evaluation.
    #[must_use]
    pub fn vxlan_latest(&self) -> Vec<(VxlanFlow, f64)> {
        Self::vxlan_since(&self.previous, &self.now)
    }

    fn vxlan_since(before: &Totals, now: &Totals) -> Vec<(VxlanFlow, f64)> {
        now.vxlan
            .iter()
            .map(|(flow, now)| (*flow, (now - before.vxlan.get(flow).copied().unwrap_or(0.0)).max(0.0)))
            .collect()
    }
}

/// A route of the node's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    /// The output device's name (empty for blackhole and unreachable routes).
    pub device: String,
    /// Installed by BIRD: Calico's own.
    pub from_bird: bool,
}

/// A device of the node, as the MTU check reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The driver: `vxlan`, `ipip`, `veth`; none for a NIC.
    pub kind: Option<String>,
    pub mtu: u32,
    /// For a VXLAN device, the device it sends through, when it was given one.
    pub underlay: Option<u32>,
    /// For a VXLAN device, the source address it sends from, when it was given one.
    pub local: Option<Ipv4Addr>,
}

/// The node's devices with their MTUs.
async fn links(handle: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    Ok(crate::node::interfaces::list_with_mtu(handle)
        .await?
        .into_iter()
        .map(|(interface, mtu)| Link {
            index: interface.index,
            underlay: interface.vxlan.and_then(|v| v.underlay),
            local: interface.vxlan.and_then(|v| v.local),
            name: interface.name,
            kind: interface.kind,
            mtu,
        })
        .collect())
}

/// The totals of the last window, one reading per evaluation: its memory is bounded by
/// the window over the evaluation interval.
#[derive(Debug, Default)]
pub struct History(VecDeque<(Instant, Totals)>, Totals);

impl History {
    /// Adds the reading at `now` and drops those older than `window`; returns the oldest
    /// left (the window's start) and how long ago it was taken.
    pub fn push(&mut self, now: Instant, totals: Totals, window: std::time::Duration) -> (Totals, f64) {
        self.1 = self.0.back().map_or_else(|| totals.clone(), |(_, last)| last.clone());
        self.0.push_back((now, totals));
        while self.0.len() > 1 && self.0.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= window) {
            self.0.pop_front();
        }
        let (at, oldest) = self.0.front().cloned().expect("just pushed");
        (oldest, now.duration_since(at).as_secs_f64())
    }

    /// The reading before the latest.
    #[must_use]
    pub fn previous(&self) -> &Totals {
        &self.1
    }
}

/// The node's devices, routes and addresses, as one evaluation reads them.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    pub links: Vec<Link>,
    pub routes: Vec<Route>,
    pub addresses: Vec<(Ipv4Addr, String)>,
}

impl Devices {
    /// Reads them: one dump each, the devices' names from the first.
    ///
    /// # Errors
    /// If the kernel refuses a dump (busy with another dump on the shared handle, say).
    pub async fn read(handle: &Handle) -> Result<Self, rtnetlink::Error> {
        let links = links(handle).await?;
        let routes = routes(handle, &links).await?;
        let addresses = addresses(handle, &links).await?;
        Ok(Self { links, routes, addresses })
    }
}

fn device_name(links: &[Link], index: u32) -> Option<String> {
    links.iter().find(|l| l.index == index).map(|l| l.name.clone())
}

/// The node's IPv4 routes in the main table, with their devices' names.
async fn routes(handle: &Handle, links: &[Link]) -> Result<Vec<Route>, rtnetlink::Error> {
    let name = |index: u32| device_name(links, index);
    let mut dump = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    let mut routes = Vec::new();
    while let Some(message) = dump.try_next().await? {
        let main = message.header.table == 254
            || message.attributes.iter().any(|a| matches!(a, RouteAttribute::Table(254)));
        if !main || message.header.kind != RouteType::Unicast {
            continue;
        }
        let mut destination = Ipv4Addr::UNSPECIFIED;
        let mut device = String::new();
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(address)) => destination = *address,
                RouteAttribute::Oif(index) => device = name(*index).unwrap_or_default(),
                _ => {}
            }
        }
        routes.push(Route {
            destination,
            prefix_len: message.header.destination_prefix_length,
            device,
            from_bird: message.header.protocol == RouteProtocol::Bird,
        });
    }
    Ok(routes)
}

/// The node's IPv4 addresses, with their devices' names.
async fn addresses(handle: &Handle, links: &[Link]) -> Result<Vec<(Ipv4Addr, String)>, rtnetlink::Error> {
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::address::AddressAttribute;
    let mut dump = handle.address().get().execute();
    let mut addresses = Vec::new();
    while let Some(message) = dump.try_next().await? {
        if message.header.family != AddressFamily::Inet {
            continue;
        }
        let device = device_name(links, message.header.index).unwrap_or_default();
        for attribute in &message.attributes {
            if let AddressAttribute::Local(std::net::IpAddr::V4(address)) = attribute {
                addresses.push((*address, device.clone()));
            }
        }
    }
    Ok(addresses)
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "the values compared are small whole numbers, exact in f64")]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_history_keeps_one_window_and_no_more() {
        let start = Instant::now();
        let mut history = History::default();
        let window = Duration::from_secs(10);
        let at = |s: u64| start + Duration::from_secs(s);
        let totals = |retransmits: f64| Totals { retransmits, ..Totals::default() };
        assert_eq!(history.push(at(0), totals(0.0), window).1, 0.0);
        for s in 1..=9 {
            history.push(at(s), totals(s as f64), window);
        }
        // Less than a window kept: the window starts with the first reading.
        let (oldest, age) = history.push(at(10), totals(10.0), window);
        assert_eq!((oldest.retransmits, age), (0.0, 10.0));
        let (oldest, age) = history.push(at(25), totals(25.0), window);
        // Every reading 10 s or more before the latest has gone but the newest of them.
        assert_eq!((oldest.retransmits, age), (10.0, 15.0));
        assert_eq!(history.0.len(), 2);
    }
}
