//! Attaching interface probes to the interfaces that come and go, and detaching them.
//!
//! Each attached program is held as an owned aya link: dropping it detaches the program,
//! whether the daemon detaches one interface or shuts down. With tcx (Linux 6.6+) the
//! attachment is a BPF link that the kernel also removes if the daemon dies, so a restart
//! never finds an old copy. With netlink (cls_bpf on a clsact qdisc) filters outlive the
//! process, so filters carrying our program names are removed before attaching again, and
//! a clsact qdisc is removed on detach only if this daemon added it and nothing else uses it.
//! A clsact that a killed daemon left behind holding only cniguard's filters is removed
//! when an interface is first touched, so the new daemon adds (and owns) it afresh.
//!
//! An attach that fails for any reason but a vanished interface is an error: it is logged
//! as one and retried after [`RETRY_FIRST`], doubling up to [`RETRY_MAX`], not only at the
//! next resync.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use futures::TryStreamExt as _;
use netlink_packet_route::tc::TcHandle;
use probe_common::Direction;
use rtnetlink::Handle;
use serde::Deserialize;

use crate::metrics::{AttachFailure, DaemonMetrics};
use crate::node::interfaces::AttachedInterfaces;
use crate::node::interfaces::{Interface, InterfaceTable, LinkChange};
use crate::node::preflight::{Kernel, TCX_KERNEL};
use crate::probes::InterfaceProbe;

/// How classifiers attach: `auto` (netlink), `tcx` (6.6+), or `netlink` (clsact qdisc +
/// cls_bpf filter).
///
/// `auto` is netlink on every kernel, for cost: each tcx attach and detach waits for an RCU
/// grace period while holding RTNL (the kernel swaps the device's program array), about
/// 15 ms here, so 1,000 pod veths took 67 s to attach and 38 s to stop, past a
/// DaemonSet's 30 s grace period, and every CNI veth add meanwhile waited behind it (84 ms
/// instead of 24). cls_bpf filters took 1 s and 0.2 s for the same (`cargo xtask bench
/// scale`). tcx stays for nodes where another tcx program may drop packets before a
/// cls_bpf filter would see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcAttachMode {
    Auto,
    Tcx,
    Netlink,
}

/// The tc filter priority cniguard asks for in netlink mode: the first to run.
const FIRST_FILTER_PRIORITY: u16 = 1;
/// The first retry of a failed attach, and the longest wait between retries.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// A failed attach waiting for its next attempt.
struct Retry {
    failures: u32,
    at: tokio::time::Instant,
}

/// What is attached to one interface.
struct Attached {
    name: String,
    /// Per probe, its links; dropping a link detaches its program.
    links: Vec<(&'static str, Vec<SchedClassifierLink>)>,
    /// Netlink mode: this daemon added the clsact qdisc.
    added_clsact: bool,
}

impl Attached {
    fn has(&self, probe: &str) -> bool {
        self.links.iter().any(|(name, _)| *name == probe)
    }
}

pub struct Attachments {
    ebpf: Ebpf,
    use_tcx: bool,
    probes: Vec<Arc<dyn InterfaceProbe>>,
    /// Every interface of the namespace, kept current by notifications and listings.
    interfaces: InterfaceTable,
    attached: HashMap<u32, Attached>,
    names: AttachedInterfaces,
    /// The names of every interface of the namespace, attached or not.
    all_names: AttachedInterfaces,
    metrics: DaemonMetrics,
    netlink: Handle,
    /// Failed attaches by interface and probe.
    retries: HashMap<(u32, &'static str), Retry>,
}

impl Attachments {
    /// Loads every interface probe's programs into the kernel.
    ///
    /// # Errors
    /// If the verifier rejects a program, or tcx is forced on a kernel without it.
    pub fn new(
        mut ebpf: Ebpf,
        mode: TcAttachMode,
        kernel: &Kernel,
        probes: Vec<Arc<dyn InterfaceProbe>>,
        names: AttachedInterfaces,
        all_names: AttachedInterfaces,
        metrics: DaemonMetrics,
        netlink: Handle,
    ) -> Result<Self> {
        let use_tcx = match mode {
            TcAttachMode::Auto | TcAttachMode::Netlink => false,
            TcAttachMode::Tcx if kernel.at_least(TCX_KERNEL) => true,
            TcAttachMode::Tcx => anyhow::bail!(
                "tc_attach = \"tcx\" needs Linux 6.6 or newer, this is {}; use \"auto\" or \"netlink\"",
                kernel.release
            ),
        };
        for probe in &probes {
            for program in probe.programs() {
                classifier(&mut ebpf, program.function)?
                    .load()
                    .with_context(|| format!("loading {} (probe {})", program.function, probe.name()))?;
            }
        }
        Ok(Self {
            ebpf,
            use_tcx,
            probes,
            interfaces: InterfaceTable::new(),
            attached: HashMap::new(),
            names,
            all_names,
            metrics,
            netlink,
            retries: HashMap::new(),
        })
    }

