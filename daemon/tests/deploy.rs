//! The manifests in deploy/: every document parses into its Kubernetes type with nothing
//! left over (a misspelt field is an error, not a silently ignored one), the security
//! properties README "Install on a cluster" promises hold, the pieces refer to each other
//! correctly, and the ConfigMap is a configuration the daemon accepts. Unprivileged: no
//! cluster and no kernel are involved (`kubeconform` is not available here; the types are
//! k8s-openapi's, the ones cniguard itself uses against the API).
//!
//! The RBAC rules are checked against the API calls cniguard makes in
//! `daemon/src/cluster/tests.rs`, where the mocked API records them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    let full = root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

/// Every document of every manifest, as JSON, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let name = format!("deploy/{}", file.file_name().unwrap().to_string_lossy());
        for document in serde_yaml::Deserializer::from_str(&read(&name)) {
            let value = Value::deserialize(document).unwrap_or_else(|err| panic!("{name}: {err}"));
            if !value.is_null() {
                documents.push((name.clone(), value));
            }
        }
    }
    documents
}

/// `value` as a `T`, and back to the same JSON: any field `T` does not have would be lost.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, value: &Value) -> T {
    let object: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|err| panic!("{file}: {} {}: {err}", value["kind"], value["metadata"]["name"]));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(path) = first_difference(value, &back, String::new()) {
        panic!(
            "{file}: {} {}: `{path}` is not a field of its type (misspelt?) or not in its form",
            value["kind"], value["metadata"]["name"]
        );
    }
    object
}

/// Where `read` and `written` first differ, as a JSON pointer.
fn first_difference(read: &Value, written: &Value, at: String) -> Option<String> {
    match (read, written) {
        (Value::Object(a), Value::Object(b)) => a.keys().chain(b.keys()).find_map(|key| {
            let here = format!("{at}/{key}");
            match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => first_difference(x, y, here),
                _ => Some(here),
            }
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| first_difference(x, y, format!("{at}/{i}")))
        }
        _ => (read != written).then_some(at),
    }
}

/// The Prometheus Operator's ServiceMonitor, as far as deploy/ uses it: unknown fields are
/// errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: Value,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
    relabelings: Vec<Relabeling>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Relabeling {
    source_labels: Option<Vec<String>>,
    target_label: Option<String>,
    action: Option<String>,
    regex: Option<String>,
}

/// Everything in deploy/, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    service_monitors: Vec<ServiceMonitor>,
    /// PrometheusRules (`spec.groups`), generated from dashboards/prometheus.
    rule_groups: Vec<Value>,
}

impl Manifests {
    fn load() -> Self {
        let mut all = Self::default();
        for (file, value) in documents() {
            let api_version = value["apiVersion"].as_str().unwrap_or_default();
            match (api_version, value["kind"].as_str().unwrap_or_default()) {
                ("v1", "Namespace") => all.namespaces.push(typed(&file, &value)),
                ("v1", "ServiceAccount") => all.service_accounts.push(typed(&file, &value)),
                ("v1", "ConfigMap") => all.config_maps.push(typed(&file, &value)),
                ("v1", "Service") => all.services.push(typed(&file, &value)),
                ("apps/v1", "DaemonSet") => all.daemon_sets.push(typed(&file, &value)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    all.cluster_roles.push(typed(&file, &value));
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    all.cluster_role_bindings.push(typed(&file, &value));
                }
                ("rbac.authorization.k8s.io/v1", "Role") => all.roles.push(typed(&file, &value)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    all.role_bindings.push(typed(&file, &value));
                }
                ("monitoring.coreos.com/v1", "ServiceMonitor") => all.service_monitors.push(
                    serde_json::from_value(value)
                        .unwrap_or_else(|err| panic!("{file}: ServiceMonitor: {err}")),
                ),
                ("monitoring.coreos.com/v1", "PrometheusRule") => {
                    let groups = value["spec"]["groups"].as_array().cloned().unwrap_or_default();
                    assert!(!groups.is_empty(), "{file}: a PrometheusRule without groups");
                    all.rule_groups.extend(groups);
                }
                (api_version, kind) => panic!("{file}: no check for {api_version} {kind}: add one"),
            }
        }
        all
    }

    fn daemon_set(&self, name: &str) -> &DaemonSet {
        self.daemon_sets.iter().find(|d| d.metadata.name.as_deref() == Some(name)).expect(name)
    }
}

