//! `drops`: every packet the kernel drops, by reason, device, namespace and protocol, from
//! the `kfree_skb` raw tracepoint. Reason names are the running kernel's (its BTF's `enum
//! skb_drop_reason`: the numbers differ between kernels). A sampled few drops are resolved
//! to the kernel function they happened in (/proc/kallsyms), logged, and counted for the
//! busiest locations.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuHashMap, RingBuf};
use aya::programs::raw_trace_point::RawTracePointLink;
use probe_common::drops::{DropEvent, DropKey};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use tokio::io::unix::AsyncFd;

use super::registry::{Need, ProbeSpec, Started};
use super::shared::{attach_raw_tracepoint, summed};
use crate::judgement::signals::{SignalSource, Totals};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::btf::Btf;
use crate::node::namespaces::{self, InterfaceResolver, SharedInventory};

pub const NAME: &str = "drops";
const LABELS: &[&str] = &["reason", "interface", "netns", "protocol"];
const LOCATION_LABELS: &[&str] = &["reason", "function"];
/// How often the same reason at the same function is logged.
const LOG_EVERY: Duration = Duration::from_mins(1);

pub struct Drops {
    _link: RawTracePointLink,
    counts: Mutex<PerCpuHashMap<MapData, DropKey, u64>>,
    reasons: HashMap<u32, String>,
    locations: Arc<Mutex<HashMap<(String, String), u64>>>,
    top_locations: usize,
    inventory: SharedInventory,
    interfaces: InterfaceResolver,
}

impl Drops {
    /// Attaches the tracepoint program and starts reading the sampled drops.
    ///
    /// # Errors
    /// If the program cannot load or attach, or the kernel's drop reasons are unknown.
    pub fn start(
        ebpf: &mut Ebpf,
        btf: &Btf,
        inventory: SharedInventory,
        interfaces: InterfaceResolver,
        top_locations: usize,
        metrics: &DaemonMetrics,
    ) -> Result<Arc<Self>> {
        let reasons: HashMap<u32, String> = btf
            .enum_values("skb_drop_reason")?
            .into_iter()
            .filter_map(|(value, name)| {
                Some((
                    u32::try_from(value).ok()?,
                    name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name).to_owned(),
                ))
            })
            .collect();
        let counts =
            PerCpuHashMap::try_from(ebpf.take_map("DROPS").context("the eBPF object has no DROPS map")?)?;
        let events = RingBuf::try_from(
            ebpf.take_map("DROP_EVENTS").context("the eBPF object has no DROP_EVENTS map")?,
        )?;
        let (link, _) =
            attach_raw_tracepoint(ebpf, btf, NAME, "kfree_skb", &["sk_buff*", "void*", "skb_drop_reason"])?;
        let probe = Arc::new(Self {
            _link: link,
            counts: Mutex::new(counts),
            reasons,
            locations: Arc::default(),
            top_locations,
            inventory,
            interfaces,
        });
        follow(events, probe.clone(), Symbols::load())?;
        metrics.registry.register(Box::new(DropsCollector::new(probe.clone())))?;
        Ok(probe)
    }

    fn reason(&self, reason: u32) -> String {
        self.reasons.get(&reason).cloned().unwrap_or_else(|| reason.to_string())
    }
}

/// The `protocol` label value of an ethertype (in host order).
fn protocol(ethertype: u16) -> &'static str {
    match ethertype {
        0x0800 => "ipv4",
        0x86dd => "ipv6",
        0x0806 => "arp",
        0 => "none",
        _ => "other",
    }
}

/// Kernel text symbols by address, to name where a drop happened.
struct Symbols(Vec<(u64, String)>);

impl Symbols {
    /// Reads /proc/kallsyms; without CAP_SYSLOG its addresses are zero and nothing resolves.
    fn load() -> Self {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_owned()))
            })
            .collect();
        symbols.sort_unstable();
        if symbols.is_empty() {
            tracing::warn!(
                "/proc/kallsyms shows no addresses (kptr_restrict): drop locations stay unresolved"
            );
        }
        Self(symbols)
    }

    /// `function+0xoffset`, and the function alone.
    fn resolve(&self, address: u64) -> Option<(String, &str)> {
        let index = self.0.partition_point(|(start, _)| *start <= address).checked_sub(1)?;
        let (start, name) = &self.0[index];
        Some((format!("{name}+0x{:x}", address - start), name.as_str()))
    }
}

