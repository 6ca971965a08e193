//! Configuration of the real daemons the lab runs: BIRD (Calico's BGP), dnsmasq (cluster
//! DNS) and Prometheus, and Prometheus' HTTP API.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result, bail};

use crate::netns::NetNs;
use crate::topology::{CALICO_AS, CNIGUARD_PORT, HOOK_ADDRESS, PROMETHEUS_PORT, Topology};

/// What the lab's faults change in a node's BIRD configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BirdFaults {
    /// Peers whose AS this node expects wrongly (`CALICO_AS + 1`): it refuses their OPEN.
    pub wrong_as: Vec<usize>,
    /// The router id the node announces instead of its underlay address.
    pub router_id: Option<Ipv4Addr>,
}

/// The AS a node expects of a peer under [`BirdFaults::wrong_as`].
pub const WRONG_AS: u32 = CALICO_AS + 1;

/// BIRD's configuration on `node`, as calico-node writes it for the node-to-node mesh:
/// an iBGP session to every other Calico node in `peers`, exporting this node's /26 block
/// and installing into the kernel only routes whose next hop is on the node's own subnet.
/// Blocks of nodes across the router are reached through vxlan.calico instead
/// (VXLANCrossSubnet), whose routes Felix programs (here: `dataplane::enable_calico`).
/// The timers are the lab's (seconds, not minutes), so a session refused or lost is tried
/// again within a diagnose window.
#[must_use]
pub fn bird_config(topology: &Topology, node: usize, peers: &[usize], faults: &BirdFaults) -> String {
    let spec = &topology.nodes[node];
    let subnet = topology.subnet_of(node).cidr();
    let mut config = format!(
        "# Written by the cniguard lab for {name}.\n\
         router id {router_id};\n\
         protocol device {{ scan time 10; }}\n\
         protocol static local_block {{\n  ipv4;\n  route {block}/26 blackhole;\n}}\n\
         protocol kernel {{\n  ipv4 {{\n    import none;\n    export filter {{\n\
         \x20     if proto = \"local_block\" then reject;\n\
         \x20     if net ~ [ 10.244.0.0/16+ ] && gw ~ {subnet} then accept;\n\
         \x20     reject;\n    }};\n  }};\n  learn off;\n  merge paths on;\n}}\n",
        name = spec.name,
        router_id = faults.router_id.unwrap_or(spec.address),
        block = spec.calico_block(),
    );
    for &peer in peers.iter().filter(|&&p| p != node) {
        let peer_spec = &topology.nodes[peer];
        // Across the router the session is multihop, and BIRD then resolves next hops
        // recursively; such routes never reach the kernel (the export filter above).
        let (reach, gateway) =
            if peer_spec.subnet == spec.subnet { ("direct", "direct") } else { ("multihop", "recursive") };
        // One side of each pair waits for the other: no connection collision, so a session
        // always opens with exactly one OPEN each way.
        let passive = if peer_spec.index < spec.index { "on" } else { "off" };
        let peer_as = if faults.wrong_as.contains(&peer) { WRONG_AS } else { CALICO_AS };
        let _ = write!(
            config,
            "protocol bgp mesh_{peer_name} {{\n  local {local} as {CALICO_AS};\n  neighbor {neighbor} as {peer_as};\n\
             \x20 {reach};\n  passive {passive};\n  hold time 9;\n  keepalive time 3;\n  connect retry time 1;\n\
             \x20 connect delay time 1;\n  error wait time 1, 2;\n\
             \x20 ipv4 {{\n    import filter {{ if net ~ [ 10.244.0.0/16{{26,32}} ] then accept; reject; }};\n\
             \x20   export filter {{ if proto = \"local_block\" then accept; reject; }};\n\
             \x20   next hop self;\n    gateway {gateway};\n  }};\n}}\n",
            peer_name = peer_spec.name.replace('-', "_"),
            local = spec.address,
            neighbor = peer_spec.address,
        );
    }
    config
}

/// dnsmasq's hosts file: one line per pod, at the address it has now.
#[must_use]
pub fn dns_hosts(entries: &[(Ipv4Addr, String)]) -> String {
    entries.iter().fold(String::new(), |mut hosts, (address, name)| {
        let _ = writeln!(hosts, "{address} {name}");
        hosts
    })
}

