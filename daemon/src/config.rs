//! The daemon's configuration: a TOML file (`--config`), overridden by command-line flags.
//!
//! Every field is documented here and in the README's configuration table, and
//! `config/cniguard.toml` shows them all with their defaults. Unknown fields are rejected:
//! a typo in the middle of a migration must not silently fall back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::checks::health::HealthCheckSettings;
use crate::checks::settings::{ChecksConfig, ChecksError, ChecksSettings};
use crate::cluster::{ClusterConfig, ClusterError, ClusterSettings};
use crate::diagnose::settings::{DiagnoseConfig, DiagnoseError, DiagnoseSettings};
use crate::judgement::baseline::{BaselineConfig, BaselineError, BaselineSettings};
use crate::judgement::triggers::settings::{TriggerSettings, TriggersConfig, TriggersError};
use crate::node::ebpf::EbpfLogLevel;
use crate::node::interfaces::InterfaceSelector;
use crate::node::namespaces::NetnsScope;
use crate::probes::attach::TcAttachMode;
use crate::probes::cidr::{Cidr, CidrConfig, CidrError, DEFAULT_CIDRS};
use crate::probes::dns::{DnsConfig, DnsError, DnsSettings};
use crate::probes::localhost::{LocalhostConfig, LocalhostError, LocalhostSettings};
use crate::probes::underlay::DEFAULT_VXLAN_PORTS;

/// The default interface patterns: every CNI-managed device Flannel and Calico create.
pub const DEFAULT_INTERFACES: &[&str] = &["veth*", "cali*", "cni0", "flannel.1", "vxlan.calico"];
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cniguard";
/// The longest `resync_interval_seconds`: the safety net must come round within the hour.
pub const MAX_RESYNC_SECONDS: u64 = 3600;
/// The most `vxlan_ports`: half the eBPF port map, the other half for the ports of the
/// node's own VXLAN devices (found through netlink).
pub const MAX_VXLAN_PORTS: usize = probe_common::underlay::VXLAN_PORTS_MAX_ENTRIES as usize / 2;

/// The configuration file's contents. `#[serde(default)]`: every field may be left out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Address for `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
    /// Interface name patterns (globs: `*`, `?`, `[abc]`, `{a,b}`) the interface probes attach
    /// to. Loopback and physical NICs are attached only when named exactly (no wildcard).
    pub interfaces: Vec<String>,
    /// How classifiers attach (`probes::attach` documents the modes).
    pub tc_attach: TcAttachMode,
    /// Level of the eBPF programs' own log messages (`node::ebpf` documents the levels).
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
    pub cluster: ClusterConfig,
    /// Active connectivity checks from a pod's network namespace.
    pub checks: ChecksConfig,
    /// The runbook's rollback triggers and success criteria.
    pub triggers: TriggersConfig,
    /// Findings: the named causes of a failing cutover.
    pub diagnose: DiagnoseConfig,
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
            cluster: ClusterConfig::default(),
            checks: ChecksConfig::default(),
            triggers: TriggersConfig::default(),
            diagnose: DiagnoseConfig::default(),
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
    pub baseline: BaselineSettings,
    pub cluster: ClusterSettings,
    /// `None` when `[checks] enabled = false`.
    pub checks: Option<ChecksSettings>,
    /// `None` when `[localhost.check] enabled = false`.
    pub health_check: Option<HealthCheckSettings>,
    /// `None` when `[triggers] enabled = false`.
    pub triggers: Option<TriggerSettings>,
    /// `None` when `[diagnose] enabled = false`.
    pub diagnose: Option<DiagnoseSettings>,
}

