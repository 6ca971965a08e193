//! The daemon's configuration: a TOML file (`--config`), overridden by command-line flags.
//!
//! Every field is documented here and in the README's configuration table, and
//! `config/cniguard.toml` shows them all with their defaults. Unknown fields are rejected:
//! a typo in the middle of a migration must not silently fall back to a default.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::judgement::triggers::{Rule, Severity, TriggerName};
use crate::node::interfaces::InterfaceSelector;
pub use crate::node::namespaces::NetnsScope;

/// The default interface patterns: every CNI-managed device Flannel and Calico create.
pub const DEFAULT_INTERFACES: &[&str] = &["veth*", "cali*", "cni0", "flannel.1", "vxlan.calico"];
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cniguard";

/// The configuration file's contents. `#[serde(default)]`: every field may be left out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Address for `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
    /// Interface name patterns (globs: `*`, `?`, `[abc]`, `{a,b}`) the interface probes attach
    /// to. Loopback and physical NICs are attached only when named exactly (no wildcard).
    pub interfaces: Vec<String>,
    /// How classifiers attach: `auto` (tcx where the kernel has it, 6.6+, else netlink),
    /// `tcx`, or `netlink` (clsact qdisc + cls_bpf filter).
    pub tc_attach: TcAttachMode,
    /// Level of the eBPF programs' own log messages (aya-log): `off` keeps the programs from
    /// writing any, so no packet ever pays for logging.
    pub ebpf_log_level: EbpfLogLevel,
    /// Seconds between full re-listings of the interfaces, a safety net for netlink
    /// notifications the kernel dropped under load.
    pub resync_interval_seconds: u64,
    /// UDP destination ports recognised as VXLAN on the underlay, besides those of the
    /// node's own VXLAN devices (found through netlink).
    pub vxlan_ports: Vec<u16>,
    /// Underlay devices to watch besides those the VXLAN devices send through (found
    /// through netlink). Name NICs exactly.
    pub underlay_interfaces: Vec<String>,
    /// Named CIDRs that inner overlay traffic is classified by; an address in none is
    /// `other`. Several CIDRs may share a name.
    pub cidrs: Vec<CidrConfig>,
    /// Distinct peers kept as their own label value per metric; more are counted as
    /// `peer="other"` (and in `cniguard_label_overflow_total`).
    pub max_peers: usize,
    /// Calico Typha's port: connection attempts to it are counted.
    pub typha_port: u16,
    /// Which namespaces this daemon watches: `host` (every namespace: a real node) or `node`
    /// (its own and those of the pods plugged into it by veth: a lab node sharing a kernel).
    pub netns_scope: NetnsScope,
    /// TCP over loopback inside each namespace (the Seldon agent and its MLServer).
    pub localhost: LocalhostConfig,
    /// How many kernel functions `cniguard_drops_by_location_total` reports (the busiest).
    pub drop_locations: usize,
    /// DNS from the pods on this node.
    pub dns: DnsConfig,
    /// Where state kept across restarts lives (the pre-cutover baselines).
    pub state_dir: String,
    /// The pre-cutover baselines.
    pub baseline: BaselineConfig,
    /// Cluster mode: the Kubernetes API (`crate::cluster::settings` documents each field).
    pub cluster: crate::cluster::ClusterConfig,
    /// Active connectivity checks from a pod's network namespace.
    pub checks: ChecksConfig,
    /// The runbook's rollback triggers and success criteria.
    pub triggers: TriggersConfig,
}

/// The `[checks]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksConfig {
    pub enabled: bool,
    /// The pods the checks run from, by `netns` label (globs): the first match, in name
    /// order, is used each round.
    pub from: Vec<String>,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
    /// The cluster DNS (`host:port`, IPv4) for `dns` checks and target names.
    pub resolver: Option<String>,
    /// A TOML file of `[[targets]]`, re-read every round.
    pub targets_file: Option<String>,
    pub targets: Vec<crate::judgement::checks::TargetConfig>,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            from: vec!["*".into()],
            interval_seconds: 10,
            timeout_seconds: 2,
            resolver: None,
            targets_file: None,
            targets: Vec::new(),
        }
    }
}

