//! What several probes share: the configured CIDR classes and the namespace scope (maps
//! taken out of the eBPF object once, here, and held open for as long as the daemon runs:
//! the programs loaded after them must find their fds alive), attaching a raw tracepoint
//! program, and summing per-CPU counters and latency histograms for the collectors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::RawTracePoint;
use aya::programs::raw_trace_point::RawTracePointLink;
use probe_common::counters::{Histogram, LATENCY_BOUNDS_NS, LATENCY_BUCKETS};
use probe_common::overlay::{CidrTable, OTHER_CIDR};
use prometheus::core::Desc;
use prometheus::proto::MetricFamily;

use super::cidr::Cidr;
use crate::metrics::FamilyBuilder;
use crate::metrics::labels;
use crate::node::btf::Btf;

/// The configured CIDRs, loaded into `CIDR_TABLE`, and their label values by index.
pub struct CidrClasses {
    _table: Array<MapData, CidrTable>,
    names: Vec<String>,
}

impl CidrClasses {
    /// # Errors
    /// If the map is missing or the kernel refuses an entry.
    pub fn load(ebpf: &mut Ebpf, cidrs: &[Cidr]) -> Result<Self> {
        let mut table: Array<MapData, CidrTable> =
            Array::try_from(ebpf.take_map("CIDR_TABLE").context("the eBPF object has no CIDR_TABLE map")?)?;
        table.set(0, super::cidr::table(cidrs), 0).context("loading the CIDRs into CIDR_TABLE")?;
        Ok(Self { _table: table, names: cidrs.iter().map(|c| c.name.clone()).collect() })
    }

    /// The label value of class `class`: the CIDR's name, or `other`.
    #[must_use]
    pub fn name(&self, class: u8) -> &str {
        if class == OTHER_CIDR {
            labels::OTHER
        } else {
            self.names.get(usize::from(class)).map_or(labels::OTHER, String::as_str)
        }
    }

    /// Every label value a class can have, `other` included.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        names.push(labels::OTHER);
        names.sort_unstable();
        names.dedup();
        names.into_iter()
    }
}

/// Per-CPU array slots the classifiers claim per interface (the first to count there on a
/// CPU holds it; `owner` reads who): which interfaces counted, so the slots of those that
/// go are freed without reading every slot on every link change.
#[derive(Default)]
pub struct ClaimedSlots(BTreeSet<u32>);

impl ClaimedSlots {
    /// The interfaces that went since the last call (`keep` false for them), forgotten
    /// here; `current` (the interfaces attached now) are remembered for the next call.
    pub fn gone(&mut self, keep: &dyn Fn(u32) -> bool, current: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let gone: Vec<u32> = self.0.iter().copied().filter(|ifindex| !keep(*ifindex)).collect();
        for ifindex in &gone {
            self.0.remove(ifindex);
        }
        self.0.extend(current.into_iter().filter(|ifindex| keep(*ifindex)));
        gone
    }
}

/// Zeroes slot `index` on every CPU, freeing it, unless a CPU holds it for an interface
/// still kept: the whole value is written at once, and writing back that interface's
/// counts could lose what it counted meanwhile. Such a slot is cleared when that interface
/// goes; until then the dead interface's counts in it are never read.
pub fn clear_slot<V: aya::Pod + Default>(
    slots: &mut PerCpuArray<MapData, V>,
    index: u32,
    owner: fn(&V) -> u32,
    keep: &dyn Fn(u32) -> bool,
) {
    let Ok(per_cpu) = slots.get(&index, 0) else { return };
    if per_cpu.iter().any(|value| owner(value) != 0 && keep(owner(value))) {
        return;
    }
    let zeros: Vec<V> = per_cpu.iter().map(|_| V::default()).collect();
    if let Ok(zeros) = PerCpuValues::try_from(zeros) {
        let _ = slots.set(index, zeros, 0);
    }
}

/// The namespaces as the programs see them: those in scope (`SCOPE`; node scope only), and
/// the inode number of each cookie (`NETNS_BY_COOKIE`, for the localhost `cgroup_skb`
/// programs, which only get the cookie).
pub struct Scope {
    map: Mutex<HashMap<MapData, u64, u8>>,
    cookies: Mutex<HashMap<MapData, u64, u64>>,
}