fn pod_spec(daemon_set: &DaemonSet) -> &PodSpec {
    daemon_set.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn only_container(daemon_set: &DaemonSet) -> &Container {
    let spec = pod_spec(daemon_set);
    assert_eq!(spec.init_containers, None);
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

fn pod_labels(daemon_set: &DaemonSet) -> BTreeMap<String, String> {
    daemon_set.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn every_document_parses_into_its_kind_with_no_field_left_over() {
    let all = Manifests::load();
    let names = |list: Vec<Option<String>>| list.into_iter().map(Option::unwrap).collect::<Vec<_>>();
    assert_eq!(names(all.namespaces.iter().map(|n| n.metadata.name.clone()).collect()), ["cniguard"]);
    assert_eq!(
        names(all.daemon_sets.iter().map(|d| d.metadata.name.clone()).collect()),
        ["cniguard", "cniguard-echo"]
    );
    assert_eq!(all.service_accounts.len(), 1);
    assert_eq!(all.config_maps.len(), 1);
    assert_eq!(all.services.len(), 1);
    assert_eq!(all.service_monitors.len(), 1);
    // Everything namespaced is in cniguard's namespace, but the Role that lets it write
    // Events where Node Events live.
    for (kind, namespace) in all
        .service_accounts
        .iter()
        .map(|o| ("ServiceAccount", &o.metadata.namespace))
        .chain(all.config_maps.iter().map(|o| ("ConfigMap", &o.metadata.namespace)))
        .chain(all.daemon_sets.iter().map(|o| ("DaemonSet", &o.metadata.namespace)))
        .chain(all.services.iter().map(|o| ("Service", &o.metadata.namespace)))
    {
        assert_eq!(namespace.as_deref(), Some("cniguard"), "{kind}");
    }
    for role in all.roles.iter().map(|r| &r.metadata).chain(all.role_bindings.iter().map(|r| &r.metadata)) {
        assert_eq!(role.namespace.as_deref(), Some("default"), "{role:?}");
    }
}

#[test]
fn the_agent_is_unprivileged_but_for_its_four_capabilities() {
    let all = Manifests::load();
    let agent = all.daemon_set("cniguard");
    let spec = pod_spec(agent);
    assert_eq!(spec.host_network, Some(true), "cniguard watches the node's own interfaces");
    assert_eq!(spec.host_pid, None, "no hostPID: pod namespaces are found under /var/run/netns");
    assert_eq!(spec.host_ipc, None);
    let container = only_container(agent);
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().unwrap();
    assert_eq!(capabilities.drop, Some(strings(&["ALL"])));
    assert_eq!(capabilities.add, Some(strings(&CAPABILITIES)));
    // Root with nothing but those: the capabilities are effective only for uid 0.
    assert_eq!((security.run_as_user, security.run_as_group), (Some(0), Some(0)));
    assert_eq!(
        spec.security_context.as_ref().unwrap().seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );

    // Host paths, and which of them it can write: only the state directory.
    let volumes: BTreeMap<&str, &str> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mounts: BTreeSet<(&str, &str, bool)> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            Some((*volumes.get(m.name.as_str())?, m.mount_path.as_str(), m.read_only.unwrap_or(false)))
        })
        .collect();
    let expected: BTreeSet<(&str, &str, bool)> = [
        ("/sys/fs/bpf", "/sys/fs/bpf", true),
        ("/sys/fs/cgroup", "/sys/fs/cgroup", true),
        ("/var/run/netns", "/var/run/netns", true),
        ("/var/lib/cniguard", "/var/lib/cniguard", false),
    ]
    .into_iter()
    .collect();
    assert_eq!(mounts, expected);
    assert_eq!(volumes.len(), expected.len(), "every host path is mounted");
    let netns = container.volume_mounts.iter().flatten().find(|m| m.mount_path == "/var/run/netns").unwrap();
    assert_eq!(netns.mount_propagation.as_deref(), Some("HostToContainer"), "pods created later must show");
}

#[test]
fn the_agent_runs_on_every_node_through_the_cutover_and_stops_cleanly() {
    let all = Manifests::load();
    let agent = all.daemon_set("cniguard");
    let spec = pod_spec(agent);
    // One toleration with no key and `Exists` tolerates every taint (NotReady, unschedulable,
    // pressure, the cutover's own).
    let tolerations = spec.tolerations.clone().unwrap();
    assert_eq!(tolerations.len(), 1);
    assert_eq!((tolerations[0].key.as_deref(), tolerations[0].operator.as_deref()), (None, Some("Exists")));
    assert_eq!((tolerations[0].effect.as_deref(), tolerations[0].value.as_deref()), (None, None));
    let update = agent.spec.as_ref().unwrap().update_strategy.as_ref().unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(update.rolling_update.as_ref().unwrap().max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
}

#[test]
fn the_pieces_refer_to_each_other() {
    let all = Manifests::load();
    let agent = all.daemon_set("cniguard");
    let spec = pod_spec(agent);
    let container = only_container(agent);

    // The ServiceAccount is the one bound to both roles.
    let account = all.service_accounts[0].metadata.name.clone().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some(account.as_str()));
    let subjects: Vec<_> = all
        .cluster_role_bindings
        .iter()
        .flat_map(|b| b.subjects.clone().unwrap())
        .chain(all.role_bindings.iter().flat_map(|b| b.subjects.clone().unwrap()))
        .collect();
    assert_eq!(subjects.len(), 2);
    for subject in &subjects {
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str(), subject.namespace.as_deref()),
            ("ServiceAccount", account.as_str(), Some("cniguard"))
        );
    }
    let role_ref = |kind: &str, name: &Option<String>| (kind.to_owned(), name.clone().unwrap());
    let bound: BTreeSet<(String, String)> = all
        .cluster_role_bindings
        .iter()
        .map(|b| (b.role_ref.kind.clone(), b.role_ref.name.clone()))
        .chain(all.role_bindings.iter().map(|b| (b.role_ref.kind.clone(), b.role_ref.name.clone())))
        .collect();
    let defined: BTreeSet<(String, String)> = all
        .cluster_roles
        .iter()
        .map(|r| role_ref("ClusterRole", &r.metadata.name))
        .chain(all.roles.iter().map(|r| role_ref("Role", &r.metadata.name)))
        .collect();
    assert_eq!(bound, defined);

    // NODE_NAME is the node's name (the pod watch's field selector), HOST_IP its address.
    let env: BTreeMap<String, String> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let field = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.clone(), field.field_path.clone()))
        })
        .collect();
    assert_eq!(env.get("NODE_NAME").map(String::as_str), Some("spec.nodeName"));
    assert_eq!(env.get("HOST_IP").map(String::as_str), Some("status.hostIP"));
    assert_eq!(
        container.args,
        Some(strings(&["run", "--config", "/etc/cniguard/cniguard.toml", "--listen", "$(HOST_IP):9464"]))
    );
    let config = spec.volumes.iter().flatten().find(|v| v.name == "config").unwrap();
    assert_eq!(config.config_map.as_ref().unwrap().name, all.config_maps[0].metadata.name.clone().unwrap());

    // The Service selects the agents' pods and names their metrics port; the ServiceMonitor
    // selects the Service and that port, and gives every series its node.
    let service = all.services[0].spec.as_ref().unwrap();
    let labels = pod_labels(agent);
    for (key, value) in service.selector.as_ref().unwrap() {
        assert_eq!(labels.get(key), Some(value));
    }
    assert_eq!(service.cluster_ip.as_deref(), Some("None"));
    let port = &service.ports.as_ref().unwrap()[0];
    assert_eq!(port.target_port, Some(IntOrString::String("metrics".into())));
    let metrics_port =
        container.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics")).unwrap();
    assert_eq!((port.port, metrics_port.container_port), (9464, 9464));
    let monitor = &all.service_monitors[0];
    assert_eq!(
        (monitor.api_version.as_str(), monitor.kind.as_str()),
        ("monitoring.coreos.com/v1", "ServiceMonitor")
    );
    assert_eq!(monitor.metadata["namespace"], "cniguard");
    let service_labels = all.services[0].metadata.labels.clone().unwrap();
    for (key, value) in monitor.spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(service_labels.get(key), Some(value));
    }
    assert_eq!(monitor.spec.namespace_selector.match_names, ["cniguard"]);
    let endpoint = &monitor.spec.endpoints[0];
    assert_eq!((endpoint.port.as_str(), endpoint.path.as_str()), ("metrics", "/metrics"));
    assert!(!endpoint.interval.is_empty());
    let node = &endpoint.relabelings[0];
    assert_eq!(node.source_labels.as_deref(), Some(&strings(&["__meta_kubernetes_pod_node_name"])[..]));
    assert_eq!(node.target_label.as_deref(), Some("node"));
    let dropped = &endpoint.relabelings[1];
    assert_eq!(
        (dropped.action.as_deref(), dropped.regex.as_deref()),
        (Some("labeldrop"), Some("namespace|pod|service|container|endpoint"))
    );
}

