//! `drops`: every packet the kernel drops, by reason, device, namespace and protocol, from
//! the `kfree_skb` raw tracepoint. Reason names are the running kernel's (its BTF's `enum
//! skb_drop_reason`: the numbers differ between kernels). A sampled few drops are resolved
//! to the kernel function they happened in (/proc/kallsyms), logged, and counted for the
//! busiest locations.
//!
//! Kernels before 5.17 give no reason (the tracepoint has only the skb and the location).
//! There every drop is counted with the reason `NONE_GIVEN`, and by its location in the
//! kernel: `cniguard_drops_by_location_total` then holds exact counts by function (the
//! busiest ones), which is what tells a netfilter drop (`nf_hook_slow`) from a missing
//! route (`ip_error`) on those kernels.
//!
//! Entries of interfaces and namespaces that are gone are taken out of the map every
//! [`RECLAIM_EVERY`]: their series leave /metrics with them, and churn cannot fill the map.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuHashMap, RingBuf};
use aya::programs::raw_trace_point::RawTracePointLink;
use probe_common::drops::{DropEvent, DropKey, REASON_NONE_GIVEN};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use tokio::io::unix::AsyncFd;

use super::registry::{Need, ProbeSpec, Programs, Started};
use super::shared::{LogBudget, attach_raw_tracepoint, summed};
use crate::judgement::signals::{SignalSource, Totals};
use crate::metrics::{DaemonMetrics, FamilyBuilder, catalogue};
use crate::node::btf::Btf;
use crate::node::namespaces::{self, InterfaceResolver, SharedInventory};

pub const NAME: &str = "drops";
const LABELS: &[&str] = &["reason", "interface", "netns", "protocol"];
const LOCATION_LABELS: &[&str] = &["reason", "function"];
/// Sampled drop log lines: this many at once, then one per minute (the rest counted).
const LOG_BURST: u32 = 10;
const LOG_EVERY: Duration = Duration::from_mins(1);
/// How often entries of gone interfaces and namespaces are reclaimed.
pub const RECLAIM_EVERY: Duration = Duration::from_secs(1);

/// The tracepoint's arguments the reasoned program reads.
const TRACEPOINT: &str = "kfree_skb";
const WITH_REASON: &[&str] = &["sk_buff*", "void*", "skb_drop_reason"];
const WITHOUT_REASON: &[&str] = &["sk_buff*", "void*"];

/// The program this kernel's tracepoint calls for: with a reason argument, or without.
fn programs(btf: &Btf) -> Result<&'static [&'static str]> {
    let args = btf.tracepoint_args(TRACEPOINT)?;
    Ok(if args.get(2).is_some_and(|a| a == WITH_REASON[2]) { &["drops"] } else { &["drops_unreasoned"] })
}