/// The `[triggers]` table: every trigger's fields are optional and default to the runbook's
/// values (`default_rules`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    pub enabled: bool,
    /// How often the rules are evaluated.
    pub evaluate_seconds: u64,
    pub connectivity_lost: TriggerConfig,
    pub pod_to_pod_not_restored: TriggerConfig,
    pub critical_service_unavailable: TriggerConfig,
    pub dns_failing: TriggerConfig,
    pub localhost_latency_slo: TriggerConfig,
    pub regression: TriggerConfig,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            evaluate_seconds: 10,
            connectivity_lost: TriggerConfig::default(),
            pod_to_pod_not_restored: TriggerConfig::default(),
            critical_service_unavailable: TriggerConfig::default(),
            dns_failing: TriggerConfig::default(),
            localhost_latency_slo: TriggerConfig::default(),
            regression: TriggerConfig::default(),
        }
    }
}

impl TriggersConfig {
    fn get(&self, name: TriggerName) -> &TriggerConfig {
        match name {
            TriggerName::ConnectivityLost => &self.connectivity_lost,
            TriggerName::PodToPodNotRestored => &self.pod_to_pod_not_restored,
            TriggerName::CriticalServiceUnavailable => &self.critical_service_unavailable,
            TriggerName::DnsFailing => &self.dns_failing,
            TriggerName::LocalhostLatencySlo => &self.localhost_latency_slo,
            TriggerName::Regression => &self.regression,
        }
    }
}

/// One `[triggers.<name>]` table; what is left out keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    pub enabled: Option<bool>,
    pub severity: Option<Severity>,
    /// The condition holds while the trigger's value is above this.
    pub threshold: Option<f64>,
    /// An active trigger clears once its value has stayed at or below this...
    pub clear_threshold: Option<f64>,
    /// ...for this long; and becomes active once its condition has held this long.
    pub for_seconds: Option<u64>,
    pub clear_seconds: Option<u64>,
    /// `pod_to_pod_not_restored` only.
    pub restore_deadline_seconds: Option<u64>,
    pub window_seconds: Option<u64>,
}

/// The runbook's rules. Thresholds are in the trigger's own unit: peers or services
/// failing (a count), failure ratios (0 to 1), seconds (latency), baseline ratios.
#[must_use]
pub fn default_rules() -> Vec<Rule> {
    let rule = |name, severity, threshold, clear_threshold, for_seconds, clear_seconds| Rule {
        name,
        severity,
        threshold,
        clear_threshold,
        for_seconds,
        clear_seconds,
        restore_deadline_seconds: 900.0,
        window_seconds: 300.0,
    };
    vec![
        // "Network connectivity failures lasting more than 30 minutes": a peer node whose
        // every pod-to-pod check fails.
        rule(TriggerName::ConnectivityLost, Severity::Rollback, 0.0, 0.0, 1800.0, 300.0),
        // "Pod-to-pod communication cannot be restored": below 99% success once the
        // restore deadline after a phase change has passed.
        rule(TriggerName::PodToPodNotRestored, Severity::Rollback, 0.01, 0.01, 300.0, 300.0),
        rule(TriggerName::CriticalServiceUnavailable, Severity::Rollback, 0.0, 0.0, 300.0, 120.0),
        // "DNS resolution failures": over 5% of queries failing or timing out.
        rule(TriggerName::DnsFailing, Severity::Rollback, 0.05, 0.01, 300.0, 120.0),
        // Success criterion "intra-pod latency under 1 ms".
        rule(TriggerName::LocalhostLatencySlo, Severity::Warning, 0.001, 0.0008, 300.0, 300.0),
        // Success criterion "no degradation": drops or retransmits at twice their baseline.
        rule(TriggerName::Regression, Severity::Warning, 2.0, 1.5, 600.0, 300.0),
    ]
}

