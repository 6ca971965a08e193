//! `underlay`: VXLAN per port, VNI and remote node, and BGP messages per peer and type, on
//! the devices the VXLAN devices send through (found through netlink) and any configured.
//! NOTIFICATIONs arrive through a ring buffer and are counted and logged as they come.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuHashMap, RingBuf};
use probe_common::Direction;
use probe_common::counters::PacketCount;
use probe_common::underlay::{
    BGP_FILTER_ON, BGP_STATS_MAX_ENTRIES, BgpKey, BgpMessageKind, BgpNotificationEvent, BgpOpen, BgpOpenKey,
    VxlanKey, VxlanMalformedKey,
};
use prometheus::IntCounterVec;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use tokio::io::unix::AsyncFd;

use super::registry::{ProbeSpec, Programs, Started};
use super::shared::{LogBudget, monotonic_ns};
use super::{InterfaceProbe, TcProgram};
use crate::judgement::signals::{BgpRejections, OpenSent, SignalSource, Totals, VxlanFlow};
use crate::metrics::labels::{self, PeerLabels};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::interfaces::AttachedInterfaces;
use crate::node::interfaces::{Interface, InterfaceSelector, InterfaceTable};
use crate::probes::bgp_codes;

/// Flannel's and Calico's VXLAN ports, watched besides those of the node's own VXLAN
/// devices.
pub const DEFAULT_VXLAN_PORTS: &[u16] = &[8472, 4789];

pub const NAME: &str = "underlay";

const PROGRAMS: &[TcProgram] = &[
    TcProgram { function: "underlay_ingress", direction: Direction::Ingress },
    TcProgram { function: "underlay_egress", direction: Direction::Egress },
];

const VXLAN_LABELS: &[&str] = &["interface", "direction", "port", "vni", "peer"];
const MALFORMED_LABELS: &[&str] = &["interface", "port"];
const BGP_LABELS: &[&str] = &["peer", "direction", "type"];
const PEER_LABEL: &[&str] = &["peer"];
/// NOTIFICATION log lines: this many at once, then one per minute (the rest counted).
const NOTIFICATION_LOG_BURST: u32 = 10;
const NOTIFICATION_LOG_EVERY: std::time::Duration = std::time::Duration::from_mins(1);
/// Peers whose rejected sessions are followed, as many as the kernel's BGP maps hold; only
/// this node's own sockets' peers count, so the bound is never reached by spoofing.
const MAX_REJECTING_PEERS: usize = BGP_STATS_MAX_ENTRIES as usize;

/// NOTIFICATIONs that ended sessions before they were established, by peer.
type Rejections = Arc<Mutex<BTreeMap<Ipv4Addr, BgpRejections>>>;

pub struct Underlay {
    ports: Mutex<HashMap<MapData, u16, u8>>,
    configured_ports: Vec<u16>,
    vxlan: Mutex<PerCpuHashMap<MapData, VxlanKey, PacketCount>>,
    malformed: Mutex<PerCpuHashMap<MapData, VxlanMalformedKey, u64>>,
    bgp: Mutex<PerCpuHashMap<MapData, BgpKey, u64>>,
    last_seen: Mutex<PerCpuHashMap<MapData, [u8; 4], u64>>,
    rejections: Rejections,
    opens: Mutex<HashMap<MapData, BgpOpenKey, BgpOpen>>,
    /// `BGP_FILTER`, held open for the programs loaded after it.
    _filter: Array<MapData, u32>,
    selector: InterfaceSelector,
    attached: AttachedInterfaces,
    peers: Arc<PeerLabels>,
}

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "VXLAN and BGP on the underlay",
    loses: "cniguard_vxlan_* and cniguard_bgp_messages_*: which overlay carries traffic, BGP messages",
    programs: Programs::All(&["underlay_ingress", "underlay_egress"]),
    needs: &[],
    required: true,
    prepare: None,
    start: |context| {
        let settings = context.settings;
        let probe = Underlay::register(
            context.ebpf,
            settings.vxlan_ports.clone(),
            settings.underlay_interfaces.clone(),
            context.attached,
            context.peers.clone(),
            context.metrics,
        )?;
        context.signals.publish(probe.clone());
        Ok(Started::Interface(probe))
    },
};