pub struct Drops {
    _link: RawTracePointLink,
    counts: Mutex<PerCpuHashMap<MapData, DropKey, u64>>,
    /// The kernel's reason names; `None` on a kernel that gives no reasons.
    reasons: Option<HashMap<u32, String>>,
    symbols: Arc<Symbols>,
    /// Sampled drops by (reason, function), where the kernel gives reasons.
    locations: Arc<Mutex<HashMap<(String, String), u64>>>,
    top_locations: usize,
    inventory: SharedInventory,
    interfaces: InterfaceResolver,
    /// Namespaces seen in the inventory: once one leaves it, its entries go.
    known_namespaces: Mutex<HashSet<u64>>,
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
        let program = programs(btf)?[0];
        let reasons = if program == "drops" {
            let names = btf
                .enum_values("skb_drop_reason")?
                .into_iter()
                .filter_map(|(value, name)| {
                    Some((
                        u32::try_from(value).ok()?,
                        name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name).to_owned(),
                    ))
                })
                .collect();
            Some(names)
        } else {
            tracing::info!(
                "this kernel's kfree_skb tracepoint gives no drop reason: drops are counted as {NONE_GIVEN}, by kernel function"
            );
            None
        };
        let counts =
            PerCpuHashMap::try_from(ebpf.take_map("DROPS").context("the eBPF object has no DROPS map")?)?;
        let events = RingBuf::try_from(
            ebpf.take_map("DROP_EVENTS").context("the eBPF object has no DROP_EVENTS map")?,
        )?;
        let expected = if reasons.is_some() { WITH_REASON } else { WITHOUT_REASON };
        let (link, _) = attach_raw_tracepoint(ebpf, btf, program, TRACEPOINT, expected)?;
        let probe = Arc::new(Self {
            _link: link,
            counts: Mutex::new(counts),
            reasons,
            symbols: Arc::new(Symbols::load()),
            locations: Arc::default(),
            top_locations,
            inventory,
            interfaces,
            known_namespaces: Mutex::default(),
        });
        let budget = LogBudget::new("drop", LOG_BURST, LOG_EVERY, &metrics.registry)?;
        follow(events, probe.clone(), budget)?;
        let reclaimer = probe.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECLAIM_EVERY);
            loop {
                tick.tick().await;
                let reclaimer = reclaimer.clone();
                // Entering namespaces blocks: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || reclaimer.reclaim()).await;
            }
        });
        metrics.registry.register(Box::new(DropsCollector::new(probe.clone())))?;
        Ok(probe)
    }

    /// Removes the entries of interfaces that no longer exist and of namespaces that left
    /// the inventory. The kernel is asked (by index, in the namespace), so an interface
    /// too new for the daemon's table is never taken for gone.
    fn reclaim(&self) {
        let keys: Vec<DropKey> = self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter_map(Result::ok)
            .collect();
        let mut by_namespace: HashMap<u64, Vec<DropKey>> = HashMap::new();
        for key in keys.into_iter().filter(|k| k.netns != 0) {
            by_namespace.entry(key.netns).or_default().push(key);
        }
        let inventory = namespaces::read(&self.inventory).clone();
        let mut known = self.known_namespaces.lock().unwrap_or_else(PoisonError::into_inner);
        known.extend(inventory.by_netns.keys().copied());
        let mut stale = Vec::new();
        for (netns, keys) in by_namespace {
            let Some(namespace) = inventory.by_netns.get(&netns) else {
                if known.contains(&netns) {
                    stale.extend(keys);
                }
                continue;
            };
            let indexes: HashSet<u32> = keys.iter().map(|k| k.ifindex).filter(|i| *i != 0).collect();
            let gone = |indexes: HashSet<u32>| -> HashSet<u32> {
                indexes.into_iter().filter(|i| !interface_exists(*i)).collect()
            };
            let gone = if namespace.own {
                Some(gone(indexes))
            } else {
                namespaces::in_namespace(&namespace.path, move || gone(indexes))
            };
            let Some(gone) = gone else { continue };
            stale.extend(keys.into_iter().filter(|k| gone.contains(&k.ifindex)));
        }
        known.retain(|netns| inventory.by_netns.contains_key(netns));
        drop(known);
        if stale.is_empty() {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &stale {
            let _ = counts.remove(key);
        }
        tracing::debug!(entries = stale.len(), "drop counts of gone interfaces and namespaces reclaimed");
    }

    fn reason(&self, reason: u32) -> String {
        if reason == REASON_NONE_GIVEN {
            return NONE_GIVEN.to_owned();
        }
        let name = self.reasons.as_ref().and_then(|names| names.get(&reason));
        name.cloned().unwrap_or_else(|| reason.to_string())
    }

    /// The busiest locations by (reason, function): sampled where the kernel gives
    /// reasons, exact from the counts where it gives none.
    fn locations(&self, entries: &[(DropKey, u64)]) -> Vec<((String, String), u64)> {
        let mut by_function: HashMap<(String, String), u64> = if self.reasons.is_some() {
            self.locations.lock().unwrap_or_else(PoisonError::into_inner).clone()
        } else {
            let mut exact = HashMap::new();
            for &(key, count) in entries {
                let function = self.symbols.function(key.location);
                *exact.entry((self.reason(key.reason), function)).or_default() += count;
            }
            exact
        };
        let mut top: Vec<_> = by_function.drain().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(self.top_locations);
        top
    }
}