fn trigger_settings(config: &TriggersConfig) -> Result<Option<TriggerSettings>, (String, String)> {
    if !config.enabled {
        return Ok(None);
    }
    if config.evaluate_seconds == 0 {
        return Err(("triggers.evaluate_seconds".into(), "must be at least 1 (seconds)".into()));
    }
    Ok(Some(TriggerSettings {
        evaluate_every: Duration::from_secs(config.evaluate_seconds),
        rules: rules(config)?,
    }))
}

/// The rules after the config's overrides, enabled ones only.
fn rules(config: &TriggersConfig) -> Result<Vec<Rule>, (String, String)> {
    let mut rules = Vec::new();
    for mut rule in default_rules() {
        let name = rule.name.label();
        let table = config.get(rule.name);
        let field = |field: &str| format!("triggers.{name}.{field}");
        if rule.name != TriggerName::PodToPodNotRestored
            && (table.restore_deadline_seconds.is_some() || table.window_seconds.is_some())
        {
            return Err((
                field("restore_deadline_seconds"),
                "only pod_to_pod_not_restored has a restore deadline and a window".into(),
            ));
        }
        #[allow(clippy::cast_precision_loss, reason = "seconds, far below 2^52")]
        let seconds = |value: Option<u64>, default: f64| value.map_or(default, |v| v as f64);
        rule.severity = table.severity.unwrap_or(rule.severity);
        rule.threshold = table.threshold.unwrap_or(rule.threshold);
        rule.clear_threshold = table.clear_threshold.unwrap_or(rule.threshold.min(rule.clear_threshold));
        rule.for_seconds = seconds(table.for_seconds, rule.for_seconds);
        rule.clear_seconds = seconds(table.clear_seconds, rule.clear_seconds);
        rule.restore_deadline_seconds =
            seconds(table.restore_deadline_seconds, rule.restore_deadline_seconds);
        rule.window_seconds = seconds(table.window_seconds, rule.window_seconds);
        if !rule.threshold.is_finite() || rule.threshold < 0.0 {
            return Err((field("threshold"), format!("{} must be a number of at least 0", rule.threshold)));
        }
        if !rule.clear_threshold.is_finite()
            || rule.clear_threshold > rule.threshold
            || rule.clear_threshold < 0.0
        {
            return Err((
                field("clear_threshold"),
                format!(
                    "{} must be between 0 and the threshold ({}): a trigger clears below where it fires",
                    rule.clear_threshold, rule.threshold
                ),
            ));
        }
        if rule.window_seconds < 1.0 {
            return Err((field("window_seconds"), "must be at least 1 (seconds)".into()));
        }
        if table.enabled.unwrap_or(true) {
            rules.push(rule);
        }
    }
    Ok(rules)
}

/// The `[baseline]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// The length of one window, in seconds: rates and ratios are computed per window.
    pub window_seconds: u64,
    /// How many of the latest windows in the `flannel` phase make the baseline.
    pub windows: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self { window_seconds: 60, windows: 30 }
    }
}

/// The `[dns]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// The pod-facing interfaces (the node's end of each pod's veth) DNS is watched on.
    pub interfaces: Vec<String>,
    /// A query unanswered this long is a timeout.
    pub timeout_seconds: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self { interfaces: vec!["veth*".into(), "cali*".into()], timeout_seconds: 2 }
    }
}

/// The `[localhost]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalhostConfig {
    /// Server ports whose loopback connections are measured (MLServer: 9500, 8080, 8081).
    pub ports: Vec<u16>,
    /// A SYN unanswered this long is a `timeout` failure.
    pub connect_timeout_seconds: u64,
    /// A connection silent this long is forgotten (its state reclaimed).
    pub idle_timeout_seconds: u64,
    /// The active check, like the runbook's `curl 127.0.0.1:9500/v2/health/ready`.
    pub check: CheckConfig,
}

impl Default for LocalhostConfig {
    fn default() -> Self {
        Self {
            ports: vec![9500, 8080, 8081],
            connect_timeout_seconds: 3,
            idle_timeout_seconds: 600,
            check: CheckConfig::default(),
        }
    }
}