#[test]
fn the_echo_pods_are_what_the_agents_look_for_and_hold_no_privilege() {
    let all = Manifests::load();
    let echo = all.daemon_set("cniguard-echo");
    let spec = pod_spec(echo);
    assert_eq!(spec.host_network, None, "the echo pods are on the pod network: that is their point");
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.service_account_name, None);
    let pod_security = spec.security_context.as_ref().unwrap();
    assert_eq!((pod_security.run_as_non_root, pod_security.run_as_user), (Some(true), Some(65532)));
    let container = only_container(echo);
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().unwrap();
    assert_eq!((capabilities.drop.clone(), capabilities.add.clone()), (Some(strings(&["ALL"])), None));
    assert_eq!(spec.volumes, None);

    // One image for both, and the agents' selector and port are the echo pods'.
    assert_eq!(container.image, only_container(all.daemon_set("cniguard")).image);
    let port = cniguard::cluster::settings::DEFAULT_ECHO_PORT;
    assert_eq!(container.args, Some(strings(&["echo", "--listen", &format!("0.0.0.0:{port}")])));
    let (key, value) = cniguard::cluster::settings::DEFAULT_ECHO_SELECTOR.split_once('=').unwrap();
    assert_eq!(pod_labels(echo).get(key).map(String::as_str), Some(value));
    let tolerations = spec.tolerations.clone().unwrap();
    assert_eq!((tolerations.len(), tolerations[0].operator.as_deref()), (1, Some("Exists")));
}