    /// Resolves when a failed attach is due for another attempt; never if none failed.
    pub async fn retry_due(&self) {
        match self.retries.values().map(|r| r.at).min() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Attempts the failed attaches that are due (and anything else out of line).
    pub async fn retry(&mut self) {
        self.sync().await;
    }

    /// How the programs attach: `tcx` or `netlink`.
    #[must_use]
    pub fn mode(&self) -> &'static str {
        if self.use_tcx { "tcx" } else { "netlink" }
    }

    pub async fn apply(&mut self, change: LinkChange) {
        match change {
            LinkChange::Present(interface) => {
                self.interfaces.insert(interface.index, interface);
            }
            LinkChange::Gone(index) => {
                self.interfaces.remove(&index);
            }
        }
        self.sync().await;
    }

    /// Replaces the interface table with a full listing of the namespace: the repair for
    /// notifications the kernel dropped, and the start-up pass.
    pub async fn reconcile(&mut self, interfaces: Vec<Interface>) {
        self.interfaces = interfaces.into_iter().map(|i| (i.index, i)).collect();
        self.sync().await;
    }

    /// Detaches everything (shutdown).
    pub async fn detach_all(&mut self) {
        let indexes: Vec<u32> = self.attached.keys().copied().collect();
        for index in indexes {
            self.detach(index, None, true).await;
        }
    }

    /// Every interface of the namespace, as notifications and listings left the table.
    pub fn interfaces(&self) -> impl Iterator<Item = &Interface> + Clone {
        self.interfaces.values()
    }

    #[must_use]
    pub fn attached_count(&self) -> usize {
        self.attached.len()
    }

    /// The ids this namespace gives the namespaces at the other end of its veths.
    #[must_use]
    pub fn peer_nsids(&self) -> std::collections::BTreeSet<i32> {
        self.interfaces.values().filter_map(|i| i.peer_netnsid).collect()
    }

    /// Brings the attachments in line with the interface table: every probe on exactly the
    /// interfaces it wants.
    async fn sync(&mut self) {
        self.all_names.replace(self.interfaces.values().map(|i| (i.index, i.name.clone())));
        for probe in &self.probes {
            probe.observe_interfaces(&self.interfaces);
        }
        // What no longer should be: gone or renamed interfaces, probes no longer wanted.
        let current: Vec<(u32, String, Vec<&'static str>)> = self
            .attached
            .iter()
            .map(|(index, a)| (*index, a.name.clone(), a.links.iter().map(|(probe, _)| *probe).collect()))
            .collect();
        for (index, name, probes) in current {
            let interface = self.interfaces.get(&index);
            let renamed = interface.is_some_and(|i| i.name != name);
            let unwanted: Vec<&'static str> = match interface {
                Some(interface) if !renamed => probes
                    .into_iter()
                    .filter(|probe| !self.probe(probe).is_some_and(|p| p.wants(interface, &self.interfaces)))
                    .collect(),
                _ => Vec::new(),
            };
            if interface.is_none() {
                self.detach(index, None, false).await;
            } else if renamed {
                self.detach(index, None, true).await;
            } else {
                for probe in unwanted {
                    self.detach(index, Some(probe), true).await;
                }
            }
        }
        // What should be and is not yet.
        self.retries.retain(|(index, _), _| self.interfaces.contains_key(index));
        let now = tokio::time::Instant::now();
        let wanted: Vec<(Interface, Arc<dyn InterfaceProbe>)> = self
            .interfaces
            .values()
            .flat_map(|interface| {
                self.probes
                    .iter()
                    .filter(|probe| probe.wants(interface, &self.interfaces))
                    .filter(|probe| !self.attached.get(&interface.index).is_some_and(|a| a.has(probe.name())))
                    .filter(|probe| {
                        self.retries.get(&(interface.index, probe.name())).is_none_or(|r| r.at <= now)
                    })
                    .map(|probe| (interface.clone(), probe.clone()))
            })
            .collect();
        for (interface, probe) in wanted {
            if !self.use_tcx && !self.attached.contains_key(&interface.index) {
                self.remove_leftovers(&interface).await;
            }
            self.attach(&interface, probe.as_ref());
        }
        for probe in &self.probes {
            let attached = &self.attached;
            probe.retain_interfaces(&|index| attached.get(&index).is_some_and(|a| a.has(probe.name())));
        }
    }

    fn probe(&self, name: &str) -> Option<&Arc<dyn InterfaceProbe>> {
        self.probes.iter().find(|p| p.name() == name)
    }