impl Scope {
    /// # Errors
    /// If a map is missing.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = HashMap::try_from(ebpf.take_map("SCOPE").context("the eBPF object has no SCOPE map")?)?;
        let cookies = HashMap::try_from(
            ebpf.take_map("NETNS_BY_COOKIE").context("the eBPF object has no NETNS_BY_COOKIE map")?,
        )?;
        Ok(Self { map: Mutex::new(map), cookies: Mutex::new(cookies) })
    }

    /// Limits the programs to these namespaces.
    pub fn set(&self, namespaces: &BTreeSet<u64>) {
        let mut scope = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let present: BTreeSet<u64> = scope.keys().filter_map(Result::ok).collect();
        for netns in present.difference(namespaces) {
            let _ = scope.remove(netns);
        }
        for netns in namespaces.difference(&present) {
            if let Err(err) = scope.insert(netns, 1, 0) {
                tracing::warn!(netns = *netns, "cannot add a namespace to the scope: {err}");
            }
        }
    }

    /// Tells the programs each namespace's inode number by its cookie (cookie to inode).
    pub fn set_cookies(&self, wanted: &BTreeMap<u64, u64>) {
        let mut map = self.cookies.lock().unwrap_or_else(PoisonError::into_inner);
        let present: BTreeMap<u64, u64> = map.iter().filter_map(Result::ok).collect();
        for cookie in present.keys().filter(|c| !wanted.contains_key(c)) {
            let _ = map.remove(cookie);
        }
        for (cookie, inode) in wanted.iter().filter(|(c, i)| present.get(c) != Some(i)) {
            if let Err(err) = map.insert(cookie, inode, 0) {
                tracing::warn!(cookie, inode, "cannot add a namespace cookie: {err}");
            }
        }
    }
}

/// Loads `program` and attaches it to the raw tracepoint `tracepoint`, after checking in
/// the kernel's BTF that the tracepoint's arguments begin with `expected`: the program
/// reads them by position. Returns the link and all the arguments' types.
///
/// # Errors
/// If the tracepoint's arguments differ on this kernel, or the program cannot load or attach.
pub fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program: &str,
    tracepoint: &str,
    expected: &[&str],
) -> Result<(RawTracePointLink, Vec<String>)> {
    let args = btf.check_tracepoint(tracepoint, expected)?;
    let loaded: &mut RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("the eBPF object has no {program} program"))?
        .try_into()?;
    loaded.load().with_context(|| format!("loading {program}"))?;
    let link = loaded
        .attach(tracepoint)
        .with_context(|| format!("attaching {program} to the {tracepoint} tracepoint"))?;
    Ok((loaded.take_link(link)?, args))
}

/// Every entry of a per-CPU counter map, its CPUs summed.
pub fn summed<K: aya::Pod>(map: &Mutex<PerCpuHashMap<MapData, K, u64>>) -> Vec<(K, u64)> {
    let map = map.lock().unwrap_or_else(PoisonError::into_inner);
    map.iter().filter_map(Result::ok).map(|(key, per_cpu)| (key, per_cpu.iter().sum())).collect()
}

/// Latency histograms (the programs' `Histogram`s, in nanoseconds) summed over CPUs and
/// over the keys that share label values, exported in seconds.
#[derive(Default)]
pub struct LatencyTotals(BTreeMap<Vec<String>, ([u64; LATENCY_BUCKETS], u64)>);

impl LatencyTotals {
    pub fn add(&mut self, labels: Vec<String>, per_cpu: &[Histogram]) {
        let (counts, sum_ns) = self.0.entry(labels).or_insert(([0; LATENCY_BUCKETS], 0));
        for cpu in per_cpu {
            for (total, count) in counts.iter_mut().zip(cpu.buckets) {
                *total += count;
            }
            *sum_ns += cpu.sum_ns;
        }
    }

    /// Every label set's histogram summed into one, as `(upper bound in seconds, cumulative
    /// count)`, ending with +Inf: the form judgement takes quantiles of.
    #[must_use]
    pub fn summed_buckets(&self) -> Vec<(f64, f64)> {
        Self::cumulative(self.0.values().map(|(histogram, _)| histogram))
    }

    /// The same, one histogram per value of the first label (the pod, for the localhost
    /// probe's).
    #[must_use]
    pub fn summed_buckets_by_first_label(&self) -> BTreeMap<String, Vec<(f64, f64)>> {
        let mut by: BTreeMap<String, Vec<&[u64; LATENCY_BUCKETS]>> = BTreeMap::new();
        for (labels, (histogram, _)) in &self.0 {
            by.entry(labels.first().cloned().unwrap_or_default()).or_default().push(histogram);
        }
        by.into_iter().map(|(first, histograms)| (first, Self::cumulative(histograms))).collect()
    }