/// The `[localhost.check]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    pub enabled: bool,
    /// Namespaces to check, by `netns` label (globs; the node's own namespace has an empty
    /// label and is never checked).
    pub namespaces: Vec<String>,
    pub port: u16,
    pub path: String,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            namespaces: vec!["*".into()],
            port: 9500,
            path: "/v2/health/ready".into(),
            interval_seconds: 5,
            timeout_seconds: 2,
        }
    }
}

/// One entry of `cidrs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrConfig {
    pub name: String,
    pub cidr: String,
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            interfaces: DEFAULT_INTERFACES.iter().map(|p| (*p).to_owned()).collect(),
            tc_attach: TcAttachMode::Auto,
            ebpf_log_level: EbpfLogLevel::Off,
            resync_interval_seconds: 30,
            vxlan_ports: DEFAULT_VXLAN_PORTS.to_vec(),
            underlay_interfaces: Vec::new(),
            cidrs: DEFAULT_CIDRS
                .iter()
                .map(|(name, cidr)| CidrConfig { name: (*name).to_owned(), cidr: (*cidr).to_owned() })
                .collect(),
            max_peers: 256,
            typha_port: 5473,
            netns_scope: NetnsScope::Host,
            localhost: LocalhostConfig::default(),
            drop_locations: 20,
            dns: DnsConfig::default(),
            state_dir: DEFAULT_STATE_DIR.to_owned(),
            baseline: BaselineConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            checks: ChecksConfig::default(),
            triggers: TriggersConfig::default(),
        }
    }
}

/// Flannel's and Calico's VXLAN ports.
pub const DEFAULT_VXLAN_PORTS: &[u16] = &[8472, 4789];
/// The runbook's address plan: pods and services before (Flannel) and after (Calico).
pub const DEFAULT_CIDRS: &[(&str, &str)] = &[
    ("old_pods", "10.42.0.0/16"),
    ("new_pods", "10.244.0.0/16"),
    ("services", "10.96.0.0/12"),
    ("services", "10.43.0.0/16"),
];

/// A validated CIDR with its label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub name: String,
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    fn parse(config: &CidrConfig) -> Result<Self, String> {
        let name = &config.name;
        if name.is_empty()
            || name == "other"
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "CIDR name `{name}` must be lower-case letters, digits and `_`, and not `other` (that is the label for everything else)"
            ));
        }
        let invalid = || format!("`{}` is not an IPv4 CIDR like 10.42.0.0/16", config.cidr);
        let (address, length) = config.cidr.split_once('/').ok_or_else(invalid)?;
        let network: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = length.parse().ok().filter(|l| *l <= 32).ok_or_else(invalid)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
        if u32::from(network) & !mask != 0 {
            return Err(format!(
                "`{}` has host bits set: did you mean {}/{prefix_len}?",
                config.cidr,
                Ipv4Addr::from(u32::from(network) & mask)
            ));
        }
        Ok(Self { name: name.clone(), network, prefix_len })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcAttachMode {
    Auto,
    Tcx,
    Netlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EbpfLogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl EbpfLogLevel {
    /// The value of aya-log-ebpf's `AYA_LOG_LEVEL` global: messages at or below it are sent.
    #[must_use]
    pub fn as_aya_level(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Error => 1,
            Self::Warn => 2,
            Self::Info => 3,
            Self::Debug => 4,
            Self::Trace => 5,
        }
    }
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub interfaces: Option<Vec<String>>,
    pub tc_attach: Option<TcAttachMode>,
    pub ebpf_log_level: Option<EbpfLogLevel>,
    pub netns_scope: Option<NetnsScope>,
    pub state_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
}

/// The validated settings the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub interfaces: InterfaceSelector,
    pub tc_attach: TcAttachMode,
    pub ebpf_log_level: EbpfLogLevel,
    pub resync_interval: Duration,
    pub vxlan_ports: Vec<u16>,
    pub underlay_interfaces: InterfaceSelector,
    pub cidrs: Vec<Cidr>,
    pub max_peers: usize,
    pub typha_port: u16,
    pub netns_scope: NetnsScope,
    pub localhost: LocalhostSettings,
    pub drop_locations: usize,
    pub dns: DnsSettings,
    pub state: StateSettings,
    pub baseline_window: Duration,
    pub baseline_windows: usize,
    pub cluster: crate::cluster::ClusterSettings,
    /// `None` when `[checks] enabled = false`.
    pub checks: Option<crate::judgement::checks::CheckSettings>,
    /// `None` when `[triggers] enabled = false`.
    pub triggers: Option<TriggerSettings>,
}

