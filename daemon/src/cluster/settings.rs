//! The `[cluster]` table: when cluster mode runs, and what it looks for in the API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `kubectl` and kube look for the in-cluster service account token.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The default label selector of the `cniguard-echo` pods (see `deploy/echo.yaml`).
pub const DEFAULT_ECHO_SELECTOR: &str = "app.kubernetes.io/name=cniguard-echo";
pub const DEFAULT_ECHO_PORT: u16 = 9465;
/// The runbook's critical services: the Seldon scheduler its agents subscribe to
/// (`kubectl logs seldon-scheduler-0 -n financial-ml`), the MLServer the runbook restarts
/// and checks on 9500, and the cluster DNS whose cluster-wide failure is a rollback
/// trigger (K3s' CoreDNS Service is `kube-system/kube-dns`).
pub const DEFAULT_CRITICAL_SERVICES: &[&str] =
    &["financial-ml/seldon-scheduler:9004", "financial-ml/mlserver:9500", "kube-system/kube-dns:53"];

/// The `[cluster]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `auto`: cluster mode when running in a pod with a service account token (in-cluster
    /// config) or when `--kubeconfig` is given, node-local otherwise; `on`: cluster mode or
    /// refuse to start; `off`: node-local only.
    pub mode: ClusterMode,
    /// Label selector of the `cniguard-echo` pods (in every namespace): those on other nodes
    /// are the pod-network targets of the active checks.
    pub echo_selector: String,
    /// The port the `cniguard-echo` pods answer on.
    pub echo_port: u16,
    /// Critical Services as `namespace/name:port`, resolved to their ClusterIP.
    pub critical_services: Vec<String>,
    /// At most one Kubernetes Event per rollback trigger this often; changes in between are
    /// coalesced and the latest state is written when the interval ends.
    pub event_interval_seconds: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mode: ClusterMode::Auto,
            echo_selector: DEFAULT_ECHO_SELECTOR.to_owned(),
            echo_port: DEFAULT_ECHO_PORT,
            critical_services: DEFAULT_CRITICAL_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
            event_interval_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    Auto,
    On,
    Off,
}

/// A critical Service to resolve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl ServiceRef {
    /// Parses `namespace/name:port`.
    ///
    /// # Errors
    /// A one-line message saying what is wrong with `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid =
            || format!("`{text}` is not `namespace/name:port` (for example `kube-system/kube-dns:53`)");
        let (namespace, rest) = text.split_once('/').ok_or_else(invalid)?;
        let (name, port) = rest.split_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(invalid)?;
        if !is_dns_label(namespace) || !is_dns_label(name) {
            return Err(invalid());
        }
        Ok(Self { namespace: namespace.to_owned(), name: name.to_owned(), port })
    }

    /// `namespace/name`, the `service` label value.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Namespace and Service names are RFC 1123 labels: lower-case letters, digits and `-`.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Where the API's address and credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST` and the mounted token).
    InCluster,
    /// A kubeconfig file (`--kubeconfig`), already checked to parse.
    Kubeconfig(PathBuf),
}

/// The validated `[cluster]` table; `api` is `None` in node-local mode.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub api: Option<ApiSource>,
    pub echo_selector: String,
    pub echo_port: u16,
    pub critical_services: Vec<ServiceRef>,
    pub event_interval: Duration,
}

impl ClusterSettings {
    /// Node-local mode: no API at all.
    #[must_use]
    pub fn node_local() -> Self {
        Self::validate(&ClusterConfig { mode: ClusterMode::Off, ..ClusterConfig::default() }, None)
            .expect("the defaults are valid")
    }

