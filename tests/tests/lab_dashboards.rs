//! Every query of the shipped Grafana dashboards (`dashboards/grafana/`) returns data from
//! the lab's real Prometheus once the lab has migrated: the panels' targets and the
//! variables' `label_values` queries, with the dashboard variables replaced by a real node,
//! pod namespace and interval. A query that names a metric that does not exist, or a label
//! the daemon does not export, returns nothing and fails here with the panel's name.
//!
//! A time-series panel has data when its query yields a number (not NaN) at some step of
//! the lab's run, as Grafana's range query over the dashboard's time range would; a table
//! (an instant query) when it yields a series now.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cniguard_lab::lab::{Fault, LAB_CNIGUARD_CONFIG, LAB_JUDGEMENT_CONFIG, Lab};
use cniguard_lab::netns::NetNs;
use cniguard_lab::require_root;
use cniguard_lab::services::{PromSample, Prometheus};
use cniguard_tests::lab_support::options;
use serde_json::Value;

const DASHBOARDS: &[&str] = &["cniguard-overview.json", "cniguard-node.json"];

/// The node the `$node` variable selects: the one with the MLServer pod and a DNS client.
const NODE: &str = "node-1";
/// How long the queries may take to all return data after the lab has done everything.
const DATA_DEADLINE: Duration = Duration::from_mins(2);
/// Prometheus' scrape interval in the lab: the step of the range queries.
const STEP_SECONDS: u64 = 2;

/// One query of a dashboard, with the variables already replaced.
struct Query {
    dashboard: &'static str,
    /// The panel's title and the target's refId, or the variable's name.
    what: String,
    promql: String,
    /// A table's instant query (`"instant": true`), not a time series' range query.
    instant: bool,
    /// The labels its legend shows (`{{label}}` in `legendFormat`): some series must have
    /// each, or the legend is blank where a name belongs (a typo in a `by (...)` clause).
    legend_labels: Vec<String>,
}

fn dashboard(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards/grafana").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, the panels inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let top = dashboard["panels"].as_array().expect("a panels array");
    top.iter().flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten())).collect()
}

/// `text` with Grafana's variables replaced; panics if one is left.
fn substitute(text: &str, variables: &BTreeMap<&str, String>) -> String {
    let mut text = text.to_owned();
    // Longest names first, so that no name is replaced inside a longer one.
    let mut names: Vec<_> = variables.keys().collect();
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    for name in names {
        text = text
            .replace(&format!("${{{name}}}"), &variables[name])
            .replace(&format!("${name}"), &variables[name]);
    }
    assert!(!text.contains('$'), "a variable is left in {text:?}");
    text
}

/// `label_values(METRIC{...}, LABEL)` as PromQL, `group by (LABEL) (METRIC{...})`, and LABEL.
fn label_values_promql(query: &str) -> (String, String) {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {query}"));
    let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
    (format!("group by ({}) ({})", label.trim(), metric.trim()), label.trim().to_owned())
}

/// The `{{label}}`s of a `legendFormat`.
fn legend_labels(format: &str) -> Vec<String> {
    format
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_owned())
        .collect()
}

/// The variables' queries, each with the label whose values it lists, and the panels'.
fn queries(variables: &BTreeMap<&str, String>) -> (Vec<(Query, String)>, Vec<Query>) {
    let (mut variable_queries, mut panel_queries) = (Vec::new(), Vec::new());
    for &file in DASHBOARDS {
        let board = dashboard(file);
        for variable in board["templating"]["list"].as_array().expect("templating.list") {
            if variable["type"] == "query" {
                let query = variable["query"]["query"].as_str().expect("a variable query");
                let (promql, label) = label_values_promql(&substitute(query, variables));
                let what = format!("variable {}", variable["name"]);
                let query = Query { dashboard: file, what, promql, instant: true, legend_labels: Vec::new() };
                variable_queries.push((query, label));
            }
        }
        for panel in panels(&board).into_iter().filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().expect("a panel title");
            for target in panel["targets"].as_array().expect("targets") {
                let promql = substitute(target["expr"].as_str().expect("an expr"), variables);
                panel_queries.push(Query {
                    dashboard: file,
                    what: format!("panel {title:?} {}", target["refId"].as_str().expect("a refId")),
                    instant: target["instant"] == true,
                    legend_labels: legend_labels(target["legendFormat"].as_str().unwrap_or_default()),
                    promql,
                });
            }
        }
    }
    (variable_queries, panel_queries)
}

/// What `query` yields: for an instant query, the series now; for a range query, the series
/// with a number at some step of the last `range_seconds` (NaN, a quantile of no
/// observations, is no data: Grafana draws nothing).
fn answer(prometheus: &Prometheus, query: &Query, range_seconds: u64) -> anyhow::Result<Vec<PromSample>> {
    if query.instant {
        prometheus.query(&query.promql, None)
    } else {
        // `x >= -Inf` keeps every number and drops NaN; the subquery evaluates the panel's
        // query at every step, as a range query would.
        prometheus.query(
            &format!("last_over_time((({}) >= -Inf)[{range_seconds}s:{STEP_SECONDS}s])", query.promql),
            None,
        )
    }
}