    fn cumulative<'a>(histograms: impl IntoIterator<Item = &'a [u64; LATENCY_BUCKETS]>) -> Vec<(f64, f64)> {
        let mut counts = [0_u64; LATENCY_BUCKETS];
        for histogram in histograms {
            for (total, count) in counts.iter_mut().zip(histogram) {
                *total += count;
            }
        }
        #[allow(clippy::cast_precision_loss, reason = "bounds are at most 1e9 ns, counts far below 2^52")]
        let bounds = LATENCY_BOUNDS_NS.iter().map(|ns| *ns as f64 / 1e9).chain([f64::INFINITY]);
        let mut cumulative = 0;
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        bounds
            .zip(counts)
            .map(|(bound, count)| {
                cumulative += count;
                (bound, cumulative as f64)
            })
            .collect()
    }

    #[must_use]
    pub fn family(&self, desc: &Desc, label_names: &'static [&'static str]) -> Option<MetricFamily> {
        #[allow(clippy::cast_precision_loss, reason = "bounds are at most 1e9 ns")]
        let bounds: Vec<f64> = LATENCY_BOUNDS_NS.iter().map(|ns| *ns as f64 / 1e9).collect();
        let mut family = FamilyBuilder::histogram(desc, label_names);
        for (labels, (counts, sum_ns)) in &self.0 {
            let values: Vec<&str> = labels.iter().map(String::as_str).collect();
            #[allow(clippy::cast_precision_loss, reason = "sums of nanoseconds far below 2^52 s")]
            family.histogram_sample(&values, &bounds, counts, *sum_ns as f64 / 1e9);
        }
        family.build()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// A budget for per-event log lines (a NOTIFICATION, a sampled drop): `burst` lines at
/// once, then one per `every`; lines over budget are not written but counted, in
/// `cniguard_log_lines_suppressed_total{event}` and in the next line written
/// (`suppressed = N`). A flood thus costs a few lines a minute, and says what it hid.
pub struct LogBudget {
    burst: u32,
    every: std::time::Duration,
    state: Mutex<BudgetState>,
    suppressed: prometheus::IntCounter,
}

struct BudgetState {
    tokens: u32,
    refilled: std::time::Instant,
    suppressed_since_last: u64,
}

impl LogBudget {
    /// A budget for `event`, its suppressed count registered in `registry` (one series of
    /// `cniguard_log_lines_suppressed_total` per event, each budget its own).
    ///
    /// # Errors
    /// If `event` already has a budget in `registry`.
    pub fn new(
        event: &str,
        burst: u32,
        every: std::time::Duration,
        registry: &prometheus::Registry,
    ) -> Result<Self> {
        let def = &crate::metrics::catalogue::LOG_LINES_SUPPRESSED_TOTAL;
        let suppressed = prometheus::IntCounter::with_opts(
            prometheus::Opts::new(def.name, def.help).const_label(def.labels[0], event),
        )?;
        registry.register(Box::new(suppressed.clone()))?;
        Ok(Self {
            burst,
            every,
            state: Mutex::new(BudgetState {
                tokens: burst,
                refilled: std::time::Instant::now(),
                suppressed_since_last: 0,
            }),
            suppressed,
        })
    }

    /// `Some(n)` if a line may be written now, `n` the lines suppressed since the last one;
    /// `None` (and counted) if not.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    fn allow_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let every = self.every.as_nanos().max(1);
        let earned = now.saturating_duration_since(state.refilled).as_nanos() / every;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            state.tokens = state.tokens.saturating_add(earned).min(self.burst);
            state.refilled = now;
        }
        if state.tokens == 0 {
            state.suppressed_since_last += 1;
            self.suppressed.inc();
            return None;
        }
        state.tokens -= 1;
        Some(std::mem::take(&mut state.suppressed_since_last))
    }
}

#[cfg(test)]
mod log_budget_tests {
    use std::time::{Duration, Instant};

    use super::LogBudget;

    #[test]
    fn a_flood_writes_the_burst_then_one_line_per_interval_with_the_count_it_hid() {
        let registry = prometheus::Registry::new();
        let budget = LogBudget::new("test", 3, Duration::from_secs(10), &registry).unwrap();
        let other = LogBudget::new("other_test", 3, Duration::from_secs(10), &registry).unwrap();
        assert_eq!(other.allow_at(Instant::now()), Some(0));
        let start = Instant::now();
        let allowed: Vec<Option<u64>> = (0..1000).map(|_| budget.allow_at(start)).collect();
        assert_eq!(allowed.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(budget.suppressed.get(), 997);
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(text.contains("cniguard_log_lines_suppressed_total{event=\"test\"} 997"), "{text}");
        assert!(text.contains("cniguard_log_lines_suppressed_total{event=\"other_test\"} 0"), "{text}");
        assert_eq!(budget.allow_at(start + Duration::from_secs(10)), Some(997));
        assert_eq!(budget.allow_at(start + Duration::from_secs(10)), None);
        assert_eq!(budget.allow_at(start + Duration::from_secs(25)), Some(1));
    }
}
