//! Every metric `cniguard run` and `cniguard rollback-hook` export, one row each: name,
//! type, label names and help text. Collectors and registrations name their metrics only
//! through these constants (`BGP_SESSION_UP.desc()`, `DNS_TIMEOUTS_TOTAL.int_counter_vec()`),
//! the README's Metrics table is checked against [`ALL`], and the dashboards' validator
//! accepts only the README's metrics: adding a metric is one row here and one there.

use prometheus::core::Desc;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The type as the text format (and the README) writes it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric: what /metrics shows of it before a single sample.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// One `pub const` per row, and [`ALL`] listing them in order.
macro_rules! define {
    ($($(#[$doc:meta])* $id:ident: $kind:ident $name:literal [$($label:literal),*] $help:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $id: MetricDef =
                MetricDef { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help };
        )*
        /// Every metric, in the order of the rows.
        pub const ALL: &[&MetricDef] = &[$(&$id),*];
    };
}

define! {
    // The daemon itself (`DaemonMetrics`, `labels`, `state_file`).
    BUILD_INFO: Gauge "cniguard_build_info" ["version", "kernel"]
        "cniguard's version and the kernel it runs on (always 1)";
    PROBE_ATTACHED: Gauge "cniguard_probe_attached" ["interface", "probe"]
        "1 while a probe is attached to an interface";
    PROBE_ATTACH_ERRORS_TOTAL: Counter "cniguard_probe_attach_errors_total" ["probe", "reason"]
        "Failed attempts to attach a probe, by cause";
    PROBE_AVAILABLE: Gauge "cniguard_probe_available" ["probe"]
        "1 if the probe runs on this node, 0 if this kernel cannot run it (the daemon's log and cniguard check say why)";
    LABEL_OVERFLOW_TOTAL: Counter "cniguard_label_overflow_total" ["metric"]
        "Peers counted as peer=\"other\" because a metric reached max_peers";
    STATE_FILE_REJECTED_TOTAL: Counter "cniguard_state_file_rejected_total" ["reason"]
        "State files set aside at start-up: corrupt, foreign (another node or format), unreadable or too_large (over 16 MiB)";
    MAP_FULL_TOTAL: Counter "cniguard_map_full_total" ["map"]
        "Map inserts refused because the map was full";
    HTTP_CONNECTIONS_REFUSED_TOTAL: Counter "cniguard_http_connections_refused_total" []
        "Connections to /metrics and the other endpoints closed at once because the connection limit was reached";
    LOG_LINES_SUPPRESSED_TOTAL: Counter "cniguard_log_lines_suppressed_total" ["event"]
        "Per-event log lines not written because their event type was over its log budget";
    NETNS_ENTER_FAILURES_TOTAL: Counter "cniguard_netns_enter_failures_total" ["reason"]
        "Failed entries into network namespaces (setns): permission (no CAP_SYS_ADMIN), gone, other";

    // probes/iface_stats.rs
    INTERFACE_PACKETS_TOTAL: Counter "cniguard_interface_packets_total" ["interface", "direction", "protocol"]
        "Packets seen at the tc hook of an interface, by direction and protocol class";
    INTERFACE_BYTES_TOTAL: Counter "cniguard_interface_bytes_total" ["interface", "direction", "protocol"]
        "Frame bytes (Ethernet header included, as in `ip -s link`) seen at the tc hook";

    // probes/underlay.rs
    VXLAN_PACKETS_TOTAL: Counter "cniguard_vxlan_packets_total" ["interface", "direction", "port", "vni", "peer"]
        "VXLAN packets on the underlay, by UDP port, VNI and the remote node's address";
    VXLAN_BYTES_TOTAL: Counter "cniguard_vxlan_bytes_total" ["interface", "direction", "port", "vni", "peer"]
        "Outer frame bytes of VXLAN packets on the underlay";
    VXLAN_MALFORMED_TOTAL: Counter "cniguard_vxlan_malformed_total" ["interface", "port"]
        "Packets to a VXLAN port that are not VXLAN (header cut short, or the I flag unset); passed, never dropped";
    BGP_MESSAGES_TOTAL: Counter "cniguard_bgp_messages_total" ["peer", "direction", "type"]
        "BGP messages at the start of TCP segments on port 179, by type; unaligned: a segment not starting on a message";
    BGP_NOTIFICATIONS_TOTAL: Counter "cniguard_bgp_notifications_total" ["peer", "code", "subcode"]
        "BGP NOTIFICATION messages seen, by peer, error code and subcode";
    BGP_LAST_MESSAGE_AGE_SECONDS: Gauge "cniguard_bgp_last_message_age_seconds" ["peer"]
        "Time since the last BGP message from the peer; a healthy session keeps it below the hold time";

    // probes/overlay.rs
    OVERLAY_PACKETS_TOTAL: Counter "cniguard_overlay_packets_total" ["device", "src_cidr", "dst_cidr"]
        "Packets inside a VXLAN device, by the configured CIDR of their source and destination";

    // probes/sock_state.rs
    BGP_SESSION_UP: Gauge "cniguard_bgp_session_up" ["peer"]
        "1 while a BGP session to the peer is ESTABLISHED";
    BGP_SESSION_TRANSITIONS_TOTAL: Counter "cniguard_bgp_session_transitions_total" ["peer", "state"]
        "TCP state changes of BGP sessions, by peer and new state";
    TCP_CONNECTIONS_TOTAL: Counter "cniguard_tcp_connections_total" ["port", "result"]
        "Connection attempts from this node to watched ports (Calico Typha), by result";

    // probes/localhost.rs
    LOCALHOST_CONNECT_SECONDS: Histogram "cniguard_localhost_connect_seconds" ["netns", "port"]
        "Loopback TCP connect latency inside a namespace: SYN sent to SYN-ACK sent back";
    LOCALHOST_RESPONSE_SECONDS: Histogram "cniguard_localhost_response_seconds" ["netns", "port", "protocol"]
        "Loopback request-to-response latency inside a namespace, per exchange: http1 (a request line to its status line), http2 (a stream's client HEADERS to the server's first HEADERS; a gRPC call), other (first byte to first byte)";
    LOCALHOST_STREAM_FAILURES_TOTAL: Counter "cniguard_localhost_stream_failures_total" ["netns", "port", "frame", "code"]
        "HTTP/2 exchanges on loopback that failed: rst_stream (a stream reset before its response) and goaway, by HTTP/2 error code";
    LOCALHOST_UNMEASURED_TOTAL: Counter "cniguard_localhost_unmeasured_total" ["netns", "port", "reason"]
        "Loopback exchanges the probe could not follow, counted instead of guessed: frames_beyond_bound, streams_beyond_bound, out_of_sync, no_room";
    LOCALHOST_CONNECT_FAILURES_TOTAL: Counter "cniguard_localhost_connect_failures_total" ["netns", "port", "reason"]
        "Failed loopback connections inside a namespace: refused (RST answered the SYN), timeout (SYN never answered), reset (an open connection reset)";
    LOCALHOST_PROBE_SUCCESS: Gauge "cniguard_localhost_probe_success" ["netns", "port"]
        "1 if the last active health check in the namespace succeeded";
    LOCALHOST_PROBE_SECONDS: Gauge "cniguard_localhost_probe_seconds" ["netns", "port"]
        "Duration of the last active health check (connect to answer)";
    LOCALHOST_FAILURE_CAUSE: Gauge "cniguard_localhost_failure_cause" ["netns", "port", "cause"]
        "1 for what the last active health check met: none, nothing_listens, pod_address_only, ipv6_loopback_only, ipv4_loopback_only, slow, filtered, not_ready, other";

    // probes/drops.rs
    DROPS_TOTAL: Counter "cniguard_drops_total" ["reason", "interface", "netns", "protocol"]
        "Packets the kernel dropped, by its drop reason, the packet's device and namespace, and protocol";
    DROPS_BY_LOCATION_TOTAL: Counter "cniguard_drops_by_location_total" ["reason", "function"]
        "Drops by reason and the kernel function they happened in, the busiest locations only (sampled; exact where the kernel gives no reasons)";

    // probes/tcp_health.rs
    TCP_RETRANSMITS_TOTAL: Counter "cniguard_tcp_retransmits_total" ["peer_cidr"]
        "TCP segments retransmitted (SYN-ACKs included), by the configured CIDR of the remote end";
    TCP_RESETS_TOTAL: Counter "cniguard_tcp_resets_total" ["peer_cidr", "direction"]
        "TCP resets sent and received, by the configured CIDR of the remote end";
    TCP_SRTT_SECONDS: Histogram "cniguard_tcp_srtt_seconds" ["peer_cidr"]
        "Smoothed round-trip time of TCP connections (sampled), by the configured CIDR of the remote end";

    // probes/dns.rs
    DNS_QUERIES_TOTAL: Counter "cniguard_dns_queries_total" ["interface", "server"]
        "DNS queries from pods on this node, by the pod's interface and the server asked";
    DNS_RESPONSES_TOTAL: Counter "cniguard_dns_responses_total" ["server", "rcode"]
        "DNS answers to pods on this node that matched a query, by server and response code";
    DNS_LATENCY_SECONDS: Histogram "cniguard_dns_latency_seconds" ["server"]
        "Time from a pod's DNS query to the answer, as seen on its interface, by server";
    DNS_TIMEOUTS_TOTAL: Counter "cniguard_dns_timeouts_total" ["server"]
        "DNS queries from pods on this node left unanswered for [dns] timeout_seconds, by server";
    DNS_UNMATCHED_RESPONSES_TOTAL: Counter "cniguard_dns_unmatched_responses_total" ["server"]
        "DNS answers over UDP that matched no outstanding query: late (after the timeout) or unsolicited";
    DNS_UNTRACKED_QUERIES_TOTAL: Counter "cniguard_dns_untracked_queries_total" ["server"]
        "DNS queries that could not be remembered for matching (outstanding-query map full)";
    DNS_MALFORMED_TOTAL: Counter "cniguard_dns_malformed_total" ["interface", "direction"]
        "Port 53 traffic on pod interfaces that is not a DNS message of the expected kind";

    // judgement/phase.rs
    MIGRATION_PHASE: Gauge "cniguard_migration_phase" ["phase"]
        "1 for the CNI phase this node is in (flannel, mixed, calico, unknown), 0 for the others";
    MIGRATION_PHASE_CHANGED_TIMESTAMP_SECONDS: Gauge "cniguard_migration_phase_changed_timestamp_seconds" []
        "When this node entered its current phase (Unix time; kept across daemon restarts)";
    MIGRATION_SIGNAL: Gauge "cniguard_migration_signal" ["signal"]
        "1 if the node shows this sign of a CNI: flannel_vxlan, flannel_bridge, calico_vxlan, bird_routes";
    MIGRATION_POD_INTERFACES: Gauge "cniguard_migration_pod_interfaces" ["cni"]
        "Pod interfaces on this node by the CNI their name belongs to (veth*: flannel, cali*: calico)";

    // judgement/baseline.rs
    BASELINE: Gauge "cniguard_baseline" ["signal"]
        "The signal's baseline, learnt while the node ran Flannel (frozen once it left)";
    BASELINE_WINDOW: Gauge "cniguard_baseline_window" ["signal"]
        "The signal's value over the latest window";
    BASELINE_RATIO: Gauge "cniguard_baseline_ratio" ["signal"]
        "The latest window over the baseline, once the node has left Flannel (+Inf: something where the baseline had nothing)";
    BASELINE_DROPS_PER_SECOND: Gauge "cniguard_baseline_drops_per_second" ["reason"]
        "Drops per second by reason, learnt while the node ran Flannel";
    BASELINE_DROPS_RATIO: Gauge "cniguard_baseline_drops_ratio" ["reason"]
        "Drops per second by reason over the latest window, over their baseline, once the node has left Flannel";
    TCP_SEGMENTS_SENT_TOTAL: Counter "cniguard_tcp_segments_sent_total" []
        "TCP segments sent by the watched namespaces (the kernel's OutSegs), updated every baseline window";

    // judgement/checks.rs
    CHECK_SUCCESS: Gauge "cniguard_check_success" ["check", "target"]
        "1 if the latest active check of the target succeeded, 0 if it failed";
    CHECK_SECONDS: Histogram "cniguard_check_seconds" ["check", "target"]
        "How long active checks took, from the pod's namespace";
    CHECK_FAILURES_TOTAL: Counter "cniguard_check_failures_total" ["check", "target", "reason"]
        "Failed active checks by reason: timeout, refused, unreachable, reset, http_status, grpc_status, protocol, resolve, dns_rcode, dns_empty, other";
    CHECK_STALE: Gauge "cniguard_check_stale" ["check", "target"]
        "1 while the target's latest active check result is older than 3 check intervals: no data for the triggers";

    // judgement/triggers.rs
    ROLLBACK_TRIGGER_ACTIVE: Gauge "cniguard_rollback_trigger_active" ["trigger", "severity"]
        "1 while the rollback trigger or success criterion is active on this node";
    ROLLBACK_TRIGGER_PENDING_SECONDS: Gauge "cniguard_rollback_trigger_pending_seconds" ["trigger", "severity"]
        "How long the trigger's condition has held (0 when it does not)";
    ROLLBACK_TRIGGER_VALUE: Gauge "cniguard_rollback_trigger_value" ["trigger", "severity"]
        "The number the trigger's condition compares with its threshold (absent without data)";
    ROLLBACK_RECOMMENDED: Gauge "cniguard_rollback_recommended" []
        "1 while a rollback-severity trigger is active on this node: the runbook says roll back";

    // diagnose/
    FINDING: Gauge "cniguard_finding" ["finding", "severity"]
        "1 while the finding (a named cause of a failing cutover) is raised on this node, 0 while not";
    FINDING_EVIDENCE: Gauge "cniguard_finding_evidence" ["finding"]
        "The number behind a raised finding, summed over its subjects (packets unanswered, failed connections, routes)";
    FINDING_SUBJECTS_DROPPED_TOTAL: Counter "cniguard_finding_subjects_dropped_total" []
        "Finding subjects not followed because the findings already followed the most they keep";

    // rollback_hook.rs (`cniguard rollback-hook`, not `cniguard run`)
    ROLLBACK_EXECUTIONS_TOTAL: Counter "cniguard_rollback_executions_total" ["result"]
        "Rollback command runs by result: succeeded, failed, dry_run (logged, not run: the hook is not armed), or unknown (started, and the hook stopped before it saw the end)";
    ROLLBACK_HOOK_REQUESTS_TOTAL: Counter "cniguard_rollback_hook_requests_total" ["outcome"]
        "Webhook requests by outcome: accepted, unauthorized (no or a wrong bearer token, body unread), bad_request, too_large, timeout, refused (503: the run is due but cannot be proven to be the first)";
    ROLLBACK_HOOK_ARMED: Gauge "cniguard_rollback_hook_armed" []
        "1 if the hook runs the rollback, 0 in dry-run";
    ROLLBACK_HOOK_RUN_STATE: Gauge "cniguard_rollback_hook_run_state" ["state"]
        "1 for the state of the hook's run record: none, started, succeeded, failed, unknown (its end never seen), untrusted (unreadable: refusing to run), unwritable (due, but cannot be recorded: refusing to run)";
    ROLLBACK_HOOK_RECORD_ERRORS_TOTAL: Counter "cniguard_rollback_hook_record_errors_total" ["operation"]
        "Failures to read or write the hook's state files, by operation: read, write";
    ROLLBACK_HOOK_FIRING_ALERTS: Gauge "cniguard_rollback_hook_firing_alerts" []
        "Rollback alerts firing as last notified, by fingerprint (kept across restarts)";

    // cluster/
    CLUSTER_PODS: Gauge "cniguard_cluster_pods" ["state"]
        "Pods on this node: mapped to a network namespace, unmapped (no namespace holds their IP yet), host_network";
    CLUSTER_API_ERRORS_TOTAL: Counter "cniguard_cluster_api_errors_total" ["resource", "reason"]
        "Failed Kubernetes API calls by resource and cause (forbidden: RBAC denies it)";
    MIGRATION_PHASE_DISAGREEMENT: Gauge "cniguard_migration_phase_disagreement" ["source"]
        "1 while this node's own phase contradicts the cluster's (source: node_label, else calico_objects), 0 while they agree";
    CLUSTER_PHASE: Gauge "cniguard_cluster_phase" ["source", "phase"]
        "1 for the CNI each cluster source says this node runs (node_label, calico_objects: flannel or calico)";
    CLUSTER_TARGETS: Gauge "cniguard_cluster_targets" ["kind"]
        "Check targets discovered through the API: peer (echo pods on other nodes), service";
    CLUSTER_SERVICE_RESOLVED: Gauge "cniguard_cluster_service_resolved" ["service"]
        "1 while a configured critical Service resolves to a ClusterIP, 0 while it does not exist or is headless";
    CLUSTER_EVENTS_TOTAL: Counter "cniguard_cluster_events_total" ["result"]
        "Rollback trigger Events: created, failed, coalesced (held by the rate limit and superseded), dropped (queue full)";
}

/// The `metric` value of `cniguard_label_overflow_total` for DNS servers, which share one
/// `max_peers` cap across the DNS metrics instead of one per metric.
pub const DNS_SERVERS: &str = "cniguard_dns";

/// The labels cluster mode adds to series of pods' interfaces and namespaces (a test keeps
/// them `cluster::identity`'s).
#[cfg(test)]
const POD_LABELS: &[&str] = &["namespace", "pod"];

impl MetricDef {
    /// The description a collector's `desc()` returns.
    #[must_use]
    pub fn desc(&self) -> Desc {
        super::describe(self.name, self.help, self.labels)
    }

    #[must_use]
    pub fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    #[must_use]
    pub fn histogram_opts(&self) -> HistogramOpts {
        debug_assert_eq!(self.kind, Kind::Histogram, "{}", self.name);
        HistogramOpts::new(self.name, self.help)
    }

    pub fn int_counter_vec(&self) -> prometheus::Result<IntCounterVec> {
        debug_assert_eq!(self.kind, Kind::Counter, "{}", self.name);
        IntCounterVec::new(self.opts(), self.labels)
    }

    pub fn int_gauge_vec(&self) -> prometheus::Result<IntGaugeVec> {
        debug_assert_eq!(self.kind, Kind::Gauge, "{}", self.name);
        IntGaugeVec::new(self.opts(), self.labels)
    }

    pub fn gauge_vec(&self) -> prometheus::Result<GaugeVec> {
        debug_assert_eq!(self.kind, Kind::Gauge, "{}", self.name);
        GaugeVec::new(self.opts(), self.labels)
    }

    pub fn int_gauge(&self) -> prometheus::Result<IntGauge> {
        debug_assert!(self.kind == Kind::Gauge && self.labels.is_empty(), "{}", self.name);
        IntGauge::with_opts(self.opts())
    }

    /// A histogram vector with these bucket bounds.
    pub fn histogram_vec(&self, buckets: Vec<f64>) -> prometheus::Result<HistogramVec> {
        HistogramVec::new(self.histogram_opts().buckets(buckets), self.labels)
    }
}

/// The catalogue's row for a family's name.
#[must_use]
pub fn find(name: &str) -> Option<&'static MetricDef> {
    ALL.iter().copied().find(|def| def.name == name)
}