/// The validated `[triggers]` table.
#[derive(Debug, Clone)]
pub struct TriggerSettings {
    pub evaluate_every: Duration,
    pub rules: Vec<Rule>,
}

/// Where state is kept, and whether it was asked for explicitly (then failing to create it
/// is an error, not a warning).
#[derive(Debug, Clone)]
pub struct StateSettings {
    pub dir: PathBuf,
    pub explicit: bool,
}

/// The validated `[dns]` table.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    pub interfaces: InterfaceSelector,
    pub timeout: Duration,
}

/// The validated `[localhost]` table.
#[derive(Debug, Clone)]
pub struct LocalhostSettings {
    pub ports: Vec<u16>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub check: Option<CheckSettings>,
}

#[derive(Debug, Clone)]
pub struct CheckSettings {
    pub namespaces: globset::GlobSet,
    pub port: u16,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A configuration mistake, named precisely enough to fix in one go. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// Where the bad value came from: a flag, or a file with line and field.
    pub origin: String,
    pub message: String,
}

impl Settings {
    /// Reads `path` (if any), applies `overrides` and validates the result.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line and field, or the flag, that is wrong.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => read_file(path)?,
            None => ConfigFile::default(),
        };
        let origin = |field: &str| match path {
            Some(path) => format!("{}: field `{field}`", path.display()),
            None => format!("default `{field}`"),
        };
        let (listen, listen_origin) = match overrides.listen {
            Some(listen) => (listen, "--listen".to_owned()),
            None => (file.listen, origin("listen")),
        };
        let (patterns, patterns_origin) = match overrides.interfaces {
            Some(patterns) => (patterns, "--interfaces".to_owned()),
            None => (file.interfaces, origin("interfaces")),
        };
        if file.resync_interval_seconds == 0 {
            return Err(ConfigError {
                origin: origin("resync_interval_seconds"),
                message: "must be at least 1 (seconds)".into(),
            });
        }
        if file.cidrs.len() > probe_common::overlay::MAX_CIDRS as usize {
            return Err(ConfigError {
                origin: origin("cidrs"),
                message: format!(
                    "at most {} CIDRs, got {}",
                    probe_common::overlay::MAX_CIDRS,
                    file.cidrs.len()
                ),
            });
        }
        let cidrs = file
            .cidrs
            .iter()
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| ConfigError { origin: origin("cidrs"), message })?;
        if file.max_peers == 0 {
            return Err(ConfigError { origin: origin("max_peers"), message: "must be at least 1".into() });
        }
        if file.vxlan_ports.contains(&0) || file.typha_port == 0 {
            let field = if file.typha_port == 0 { "typha_port" } else { "vxlan_ports" };
            return Err(ConfigError { origin: origin(field), message: "port 0 is not a port".into() });
        }
        let localhost = localhost_settings(&file.localhost)
            .map_err(|(field, message)| ConfigError { origin: origin(field), message })?;
        if file.dns.timeout_seconds == 0 {
            return Err(ConfigError {
                origin: origin("dns.timeout_seconds"),
                message: "must be at least 1 (seconds)".into(),
            });
        }
        let dns = DnsSettings {
            interfaces: InterfaceSelector::new(&file.dns.interfaces)
                .map_err(|message| ConfigError { origin: origin("dns.interfaces"), message })?,
            timeout: Duration::from_secs(file.dns.timeout_seconds),
        };
        if file.baseline.window_seconds == 0 || file.baseline.windows == 0 {
            let field =
                if file.baseline.windows == 0 { "baseline.windows" } else { "baseline.window_seconds" };
            return Err(ConfigError { origin: origin(field), message: "must be at least 1".into() });
        }
        let state = match overrides.state_dir {
            Some(dir) => StateSettings { dir, explicit: true },
            None => StateSettings {
                explicit: file.state_dir != DEFAULT_STATE_DIR,
                dir: PathBuf::from(&file.state_dir),
            },
        };
        let cluster = cluster_settings(&file.cluster, overrides.kubeconfig.as_deref(), origin)?;
        let checks = check_settings(&file.checks)
            .map_err(|(field, message)| ConfigError { origin: origin(field), message })?;
        let triggers = trigger_settings(&file.triggers)
            .map_err(|(field, message)| ConfigError { origin: origin(&field), message })?;
        Ok(Self {
            cluster,
            checks,
            triggers,
            state,
            baseline_window: Duration::from_secs(file.baseline.window_seconds),
            baseline_windows: file.baseline.windows,
            dns,
            drop_locations: file.drop_locations,
            netns_scope: overrides.netns_scope.unwrap_or(file.netns_scope),
            localhost,
            underlay_interfaces: InterfaceSelector::new(&file.underlay_interfaces)
                .map_err(|message| ConfigError { origin: origin("underlay_interfaces"), message })?,
            vxlan_ports: file.vxlan_ports,
            cidrs,
            max_peers: file.max_peers,
            typha_port: file.typha_port,
            listen: parse_listen(&listen)
                .map_err(|message| ConfigError { origin: listen_origin, message })?,
            interfaces: InterfaceSelector::new(&patterns)
                .map_err(|message| ConfigError { origin: patterns_origin, message })?,
            tc_attach: overrides.tc_attach.unwrap_or(file.tc_attach),
            ebpf_log_level: overrides.ebpf_log_level.unwrap_or(file.ebpf_log_level),
            resync_interval: Duration::from_secs(file.resync_interval_seconds),
        })
    }
}