/// Where state is kept, and whether it was asked for explicitly (then failing to create it
/// is an error, not a warning).
#[derive(Debug, Clone)]
pub struct StateSettings {
    pub dir: PathBuf,
    pub explicit: bool,
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
        let section = |err: SectionError| ConfigError {
            origin: if err.field().starts_with("--") { err.field() } else { origin(&err.field()) },
            message: err.to_string(),
        };
        if !(1..=MAX_RESYNC_SECONDS).contains(&file.resync_interval_seconds) {
            return Err(ConfigError {
                origin: origin("resync_interval_seconds"),
                message: format!(
                    "{} is out of range: must be 1 to {MAX_RESYNC_SECONDS} seconds",
                    file.resync_interval_seconds
                ),
            });
        }
        if file.vxlan_ports.len() > MAX_VXLAN_PORTS {
            return Err(ConfigError {
                origin: origin("vxlan_ports"),
                message: format!(
                    "{} ports is out of range: at most {MAX_VXLAN_PORTS} (the eBPF port map holds {}; the rest is for the node's own VXLAN devices)",
                    file.vxlan_ports.len(),
                    probe_common::underlay::VXLAN_PORTS_MAX_ENTRIES
                ),
            });
        }
        let cidrs = crate::probes::cidr::parse_all(&file.cidrs).map_err(|err| section(err.into()))?;
        if file.max_peers == 0 {
            return Err(ConfigError { origin: origin("max_peers"), message: "must be at least 1".into() });
        }
        if file.vxlan_ports.contains(&0) || file.typha_port == 0 {
            let field = if file.typha_port == 0 { "typha_port" } else { "vxlan_ports" };
            return Err(ConfigError { origin: origin(field), message: "port 0 is not a port".into() });
        }
        let localhost = file.localhost.validate().map_err(|err| section(err.into()))?;
        let health_check = file.localhost.check.validate().map_err(|err| section(err.into()))?;
        let dns = file.dns.validate().map_err(|err| section(err.into()))?;
        let baseline = file.baseline.validate().map_err(|err| section(err.into()))?;
        let state = match overrides.state_dir {
            Some(dir) => StateSettings { dir, explicit: true },
            None => StateSettings {
                explicit: file.state_dir != DEFAULT_STATE_DIR,
                dir: PathBuf::from(&file.state_dir),
            },
        };
        let cluster = ClusterSettings::validate(&file.cluster, overrides.kubeconfig.as_deref())
            .map_err(|err| section(err.into()))?;
        let checks = file.checks.validate().map_err(|err| section(err.into()))?;
        let triggers = file.triggers.validate().map_err(|err| section(err.into()))?;
        let diagnose = file.diagnose.validate(&cidrs).map_err(|err| section(err.into()))?;
        Ok(Self {
            diagnose,
            cluster,
            checks,
            health_check,
            triggers,
            state,
            baseline,
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

/// A section owner's validation error, wrapped: each owner names its own field.
#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    #[error(transparent)]
    Cidrs(#[from] CidrError),
    #[error(transparent)]
    Localhost(#[from] LocalhostError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checks(#[from] ChecksError),
    #[error(transparent)]
    Triggers(#[from] TriggersError),
    #[error(transparent)]
    Diagnose(#[from] DiagnoseError),
}

impl SectionError {
    /// The field (or, for `--kubeconfig`, the flag) the error is about.
    #[must_use]
    pub fn field(&self) -> String {
        match self {
            Self::Cidrs(_) => "cidrs".into(),
            Self::Localhost(err) => err.field().into(),
            Self::Dns(err) => err.field().into(),
            Self::Baseline(err) => err.field().into(),
            Self::Cluster(err) => err.field(),
            Self::Checks(err) => err.field().into(),
            Self::Triggers(err) => err.field(),
            Self::Diagnose(err) => err.field().into(),
        }
    }
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
        assert_eq!(file.triggers.rules().unwrap(), crate::judgement::triggers::settings::default_rules());
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
        let dns = rules
            .iter()
            .find(|rule| rule.name == crate::judgement::triggers::TriggerName::DnsFailing)
            .unwrap();
        assert_eq!((dns.for_seconds, dns.threshold), (20.0, 0.05), "only what is set changes");
    }

    /// Values outside sane ranges are refused at load, naming the field and the range.
    #[test]
    fn values_out_of_range_are_refused_with_the_range() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "resync_interval_seconds = 1000000000000\n",
                "resync_interval_seconds`",
                "must be 1 to 3600 seconds",
            ),
            (
                "[baseline]\nwindow_seconds = 9223372036854775807\n",
                "baseline.window_seconds`",
                "9223372036854775807 is out of range: must be 1 to 3600 seconds",
            ),
            ("[baseline]\nwindows = 0\n", "baseline.windows`", "must be 1 to 10000 windows"),
            ("[baseline]\nwindows = 10001\n", "baseline.windows`", "10001 is out of range"),
            (
                "[checks]\nenabled = true\ninterval_seconds = 1000000000000\n",
                "checks.timeout_seconds`",
                "the interval must be 1 to 3600 seconds",
            ),
            (
                "[localhost.check]\nenabled = true\ninterval_seconds = 3601\n",
                "localhost.check.timeout_seconds`",
                "interval 3601 s and timeout 2 s are out of range",
            ),
            (
                "[triggers]\nevaluate_seconds = 1000000000000\n",
                "triggers.evaluate_seconds`",
                "must be 1 to 600 seconds",
            ),
            (
                "[triggers.connectivity_lost]\nfor_seconds = 86401\n",
                "triggers.connectivity_lost.for_seconds`",
                "86401 is out of range: must be 0 to 86400 seconds",
            ),
            (
                "[triggers.dns_failing]\nclear_seconds = 1000000000000\n",
                "triggers.dns_failing.clear_seconds`",
                "must be 0 to 86400",
            ),
            (
                "[triggers.pod_to_pod_not_restored]\nwindow_seconds = 3601\n",
                "triggers.pod_to_pod_not_restored.window_seconds`",
                "must be 1 to 3600 seconds",
            ),
            (
                "[triggers.pod_to_pod_not_restored]\nrestore_deadline_seconds = 86401\n",
                "restore_deadline_seconds`",
                "must be 0 to 86400",
            ),
            (
                "[cluster]\nmode = \"off\"\nevent_interval_seconds = 1000000000000\n",
                "cluster.event_interval_seconds`",
                "1000000000000 is out of range: must be 1 to 3600 seconds",
            ),
        ];
        for (text, field, message) in cases {
            let err = Settings::load_text(text).unwrap_err();
            assert!(err.origin.ends_with(field), "{text}: {}", err.origin);
            assert!(err.message.contains(message), "{text}: {}", err.message);
        }
        let ports: Vec<String> = (1..=33).map(|port| port.to_string()).collect();
        let err = Settings::load_text(&format!("vxlan_ports = [{}]\n", ports.join(", "))).unwrap_err();
        assert!(err.origin.ends_with("field `vxlan_ports`"), "{}", err.origin);
        assert!(
            err.message.contains("33 ports is out of range: at most 32 (the eBPF port map holds 64"),
            "{}",
            err.message
        );
        // The bounds themselves are fine.
        let ports: Vec<String> = (1..=32).map(|port| port.to_string()).collect();
        let edges = format!(
            "resync_interval_seconds = 3600\nvxlan_ports = [{}]\n[baseline]\nwindow_seconds = 3600\nwindows = 10000\n[triggers]\nevaluate_seconds = 600\n[triggers.connectivity_lost]\nfor_seconds = 86400\n",
            ports.join(", ")
        );
        Settings::load_text(&edges).unwrap();
    }

    /// `config` is the TOML root: it composes the rooms' own sections, and no room reaches
    /// back into it, so no import circle runs through `config`. Only the composition root
    /// (`daemon`, `cli`) uses it.
    #[test]
    fn nothing_below_the_composition_root_imports_config() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut pending = vec![src.clone()];
        let mut offenders = Vec::new();
        let mut files = 0;
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let relative = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
                if ["config.rs", "daemon.rs", "cli.rs", "lib.rs"].contains(&relative.as_str()) {
                    continue;
                }
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                if text.contains("crate::config") || text.contains("super::config") {
                    offenders.push(relative);
                }
            }
        }
        assert!(files > 40, "read only {files} files of {}", src.display());
        assert!(
            offenders.is_empty(),
            "these modules import `config`; take the type from its owner: {offenders:?}"
        );
    }
}
