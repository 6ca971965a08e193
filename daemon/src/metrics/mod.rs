//! The daemon's Prometheus registry: its own health metrics, and helpers for the probes'
//! collectors, which read eBPF maps at scrape time and emit families built here.

pub mod catalogue;
pub mod labels;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{IntCounterVec, IntGaugeVec, Registry};

/// Metrics about cniguard itself, updated as probes attach and detach.
#[derive(Clone)]
pub struct DaemonMetrics {
    pub registry: Registry,
    /// `cniguard_probe_attached{interface,probe}`: 1 while attached; the series goes away
    /// with the interface.
    pub probe_attached: IntGaugeVec,
    /// `cniguard_probe_attach_errors_total{probe,reason}`, reason from [`AttachFailure`].
    pub attach_errors: IntCounterVec,
    /// `cniguard_probe_available{probe}`: whether this kernel runs the probe.
    pub probe_available: IntGaugeVec,
}

impl DaemonMetrics {
    /// # Panics
    /// Only on a programming error: duplicate or malformed metric definitions.
    #[must_use]
    pub fn new(version: &str, kernel: &str) -> Self {
        let registry = Registry::new();
        let build_info = catalogue::BUILD_INFO.int_gauge_vec().expect("valid metric");
        build_info.with_label_values(&[version, kernel]).set(1);
        let probe_attached = catalogue::PROBE_ATTACHED.int_gauge_vec().expect("valid metric");
        let attach_errors = catalogue::PROBE_ATTACH_ERRORS_TOTAL.int_counter_vec().expect("valid metric");
        let probe_available = catalogue::PROBE_AVAILABLE.int_gauge_vec().expect("valid metric");
        for metric in [
            Box::new(build_info) as Box<dyn Collector>,
            Box::new(probe_attached.clone()),
            Box::new(attach_errors.clone()),
            Box::new(probe_available.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Self { registry, probe_attached, attach_errors, probe_available }
    }
}

/// Bounded causes for `cniguard_probe_attach_errors_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachFailure {
    /// The interface disappeared between its announcement and the attach.
    InterfaceGone,
    PermissionDenied,
    /// The kernel refused the program or attach type (too old, or a feature compiled out).
    Unsupported,
    /// Something else holds the attach point exclusively.
    Busy,
    Other,
}

impl AttachFailure {
    #[must_use]
    pub fn from_errno(errno: Option<i32>) -> Self {
        match errno {
            Some(libc::ENODEV | libc::ENOENT | libc::ENXIO) => Self::InterfaceGone,
            Some(libc::EPERM | libc::EACCES) => Self::PermissionDenied,
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => Self::Unsupported,
            Some(libc::EEXIST | libc::EBUSY) => Self::Busy,
            _ => Self::Other,
        }
    }

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::InterfaceGone => "interface_gone",
            Self::PermissionDenied => "permission_denied",
            Self::Unsupported => "unsupported",
            Self::Busy => "busy",
            Self::Other => "other",
        }
    }
}

/// One metric family assembled at scrape time from values a collector read from a map.
pub struct FamilyBuilder {
    family: MetricFamily,
    label_names: &'static [&'static str],
}

impl FamilyBuilder {
    #[must_use]
    pub fn counter(desc: &Desc, label_names: &'static [&'static str]) -> Self {
        Self::new(desc, label_names, MetricType::COUNTER)
    }

    #[must_use]
    pub fn gauge(desc: &Desc, label_names: &'static [&'static str]) -> Self {
        Self::new(desc, label_names, MetricType::GAUGE)
    }

    #[must_use]
    pub fn histogram(desc: &Desc, label_names: &'static [&'static str]) -> Self {
        Self::new(desc, label_names, MetricType::HISTOGRAM)
    }

    /// Adds a histogram sample: per-bucket counts (not cumulative) for `upper_bounds`, one
    /// more for everything above the last bound, and the sum of all observations.
    pub fn histogram_sample(
        &mut self,
        label_values: &[&str],
        upper_bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        debug_assert_eq!(counts.len(), upper_bounds.len() + 1);
        let mut cumulative = 0;
        let buckets = upper_bounds
            .iter()
            .zip(counts)
            .map(|(bound, count)| {
                cumulative += count;
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(counts.iter().sum());
        histogram.set_sample_sum(sum);
        let mut metric = Metric::from_label(self.labels(label_values));
        metric.set_histogram(histogram);
        self.family.mut_metric().push(metric);
    }

    fn labels(&self, label_values: &[&str]) -> Vec<LabelPair> {
        debug_assert_eq!(label_values.len(), self.label_names.len());
        self.label_names
            .iter()
            .zip(label_values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect()
    }

    fn new(desc: &Desc, label_names: &'static [&'static str], kind: MetricType) -> Self {
        debug_assert_eq!(desc.variable_labels, label_names, "{}: the catalogue's labels", desc.fq_name);
        let mut family = MetricFamily::default();
        family.set_name(desc.fq_name.clone());
        family.set_help(desc.help.clone());
        family.set_field_type(kind);
        Self { family, label_names }
    }

    /// Adds a sample; `label_values` pairs with the builder's label names in order.
    pub fn sample(&mut self, label_values: &[&str], value: f64) {
        let mut metric = Metric::from_label(self.labels(label_values));
        if self.family.get_field_type() == MetricType::COUNTER {
            let mut counter = Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        self.family.mut_metric().push(metric);
    }

    /// The family, or nothing if no sample was added (the text format has no empty families).
    #[must_use]
    pub fn build(self) -> Option<MetricFamily> {
        (!self.family.get_metric().is_empty()).then_some(self.family)
    }
}

/// A metric description for a collector's `desc()`.
///
/// # Panics
/// Only on a programming error: an invalid metric or label name.
#[must_use]
pub fn describe(name: &str, help: &str, label_names: &[&str]) -> Desc {
    Desc::new(
        name.to_owned(),
        help.to_owned(),
        label_names.iter().map(|l| (*l).to_owned()).collect(),
        std::collections::HashMap::new(),
    )
    .expect("valid metric description")
}