/// The `[cluster]` table with `--kubeconfig`; a mistake names the flag, or the field.
fn cluster_settings(
    table: &crate::cluster::ClusterConfig,
    kubeconfig: Option<&Path>,
    origin: impl Fn(&str) -> String,
) -> Result<crate::cluster::ClusterSettings, ConfigError> {
    crate::cluster::ClusterSettings::validate(table, kubeconfig).map_err(|(field, message)| ConfigError {
        origin: if field.starts_with("--") { field } else { origin(&field) },
        message,
    })
}

fn localhost_settings(config: &LocalhostConfig) -> Result<LocalhostSettings, (&'static str, String)> {
    if config.ports.is_empty() || config.ports.contains(&0) {
        return Err(("localhost.ports", "list at least one port, and no port 0".into()));
    }
    if config.ports.len() > probe_common::localhost::LOCALHOST_PORTS_MAX_ENTRIES as usize {
        return Err((
            "localhost.ports",
            format!("at most {} ports", probe_common::localhost::LOCALHOST_PORTS_MAX_ENTRIES),
        ));
    }
    if config.connect_timeout_seconds == 0 || config.idle_timeout_seconds == 0 {
        return Err(("localhost.connect_timeout_seconds", "timeouts must be at least 1 second".into()));
    }
    let check = &config.check;
    let check = if check.enabled {
        interval_and_timeout(
            "localhost.check.timeout_seconds",
            check.interval_seconds,
            check.timeout_seconds,
        )?;
        if !check.path.starts_with('/') {
            return Err(("localhost.check.path", format!("`{}` must start with /", check.path)));
        }
        Some(CheckSettings {
            namespaces: glob_set("localhost.check.namespaces", &check.namespaces)?,
            port: check.port,
            path: check.path.clone(),
            interval: Duration::from_secs(check.interval_seconds),
            timeout: Duration::from_secs(check.timeout_seconds),
        })
    } else {
        None
    };
    Ok(LocalhostSettings {
        ports: config.ports.clone(),
        connect_timeout: Duration::from_secs(config.connect_timeout_seconds),
        idle_timeout: Duration::from_secs(config.idle_timeout_seconds),
        check,
    })
}

