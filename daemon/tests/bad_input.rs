//! Bad input gets one line naming the culprit, and exit code 2, before anything is loaded.
//! These run unprivileged: configuration is checked before the kernel is touched.

use std::process::Command;

fn cniguard_run(args: &[&str]) -> (i32, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_cniguard")).arg("run").args(args).output().expect("start cniguard");
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    (output.status.code().expect("exit code"), stderr)
}

/// A config file, removed when the test ends.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("cniguard-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write the config file");
        Self(path)
    }

    fn as_str(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn assert_one_line(stderr: &str) {
    assert_eq!(stderr.trim_end().lines().count(), 1, "expected one line, got:\n{stderr}");
}

#[test]
fn unknown_config_field_is_named_with_file_and_line() {
    let file = ConfigFile::new("unknown", "listen = \"127.0.0.1:9464\"\n\ninterfacez = [\"veth*\"]\n");
    let (code, stderr) = cniguard_run(&["--config", file.as_str()]);
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr);
    assert!(stderr.contains(&format!("{}:3: field `interfacez`", file.as_str())), "{stderr}");
    assert!(stderr.contains("unknown field `interfacez`"), "{stderr}");
}

#[test]
fn invalid_glob_is_named() {
    let (code, stderr) = cniguard_run(&["--interfaces", "veth*,cali[0-9"]);
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr);
    assert!(stderr.contains("--interfaces: invalid interface pattern `cali[0-9`"), "{stderr}");
}

#[test]
fn invalid_glob_in_the_file_is_named() {
    let file = ConfigFile::new("glob", "interfaces = [\"{veth*\"]\n");
    let (code, stderr) = cniguard_run(&["--config", file.as_str()]);
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr);
    assert!(stderr.contains("field `interfaces`: invalid interface pattern `{veth*`"), "{stderr}");
}

#[test]
fn unparsable_listen_address_is_named() {
    let (code, stderr) = cniguard_run(&["--listen", "localhost:metrics"]);
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr);
    assert!(stderr.contains("--listen: `localhost:metrics` is not an address and port"), "{stderr}");
}

#[test]
fn missing_config_file_is_named() {
    let (code, stderr) = cniguard_run(&["--config", "/nonexistent/cniguard.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr);
    assert!(stderr.contains("/nonexistent/cniguard.toml: cannot read the config file"), "{stderr}");
}

/// A baseline window of i64::MAX seconds once panicked the baseline thread while the daemon
/// ran on blind; it is refused at load, with the range.
#[test]
fn out_of_range_values_are_refused_with_the_range() {
    let file = ConfigFile::new("range", "[baseline]\nwindow_seconds = 9223372036854775807\n");
    let (code, stderr) = cniguard_run(&["--config", file.as_str()]);
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr);
    assert!(
        stderr.contains(&format!(
            "{}: field `baseline.window_seconds`: 9223372036854775807 is out of range: must be 1 to 3600 seconds",
            file.as_str()
        )),
        "{stderr}"
    );
    let ports: Vec<String> = (1..=100).map(|port| port.to_string()).collect();
    let file = ConfigFile::new("ports", &format!("vxlan_ports = [{}]\n", ports.join(", ")));
    let (code, stderr) = cniguard_run(&["--config", file.as_str()]);
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr);
    assert!(stderr.contains("field `vxlan_ports`: 100 ports is out of range: at most 32"), "{stderr}");
    let file = ConfigFile::new("evaluate", "[triggers]\nevaluate_seconds = 1000000000000\n");
    let (code, stderr) = cniguard_run(&["--config", file.as_str()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "field `triggers.evaluate_seconds`: 1000000000000 is out of range: must be 1 to 600 seconds"
        ),
        "{stderr}"
    );
}
