//! The named CIDRs (`cidrs` in the configuration) that overlay and TCP traffic are
//! classified by: the runbook's address plan, old and new pod and service ranges.

use std::net::Ipv4Addr;

use serde::Deserialize;

/// One entry of `cidrs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrConfig {
    pub name: String,
    pub cidr: String,
}

/// The runbook's address plan: pods and services before (Flannel) and after (Calico).
pub const DEFAULT_CIDRS: &[(&str, &str)] = &[
    ("old_pods", "10.42.0.0/16"),
    ("new_pods", "10.244.0.0/16"),
    ("services", "10.96.0.0/12"),
    ("services", "10.43.0.0/16"),
];

/// A validated CIDR with its label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub name: String,
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    /// # Errors
    /// A one-line message saying what is wrong with the entry and how to fix it.
    pub fn parse(config: &CidrConfig) -> Result<Self, String> {
        let name = &config.name;
        if name.is_empty()
            || name == "other"
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "CIDR name `{name}` must be lower-case letters, digits and `_`, and not `other` (that is the label for everything else)"
            ));
        }
        let invalid = || format!("`{}` is not an IPv4 CIDR like 10.42.0.0/16", config.cidr);
        let (address, length) = config.cidr.split_once('/').ok_or_else(invalid)?;
        let network: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = length.parse().ok().filter(|l| *l <= 32).ok_or_else(invalid)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
        if u32::from(network) & !mask != 0 {
            return Err(format!(
                "`{}` has host bits set: did you mean {}/{prefix_len}?",
                config.cidr,
                Ipv4Addr::from(u32::from(network) & mask)
            ));
        }
        Ok(Self { name: name.clone(), network, prefix_len })
    }

    /// Whether `address` lies in the range.
    #[must_use]
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
        u32::from(address) & mask == u32::from(self.network)
    }
}

/// What is wrong with the `cidrs` list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("at most {max} CIDRs, got {got}")]
    TooMany { max: u32, got: usize },
    /// An entry's mistake, from [`Cidr::parse`].
    #[error("{0}")]
    Entry(String),
}

/// Validates the whole list.
///
/// # Errors
/// The first entry that is wrong, or a list longer than the programs' map holds.
pub fn parse_all(configs: &[CidrConfig]) -> Result<Vec<Cidr>, CidrError> {
    let max = probe_common::overlay::MAX_CIDRS;
    if configs.len() > max as usize {
        return Err(CidrError::TooMany { max, got: configs.len() });
    }
    configs.iter().map(Cidr::parse).collect::<Result<Vec<_>, _>>().map_err(CidrError::Entry)
}

/// The programs' table of `cidrs` (`CIDR_TABLE`): each class is the CIDR's index here.
#[must_use]
pub fn table(cidrs: &[Cidr]) -> probe_common::overlay::CidrTable {
    let cidrs: Vec<([u8; 4], u8)> = cidrs.iter().map(|c| (c.network.octets(), c.prefix_len)).collect();
    probe_common::overlay::CidrTable::new(&cidrs)
}

#[cfg(test)]
mod tests {
    use probe_common::overlay::{CidrTable, OTHER_CIDR};

    use super::*;

    #[test]
    fn the_longest_prefix_wins_whatever_the_order() {
        let table = CidrTable::new(&[([10, 0, 0, 0], 8), ([10, 244, 0, 0], 16), ([10, 244, 7, 0], 24)]);
        assert_eq!(table.class([10, 244, 7, 9]), 2);
        assert_eq!(table.class([10, 244, 8, 9]), 1);
        assert_eq!(table.class([10, 1, 2, 3]), 0);
        assert_eq!(table.class([192, 168, 0, 1]), OTHER_CIDR);
    }

    #[test]
    fn a_default_route_catches_everything_and_duplicates_keep_the_later_name() {
        let table = CidrTable::new(&[([0, 0, 0, 0], 0), ([10, 43, 0, 0], 16), ([10, 43, 0, 0], 16)]);
        assert_eq!(table.class([8, 8, 8, 8]), 0);
        assert_eq!(table.class([10, 43, 0, 10]), 2);
        assert_eq!(CidrTable::new(&[]).class([10, 43, 0, 10]), OTHER_CIDR);
    }

    #[test]
    fn cidrs_are_checked() {
        let cidr = |name: &str, cidr: &str| Cidr::parse(&CidrConfig { name: name.into(), cidr: cidr.into() });
        assert_eq!(cidr("new_pods", "10.244.0.0/16").unwrap().prefix_len, 16);
        assert!(cidr("other", "10.0.0.0/8").unwrap_err().contains("not `other`"));
        assert!(cidr("Pods", "10.0.0.0/8").unwrap_err().contains("lower-case"));
        assert!(cidr("pods", "10.244.1.0/16").unwrap_err().contains("did you mean 10.244.0.0/16"));
        assert!(cidr("pods", "10.244.0.0").unwrap_err().contains("not an IPv4 CIDR"));
        assert!(cidr("pods", "10.244.0.0/33").is_err());
    }
}
