//! The `[diagnose]` table: how often findings are evaluated, over what window, and the
//! hold and clear discipline they share with the rollback triggers.

use std::time::Duration;

use serde::Deserialize;

use crate::judgement::triggers::Hysteresis;
use crate::probes::cidr::Cidr;

/// The `[diagnose]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnoseConfig {
    pub enabled: bool,
    /// How often the findings are evaluated.
    pub evaluate_seconds: u64,
    /// The window the rates behind a finding are read over (VXLAN packets sent and
    /// received, connection attempts).
    pub window_seconds: u64,
    /// How long a finding's evidence must hold before it is raised (no finding on one packet).
    pub for_seconds: u64,
    /// How long it must be gone before a raised finding clears.
    pub clear_seconds: u64,
    /// VXLAN packets sent to a peer in the window, none back, before `vxlan_one_way` holds.
    pub min_packets: u64,
    /// Failed connection attempts in the window before `bgp_blocked` or
    /// `typha_unreachable` holds; unanswered DNS queries before `old_service_cidr_in_use` does.
    pub min_attempts: u64,
    /// Service ranges of before the cutover (K3s' default: 10.43.0.0/16): DNS queries to
    /// an address there that nothing answers mean pods still use the old cluster DNS.
    pub old_service_cidrs: Vec<String>,
    /// The ports connections to an old service range are followed on (K3s' API ClusterIP
    /// 10.43.0.1:443): each watched port costs an event per TCP state change of every
    /// connection to it on the node.
    pub old_service_ports: Vec<u16>,
    /// Pod ranges of before the cutover (K3s' Flannel default: 10.42.0.0/16): a pod that
    /// still holds an address there and sends on a node already on Calico was never
    /// re-created (`pods_on_old_addresses`).
    pub old_pod_cidrs: Vec<String>,
}

impl Default for DiagnoseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            evaluate_seconds: 5,
            window_seconds: 60,
            for_seconds: 30,
            clear_seconds: 60,
            min_packets: 10,
            min_attempts: 3,
            old_service_cidrs: vec!["10.43.0.0/16".to_owned()],
            old_service_ports: vec![443],
            old_pod_cidrs: vec!["10.42.0.0/16".to_owned()],
        }
    }
}

/// The validated `[diagnose]` table.
#[derive(Debug, Clone)]
pub struct DiagnoseSettings {
    pub evaluate_every: Duration,
    pub window: Duration,
    pub hysteresis: Hysteresis,
    pub min_packets: f64,
    pub min_attempts: f64,
    /// The address plan (`cidrs`): pod and service ranges a node route must not overlap.
    pub cidrs: Vec<Cidr>,
    pub old_service_cidrs: Vec<Cidr>,
    pub old_service_ports: Vec<u16>,
    pub old_pod_cidrs: Vec<Cidr>,
}

/// `sock_state` watches these next to BGP's and Typha's ports, in a map of 64.
const MAX_OLD_SERVICE_PORTS: usize = 32;

/// The longest window, hold or clear time: an hour.
const MAX_SECONDS: u64 = 3600;

/// What is wrong with the `[diagnose]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiagnoseError {
    #[error("{value} is out of range: must be {min} to {MAX_SECONDS} seconds")]
    Seconds { field: &'static str, value: u64, min: u64 },
    #[error("must be at least 1 (a single packet or attempt is never a finding)")]
    Zero { field: &'static str },
    #[error(
        "{window} s is shorter than `diagnose.evaluate_seconds` ({evaluate} s): the window must span at least two evaluations"
    )]
    WindowTooShort { window: u64, evaluate: u64 },
    #[error("{0}")]
    OldServiceCidr(String),
    #[error("{0}")]
    OldPodCidr(String),
    #[error("port 0 is no port, and at most {MAX_OLD_SERVICE_PORTS} ports are followed")]
    OldServicePort,
}

impl DiagnoseError {
    /// The configuration field the error is about.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::Seconds { field, .. } | Self::Zero { field } => field,
            Self::WindowTooShort { .. } => "diagnose.window_seconds",
            Self::OldServiceCidr(_) => "diagnose.old_service_cidrs",
            Self::OldPodCidr(_) => "diagnose.old_pod_cidrs",
            Self::OldServicePort => "diagnose.old_service_ports",
        }
    }
}

