//! The probe table's row type (`ProbeSpec`: what a probe needs from the kernel and whether
//! the daemon can run without it; the rows are `probes::PROBES`). [`start_all`] is the one loop
//! that starts them, with one failure policy: a required probe that cannot start stops
//! the daemon; an optional one is left off with its reason, which is logged (`<what> is
//! off: <why>`) and counted in `cniguard_probe_attach_errors_total{reason="unsupported"}`.

use std::any::Any;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use aya::Ebpf;
use probe_common::kernel::KernelOffsets;

use super::shared::CidrClasses;
use super::sock_state::LocalAddresses;
use super::{InterfaceProbe, PROBES, dns, localhost};
use crate::judgement::signals::Signals;
use crate::metrics::labels::PeerLabels;
use crate::metrics::{AttachFailure, DaemonMetrics};
use crate::node::btf::Btf;
use crate::node::interfaces::{AttachedInterfaces, InterfaceSelector};
use crate::node::namespaces::SharedInventory;

/// One row of the table.
pub struct ProbeSpec {
    /// The `probe` label value, and the module's name on both sides.
    pub name: &'static str,
    /// What it measures, in a few words (`<what> is off: <why>`).
    pub what: &'static str,
    /// What the operator loses while it is off: its metrics and the judgement that reads them.
    pub loses: &'static str,
    /// Its programs in the eBPF object, as `run` picks them on this kernel; `cniguard
    /// check` loads the same ones.
    pub programs: Programs,
    /// What it needs from the kernel besides loading its programs.
    pub needs: &'static [Need],
    /// Whether the daemon refuses to run without it.
    pub required: bool,
    /// Writes what the probe's programs read from kernel objects into the object's
    /// `KERNEL_OFFSETS`, before it loads.
    pub prepare: Option<fn(&Btf, &mut KernelOffsets) -> Result<()>>,
    pub start: fn(&mut ProbeContext<'_>) -> Result<Started>,
}

/// Which of the object's programs a probe runs.
#[derive(Clone, Copy)]
pub enum Programs {
    /// These, on every kernel.
    All(&'static [&'static str]),
    /// The set the running kernel calls for, from its BTF (a tracepoint whose arguments
    /// differ between releases gets a program reading just the arguments it has).
    ByBtf(fn(&Btf) -> Result<&'static [&'static str]>),
    /// One of several hooks, the first whose programs this kernel loads (never chosen by
    /// version): the probe's function loads them in `run`'s order and names the hook.
    FirstLoading(fn(&mut Ebpf, &Result<Btf, String>) -> Result<&'static str>),
}

impl Programs {
    /// Loads the programs `run` would use on this kernel, attaching nothing; names the
    /// hook where the probe has several.
    ///
    /// # Errors
    /// The first program the kernel refuses, or why no set fits this kernel.
    fn load(self, ebpf: &mut Ebpf, btf: &Result<Btf, String>) -> Result<Option<&'static str>> {
        let programs = match self {
            Self::All(programs) => programs,
            Self::ByBtf(choose) => choose(btf.as_ref().map_err(|err| anyhow!("{err}"))?)?,
            Self::FirstLoading(load_first) => return load_first(ebpf, btf).map(Some),
        };
        programs.iter().try_for_each(|program| load_program(ebpf, program))?;
        Ok(None)
    }
}

/// A kernel facility a probe cannot do without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The kernel's type information (/sys/kernel/btf/vmlinux): tracing probes read kernel
    /// structs at offsets found there.
    Btf,
    /// A cgroup v2 mount: socket-level programs attach to its root.
    CgroupV2,
}

impl Need {
    /// Whether this kernel meets the need, or why not.
    fn check(self, btf: &Result<Btf, String>) -> Result<()> {
        match self {
            Self::Btf => btf.as_ref().map(|_| ()).map_err(|err| anyhow!("{err}")),
            Self::CgroupV2 => crate::node::cgroup2_root().map(|_| ()),
        }
    }
}

/// What a started probe leaves running.
pub enum Started {
    /// Classifiers, attached to the interfaces the probe selects as they come and go.
    Interface(Arc<dyn InterfaceProbe>),
    /// Programs attached once; they stay attached for as long as this value lives.
    Running(Box<dyn Any + Send + Sync>),
    /// Only a collector, registered at start.
    Collector,
}

/// The probes' settings, each from its owner's section of the configuration.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub interfaces: InterfaceSelector,
    pub vxlan_ports: Vec<u16>,
    pub underlay_interfaces: InterfaceSelector,
    pub dns: dns::DnsSettings,
    pub localhost: localhost::LocalhostSettings,
    pub typha_port: u16,
    pub drop_locations: usize,
    /// Old service ranges and the ports whose connections to them `sock_state` follows
    /// (the findings' `[diagnose]`; none when it is off).
    pub old_services: (Vec<super::cidr::Cidr>, Vec<u16>),
}

/// Everything a probe may start from: one signature for every probe.
pub struct ProbeContext<'a> {
    pub ebpf: &'a mut Ebpf,
    /// The kernel's BTF, or why it could not be read.
    pub btf: &'a Result<Btf, String>,
    pub settings: &'a ProbeSettings,
    /// Interfaces the classifier probes are attached to (their `interface` label).
    pub attached: &'a AttachedInterfaces,
    /// Every interface of the daemon's namespace (drops name devices that are not watched).
    pub all_interfaces: &'a AttachedInterfaces,
    pub peers: &'a Arc<PeerLabels>,
    pub classes: &'a Arc<CidrClasses>,
    pub inventory: &'a SharedInventory,
    /// The node's own addresses, kept current by the daemon.
    pub addresses: &'a LocalAddresses,
    /// Where the probes that feed judgement publish their typed totals.
    pub signals: &'a Signals,
    pub metrics: &'a DaemonMetrics,
}