    fn attach(&mut self, interface: &Interface, probe: &dyn InterfaceProbe) {
        let mut attached = self.attached.remove(&interface.index).unwrap_or_else(|| Attached {
            name: interface.name.clone(),
            links: Vec::new(),
            added_clsact: false,
        });
        match self.attach_probe(probe, interface, &mut attached) {
            Ok(links) => {
                self.retries.remove(&(interface.index, probe.name()));
                self.metrics.probe_attached.with_label_values(&[&interface.name, probe.name()]).set(1);
                attached.links.push((probe.name(), links));
                tracing::info!(interface = %interface.name, index = interface.index, probe = probe.name(), mode = self.mode(), "attached");
            }
            Err(err) => {
                let failure = match AttachFailure::from_errno(errno(&err)) {
                    // An errno that says "no such device" is taken at its word only if the
                    // kernel, asked again, no longer knows the name: out of file descriptors,
                    // aya reports an interface it cannot look up as unknown.
                    AttachFailure::InterfaceGone if !vanished(interface) => AttachFailure::Other,
                    failure => failure,
                };
                self.metrics.attach_errors.with_label_values(&[probe.name(), failure.label()]).inc();
                if failure == AttachFailure::InterfaceGone {
                    self.retries.remove(&(interface.index, probe.name()));
                    tracing::debug!(interface = %interface.name, probe = probe.name(), "interface went away before attach: {err:#}");
                } else {
                    let failures =
                        self.retries.get(&(interface.index, probe.name())).map_or(0, |r| r.failures) + 1;
                    let wait = retry_wait(failures);
                    self.retries.insert(
                        (interface.index, probe.name()),
                        Retry { failures, at: tokio::time::Instant::now() + wait },
                    );
                    tracing::error!(
                        interface = %interface.name,
                        probe = probe.name(),
                        reason = failure.label(),
                        failures,
                        retry_in_seconds = wait.as_secs(),
                        "attach failed: {err:#}"
                    );
                }
            }
        }
        if !attached.links.is_empty() || attached.added_clsact {
            self.names.insert(interface.index, &interface.name);
            self.attached.insert(interface.index, attached);
        }
    }

    /// Attaches all programs of one probe, or none: a failure detaches the ones before it.
    fn attach_probe(
        &mut self,
        probe: &dyn InterfaceProbe,
        interface: &Interface,
        attached: &mut Attached,
    ) -> Result<Vec<SchedClassifierLink>> {
        let name = interface.name.as_str();
        let mut links = Vec::new();
        for program in probe.programs() {
            let hook = hook(program.direction);
            if !self.use_tcx {
                // A copy left by a daemon that was killed in netlink mode; NotFound is the norm.
                let _ = tc::qdisc_detach_program(name, hook, program.function);
            }
            if !self.use_tcx && !attached.added_clsact {
                attached.added_clsact = add_clsact(name)?;
            }
            let classifier = classifier(&mut self.ebpf, program.function)?;
            let id = if self.use_tcx {
                // First in line, so the count includes packets a later program drops or redirects.
                classifier.attach_with_options(name, hook, TcAttachOptions::TcxOrder(LinkOrder::first()))
            } else {
                // The same for filters: a filter before ours that ends classification (any
                // classifier without `action continue`) would hide every packet from us.
                let first = NlOptions { priority: FIRST_FILTER_PRIORITY, ..NlOptions::default() };
                classifier.attach_with_options(name, hook, TcAttachOptions::Netlink(first)).or_else(|err| {
                    // That priority holds a filter of another kind: take one the kernel picks.
                    tracing::debug!(
                        interface = name,
                        "tc priority {FIRST_FILTER_PRIORITY} is taken ({err}); letting the kernel choose"
                    );
                    classifier.attach_with_options(name, hook, TcAttachOptions::Netlink(NlOptions::default()))
                })
            }
            .with_context(|| format!("attaching {} to {name} ({:?})", program.function, program.direction))?;
            links.push(classifier.take_link(id)?);
        }
        Ok(links)
    }

    /// Detaches `probe` (or every probe) from interface `index`; `exists` says whether the
    /// interface is still there (shutdown, rename, deselection) or already gone (its
    /// attachments died with it).
    async fn detach(&mut self, index: u32, probe: Option<&'static str>, exists: bool) {
        let Some(mut attached) = self.attached.remove(&index) else { return };
        let (detaching, keeping): (Vec<_>, Vec<_>) =
            attached.links.drain(..).partition(|(name, _)| probe.is_none_or(|p| p == *name));
        attached.links = keeping;
        for (name, links) in detaching {
            drop(links);
            let _ = self.metrics.probe_attached.remove_label_values(&[&attached.name, name]);
            tracing::info!(interface = %attached.name, index, probe = name, gone = !exists, "detached");
        }
        if !attached.links.is_empty() {
            self.attached.insert(index, attached);
            return;
        }
        self.names.remove(index);
        if exists
            && attached.added_clsact
            && let Err(err) = self.remove_clsact_if_unused(index).await
        {
            tracing::warn!(interface = %attached.name, "could not check or remove the clsact qdisc cniguard added: {err:#}");
        }
    }