/// The queries whose answer is not what it should be (data, or none while they read
/// metrics that are yet to arrive), each with what went wrong.
fn wrong(prometheus: &Prometheus, queries: &[Query], range_seconds: u64) -> Vec<String> {
    queries
        .iter()
        .filter_map(|q| {
            let samples = match answer(prometheus, q, range_seconds) {
                Ok(samples) => samples,
                Err(err) => return Some(format!("{} {}: {err:#}", q.dashboard, q.what)),
            };
            let unnamed = q.legend_labels.iter().find(|label| {
                !samples.iter().any(|s| s.labels.get(label.as_str()).is_some_and(|value| !value.is_empty()))
            });
            if let (Some(label), false) = (unnamed, samples.is_empty()) {
                return Some(format!(
                    "{} {}: no series has the legend's label {label} ({} series from {})",
                    q.dashboard,
                    q.what,
                    samples.len(),
                    q.promql
                ));
            }
            samples.is_empty().then(|| format!("{} {}: no data from {}", q.dashboard, q.what, q.promql))
        })
        .collect()
}

/// The values of `label` in the answer to a variable's query.
fn label_values(prometheus: &Prometheus, query: &Query, label: &str) -> BTreeSet<String> {
    let samples = prometheus.query(&query.promql, None).unwrap_or_else(|e| panic!("{}: {e:#}", query.what));
    samples.into_iter().map(|s| s.labels.get(label).cloned().unwrap_or_default()).collect()
}

fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "{what}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Inside the MLServer pod, on its loopback (no traffic leaves the lab's namespaces): one
/// connection refused on a watched port nothing listens on (a reset each way, a `refused`
/// failure), and, with 127.0.0.1:9500 blocked, one that times out (SYN retransmits, a
/// `timeout` failure); then the cluster DNS stops long enough for queries to time out. The
/// panels of failures have something to show.
fn provoke_failures(lab: &mut Lab) {
    let pod = NetNs::existing(&lab.pod_netns_name("mlserver-0").unwrap());
    let refused = pod.run(|| TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))));
    assert!(refused.is_err(), "nothing listens on 127.0.0.1:8080 in the MLServer pod");
    lab.inject(&Fault::BlockMlserver).unwrap();
    let blocked = pod.run(|| {
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, 9500)), Duration::from_secs(4))
    });
    assert!(blocked.is_err(), "127.0.0.1:9500 is blocked");
    lab.repair(&Fault::BlockMlserver).unwrap();
    lab.inject(&Fault::StopDns).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    lab.repair(&Fault::StopDns).unwrap();
}

/// Grafana's variables as the test sets them: one node, one pod namespace, and the intervals
/// Grafana would pick for the lab's 2 s scrapes.
fn variables(netns: &str) -> BTreeMap<&'static str, String> {
    [
        ("datasource", String::new()),
        ("node", NODE.to_owned()),
        ("netns", netns.to_owned()),
        ("__rate_interval", "1m".to_owned()),
        ("__interval", "15s".to_owned()),
        ("__range", "5m".to_owned()),
    ]
    .into()
}

#[test]
fn every_dashboard_query_returns_data_from_the_lab() {
    // Before the lab: a dashboard this test cannot read fails here in a second.
    let _ = queries(&variables("placeholder"));

    require_root!();
    let mut options = options("dashboards");
    options.cniguard_config = format!("{LAB_CNIGUARD_CONFIG}{LAB_JUDGEMENT_CONFIG}");
    let mut lab = Lab::up(options).unwrap();
    let started = Instant::now();
    let prometheus = lab.prometheus();
    // Baselines learnt under Flannel, so that ratios to them exist after the cutover.
    let baseline = format!("cniguard_baseline{{node=\"{NODE}\",signal=\"localhost_response_p99_seconds\"}}");
    wait_until("a pre-cutover baseline in Prometheus", DATA_DEADLINE, || {
        prometheus.query(&baseline, None).is_ok_and(|s| s.len() == 1)
    });
    lab.cutover(None).unwrap();
    provoke_failures(&mut lab);

    // The variables: `node` lists exactly the lab's nodes, `netns` on node-1 exactly the
    // MLServer pod's namespace as it is now (the cutover re-created the pod; the namespace
    // of its Flannel days is gone, and so are its series).
    let netns = lab.pod_netns_name("mlserver-0").unwrap();
    let (variable_queries, panel_queries) = queries(&variables(&netns));
    let nodes: BTreeSet<String> = lab.topology().nodes.iter().map(|n| n.name.clone()).collect();
    for (query, label) in &variable_queries {
        let expected = match label.as_str() {
            "node" => nodes.clone(),
            "netns" => BTreeSet::from([netns.clone()]),
            other => panic!(
                "{} {}: a variable of label {other}, which this test does not know",
                query.dashboard, query.what
            ),
        };
        assert_eq!(
            label_values(&prometheus, query, label),
            expected,
            "{} {}: {}",
            query.dashboard,
            query.what,
            query.promql
        );
    }

    // Every panel: the range covers the lab's whole run, and a minute more for the rates.
    let start = Instant::now();
    let problems = loop {
        let problems = wrong(&prometheus, &panel_queries, started.elapsed().as_secs() + 60);
        if problems.is_empty() || start.elapsed() > DATA_DEADLINE {
            break problems;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        problems.is_empty(),
        "{} of {} queries:\n{}",
        problems.len(),
        panel_queries.len(),
        problems.join("\n")
    );
    lab.down();
}