/// Whether the calling thread's namespace has an interface `index`. (nix's
/// `if_indextoname` answers an empty name for a missing one: libc is asked directly.)
fn interface_exists(index: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    !unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null()
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

    /// The function at `address`, or `unknown`.
    fn function(&self, address: u64) -> String {
        self.resolve(address).map_or_else(|| "unknown".to_owned(), |(_, function)| function.to_owned())
    }
}

/// Counts and logs the sampled drops, for as long as the daemon runs.
fn follow(ring: RingBuf<MapData>, probe: Arc<Drops>, budget: LogBudget) -> Result<()> {
    // SAFETY: the ring buffer owns its fd, which stays open and the same while it lives, and
    // the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("polling the drop ring buffer: {err}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = ring.readable_mut().await else { return };
            while let Some(item) = guard.get_inner_mut().next() {
                if item.len() < size_of::<DropEvent>() {
                    continue;
                }
                // SAFETY: the program writes exactly this #[repr(C)] plain-data struct.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) };
                let reason = probe.reason(event.reason);
                let (place, function) = probe.symbols.resolve(event.location).map_or_else(
                    || (format!("0x{:x}", event.location), "unknown".to_owned()),
                    |(p, f)| (p, f.to_owned()),
                );
                if probe.reasons.is_some() {
                    *probe
                        .locations
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry((reason.clone(), function))
                        .or_default() += 1;
                }
                let Some(suppressed) = budget.allow() else { continue };
                let netns =
                    namespaces::read(&probe.inventory).label(event.netns).unwrap_or_else(|| "unknown".into());
                tracing::info!(
                    reason,
                    netns,
                    ifindex = event.ifindex,
                    protocol = protocol(event.protocol),
                    suppressed,
                    "packet dropped at {place}"
                );
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

impl Drops {
    /// The drops by `cniguard_drops_total`'s labels: reason, interface, netns, protocol.
    /// Drops in namespaces no longer watched are left out.
    fn by_labels(&self, entries: &[(DropKey, u64)]) -> BTreeMap<[String; 4], u64> {
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
        for ([reason, ..], count) in self.by_labels(&summed(&self.counts)) {
            // The kernel's default reason: skbs freed on many harmless paths.
            if reason != NOT_SPECIFIED {
                *totals.drops.entry(reason).or_default() += count as f64;
            }
        }
    }
}

/// The reason the kernel gives when it gives none.
const NOT_SPECIFIED: &str = "NOT_SPECIFIED";
/// The `reason` of every drop on a kernel whose tracepoint has no reason at all (before
/// 5.17). Unlike `NOT_SPECIFIED` it covers real drops too, so judgement keeps it.
pub const NONE_GIVEN: &str = "NONE_GIVEN";

pub const SPEC: ProbeSpec = ProbeSpec {
    name: NAME,
    what: "kernel drop counts",
    loses: "cniguard_drops_*: kernel drops by reason, and the regression trigger's drop ratio",
    programs: Programs::ByBtf(programs),
    needs: &[Need::Btf],
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
        // One read of the map for both families.
        let entries = summed(&probe.counts);
        let totals = probe.by_labels(&entries);
        let mut drops = FamilyBuilder::counter(&self.drops, LABELS);
        for (labels, count) in &totals {
            drops.sample(&[&labels[0], &labels[1], &labels[2], &labels[3]], *count as f64);
        }
        let mut locations = FamilyBuilder::counter(&self.locations, LOCATION_LABELS);
        for ((reason, function), count) in probe.locations(&entries) {
            locations.sample(&[&reason, &function], count as f64);
        }
        [drops.build(), locations.build()].into_iter().flatten().collect()
    }
}