/// dnsmasq's command line: authoritative for the cluster domain (unknown names get
/// NXDOMAIN, nothing is forwarded), answering from `hosts`, re-read on SIGHUP.
#[must_use]
pub fn dnsmasq_args(listen: Ipv4Addr, hosts: &str, pid_file: &str) -> Vec<String> {
    [
        "--keep-in-foreground",
        // Only these options: nothing from the host's /etc/dnsmasq.conf or dnsmasq.d.
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--bind-interfaces",
        "--log-facility=-",
        &format!("--listen-address={listen}"),
        &format!("--addn-hosts={hosts}"),
        &format!("--local=/{}/", crate::topology::CLUSTER_DOMAIN),
        &format!("--pid-file={pid_file}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The Prometheus rules cniguard ships, loaded as they are: the rollback alert has no `for`
/// of its own (each daemon's triggers already waited theirs).
pub const SHIPPED_RULES: &str = include_str!("../../../dashboards/prometheus/cniguard.rules.yaml");

/// Prometheus scraping the cniguard of every node every 2 s, labelled with the node name,
/// evaluating the shipped `rules` file and alerting through `alertmanager`.
#[must_use]
pub fn prometheus_config(topology: &Topology, rules: &str, alertmanager: SocketAddr) -> String {
    let mut config = format!(
        "# Written by the cniguard lab.\nglobal:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n\
         rule_files: ['{rules}']\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n\
         scrape_configs:\n  - job_name: cniguard\n    static_configs:\n",
    );
    for node in &topology.nodes {
        let _ = write!(
            config,
            "      - targets: ['{}:{CNIGUARD_PORT}']\n        labels: {{ node: '{}' }}\n",
            node.address, node.name
        );
    }
    // The rollback hook, next to Prometheus in the monitoring namespace: no node of its own.
    let _ = write!(
        config,
        "  - job_name: cniguard-rollback-hook\n    static_configs:\n      - targets: ['{HOOK_ADDRESS}']\n"
    );
    config
}

/// Alertmanager: the rollback alert goes to the rollback hook with its bearer token, at
/// once and again every few seconds while it fires (the hook decides, not the repeats);
/// every other alert goes nowhere.
#[must_use]
pub fn alertmanager_config(hook: SocketAddr, token_file: &str) -> String {
    format!(
        "# Written by the cniguard lab.\nroute:\n  receiver: discard\n  group_by: [alertname]\n\
         \x20 group_wait: 1s\n  group_interval: 2s\n  repeat_interval: 4s\n  routes:\n\
         \x20   - receiver: rollback-hook\n      matchers: ['alertname=\"CniguardRollbackRecommended\"']\n\
         receivers:\n  - name: discard\n  - name: rollback-hook\n    webhook_configs:\n\
         \x20     - url: http://{hook}/webhook\n        send_resolved: true\n        http_config:\n\
         \x20         authorization:\n            type: Bearer\n            credentials_file: {token_file}\n"
    )
}

#[must_use]
pub fn prometheus_args(topology: &Topology, config: &str, data: &str) -> Vec<String> {
    vec![
        format!("--config.file={config}"),
        format!("--storage.tsdb.path={data}"),
        format!("--web.listen-address={}:{PROMETHEUS_PORT}", topology.monitor_address),
        "--storage.tsdb.retention.time=1d".into(),
        "--log.level=warn".into(),
    ]
}

/// One sample of an instant-query answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Prometheus' HTTP API, reached from the monitoring namespace.
pub struct Prometheus {
    pub netns: NetNs,
    pub address: SocketAddr,
}

impl Prometheus {
    /// An instant query, at `time` (Unix seconds) or now.
    ///
    /// # Errors
    /// If Prometheus is unreachable or rejects the query.
    pub fn query(&self, promql: &str, time: Option<f64>) -> Result<Vec<PromSample>> {
        let mut path = format!("/api/v1/query?query={}", percent_encode(promql));
        if let Some(time) = time {
            let _ = write!(path, "&time={time:.3}");
        }
        let (status, body) = self.netns.http_get(self.address, &path)?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("Prometheus answered {status}: {body}"))?;
        if answer["status"] != "success" {
            bail!("query {promql:?} failed: {}", answer["error"]);
        }
        let mut samples = Vec::new();
        for result in answer["data"]["result"].as_array().into_iter().flatten() {
            let labels = result["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = result["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            samples.push(PromSample { labels, value });
        }
        Ok(samples)
    }

    /// The one value of a query that yields at most one series (`None` if it yields none).
    ///
    /// # Errors
    /// If the query fails or yields several series.
    pub fn scalar(&self, promql: &str, time: Option<f64>) -> Result<Option<f64>> {
        let samples = self.query(promql, time)?;
        match samples.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            _ => bail!("{promql:?} yields {} series, expected one", samples.len()),
        }
    }

    /// Whether Prometheus is up and every cniguard target has been scraped successfully.
    #[must_use]
    pub fn all_targets_up(&self, expected: usize) -> bool {
        self.query("up{job=\"cniguard\"} == 1", None).is_ok_and(|samples| samples.len() == expected)
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_meshes_with_every_other_calico_node() {
        let topology = Topology::standard("cglab-test");
        let config = bird_config(&topology, 0, &[0, 1, 2], &BirdFaults::default());
        assert!(config.contains("protocol bgp mesh_node_2 {"));
        assert!(config.contains("neighbor 192.168.10.12 as 64512;\n  direct;\n  passive off;"));
        assert!(
            bird_config(&topology, 1, &[0, 1], &BirdFaults::default())
                .contains("neighbor 192.168.10.11 as 64512;\n  direct;\n  passive on;")
        );
        assert!(config.contains("neighbor 192.168.20.13 as 64512;\n  multihop;"));
        assert!(!config.contains("mesh_node_1"), "no session to itself");
        assert!(config.contains("gw ~ 192.168.10.0/24"));
        assert!(config.contains("router id 192.168.10.11;"));
        let router_id = Some(Ipv4Addr::new(10, 0, 2, 15));
        let wrong = bird_config(&topology, 0, &[0, 1, 2], &BirdFaults { wrong_as: vec![1], router_id });
        assert!(wrong.contains("router id 10.0.2.15;"), "{wrong}");
        assert!(wrong.contains("neighbor 192.168.10.12 as 64513;"), "{wrong}");
        assert!(wrong.contains("neighbor 192.168.20.13 as 64512;"), "{wrong}");
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent_encode("up{job=\"x\"} == 1"), "up%7Bjob%3D%22x%22%7D%20%3D%3D%201");
    }
}
