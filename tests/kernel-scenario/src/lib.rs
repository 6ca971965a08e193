//! What the kernel scenario reports, one line each on the guest's serial console, and how
//! `cargo xtask kernels` reads those lines back among the kernel's own messages.

use std::fmt;

/// Every report line starts with this, so it can be told from the kernel's console output.
pub const PREFIX: &str = "cniguard-kernels:";

/// The probes the scenario exercises, in the order the matrix shows them.
pub const PROBES: &[&str] =
    &["iface_stats", "underlay", "overlay", "dns", "localhost", "drops", "tcp_health", "sock_state"];

/// One line of the scenario's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The guest's kernel release, first.
    Kernel(String),
    /// The daemon turned `probe` off, for `reason` (its own words).
    Off { probe: String, reason: String },
    /// One exact count of `probe`: what cniguard reported and what it should have.
    Check { probe: String, aspect: String, got: u64, want: u64 },
    /// The scenario itself could not go on (a device, a namespace, the daemon).
    Error(String),
    /// The scenario finished; nothing is missing.
    Done,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line each, whatever the text holds: the reader splits on newlines.
        let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        match self {
            Self::Kernel(release) => write!(f, "{PREFIX} kernel {}", flat(release)),
            Self::Off { probe, reason } => write!(f, "{PREFIX} off {probe} {}", flat(reason)),
            Self::Check { probe, aspect, got, want } => {
                write!(f, "{PREFIX} check {probe} {aspect} got={got} want={want}")
            }
            Self::Error(message) => write!(f, "{PREFIX} error {}", flat(message)),
            Self::Done => write!(f, "{PREFIX} done"),
        }
    }
}

impl Report {
    /// The report in `line`, if it holds one (console noise before the prefix is skipped).
    #[must_use]
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line[line.find(PREFIX)? + PREFIX.len()..].trim();
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "kernel" => Some(Self::Kernel(rest.to_owned())),
            "off" => {
                let (probe, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Self::Off { probe: probe.to_owned(), reason: reason.to_owned() })
            }
            "check" => {
                let mut words = rest.split_whitespace();
                let (probe, aspect) = (words.next()?, words.next()?);
                let got = words.next()?.strip_prefix("got=")?.parse().ok()?;
                let want = words.next()?.strip_prefix("want=")?.parse().ok()?;
                Some(Self::Check { probe: probe.to_owned(), aspect: aspect.to_owned(), got, want })
            }
            "error" => Some(Self::Error(rest.to_owned())),
            "done" => Some(Self::Done),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[test]
    fn every_report_reads_back_as_written_even_after_console_noise() {
        let reports = [
            Report::Kernel("6.1.0-50-amd64".into()),
            Report::Off { probe: "drops".into(), reason: "no enum skb_drop_reason\nin the BTF".into() },
            Report::Check { probe: "dns".into(), aspect: "queries".into(), got: 17, want: 17 },
            Report::Error("ip link add failed".into()),
            Report::Done,
        ];
        for report in reports {
            let line = format!("[    3.1] random: crng init done\r{report}\r");
            let mut expected = report.clone();
            if let Report::Off { reason, .. } = &mut expected {
                *reason = reason.replace('\n', " ");
            }
            assert_eq!(Report::parse(&line), Some(expected), "{line:?}");
        }
        assert_eq!(Report::parse("[    2.1] reboot: Power down"), None);
        assert_eq!(Report::parse("cniguard-kernels: check dns queries got=x want=1"), None);
    }
}