/// Counts and logs the sampled drops, for as long as the daemon runs.
fn follow(ring: RingBuf<MapData>, probe: Arc<Drops>, symbols: Symbols) -> Result<()> {
    // SAFETY: the ring buffer owns its fd, which stays open and the same while it lives, and
    // the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("polling the drop ring buffer: {err}"))?;
    tokio::spawn(async move {
        let mut logged: HashMap<(String, String), Instant> = HashMap::new();
        loop {
            let Ok(mut guard) = ring.readable_mut().await else { return };
            while let Some(item) = guard.get_inner_mut().next() {
                if item.len() < size_of::<DropEvent>() {
                    continue;
                }
                // SAFETY: the program writes exactly this #[repr(C)] plain-data struct.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) };
                let reason = probe.reason(event.reason);
                let (place, function) = symbols.resolve(event.location).map_or_else(
                    || (format!("0x{:x}", event.location), "unknown".to_owned()),
                    |(p, f)| (p, f.to_owned()),
                );
                *probe
                    .locations
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry((reason.clone(), function.clone()))
                    .or_default() += 1;
                let key = (reason.clone(), function);
                if logged.get(&key).is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    logged.insert(key, Instant::now());
                    let netns = namespaces::read(&probe.inventory)
                        .label(event.netns)
                        .unwrap_or_else(|| "unknown".into());
                    tracing::info!(
                        reason,
                        netns,
                        ifindex = event.ifindex,
                        protocol = protocol(event.protocol),
                        "packet dropped at {place}"
                    );
                }
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

impl Drops {
    /// The drops by `cniguard_drops_total`'s labels: reason, interface, netns, protocol.
    /// Drops in namespaces no longer watched are left out.
    fn by_labels(&self) -> BTreeMap<[String; 4], u64> {
        let entries = summed(&self.counts);
        let mut totals: BTreeMap<[String; 4], u64> = BTreeMap::new();
        let inventory = namespaces::read(&self.inventory);
        for (key, count) in entries {
            let (netns, interface) = if key.netns == 0 {
                ("unknown".to_owned(), String::new())
            } else {
                let Some(namespace) = inventory.by_netns.get(&key.netns) else { continue };
                (namespace.label(), self.interfaces.name(namespace, key.ifindex))
            };
            *totals
                .entry([self.reason(key.reason), interface, netns, protocol(key.protocol).to_owned()])
                .or_default() += count;
        }
        totals
    }
}

impl SignalSource for Drops {
    fn add_to(&self, totals: &mut Totals) {
        for ([reason, ..], count) in self.by_labels() {
            // The kernel's default reason: skbs freed on many harmless paths.
            if reason != NOT_SPECIFIED {
                *totals.drops.entry(reason).or_default() += count as f64;
            }
        }
    }
}

/// The reason the kernel gives when it gives none.
const NOT_SPECIFIED: &str = "NOT_SPECIFIED";

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "kernel drop counts",
    loses: "cniguard_drops_*: kernel drops by reason, and the regression trigger's drop ratio",
    programs: &["drops"],
    needs: &[Need::Btf, Need::BtfEnum("skb_drop_reason")],
    required: false,
    prepare: None,
    start: |context| {
        let btf = context.btf()?;
        let resolver = InterfaceResolver::new(context.all_interfaces.clone());
        let probe = Drops::start(
            context.ebpf,
            btf,
            context.inventory.clone(),
            resolver,
            context.settings.drop_locations,
            context.metrics,
        )?;
        context.signals.publish(probe.clone());
        Ok(Started::Running(Box::new(probe)))
    },
};

struct DropsCollector {
    probe: Arc<Drops>,
    drops: Desc,
    locations: Desc,
}

impl DropsCollector {
    fn new(probe: Arc<Drops>) -> Self {
        Self {
            probe,
            drops: catalogue::DROPS_TOTAL.desc(),
            locations: catalogue::DROPS_BY_LOCATION_TOTAL.desc(),
        }
    }
}

impl Collector for DropsCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.drops, &self.locations]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let probe = &self.probe;
        let totals = probe.by_labels();
        let mut drops = FamilyBuilder::counter(&self.drops, LABELS);
        for (labels, count) in &totals {
            drops.sample(&[&labels[0], &labels[1], &labels[2], &labels[3]], *count as f64);
        }
        let mut top: Vec<((String, String), u64)> = probe
            .locations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut locations = FamilyBuilder::counter(&self.locations, LOCATION_LABELS);
        for ((reason, function), count) in top.into_iter().take(probe.top_locations) {
            locations.sample(&[&reason, &function], count as f64);
        }
        [drops.build(), locations.build()].into_iter().flatten().collect()
    }
}
