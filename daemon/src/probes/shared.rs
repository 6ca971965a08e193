//! What several probes share: the configured CIDR classes and the namespace scope (maps
//! taken out of the eBPF object once, here, and held open for as long as the daemon runs:
//! the programs loaded after them must find their fds alive), attaching a raw tracepoint
//! program, and summing per-CPU counters and latency histograms for the collectors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::programs::RawTracePoint;
use aya::programs::raw_trace_point::RawTracePointLink;
use probe_common::counters::{Histogram, LATENCY_BOUNDS_NS, LATENCY_BUCKETS};
use probe_common::overlay::OTHER_CIDR;
use prometheus::core::Desc;
use prometheus::proto::MetricFamily;

use super::cidr::Cidr;
use crate::metrics::FamilyBuilder;
use crate::metrics::labels;
use crate::node::btf::Btf;

/// The configured CIDRs, loaded into `CIDR_CLASSES`, and their label values by index.
pub struct CidrClasses {
    _trie: LpmTrie<MapData, [u8; 4], u8>,
    names: Vec<String>,
}

impl CidrClasses {
    /// # Errors
    /// If the map is missing or the kernel refuses an entry.
    pub fn load(ebpf: &mut Ebpf, cidrs: &[Cidr]) -> Result<Self> {
        let mut trie: LpmTrie<MapData, [u8; 4], u8> = LpmTrie::try_from(
            ebpf.take_map("CIDR_CLASSES").context("the eBPF object has no CIDR_CLASSES map")?,
        )?;
        for (index, cidr) in cidrs.iter().enumerate() {
            trie.insert(
                &Key::new(u32::from(cidr.prefix_len), cidr.network.octets()),
                u8::try_from(index)?,
                0,
            )
            .with_context(|| format!("loading CIDR {}/{} ({})", cidr.network, cidr.prefix_len, cidr.name))?;
        }
        Ok(Self { _trie: trie, names: cidrs.iter().map(|c| c.name.clone()).collect() })
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
        let mut counts = [0_u64; LATENCY_BUCKETS];
        for (histogram, _) in self.0.values() {
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