impl<'a> ProbeContext<'a> {
    /// The kernel's BTF (borrowed from the node, not from the context).
    ///
    /// # Errors
    /// Why it could not be read.
    pub fn btf(&self) -> Result<&'a Btf> {
        let btf: &'a Result<Btf, String> = self.btf;
        btf.as_ref().map_err(|err| anyhow!("{err}"))
    }
}

/// The probes that started, and why the others are off.
#[derive(Default)]
pub struct Probes {
    /// The classifier probes, for `attach` to follow interfaces with.
    pub interface: Vec<Arc<dyn InterfaceProbe>>,
    /// Probes that are off, with the reason.
    pub off: Vec<(&'static str, String)>,
    running: Vec<Box<dyn Any + Send + Sync>>,
}

impl Probes {
    /// How many probes run, classifiers and attached-once ones alike.
    #[must_use]
    pub fn running(&self) -> usize {
        self.interface.len() + self.running.len()
    }
}

/// Runs every probe's `prepare` on the kernel's offsets.
///
/// # Errors
/// The first probe whose kernel fields cannot be found.
pub fn prepare_all(btf: &Btf, offsets: &mut KernelOffsets) -> Result<()> {
    for spec in PROBES {
        if let Some(prepare) = spec.prepare {
            prepare(btf, offsets)?;
        }
    }
    Ok(())
}

/// Starts every probe of [`PROBES`], in order.
///
/// # Errors
/// If a required probe cannot start.
pub fn start_all(context: &mut ProbeContext<'_>) -> Result<Probes> {
    let mut probes = Probes::default();
    for spec in PROBES {
        let started = missing_need(spec, context).map_or_else(|| (spec.start)(context), Err);
        let available = context.metrics.probe_available.with_label_values(&[spec.name]);
        available.set(i64::from(started.is_ok()));
        match started {
            Ok(Started::Interface(probe)) => probes.interface.push(probe),
            Ok(Started::Running(running)) => probes.running.push(running),
            Ok(Started::Collector) => {}
            Err(err) if spec.required => {
                return Err(err.context(format!("starting the {} probe", spec.name)));
            }
            Err(err) => {
                tracing::warn!("{} is off: {err:#}", spec.what);
                context
                    .metrics
                    .attach_errors
                    .with_label_values(&[spec.name, AttachFailure::Unsupported.label()])
                    .inc();
                probes.off.push((spec.name, format!("{err:#}")));
            }
        }
    }
    Ok(probes)
}

/// The first of the probe's needs the kernel does not meet, as an error.
fn missing_need(spec: &ProbeSpec, context: &ProbeContext<'_>) -> Option<anyhow::Error> {
    spec.needs.iter().find_map(|need| need.check(context.btf).err())
}

/// One probe as `cniguard check` finds it on this kernel.
pub struct ProbeCheck {
    pub spec: &'static ProbeSpec,
    /// `Ok` when it can run (with the hook it would use, where it has several); else why not.
    pub found: Result<Option<&'static str>, String>,
}

/// Whether each probe can run here, found the way `run` would find it: its needs, then
/// loading each of its programs into the kernel (the verifier decides, not a version
/// number). Nothing is attached.
///
/// # Errors
/// If the eBPF object itself cannot be loaded (no CAP_BPF, memlock limits): then no probe
/// can be judged.
pub fn check_all(log_level: crate::node::ebpf::EbpfLogLevel) -> Result<Vec<ProbeCheck>> {
    let btf = Btf::kernel().and_then(|btf| {
        let mut offsets = btf.kernel_offsets()?;
        prepare_all(&btf, &mut offsets)?;
        Ok((btf, offsets))
    });
    let mut ebpf = crate::node::ebpf::load(&crate::node::ebpf::Globals {
        log_level,
        scope: crate::node::namespaces::NetnsScope::Node,
        kernel: btf.as_ref().map(|(_, offsets)| *offsets).unwrap_or_default(),
    })?;
    let btf = btf.map(|(btf, _)| btf).map_err(|err| format!("{err:#}"));
    Ok(PROBES
        .iter()
        .map(|spec| {
            let found = spec
                .needs
                .iter()
                .try_for_each(|need| need.check(&btf))
                .and_then(|()| spec.programs.load(&mut ebpf, &btf));
            ProbeCheck { spec, found: found.map_err(|err| format!("{err:#}")) }
        })
        .collect())
}

/// Loads one program of the object, whatever its type.
fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    use aya::programs::Program;
    let program = ebpf.program_mut(name).with_context(|| format!("the eBPF object has no program {name}"))?;
    let loaded = match program {
        Program::SchedClassifier(program) => program.load(),
        Program::CgroupSkb(program) => program.load(),
        Program::RawTracePoint(program) => program.load(),
        Program::KProbe(program) => program.load(),
        Program::FEntry(_) => {
            anyhow::bail!("{name}: an fentry program is loaded by its probe, which names the function")
        }
        _ => anyhow::bail!("{name}: a program type `cniguard check` does not load"),
    };
    loaded.with_context(|| format!("loading {name}"))
}
