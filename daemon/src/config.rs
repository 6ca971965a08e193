//! The daemon's configuration: a TOML file (`--config`), overridden by command-line flags.
//!
//! Every field is documented here and in the README's configuration table, and
//! `config/cniguard.toml` shows them all with their defaults. Unknown fields are rejected:
//! a typo in the middle of a migration must not silently fall back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::interfaces::InterfaceSelector;

/// The default interface patterns: every CNI-managed device Flannel and Calico create.
pub const DEFAULT_INTERFACES: &[&str] = &["veth*", "cali*", "cni0", "flannel.1", "vxlan.calico"];
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The configuration file's contents. `#[serde(default)]`: every field may be left out.
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            interfaces: DEFAULT_INTERFACES.iter().map(|p| (*p).to_owned()).collect(),
            tc_attach: TcAttachMode::Auto,
            ebpf_log_level: EbpfLogLevel::Off,
            resync_interval_seconds: 30,
        }
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
}

/// The validated settings the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub interfaces: InterfaceSelector,
    pub tc_attach: TcAttachMode,
    pub ebpf_log_level: EbpfLogLevel,
    pub resync_interval: Duration,
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
        Ok(Self {
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
        let example = parse_file(&text).unwrap();
        let defaults = ConfigFile::default();
        assert_eq!(example.listen, defaults.listen);
        assert_eq!(example.interfaces, defaults.interfaces);
        assert_eq!(example.tc_attach, defaults.tc_attach);
        assert_eq!(example.ebpf_log_level, defaults.ebpf_log_level);
        assert_eq!(example.resync_interval_seconds, defaults.resync_interval_seconds);
    }
}
