//! `cargo xtask test`: everything CI runs, in the order a failure is cheapest to read.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

// Also for setup.rs, which still reaches it through here.
use crate::workspace::workspace_root;
use crate::{cmd, image, setup};

/// Namespace prefixes of the tests and the lab: anything left under them after a run is a
/// leak, and a leak fails the run.
pub const LEFTOVER_PREFIXES: &[&str] = &["cgt-", "cglab-"];

/// The Prometheus rule file, its `promtool test rules` unit tests, and the PrometheusRule
/// made from it (by `dashboards/prometheus/render-prometheusrule.sh`), from the workspace root.
const RULES: &str = "dashboards/prometheus/cniguard.rules.yaml";
const RULE_TESTS: &str = "dashboards/prometheus/cniguard.rules.test.yaml";
const PROMETHEUS_RULE: &str = "deploy/prometheusrule.yaml";
/// The Grafana dashboards' schema validator (Node.js; `cargo xtask setup` installs its
/// packages).
pub const DASHBOARD_VALIDATOR: &str = "dashboards/validate";

pub fn run() -> Result<()> {
    setup::run(&setup::SetupArgs { build_only: false })?;
    // Leftovers of an earlier, killed run are not this run's leak: report them with the
    // command that removes them, and judge this run only by what it adds.
    let before = leftover_namespaces();
    if !before.is_empty() {
        println!(
            "test: warning: {} namespaces left by an earlier run ({}); `cargo xtask lab down --clean` removes them",
            before.len(),
            before.join(" ")
        );
    }
    cmd::run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    rules_and_dashboards(&workspace_root())?;
    cmd::run(Command::new("cargo").args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let ci = std::env::var("CI").unwrap_or_default();
    println!("test: CI={ci:?} (with CI=true a test that cannot run fails instead of skipping)");
    // The image the container tests run (tests/tests/container.rs reads target/image/).
    image::build(&image::image_dir())?;
    // Tests build the daemon binary next to themselves (`cargo test --workspace`).
    cmd::run(Command::new("cargo").args(["test", "--workspace"]))?;
    let leftovers: Vec<String> =
        leftover_namespaces().into_iter().filter(|name| !before.contains(name)).collect();
    if !leftovers.is_empty() {
        bail!("tests left namespaces behind: {}", leftovers.join(" "));
    }
    // Every probe on the kernels production nodes run, each booted under QEMU.
    crate::kernels::run()?;
    println!("test: all passed, nothing left behind");
    Ok(())
}

/// Namespaces under the test and lab prefixes that exist now.
pub fn leftover_namespaces() -> Vec<String> {
    let list = cmd::output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| LEFTOVER_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .map(str::to_owned)
        .collect()
}

/// `promtool check rules` and `promtool test rules` on the shipped rules, the PrometheusRule
/// against the rule file, and the dashboards against Grafana's schema: seconds, no build.
fn rules_and_dashboards(root: &Path) -> Result<()> {
    cmd::run(Command::new("promtool").current_dir(root).args(["check", "rules", RULES]))?;
    cmd::run(Command::new("promtool").current_dir(root).args(["test", "rules", RULE_TESTS]))?;
    let read =
        |file: &str| std::fs::read_to_string(root.join(file)).with_context(|| format!("reading {file}"));
    prometheus_rule_matches(&read(RULES)?, &read(PROMETHEUS_RULE)?)?;
    println!("test: {PROMETHEUS_RULE}: spec.groups is {RULES}'s groups");
    cmd::run(Command::new("node").current_dir(root.join(DASHBOARD_VALIDATOR)).arg("validate.mjs"))
}

/// Checks that the PrometheusRule `wrapper` carries the rule file `rules` as its `spec`.
///
/// The wrapper is the PrometheusRule header, then `spec:`, then every line of the rule file
/// indented by two spaces (empty lines stay empty). Removing those two spaces must give the
/// rule file byte for byte: block YAML shifted as a whole parses to the same value, so
/// `spec.groups` is the rule file's `groups` exactly, with no YAML parser needed here.
fn prometheus_rule_matches(rules: &str, wrapper: &str) -> Result<()> {
    let regenerate = "run dashboards/prometheus/render-prometheusrule.sh";
    let spec = prometheus_rule_spec(wrapper).with_context(|| format!("{PROMETHEUS_RULE}: {regenerate}"))?;
    if let Some((number, (got, want))) =
        spec.lines().zip(rules.lines()).enumerate().find(|(_, (got, want))| got != want)
    {
        bail!(
            "{PROMETHEUS_RULE}'s spec differs from {RULES} at line {} of the rule file:\n  spec: {got}\n  rules: {want}\n{regenerate}",
            number + 1
        );
    }
    if spec != rules {
        bail!(
            "{PROMETHEUS_RULE}'s spec has {} lines, {RULES} {}: {regenerate}",
            spec.lines().count(),
            rules.lines().count()
        );
    }
    Ok(())
}

/// The lines after the top-level `spec:` of a PrometheusRule, de-indented by two spaces.
fn prometheus_rule_spec(wrapper: &str) -> Result<String> {
    let mut lines = wrapper.split_inclusive('\n');
    let header: Vec<&str> = lines.by_ref().take_while(|line| line.trim_end() != "spec:").collect();
    for required in ["apiVersion: monitoring.coreos.com/v1", "kind: PrometheusRule"] {
        if !header.iter().any(|line| line.trim_end() == required) {
            bail!("no `{required}` before a top-level `spec:`");
        }
    }
    let mut spec = String::new();
    for line in lines {
        if line == "\n" {
            spec.push_str(line);
        } else if let Some(rest) = line.strip_prefix("  ") {
            spec.push_str(rest);
        } else {
            bail!("`spec` must be the last top-level key, indented by two spaces; found {line:?}");
        }
    }
    if spec.is_empty() {
        bail!("no `spec:` with the rule groups");
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::{PROMETHEUS_RULE, RULES, prometheus_rule_matches, workspace_root};

    const RULE_FILE: &str =
        "groups:\n  - name: g\n    rules:\n\n      - record: r\n        expr: vector(1)\n";
    const HEADER: &str = "# generated\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: x\nspec:\n";

    fn wrapped(body: &str) -> String {
        let indented: String = body
            .split_inclusive('\n')
            .map(|l| if l == "\n" { l.to_owned() } else { format!("  {l}") })
            .collect();
        format!("{HEADER}{indented}")
    }

    #[test]
    fn a_wrapper_of_the_same_groups_matches() {
        prometheus_rule_matches(RULE_FILE, &wrapped(RULE_FILE)).unwrap();
    }

    #[test]
    fn a_changed_rule_a_missing_line_or_a_wrong_kind_do_not() {
        let changed = wrapped(&RULE_FILE.replace("vector(1)", "vector(2)"));
        let err = prometheus_rule_matches(RULE_FILE, &changed).unwrap_err().to_string();
        assert!(err.contains("at line 6 of the rule file"), "{err}");
        let shorter = wrapped(RULE_FILE.strip_suffix("        expr: vector(1)\n").unwrap());
        let err = prometheus_rule_matches(RULE_FILE, &shorter).unwrap_err().to_string();
        assert!(err.contains("spec has 5 lines"), "{err}");
        let kind = wrapped(RULE_FILE).replace("kind: PrometheusRule", "kind: ConfigMap");
        let err = format!("{:#}", prometheus_rule_matches(RULE_FILE, &kind).unwrap_err());
        assert!(err.contains("no `kind: PrometheusRule`"), "{err}");
        let after = format!("{}status: {{}}\n", wrapped(RULE_FILE));
        let err = format!("{:#}", prometheus_rule_matches(RULE_FILE, &after).unwrap_err());
        assert!(err.contains("must be the last top-level key"), "{err}");
    }

    #[test]
    fn the_shipped_prometheusrule_carries_the_shipped_rules() {
        let read = |file: &str| std::fs::read_to_string(workspace_root().join(file)).unwrap();
        prometheus_rule_matches(&read(RULES), &read(PROMETHEUS_RULE)).unwrap();
    }
}