impl Underlay {
    /// Takes the probe's maps, registers its collector and starts reading NOTIFICATIONs.
    ///
    /// # Errors
    /// If a map is missing (an eBPF object from another build) or the ring buffer cannot
    /// be polled.
    pub fn register(
        ebpf: &mut Ebpf,
        configured_ports: Vec<u16>,
        selector: InterfaceSelector,
        attached: &AttachedInterfaces,
        peers: Arc<PeerLabels>,
        metrics: &DaemonMetrics,
    ) -> Result<Arc<Self>> {
        let mut take =
            |name: &str| ebpf.take_map(name).with_context(|| format!("the eBPF object has no {name} map"));
        // Key BGP messages by peer only for segments of sockets past their handshake.
        let mut filter: Array<MapData, u32> = Array::try_from(take("BGP_FILTER")?)?;
        filter.set(0, BGP_FILTER_ON, 0).context("turning on the BGP socket filter")?;
        let probe = Arc::new(Self {
            ports: Mutex::new(HashMap::try_from(take("VXLAN_PORTS")?)?),
            configured_ports,
            vxlan: Mutex::new(PerCpuHashMap::try_from(take("VXLAN_STATS")?)?),
            malformed: Mutex::new(PerCpuHashMap::try_from(take("VXLAN_MALFORMED")?)?),
            bgp: Mutex::new(PerCpuHashMap::try_from(take("BGP_STATS")?)?),
            last_seen: Mutex::new(PerCpuHashMap::try_from(take("BGP_LAST_SEEN")?)?),
            rejections: Rejections::default(),
            opens: Mutex::new(HashMap::try_from(take("BGP_OPENS")?)?),
            _filter: filter,
            selector,
            attached: attached.clone(),
            peers: peers.clone(),
        });
        probe.set_ports(&BTreeSet::new());
        let notifications = catalogue::BGP_NOTIFICATIONS_TOTAL.int_counter_vec()?;
        metrics.registry.register(Box::new(notifications.clone()))?;
        let budget = LogBudget::new(
            "bgp_notification",
            NOTIFICATION_LOG_BURST,
            NOTIFICATION_LOG_EVERY,
            &metrics.registry,
        )?;
        read_notifications(
            RingBuf::try_from(take("BGP_EVENTS")?)?,
            Readers { counter: notifications, budget, rejections: probe.rejections.clone() },
            attached.clone(),
            peers,
        )?;
        metrics.registry.register(Box::new(UnderlayCollector::new(probe.clone())))?;
        Ok(probe)
    }

    /// Puts the configured ports and those of local VXLAN devices in the program's port map.
    fn set_ports(&self, device_ports: &BTreeSet<u16>) {
        let wanted: BTreeSet<u16> =
            self.configured_ports.iter().copied().chain(device_ports.iter().copied()).collect();
        let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        let present: BTreeSet<u16> = ports.keys().filter_map(Result::ok).collect();
        for port in present.difference(&wanted) {
            let _ = ports.remove(port);
        }
        for port in wanted.difference(&present) {
            if let Err(err) = ports.insert(port, 1, 0) {
                tracing::warn!(port, "cannot watch VXLAN port: {err}");
            }
        }
    }

    /// The latest BGP message from each peer, as CLOCK_MONOTONIC nanoseconds.
    fn last_seen(&self) -> Vec<(Ipv4Addr, u64)> {
        let map = self.last_seen.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter_map(Result::ok)
            .map(|(peer, per_cpu)| (Ipv4Addr::from(peer), per_cpu.iter().copied().max().unwrap_or(0)))
            .collect()
    }
}

impl InterfaceProbe for Underlay {
    fn name(&self) -> &'static str {
        NAME
    }

    fn programs(&self) -> &'static [TcProgram] {
        PROGRAMS
    }

    fn wants(&self, interface: &Interface, all: &InterfaceTable) -> bool {
        let carries_vxlan =
            all.values().any(|other| other.vxlan.and_then(|v| v.underlay) == Some(interface.index));
        carries_vxlan || self.selector.selects(interface)
    }

    fn observe_interfaces(&self, all: &InterfaceTable) {
        self.set_ports(&all.values().filter_map(|i| i.vxlan.map(|v| v.port)).collect());
    }

    fn retain_interfaces(&self, keep: &dyn Fn(u32) -> bool) {
        // BGP counts are per peer, not per interface: they stay.
        let mut vxlan = self.vxlan.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<VxlanKey> = vxlan.keys().filter_map(Result::ok).filter(|k| !keep(k.ifindex)).collect();
        for key in stale {
            let _ = vxlan.remove(&key);
        }
        let mut malformed = self.malformed.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<VxlanMalformedKey> =
            malformed.keys().filter_map(Result::ok).filter(|k| !keep(k.ifindex)).collect();
        for key in stale {
            let _ = malformed.remove(&key);
        }
    }
}