fn check_settings(
    config: &ChecksConfig,
) -> Result<Option<crate::judgement::checks::CheckSettings>, (&'static str, String)> {
    if !config.enabled {
        return Ok(None);
    }
    interval_and_timeout("checks.timeout_seconds", config.interval_seconds, config.timeout_seconds)?;
    let from = glob_set("checks.from", &config.from)?;
    let resolver = match config.resolver.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<std::net::SocketAddrV4>().map_err(|_| {
            ("checks.resolver", format!("`{text}` is not an IPv4 address and port like 10.43.0.10:53"))
        })?),
    };
    let targets = config
        .targets
        .iter()
        .map(|target| crate::judgement::checks::Target::parse(target, resolver.is_some()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| ("checks.targets", message))?;
    let mut names = std::collections::BTreeSet::new();
    if let Some(duplicate) = targets.iter().find(|target| !names.insert(target.name.as_str())) {
        return Err((
            "checks.targets",
            format!("two targets are named `{}`: names label the metrics, make them unique", duplicate.name),
        ));
    }
    Ok(Some(crate::judgement::checks::CheckSettings {
        from,
        interval: Duration::from_secs(config.interval_seconds),
        timeout: Duration::from_secs(config.timeout_seconds),
        resolver,
        targets,
        targets_file: config.targets_file.as_ref().map(PathBuf::from),
    }))
}

/// A periodic check's interval and timeout: both at least a second, the timeout at most the
/// interval (a check must end before the next one starts).
fn interval_and_timeout(
    field: &'static str,
    interval: u64,
    timeout: u64,
) -> Result<(), (&'static str, String)> {
    if interval == 0 || timeout == 0 || timeout > interval {
        return Err((
            field,
            "interval and timeout must be at least 1 second, the timeout at most the interval".into(),
        ));
    }
    Ok(())
}

/// Namespace label patterns (globs), each checked on its own so the bad one is named.
fn glob_set(field: &'static str, patterns: &[String]) -> Result<globset::GlobSet, (&'static str, String)> {
    let mut set = globset::GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::Glob::new(pattern)
            .map_err(|err| (field, format!("invalid pattern `{pattern}`: {}", err.kind())))?;
        set.add(glob);
    }
    set.build().map_err(|err| (field, err.to_string()))
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an address and port to listen on (expected for example `127.0.0.1:9464` or `[::1]:9464`)")
    })
}

fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let origin = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        origin: origin(),
        message: format!("cannot read the config file: {err}"),
    })?;
    parse_file(&text)
        .map_err(|(location, message)| ConfigError { origin: format!("{}{location}", origin()), message })
}

/// Parses TOML text; on error, returns the location (`:LINE: field `x``) and a one-line reason.
fn parse_file(text: &str) -> Result<ConfigFile, (String, String)> {
    toml::from_str(text).map_err(|err: toml::de::Error| {
        let message = err.message().replace('\n', " ");
        let Some(span) = err.span() else {
            return (String::new(), message);
        };
        let line_number = text[..span.start].matches('\n').count() + 1;
        let line = text.lines().nth(line_number - 1).unwrap_or_default();
        let location = match line.split_once('=') {
            Some((key, _)) if !key.trim().is_empty() => format!(":{line_number}: field `{}`", key.trim()),
            _ => format!(":{line_number}"),
        };
        (location, message)
    })
}

#[cfg(test)]
impl Settings {
    /// Loads settings from TOML text, as if from a file named `test.toml`.
    fn load_text(text: &str) -> Result<Self, ConfigError> {
        let dir = crate::state_file::TempDir::new("config");
        let path = dir.path().join("test.toml");
        std::fs::write(&path, text).unwrap();
        Self::load(Some(&path), Overrides::default())
    }
}

