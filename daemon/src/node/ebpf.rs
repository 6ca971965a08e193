//! The embedded eBPF object, and loading it with the daemon's settings.

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

use probe_common::kernel::KernelOffsets;

use serde::Deserialize;

use crate::node::namespaces::NetnsScope;

/// Level of the eBPF programs' own log messages (aya-log): `off` keeps the programs from
/// writing any, so no packet ever pays for logging.
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

/// `probe-ebpf`, built by `build.rs` for the BPF target.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

/// Creates the maps of the embedded object; programs are loaded by the probes that use them.
///
/// `log_level` is written into the object before it loads: below a message's level, the
/// programs skip the ring buffer write entirely. So are where this kernel keeps the fields
/// the tracepoint programs read, and whether the socket hooks count every namespace or only
/// those in scope.
///
/// # Errors
/// If the kernel refuses a map (e.g. missing `CAP_BPF`, or memlock limits on old kernels).
pub fn load(globals: &Globals) -> Result<Ebpf> {
    raise_memlock_limit();
    let level = globals.log_level.as_aya_level();
    let count_every_namespace = u8::from(globals.scope == NetnsScope::Host);
    EbpfLoader::new()
        .override_global("AYA_LOG_LEVEL", &level, true)
        .override_global("COUNT_EVERY_NAMESPACE", &count_every_namespace, true)
        .override_global("KERNEL_OFFSETS", &globals.kernel, true)
        .load(OBJECT)
        .context("loading cniguard's eBPF object (run `cniguard check` to see what the kernel lacks)")
}

/// What is written into the object before it loads. Offsets the daemon could not learn
/// stay zero; the tracepoint probes are then not started.
pub struct Globals {
    pub log_level: EbpfLogLevel,
    pub scope: NetnsScope,
    pub kernel: KernelOffsets,
}

/// Forwards the programs' aya-log messages to the daemon's log for as long as it runs.
///
/// Must run before programs load: they reference the log ring buffer, which closes (and
/// makes program loading fail) if the logger is dropped.
///
/// # Errors
/// If the object has no log map or its fd cannot be polled.
pub fn forward_logs(ebpf: &mut Ebpf) -> Result<()> {
    let logger = EbpfLogger::init(ebpf).context("starting the eBPF log reader")?;
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the same for as
    // long as the logger lives, and the AsyncFd owns the logger.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("polling the eBPF log ring buffer: {err}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memory cgroups
/// and ignore it. Raising it is harmless either way and fails quietly without permission.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit only reads the struct passed by reference.
    let result = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
    if result != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