/// Where the NOTIFICATIONs go: the counter, the log within its budget, and the rejected
/// sessions judgement reads.
struct Readers {
    counter: IntCounterVec,
    budget: LogBudget,
    rejections: Rejections,
}

/// Counts every NOTIFICATION the programs report, and logs them within the budget, for as
/// long as the daemon runs. Those from sources without an established socket count under
/// `peer="unknown"`, and are never a rejected session.
fn read_notifications(
    ring: RingBuf<MapData>,
    readers: Readers,
    attached: AttachedInterfaces,
    peers: Arc<PeerLabels>,
) -> Result<()> {
    let Readers { counter, budget, rejections } = readers;
    // SAFETY: the ring buffer owns its fd, which stays open and the same while it lives, and
    // the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("polling the BGP notification ring buffer: {err}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = ring.readable_mut().await else { return };
            while let Some(item) = guard.get_inner_mut().next() {
                let Some(event) = read_event(&item) else { continue };
                let peer = Ipv4Addr::from(event.peer);
                let (code, subcode) =
                    (bgp_codes::code_name(event.code), bgp_codes::subcode_name(event.code, event.subcode));
                let label = if event.established == 0 {
                    labels::UNKNOWN.to_owned()
                } else {
                    peers.label(catalogue::BGP_NOTIFICATIONS_TOTAL.name, peer)
                };
                counter.with_label_values(&[label.as_str(), code, subcode]).inc();
                let sent_by_us = event.direction == Direction::Egress as u8;
                if event.established != 0 && bgp_codes::before_established(event.code, event.subcode) {
                    count_rejection(&rejections, peer, sent_by_us, event.code, event.subcode);
                }
                let Some(suppressed) = budget.allow() else { continue };
                let interface = attached.name(event.ifindex).unwrap_or_else(|| event.ifindex.to_string());
                let sent =
                    if event.direction == Direction::Ingress as u8 { "received from" } else { "sent to" };
                let established = event.established != 0;
                tracing::warn!(
                    peer = %peer,
                    interface,
                    established,
                    suppressed,
                    "BGP NOTIFICATION {sent} {peer}: {} (code {}, subcode {})",
                    bgp_codes::describe(event.code, event.subcode),
                    event.code,
                    event.subcode
                );
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

fn count_rejection(rejections: &Rejections, peer: Ipv4Addr, sent_by_us: bool, code: u8, subcode: u8) {
    let mut rejections = rejections.lock().unwrap_or_else(PoisonError::into_inner);
    if rejections.len() >= MAX_REJECTING_PEERS && !rejections.contains_key(&peer) {
        return;
    }
    let entry = rejections.entry(peer).or_default();
    if sent_by_us {
        entry.sent += 1.0;
    } else {
        entry.received += 1.0;
    }
    entry.latest = Some((sent_by_us, code, subcode));
}

fn read_event(bytes: &[u8]) -> Option<BgpNotificationEvent> {
    (bytes.len() >= size_of::<BgpNotificationEvent>())
        // SAFETY: the program writes exactly this #[repr(C)] plain-data struct; the read is
        // unaligned-safe.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<BgpNotificationEvent>()) })
}

struct UnderlayCollector {
    probe: Arc<Underlay>,
    packets: Desc,
    bytes: Desc,
    malformed: Desc,
    messages: Desc,
    last_message_age: Desc,
}

impl UnderlayCollector {
    fn new(probe: Arc<Underlay>) -> Self {
        Self {
            probe,
            packets: catalogue::VXLAN_PACKETS_TOTAL.desc(),
            bytes: catalogue::VXLAN_BYTES_TOTAL.desc(),
            malformed: catalogue::VXLAN_MALFORMED_TOTAL.desc(),
            messages: catalogue::BGP_MESSAGES_TOTAL.desc(),
            last_message_age: catalogue::BGP_LAST_MESSAGE_AGE_SECONDS.desc(),
        }
    }
}

/// VXLAN by peer, port and direction (every VNI and interface), the BGP sessions rejected
/// before they were established, and the OPENs this node sent, for the findings.
impl SignalSource for Underlay {
    fn add_to(&self, totals: &mut Totals) {
        for (key, per_cpu) in
            self.vxlan.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Result::ok)
        {
            let flow = VxlanFlow {
                peer: Ipv4Addr::from(key.peer),
                port: key.port,
                egress: key.direction == Direction::Egress as u8,
            };
            *totals.vxlan.entry(flow).or_default() += per_cpu.iter().map(|c| c.packets).sum::<u64>() as f64;
        }
        let rejections = self.rejections.lock().unwrap_or_else(PoisonError::into_inner);
        totals.bgp_rejections.extend(rejections.iter().map(|(peer, r)| (*peer, *r)));
        let opens = self.opens.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, open) in opens.iter().filter_map(Result::ok) {
            if key.direction == Direction::Egress as u8 {
                let sent = OpenSent {
                    local: Ipv4Addr::from(open.local),
                    identifier: Ipv4Addr::from(open.identifier),
                };
                totals.bgp_opens_sent.insert(Ipv4Addr::from(key.peer), sent);
            }
        }
    }
}