    /// Netlink mode, an interface this daemon holds nothing on yet: removes every filter of
    /// cniguard's programs a killed daemon left there and, if that left the clsact qdisc
    /// empty, the qdisc too (the attach then adds it again, as this daemon's). A qdisc
    /// with another program's filter stays.
    async fn remove_leftovers(&self, interface: &Interface) {
        let mut removed = 0;
        for probe in &self.probes {
            for program in probe.programs() {
                if tc::qdisc_detach_program(&interface.name, hook(program.direction), program.function)
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed == 0 {
            return;
        }
        tracing::info!(interface = %interface.name, filters = removed, "removed filters a previous cniguard left");
        if let Err(err) = self.remove_clsact_if_unused(interface.index).await {
            tracing::warn!(interface = %interface.name, "could not check or remove the clsact qdisc a previous cniguard left: {err:#}");
        }
    }

    /// Removes the clsact qdisc from `index` unless another filter still hangs on it.
    async fn remove_clsact_if_unused(&self, index: u32) -> Result<()> {
        let index = i32::try_from(index)?;
        for parent in [
            TcHandle { major: 0xffff, minor: TcHandle::MIN_INGRESS },
            TcHandle { major: 0xffff, minor: TcHandle::MIN_EGRESS },
        ] {
            let mut request = self.netlink.traffic_filter(index).get();
            request =
                if parent.minor == TcHandle::MIN_INGRESS { request.ingress() } else { request.egress() };
            let filters: Vec<_> = request.execute().try_collect().await?;
            if !filters.is_empty() {
                tracing::debug!(index, "leaving the clsact qdisc in place: other filters use it");
                return Ok(());
            }
        }
        let mut delete = self.netlink.qdisc().del(index);
        delete.message_mut().header.parent = TcHandle { major: 0xffff, minor: 0xfff1 };
        delete.message_mut().header.handle = TcHandle { major: 0xffff, minor: 0 };
        delete.execute().await?;
        Ok(())
    }
}

/// How long to wait before attempt `failures + 1`: [`RETRY_FIRST`], doubling, at most
/// [`RETRY_MAX`].
fn retry_wait(failures: u32) -> Duration {
    RETRY_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(RETRY_MAX)
}

/// Whether `interface` is really gone: the kernel no longer has its name at its index.
fn vanished(interface: &Interface) -> bool {
    match nix::net::if_::if_nametoindex(interface.name.as_str()) {
        Ok(index) => index != interface.index,
        Err(errno) => errno == nix::errno::Errno::ENODEV,
    }
}

fn hook(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, function: &str) -> Result<&'a mut SchedClassifier> {
    let program =
        ebpf.program_mut(function).with_context(|| format!("the eBPF object has no program {function}"))?;
    Ok(program.try_into()?)
}

/// Adds a clsact qdisc; `Ok(false)` if the interface already had one.
fn add_clsact(interface: &str) -> Result<bool> {
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => Ok(true),
        Err(tc::TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(err) => Err(anyhow::Error::from(err).context(format!("adding a clsact qdisc to {interface}"))),
    }
}

/// The OS error number somewhere in `err`'s chain, if any.
///
/// aya's errors are `#[error(transparent)]` wrappers, which hide the wrapped error from the
/// source chain: look inside them.
fn errno(err: &anyhow::Error) -> Option<i32> {
    err.chain().find_map(|cause| {
        if let Some(err) = cause.downcast_ref::<std::io::Error>() {
            err.raw_os_error()
        } else if let Some(err) = cause.downcast_ref::<ProgramError>() {
            match err {
                ProgramError::SyscallError(err) => err.io_error.raw_os_error(),
                ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
                ProgramError::TcError(err) => tc_errno(err),
                ProgramError::UnknownInterface { .. } => Some(libc::ENODEV),
                _ => None,
            }
        } else {
            cause.downcast_ref::<tc::TcError>().and_then(tc_errno)
        }
    })
}

fn tc_errno(err: &tc::TcError) -> Option<i32> {
    match err {
        tc::TcError::NetlinkError(err) => err.raw_os_error(),
        tc::TcError::IoError(err) => err.raw_os_error(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_one_second_to_thirty() {
        let waits: Vec<u64> = (1..=8).map(|n| retry_wait(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_wait(u32::MAX), RETRY_MAX);
    }
}