/// The example configuration shipped with the project, kept valid by a test.
#[must_use]
pub fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/cniguard.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let (location, message) =
            parse_file("listen = \"127.0.0.1:1\"\ninterfacs = [\"veth*\"]\n").unwrap_err();
        assert_eq!(location, ":2: field `interfacs`");
        assert!(message.contains("unknown field `interfacs`"), "{message}");
    }

    #[test]
    fn bad_enum_value_lists_the_choices() {
        let (location, message) = parse_file("tc_attach = \"xdp\"\n").unwrap_err();
        assert_eq!(location, ":1: field `tc_attach`");
        assert!(message.contains("`auto`, `tcx`"), "{message}");
    }

    #[test]
    fn flags_override_the_file_and_are_validated() {
        let err =
            Settings::load(None, Overrides { listen: Some("localhost".into()), ..Overrides::default() })
                .unwrap_err();
        assert_eq!(err.origin, "--listen");
        let err =
            Settings::load(None, Overrides { interfaces: Some(vec!["[abc".into()]), ..Overrides::default() })
                .unwrap_err();
        assert_eq!(err.origin, "--interfaces");
        assert!(err.message.contains("[abc"), "{}", err.message);
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let text = std::fs::read_to_string(example_path()).unwrap();
        assert_eq!(parse_file(&text).unwrap(), ConfigFile::default());
    }

    /// The example shows each trigger's defaults commented out: uncommented, they must be
    /// exactly `default_rules()`, so the documentation cannot drift from the code.
    #[test]
    fn the_example_documents_the_trigger_defaults() {
        let text = std::fs::read_to_string(example_path()).unwrap();
        let (_, triggers) = text.split_once("[triggers]").unwrap();
        let uncommented: String = triggers
            .lines()
            .map(|line| line.strip_prefix("# ").filter(|rest| rest.contains(" = ")).unwrap_or(line))
            .flat_map(|line| [line, "\n"])
            .collect();
        let file = parse_file(&format!("[triggers]{uncommented}")).unwrap();
        assert_eq!(rules(&file.triggers).unwrap(), default_rules());
        assert_eq!(file.triggers.dns_failing.threshold, Some(0.05), "the defaults were really uncommented");
    }

    #[test]
    fn triggers_and_checks_are_validated() {
        let load = |text: &str| Settings::load_text(text).unwrap_err();
        let err = load("[triggers.dns_failing]\nthreshold = 0.1\nclear_threshold = 0.2\n");
        assert!(err.origin.ends_with("triggers.dns_failing.clear_threshold`"), "{}", err.origin);
        assert!(err.message.contains("between 0 and the threshold (0.1)"), "{}", err.message);
        let err = load("[triggers.regression]\nwindow_seconds = 60\n");
        assert!(err.message.contains("only pod_to_pod_not_restored"), "{}", err.message);
        let err = load("[checks]\nenabled = true\nresolver = \"10.43.0.10\"\ntargets_file = \"t.toml\"\n");
        assert!(err.message.contains("like 10.43.0.10:53"), "{}", err.message);
        let two = "[[checks.targets]]\ncheck = \"service\"\nname = \"a\"\naddress = \"10.0.0.1:80\"\n";
        let err = load(&format!("[checks]\nenabled = true\n{two}{two}"));
        assert!(err.message.contains("two targets are named `a`"), "{}", err.message);
        let settings = Settings::load_text(
            "[triggers.regression]\nenabled = false\n[triggers.dns_failing]\nfor_seconds = 20\n",
        )
        .unwrap();
        let rules = settings.triggers.unwrap().rules;
        assert_eq!(rules.len(), 5);
        let dns = rules.iter().find(|rule| rule.name == TriggerName::DnsFailing).unwrap();
        assert_eq!((dns.for_seconds, dns.threshold), (20.0, 0.05), "only what is set changes");
    }

    #[test]
    fn cidrs_are_checked() {
        let cidr = |name: &str, cidr: &str| Cidr::parse(&CidrConfig { name: name.into(), cidr: cidr.into() });
        assert_eq!(cidr("new_pods", "10.244.0.0/16").unwrap().prefix_len, 16);
        assert!(cidr("other", "10.0.0.0/8").unwrap_err().contains("not `other`"));
        assert!(cidr("Pods", "10.0.0.0/8").unwrap_err().contains("lower-case"));
        assert!(cidr("pods", "10.244.1.0/16").unwrap_err().contains("did you mean 10.244.0.0/16"));
        assert!(cidr("pods", "10.244.0.0").unwrap_err().contains("not an IPv4 CIDR"));
        assert!(cidr("pods", "10.244.0.0/33").is_err());
    }
}