impl DiagnoseConfig {
    /// `None` when `enabled = false`; `cidrs` is the validated address plan.
    ///
    /// # Errors
    /// The first field out of range, named.
    pub fn validate(&self, cidrs: &[Cidr]) -> Result<Option<DiagnoseSettings>, DiagnoseError> {
        let seconds = |field: &'static str, value: u64, min: u64| {
            if (min..=MAX_SECONDS).contains(&value) {
                Ok(value)
            } else {
                Err(DiagnoseError::Seconds { field, value, min })
            }
        };
        let evaluate = seconds("diagnose.evaluate_seconds", self.evaluate_seconds, 1)?;
        let window = seconds("diagnose.window_seconds", self.window_seconds, 1)?;
        let for_seconds = seconds("diagnose.for_seconds", self.for_seconds, 0)?;
        let clear_seconds = seconds("diagnose.clear_seconds", self.clear_seconds, 0)?;
        if window < evaluate {
            return Err(DiagnoseError::WindowTooShort { window, evaluate });
        }
        for (field, value) in
            [("diagnose.min_packets", self.min_packets), ("diagnose.min_attempts", self.min_attempts)]
        {
            if value == 0 {
                return Err(DiagnoseError::Zero { field });
            }
        }
        let old_service_cidrs =
            parse_cidrs("old_services", &self.old_service_cidrs).map_err(DiagnoseError::OldServiceCidr)?;
        let old_pod_cidrs =
            parse_cidrs("old_pods", &self.old_pod_cidrs).map_err(DiagnoseError::OldPodCidr)?;
        if self.old_service_ports.contains(&0) || self.old_service_ports.len() > MAX_OLD_SERVICE_PORTS {
            return Err(DiagnoseError::OldServicePort);
        }
        if !self.enabled {
            return Ok(None);
        }
        #[allow(clippy::cast_precision_loss, reason = "seconds and counts far below 2^52")]
        Ok(Some(DiagnoseSettings {
            evaluate_every: Duration::from_secs(evaluate),
            window: Duration::from_secs(window),
            hysteresis: Hysteresis {
                // A finding is present or not: its value is 1 or 0.
                threshold: 0.5,
                clear_threshold: 0.5,
                for_seconds: for_seconds as f64,
                clear_seconds: clear_seconds as f64,
            },
            min_packets: self.min_packets as f64,
            min_attempts: self.min_attempts as f64,
            cidrs: cidrs.to_vec(),
            old_service_cidrs,
            old_service_ports: self.old_service_ports.clone(),
            old_pod_cidrs,
        }))
    }
}

/// Each of `cidrs`, parsed, under `name`; the first that is no CIDR is the error.
fn parse_cidrs(name: &str, cidrs: &[String]) -> Result<Vec<Cidr>, String> {
    cidrs
        .iter()
        .map(|cidr| {
            Cidr::parse(&crate::probes::cidr::CidrConfig { name: name.to_owned(), cidr: cidr.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_out_of_range_are_named() {
        let bad = |edit: fn(&mut DiagnoseConfig)| {
            let mut config = DiagnoseConfig::default();
            edit(&mut config);
            config.validate(&[]).unwrap_err()
        };
        assert_eq!(bad(|c| c.evaluate_seconds = 0).field(), "diagnose.evaluate_seconds");
        assert_eq!(bad(|c| c.for_seconds = 3601).field(), "diagnose.for_seconds");
        assert_eq!(bad(|c| c.min_packets = 0).field(), "diagnose.min_packets");
        assert_eq!(bad(|c| c.old_service_ports = vec![443, 0]).field(), "diagnose.old_service_ports");
        assert_eq!(bad(|c| c.old_service_ports = (1..=33).collect()).field(), "diagnose.old_service_ports");
        let cidr = bad(|c| c.old_service_cidrs = vec!["10.43.0.0/33".into()]);
        assert_eq!(cidr.field(), "diagnose.old_service_cidrs");
        assert!(cidr.to_string().contains("10.43.0.0/33"), "{cidr}");
        let cidr = bad(|c| c.old_pod_cidrs = vec!["10.42.0.0/16".into(), "10.42/16".into()]);
        assert_eq!(cidr.field(), "diagnose.old_pod_cidrs");
        assert!(cidr.to_string().contains("10.42/16"), "{cidr}");
        let short = bad(|c| {
            c.window_seconds = 2;
            c.evaluate_seconds = 5;
        });
        assert_eq!(short.field(), "diagnose.window_seconds");
        assert!(short.to_string().contains("at least two evaluations"), "{short}");
        assert!(
            DiagnoseConfig { enabled: false, ..DiagnoseConfig::default() }.validate(&[]).unwrap().is_none()
        );
    }
}