    /// Validates the table; `kubeconfig` is the `--kubeconfig` flag. Errors name the field
    /// (relative to `cluster.`) or the flag.
    ///
    /// # Errors
    /// The first mistake, with the field or flag it is about.
    pub fn validate(config: &ClusterConfig, kubeconfig: Option<&Path>) -> Result<Self, ClusterError> {
        let field = |name: &str| format!("cluster.{name}");
        let critical_services = config
            .critical_services
            .iter()
            .map(|text| ServiceRef::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| ClusterError::new(field("critical_services"), message))?;
        if config.echo_port == 0 {
            return Err(ClusterError::new(field("echo_port"), "port 0 is not a port"));
        }
        if config.echo_selector.trim().is_empty() {
            return Err(ClusterError::new(
                field("echo_selector"),
                "an empty selector would make every pod a check target",
            ));
        }
        if !(1..=3600).contains(&config.event_interval_seconds) {
            return Err(ClusterError::new(
                field("event_interval_seconds"),
                format!(
                    "{} is out of range: must be 1 to 3600 seconds (an Event at least hourly)",
                    config.event_interval_seconds
                ),
            ));
        }
        let api = match (config.mode, kubeconfig) {
            (ClusterMode::Off, _) => None,
            (_, Some(path)) => {
                kube::config::Kubeconfig::read_from(path)
                    .map_err(|err| ClusterError::new("--kubeconfig".to_owned(), one_line(&err)))?;
                Some(ApiSource::Kubeconfig(path.to_owned()))
            }
            (mode, None) => {
                let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                    && Path::new(SERVICE_ACCOUNT_TOKEN).exists();
                match (mode, in_cluster) {
                    (_, true) => Some(ApiSource::InCluster),
                    (ClusterMode::On, false) => {
                        return Err(ClusterError::new(
                            field("mode"),
                            format!(
                                "`on` needs the in-cluster service account (KUBERNETES_SERVICE_HOST and {SERVICE_ACCOUNT_TOKEN}) or --kubeconfig"
                            ),
                        ));
                    }
                    _ => None,
                }
            }
        };
        Ok(Self {
            api,
            echo_selector: config.echo_selector.clone(),
            echo_port: config.echo_port,
            critical_services,
            event_interval: Duration::from_secs(config.event_interval_seconds),
        })
    }
}

/// What is wrong with the `[cluster]` table or `--kubeconfig`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ClusterError {
    /// The field (`cluster.<name>`) or the flag (`--kubeconfig`).
    field: String,
    message: String,
}

impl ClusterError {
    fn new(field: String, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }

    /// The field or flag the error is about.
    #[must_use]
    pub fn field(&self) -> String {
        self.field.clone()
    }
}

/// An error and its causes on one line (a kubeconfig error names the file in its source).
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_parse_as_namespace_name_port() {
        assert_eq!(
            ServiceRef::parse("kube-system/kube-dns:53").unwrap(),
            ServiceRef { namespace: "kube-system".into(), name: "kube-dns".into(), port: 53 }
        );
        for bad in ["kube-dns:53", "kube-system/kube-dns", "a/b:0", "a/b:70000", "A/b:1", "a/b_c:1", "/b:1"] {
            assert!(ServiceRef::parse(bad).unwrap_err().contains("namespace/name:port"), "{bad}");
        }
    }

    #[test]
    fn off_and_auto_without_a_cluster_are_node_local() {
        // The test environment is not a pod: no KUBERNETES_SERVICE_HOST.
        assert_eq!(std::env::var_os("KUBERNETES_SERVICE_HOST"), None);
        assert_eq!(ClusterSettings::validate(&ClusterConfig::default(), None).unwrap().api, None);
        assert_eq!(ClusterSettings::node_local().api, None);
        let err = ClusterSettings::validate(
            &ClusterConfig { mode: ClusterMode::On, ..ClusterConfig::default() },
            None,
        )
        .unwrap_err();
        let (field, message) = (err.field(), err.to_string());
        assert_eq!(field, "cluster.mode");
        assert!(message.contains("--kubeconfig"), "{message}");
    }

    #[test]
    fn a_kubeconfig_that_does_not_parse_names_the_flag() {
        let path = std::env::temp_dir().join(format!("cniguard-kubeconfig-{}", std::process::id()));
        std::fs::write(&path, "clusters: [[[").unwrap();
        let err = ClusterSettings::validate(&ClusterConfig::default(), Some(&path)).unwrap_err();
        let (field, message) = (err.field(), err.to_string());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(field, "--kubeconfig");
        assert!(!message.contains('\n'), "{message}");
        let missing =
            ClusterSettings::validate(&ClusterConfig::default(), Some(Path::new("/nonexistent/kc")))
                .map_err(|err| (err.field(), err.to_string()))
                .unwrap_err();
        assert_eq!(missing.0, "--kubeconfig");
        assert!(missing.1.contains("/nonexistent/kc"), "{}", missing.1);
    }

    #[test]
    fn each_field_is_checked() {
        let check = |config: ClusterConfig| ClusterSettings::validate(&config, None).unwrap_err().field();
        let defaults = ClusterConfig::default;
        assert_eq!(check(ClusterConfig { echo_port: 0, ..defaults() }), "cluster.echo_port");
        assert_eq!(check(ClusterConfig { echo_selector: " ".into(), ..defaults() }), "cluster.echo_selector");
        assert_eq!(
            check(ClusterConfig { event_interval_seconds: 0, ..defaults() }),
            "cluster.event_interval_seconds"
        );
        assert_eq!(
            check(ClusterConfig { critical_services: vec!["x".into()], ..defaults() }),
            "cluster.critical_services"
        );
    }
}