impl Collector for UnderlayCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.packets, &self.bytes, &self.malformed, &self.messages, &self.last_message_age]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let probe = &self.probe;
        let direction = |d: u8| Direction::from_u8(d).map_or("unknown", Direction::label);
        // Sum per label set: peers beyond the cap fold into one `other` series.
        let mut vxlan: BTreeMap<[String; 5], PacketCount> = BTreeMap::new();
        for (key, per_cpu) in
            probe.vxlan.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Result::ok)
        {
            let Some(interface) = probe.attached.name(key.ifindex) else { continue };
            let peer = probe.peers.label(catalogue::VXLAN_PACKETS_TOTAL.name, Ipv4Addr::from(key.peer));
            let labels = [
                interface,
                direction(key.direction).to_owned(),
                key.port.to_string(),
                key.vni.to_string(),
                peer,
            ];
            let total = vxlan.entry(labels).or_default();
            for cpu in per_cpu.iter() {
                total.packets += cpu.packets;
                total.bytes += cpu.bytes;
            }
        }
        let mut packets = FamilyBuilder::counter(&self.packets, VXLAN_LABELS);
        let mut bytes = FamilyBuilder::counter(&self.bytes, VXLAN_LABELS);
        for (labels, count) in &vxlan {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            packets.sample(&labels, count.packets as f64);
            bytes.sample(&labels, count.bytes as f64);
        }

        let mut malformed = FamilyBuilder::counter(&self.malformed, MALFORMED_LABELS);
        for (key, per_cpu) in
            probe.malformed.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Result::ok)
        {
            let Some(interface) = probe.attached.name(key.ifindex) else { continue };
            malformed.sample(&[&interface, &key.port.to_string()], per_cpu.iter().sum::<u64>() as f64);
        }

        let mut messages_by_labels: BTreeMap<[String; 3], u64> = BTreeMap::new();
        for (key, per_cpu) in
            probe.bgp.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Result::ok)
        {
            let Some(kind) = BgpMessageKind::from_u8(key.kind) else { continue };
            let peer = probe.peers.label(catalogue::BGP_MESSAGES_TOTAL.name, Ipv4Addr::from(key.peer));
            *messages_by_labels
                .entry([peer, direction(key.direction).to_owned(), kind.label().to_owned()])
                .or_default() += per_cpu.iter().sum::<u64>();
        }
        let mut messages = FamilyBuilder::counter(&self.messages, BGP_LABELS);
        for (labels, count) in &messages_by_labels {
            messages.sample(&[&labels[0], &labels[1], &labels[2]], *count as f64);
        }

        let now = monotonic_ns();
        let mut ages: BTreeMap<String, f64> = BTreeMap::new();
        for (peer, seen) in probe.last_seen() {
            let age = now.saturating_sub(seen) as f64 / 1e9;
            let label = probe.peers.label(catalogue::BGP_LAST_MESSAGE_AGE_SECONDS.name, peer);
            // Folded peers: the freshest speaks for them.
            let entry = ages.entry(label).or_insert(age);
            *entry = entry.min(age);
        }
        let mut last_message_age = FamilyBuilder::gauge(&self.last_message_age, PEER_LABEL);
        for (peer, age) in &ages {
            last_message_age.sample(&[peer], *age);
        }

        [packets.build(), bytes.build(), malformed.build(), messages.build(), last_message_age.build()]
            .into_iter()
            .flatten()
            .collect()
    }
}