/// A file removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("cniguard-deploy-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A kubeconfig that parses: `mode = "on"` outside a pod needs one.
const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n";

fn configmap_toml(all: &Manifests) -> String {
    all.config_maps[0].data.as_ref().unwrap()["cniguard.toml"].clone()
}

#[test]
fn the_configmap_is_a_configuration_the_daemon_accepts_and_matches_the_echo_pods() {
    let all = Manifests::load();
    let config = Temp::new("cniguard.toml", &configmap_toml(&all));
    let kubeconfig = Temp::new("kubeconfig", KUBECONFIG);
    let overrides =
        cniguard::config::Overrides { kubeconfig: Some(kubeconfig.0.clone()), ..Default::default() };
    let settings = cniguard::config::Settings::load(Some(&config.0), overrides)
        .unwrap_or_else(|err| panic!("deploy/configmap.yaml: {err}"));
    assert!(settings.cluster.api.is_some(), "cluster mode is on");
    let echo = only_container(all.daemon_set("cniguard-echo"));
    assert_eq!(
        echo.args.as_ref().unwrap()[2],
        format!("0.0.0.0:{}", settings.cluster.echo_port),
        "[cluster] echo_port is the echo pods' port"
    );
    let (key, value) = settings.cluster.echo_selector.split_once('=').unwrap();
    assert_eq!(pod_labels(all.daemon_set("cniguard-echo")).get(key).map(String::as_str), Some(value));
}

#[test]
fn a_mistake_in_the_configmap_stops_the_pod_with_the_field_named() {
    let all = Manifests::load();
    let text = configmap_toml(&all);
    assert!(text.contains("\necho_port = 9465\n"));
    let config = Temp::new("bad.toml", &text.replace("\necho_port = 9465\n", "\necho_port = 0\n"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cniguard"))
        .args(["run", "--config"])
        .arg(&config.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("field `cluster.echo_port`"), "{stderr}");
}

#[test]
fn the_readme_names_exactly_the_capabilities_granted() {
    let readme = read("README.md");
    let section = readme.split("\n### Capabilities\n").nth(1).expect("a `### Capabilities` section");
    let named: Vec<String> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.split('|').nth(1).unwrap().trim().trim_matches('`').trim_start_matches("CAP_").to_owned())
        .collect();
    assert_eq!(named, strings(&CAPABILITIES));
}

#[test]
fn the_image_is_the_binary_alone() {
    let containerfile = read("Containerfile");
    let stages: Vec<&str> = containerfile.split("\nFROM ").skip(1).collect();
    let last = stages.last().expect("a multi-stage build");
    assert!(stages.len() >= 2, "multi-stage");
    assert!(last.starts_with("scratch"), "the final stage starts from nothing:\n{last}");
    let instructions: Vec<&str> = last
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(instructions.iter().filter(|i| **i == "COPY").count(), 1, "the binary and nothing else");
    assert!(!instructions.contains(&"RUN"));
    assert!(last.contains("ENTRYPOINT [\"/cniguard\"]"), "{last}");
}
