//! What is attached at a device's tc hooks: tcx programs and cls_bpf/u32 filters.

use anyhow::Result;
use aya::programs::{SchedClassifier, TcAttachType};

use cniguard_lab::netns::NetNs;

/// The tc hook of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn tc_word(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// Names of the tcx programs at `hook` of `device` (the kernel keeps 15 characters).
///
/// # Errors
/// If the device does not exist.
pub fn tcx_programs(ns: &NetNs, device: &str, hook: Hook) -> Result<Vec<String>> {
    let attach_type = match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    };
    ns.run(|| {
        let (_, programs) = SchedClassifier::query_tcx(device, attach_type)?;
        Ok(programs.iter().map(|p| p.name_as_str().unwrap_or_default().to_owned()).collect())
    })
}

/// The lines `tc filter show` prints for the filters at `hook` of `device` (one per
/// filter instance; the header line of each priority is left out).
///
/// # Errors
/// If `tc` fails.
pub fn filters(ns: &NetNs, device: &str, hook: Hook) -> Result<Vec<String>> {
    let text = ns.tc(&["filter", "show", "dev", device, hook.tc_word()])?;
    Ok(text
        .lines()
        .filter(|line| line.contains(" handle ") || line.contains(" fh "))
        .map(str::to_owned)
        .collect())
}

/// Whether `device` has a clsact qdisc.
///
/// # Errors
/// If `tc` fails.
pub fn has_clsact(ns: &NetNs, device: &str) -> Result<bool> {
    Ok(ns.tc(&["qdisc", "show", "dev", device])?.contains("qdisc clsact"))
}

/// How many copies of cniguard's `function` are attached at `hook` of `device`, by tcx or
/// as a cls_bpf filter.
///
/// # Errors
/// If the device does not exist.
pub fn cniguard_copies(ns: &NetNs, device: &str, hook: Hook, function: &str) -> Result<usize> {
    let kernel_name: String = function.chars().take(15).collect();
    let tcx = tcx_programs(ns, device, hook)?.iter().filter(|name| **name == kernel_name).count();
    let netlink =
        filters(ns, device, hook)?.iter().filter(|line| line.contains(&format!(" {function} "))).count();
    Ok(tcx + netlink)
}
