//! The configuration every node's cniguard reads in the lab, as a DaemonSet's ConfigMap.

/// The lab's cniguard configuration: each node watches its own namespace and its pods' (one
/// kernel runs all three nodes), and checks the MLServer pods every 2 seconds as the
/// runbook's `curl 127.0.0.1:9000/v2/health/ready` does, on both of Seldon's MLServer ports
/// in the protocol each speaks (the defaults: HTTP on 9000, gRPC `ServerReady` on 9500).
pub const LAB_CNIGUARD_CONFIG: &str = "\
netns_scope = \"node\"

[localhost]
connect_timeout_seconds = 2

[localhost.check]
enabled = true
namespaces = [\"*-mlserver-*\"]
ports = [9000, 9500]
interval_seconds = 2
timeout_seconds = 1

[baseline]
window_seconds = 2
windows = 5
";

/// What turns the lab's measurements into a rollback decision: active checks from a pod
/// of each node to the others' echo pods, the MLServer and the cluster DNS (targets the
/// lab rewrites as pods move), and the runbook's triggers with their `for` and clear
/// times shortened from minutes to seconds. Appended to [`LAB_CNIGUARD_CONFIG`] by
/// `cargo xtask lab` and the trigger tests; left out where a test counts packets exactly
/// (the checks add their own). `{state_dir}` and `{node}` are filled in per node.
pub const LAB_JUDGEMENT_CONFIG: &str = "
[checks]
enabled = true
interval_seconds = 1
timeout_seconds = 1
targets_file = \"{state_dir}/targets-{node}.toml\"

[triggers]
evaluate_seconds = 1

[triggers.connectivity_lost]
for_seconds = 8
clear_seconds = 4

[triggers.pod_to_pod_not_restored]
restore_deadline_seconds = 30
window_seconds = 10
for_seconds = 8
clear_seconds = 4

[triggers.critical_service_unavailable]
for_seconds = 8
clear_seconds = 4

[triggers.dns_failing]
for_seconds = 8
clear_seconds = 4

# The runbook's 1 ms is no SLO for the real MLServer: every call's response time includes
# its own time in Python, a few milliseconds, and the agent's 3 concurrent streams queue on
# its one event loop. With the lab's three nodes on a small machine's CPUs, a clean run's
# p99 is 10 to 20 ms; a 60 ms injected delay (slow-mlserver, lab_triggers) is clear.
[triggers.localhost_latency_slo]
threshold = 0.05
clear_threshold = 0.04
for_seconds = 8
clear_seconds = 4

[triggers.regression]
for_seconds = 8
clear_seconds = 4

# Findings within seconds: the checks send VXLAN both ways every second.
[diagnose]
evaluate_seconds = 1
window_seconds = 6
for_seconds = 3
clear_seconds = 4
min_packets = 5
";