/// Asserts that a gathered family is the catalogue's: its name, type, help text and label
/// names (beyond the pod labels cluster mode adds).
#[cfg(test)]
pub(crate) fn assert_catalogued(family: &prometheus::proto::MetricFamily) {
    use prometheus::proto::MetricType;
    let name = family.name();
    let def = find(name).unwrap_or_else(|| panic!("{name} is exported but not in metrics/catalogue.rs"));
    let kind = match family.get_field_type() {
        MetricType::COUNTER => Kind::Counter,
        MetricType::GAUGE => Kind::Gauge,
        MetricType::HISTOGRAM => Kind::Histogram,
        other => panic!("{name}: {other:?} is no type of the catalogue"),
    };
    assert_eq!(kind, def.kind, "{name}: type");
    assert_eq!(family.help(), def.help, "{name}: help text");
    let mut expected: Vec<&str> = def.labels.to_vec();
    expected.sort_unstable();
    for metric in family.get_metric() {
        let mut labels: Vec<&str> = metric
            .get_label()
            .iter()
            .map(prometheus::proto::LabelPair::name)
            .filter(|label| !POD_LABELS.contains(label))
            .collect();
        labels.sort_unstable();
        assert_eq!(labels, expected, "{name}: label names");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::cluster::identity::{NAMESPACE_LABEL, POD_LABEL};

    /// The README's `## Metrics` table: name to (type, labels), in the README's order.
    fn readme_table() -> Vec<(String, String, Vec<String>)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let section = readme.split("\n## Metrics\n").nth(1).expect("the README has a ## Metrics section");
        let section = section.split("\n## ").next().unwrap();
        let mut rows = Vec::new();
        for line in section.lines().filter(|line| line.starts_with("| `")) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 4, "a Metrics row is | Metric | Type | Labels | Meaning |: {line}");
            let name = cells[0].trim_matches('`').to_owned();
            let labels = cells[2]
                .split(',')
                .map(|label| label.trim().trim_matches('`').to_owned())
                .filter(|label| !label.is_empty())
                .collect();
            rows.push((name, cells[1].to_owned(), labels));
        }
        assert!(!rows.is_empty(), "no rows in the README's Metrics table");
        rows
    }

    #[test]
    fn the_readme_lists_exactly_the_catalogue() {
        let rows = readme_table();
        let mut readme = BTreeMap::new();
        for (name, kind, labels) in rows {
            assert!(readme.insert(name.clone(), (kind, labels)).is_none(), "{name} is twice in the README");
        }
        let catalogue: BTreeMap<String, (String, Vec<String>)> = ALL
            .iter()
            .map(|def| {
                let labels = def.labels.iter().map(|label| (*label).to_owned()).collect();
                (def.name.to_owned(), (def.kind.name().to_owned(), labels))
            })
            .collect();
        let names = |map: &BTreeMap<String, _>| map.keys().cloned().collect::<BTreeSet<String>>();
        let (in_readme, in_catalogue) = (names(&readme), names(&catalogue));
        assert!(
            in_readme == in_catalogue,
            "the README's Metrics table and metrics/catalogue.rs differ:\nonly in the README: {:?}\nonly in the catalogue: {:?}",
            in_readme.difference(&in_catalogue).collect::<Vec<_>>(),
            in_catalogue.difference(&in_readme).collect::<Vec<_>>(),
        );
        for (name, (kind, labels)) in &catalogue {
            assert_eq!(
                &readme[name],
                &(kind.clone(), labels.clone()),
                "{name}: README (type, labels) vs catalogue"
            );
        }
    }

    #[test]
    fn every_metric_follows_the_naming_rules() {
        let valid = |s: &str| {
            s.starts_with(|c: char| c.is_ascii_lowercase())
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        assert_eq!(POD_LABELS, [NAMESPACE_LABEL, POD_LABEL]);
        let mut names = BTreeSet::new();
        for def in ALL {
            let name = def.name;
            assert!(names.insert(name), "{name} is defined twice");
            assert!(name.starts_with("cniguard_") && valid(name), "{name}: cniguard_ and [a-z0-9_]");
            assert_eq!(
                def.kind == Kind::Counter,
                name.ends_with("_total"),
                "{name}: counters, and only they, end in _total"
            );
            for unit in [
                "_milliseconds",
                "_microseconds",
                "_nanoseconds",
                "_ms",
                "_us",
                "_ns",
                "_kilobytes",
                "_megabytes",
                "_bits",
                "_minutes",
                "_hours",
                "_percent",
            ] {
                assert!(
                    !name.contains(&format!("{unit}_")) && !name.ends_with(unit),
                    "{name}: base units only (seconds, bytes, ratios)"
                );
            }
            if def.kind == Kind::Histogram {
                assert!(
                    name.ends_with("_seconds") || name.ends_with("_bytes"),
                    "{name}: a histogram ends in its unit"
                );
            }
            for suffix in ["_bucket", "_count", "_sum", "_created", "_info_total"] {
                assert!(!name.ends_with(suffix), "{name}: {suffix} is a reserved suffix");
            }
            let mut labels = BTreeSet::new();
            for label in def.labels {
                assert!(valid(label) && labels.insert(label), "{name}: label {label} invalid or repeated");
                assert!(
                    !["le", "quantile"].contains(label) && !POD_LABELS.contains(label),
                    "{name}: label {label} is reserved"
                );
            }
            assert!(!def.help.is_empty() && !def.help.ends_with('.'), "{name}: help text");
            assert_eq!(def.desc().variable_labels, def.labels, "{name}: a valid description");
        }
    }

    #[test]
    fn the_daemons_own_metrics_are_catalogued() {
        let metrics = crate::metrics::DaemonMetrics::new("0.0.0", "6.8.0");
        metrics.probe_attached.with_label_values(&["eth1", "iface_stats"]).set(1);
        metrics.attach_errors.with_label_values(&["iface_stats", "busy"]).inc();
        let peers = crate::metrics::labels::PeerLabels::new(0, &metrics.registry);
        peers.label(BGP_SESSION_UP.name, std::net::Ipv4Addr::LOCALHOST);
        crate::state_file::rejections(&metrics.registry).unwrap().with_label_values(&["corrupt"]).inc();
        let families = metrics.registry.gather();
        assert_eq!(families.len(), 5, "{families:?}");
        families.iter().for_each(assert_catalogued);
    }
}
