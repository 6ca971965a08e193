//! The network namespaces of this host: their inode numbers (how cniguard names them,
//! in its eBPF programs too: `ns.inum`, on every kernel), their cookies where the kernel
//! gives them (`SO_NETNS_COOKIE`, 5.14 and later; what `bpf_get_netns_cookie` returns),
//! their names (how operators and Kubernetes name them), and which of them are this
//! daemon's to watch.
//!
//! On a real node the scope is the host: every namespace. In the lab, several nodes share
//! one kernel, so a node's scope is its own namespace plus the pods plugged into it: the
//! namespaces at the other end of its veths (matched by the id this namespace gives them).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::Handle;
use serde::Deserialize;

/// Which namespaces a daemon is responsible for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetnsScope {
    /// Every namespace of the host: a real node, one daemon per kernel.
    Host,
    /// The daemon's own namespace and those of the pods plugged into it by veth: a lab
    /// node, where one kernel runs several.
    Node,
}

/// One network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Its inode number in nsfs (the kernel's `ns.inum`): the key of every map.
    pub inode: u64,
    /// `bpf_get_netns_cookie`'s name for it, where the kernel has `SO_NETNS_COOKIE`.
    pub cookie: Option<u64>,
    /// Its name under /var/run/netns (what `ip netns` and the CNI plugins use), if any.
    pub name: Option<String>,
    /// A path that opens it (for entering it).
    pub path: PathBuf,
    /// The daemon's own namespace.
    pub own: bool,
}

impl Namespace {
    /// The `netns` label value: empty for the daemon's own namespace (the node's), the name
    /// where there is one, else the inode number.
    #[must_use]
    pub fn label(&self) -> String {
        if self.own { String::new() } else { self.name.clone().unwrap_or_else(|| self.inode.to_string()) }
    }
}

/// The namespaces in scope, by inode number (the `netns` the programs put in their keys).
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub by_netns: HashMap<u64, Namespace>,
}

impl Inventory {
    /// The `netns` label of the namespace with inode number `netns`.
    #[must_use]
    pub fn label(&self, netns: u64) -> Option<String> {
        self.by_netns.get(&netns).map(Namespace::label)
    }

    /// The inode numbers of the namespaces in scope.
    #[must_use]
    pub fn ids(&self) -> BTreeSet<u64> {
        self.by_netns.keys().copied().collect()
    }

    /// Cookie to inode number, for the namespaces whose cookie the kernel gives.
    #[must_use]
    pub fn by_cookie(&self) -> std::collections::BTreeMap<u64, u64> {
        self.by_netns.values().filter_map(|ns| Some((ns.cookie?, ns.inode))).collect()
    }
}

pub type SharedInventory = Arc<RwLock<Inventory>>;

/// Lists the namespaces in `scope`. `peer_nsids` are the ids of the namespaces at the other
/// end of this namespace's veths (for [`NetnsScope::Node`]).
///
/// # Errors
/// If the daemon's own namespace cannot be identified.
pub async fn scan(handle: &Handle, scope: NetnsScope, peer_nsids: &BTreeSet<i32>) -> Result<Inventory> {
    let candidates = tokio::task::spawn_blocking(candidates).await.context("namespace scan")??;
    let mut inventory = Inventory::default();
    for mut namespace in candidates {
        let in_scope = match scope {
            NetnsScope::Host => true,
            NetnsScope::Node => {
                namespace.own
                    || nsid(handle, &namespace.path).await.is_some_and(|id| peer_nsids.contains(&id))
            }
        };
        if in_scope {
            namespace.name = namespace.name.filter(|n| !n.is_empty());
            inventory.by_netns.insert(namespace.inode, namespace);
        }
    }
    Ok(inventory)
}

/// Every namespace reachable from /var/run/netns (named) and /proc/*/ns/net, once each,
/// with its cookie where the kernel gives one.
fn candidates() -> Result<Vec<Namespace>> {
    let own_inode = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.ino();
    let mut by_inode: HashMap<u64, (Option<String>, PathBuf)> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for entry in entries.flatten() {
            if let Ok(metadata) = std::fs::metadata(entry.path()) {
                by_inode
                    .insert(metadata.ino(), (entry.file_name().to_str().map(str::to_owned), entry.path()));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").context("reading /proc")?.flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join("ns/net");
        // Processes come and go while we look: a vanished one is simply skipped.
        if let Ok(metadata) = std::fs::metadata(&path) {
            by_inode.entry(metadata.ino()).or_insert((None, path));
        }
    }
    let mut namespaces = Vec::new();
    for (inode, (name, path)) in by_inode {
        let own = inode == own_inode;
        // Before 5.14 there is no SO_NETNS_COOKIE: the inode is the namespace's only name.
        let cookie = if own { own_cookie() } else { cookie_of(&path) }.ok();
        namespaces.push(Namespace { inode, cookie, name, path, own });
    }
    Ok(namespaces)
}

/// `cniguard_netns_enter_failures_total{reason}`: every failed entry into a namespace, by
/// anyone (the active checks, the localhost health check, the namespace scan, the baseline's
/// per-namespace counters, interface names): `permission` (setns refused: no
/// CAP_SYS_ADMIN), `gone` (the namespace vanished), `other`.
static ENTER_FAILURES: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    crate::metrics::catalogue::NETNS_ENTER_FAILURES_TOTAL.int_counter_vec().expect("a valid catalogue row")
});

/// Registers `cniguard_netns_enter_failures_total`.
///
/// # Errors
/// On a duplicate metric name.
pub fn register_metrics(registry: &prometheus::Registry) -> prometheus::Result<()> {
    registry.register(Box::new(ENTER_FAILURES.clone()))
}

/// What is lost while namespaces cannot be entered (`cniguard check` and the log say it).
pub const LOST_WITHOUT_SETNS: &str = "the active checks ([checks]), the localhost health check ([localhost.check]) and the per-namespace counters (pods' netns labels, TCP segments sent per pod for the retransmit baseline, interface names inside pods; with netns_scope = \"node\", every pod)";

/// Counts a failed entry; the first refused for lack of permission is logged with what is lost.
fn enter_failed(path: &Path, err: &std::io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let reason = match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => "permission",
        Some(libc::ENOENT | libc::ESRCH | libc::EINVAL) => "gone",
        _ => "other",
    };
    ENTER_FAILURES.with_label_values(&[reason]).inc();
    if reason == "permission" && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::error!(
            path = %path.display(),
            "cannot enter pod network namespaces ({err}; setns needs CAP_SYS_ADMIN): lost are {LOST_WITHOUT_SETNS}; counted in cniguard_netns_enter_failures_total"
        );
    } else {
        tracing::debug!(path = %path.display(), reason, "cannot enter the namespace: {err}");
    }
}

/// Whether this process may enter network namespaces: enters its own, on a scratch thread
/// (setns needs CAP_SYS_ADMIN even into the namespace it is in). Not counted.
///
/// # Errors
/// The error setns(2) gave.
pub fn can_enter() -> std::io::Result<()> {
    let file = File::open("/proc/self/ns/net")?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

/// The cookie of the namespace this thread is in: from a socket created here.
///
/// # Errors
/// Where the kernel has no `SO_NETNS_COOKIE` (before 5.14).
pub fn own_cookie() -> std::io::Result<u64> {
    let socket =
        std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    let mut cookie = 0_u64;
    let mut length = libc::socklen_t::try_from(size_of::<u64>()).unwrap_or(8);
    // SAFETY: getsockopt writes at most `length` bytes into `cookie`.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut length,
        )
    };
    if result == 0 { Ok(cookie) } else { Err(std::io::Error::last_os_error()) }
}

/// The cookie of the namespace at `path`, from a socket created in it by a short-lived
/// thread (entering a namespace changes only the calling thread).
fn cookie_of(path: &Path) -> std::io::Result<u64> {
    let file = File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Err(err) = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
                    let err = std::io::Error::from(err);
                    enter_failed(path, &err);
                    return Err(err);
                }
                own_cookie()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

/// The id this namespace gives the namespace at `path`, if it gave it one (it does for the
/// far end of its veths).
pub async fn nsid(handle: &Handle, path: &Path) -> Option<i32> {
    let file = File::open(path).ok()?;
    let mut message = NsidMessage::default();
    message.attributes.push(NsidAttribute::Fd(u32::try_from(file.as_raw_fd()).ok()?));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
    request.header.flags = NLM_F_REQUEST;
    let mut handle = handle.clone();
    let mut responses = handle.request(request).ok()?;
    while let Some(response) = responses.next().await {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(answer)) = response.payload {
            return answer.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                _ => None,
            });
        }
    }
    None
}

/// Reads the shared inventory.
pub fn read(inventory: &SharedInventory) -> std::sync::RwLockReadGuard<'_, Inventory> {
    inventory.read().unwrap_or_else(PoisonError::into_inner)
}

/// Interface names in any namespace in scope: the daemon's own from its interface table,
/// the others by asking the kernel from inside the namespace (cached).
#[derive(Clone, Default)]
pub struct InterfaceResolver {
    own: crate::node::interfaces::AttachedInterfaces,
    cache: Arc<std::sync::Mutex<HashMap<(u64, u32), String>>>,
}

/// Names remembered for other namespaces before the cache starts over.
const RESOLVER_CACHE: usize = 4096;

impl InterfaceResolver {
    /// `own` holds the names of every interface of the daemon's namespace.
    #[must_use]
    pub fn new(own: crate::node::interfaces::AttachedInterfaces) -> Self {
        Self { own, cache: Arc::default() }
    }

    /// The name of interface `ifindex` of `namespace`; its number if it has none (any
    /// more), empty for no interface at all.
    #[must_use]
    pub fn name(&self, namespace: &Namespace, ifindex: u32) -> String {
        if ifindex == 0 {
            return String::new();
        }
        if namespace.own {
            return self.own.name(ifindex).unwrap_or_else(|| ifindex.to_string());
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = cache.get(&(namespace.inode, ifindex)) {
            return name.clone();
        }
        if cache.len() >= RESOLVER_CACHE {
            cache.clear();
        }
        let name = name_in(&namespace.path, ifindex).unwrap_or_else(|| ifindex.to_string());
        cache.insert((namespace.inode, ifindex), name.clone());
        name
    }
}

/// `if_indextoname` from a thread inside the namespace at `path`.
fn name_in(path: &Path, ifindex: u32) -> Option<String> {
    in_namespace(path, || {
        nix::net::if_::if_indextoname(ifindex).ok().and_then(|name| name.into_string().ok())
    })
    .flatten()
}

/// Runs `f` on a thread that has entered the namespace at `path` (sockets it opens and the
/// /proc/thread-self/net files it reads are that namespace's); `None` if it cannot enter.
pub fn in_namespace<R: Send>(path: &Path, f: impl FnOnce() -> R + Send) -> Option<R> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) => {
            enter_failed(path, &err);
            return None;
        }
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Err(err) = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
                    enter_failed(path, &std::io::Error::from(err));
                    return None;
                }
                Some(f())
            })
            .join()
            .ok()
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops CAP_SYS_ADMIN from the calling thread's effective set (capabilities are per
    /// thread; threads it starts inherit the reduced set).
    fn drop_sys_admin_on_this_thread() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header { version: 0x2008_0522, pid: 0 };
        let mut data = [Data::default(); 2];
        // SAFETY: capget/capset read and write one header and two data structs (version 3).
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()), 0);
            data[0].effective &= !(1 << 21);
            assert_eq!(libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()), 0);
        }
    }

    /// Without CAP_SYS_ADMIN, entering a namespace (here the test's own) is refused: nothing
    /// runs in it, and exactly one `permission` failure is counted; with it, none.
    #[test]
    fn a_refused_setns_is_counted() {
        let own = Path::new("/proc/self/ns/net");
        let permission = || ENTER_FAILURES.with_label_values(&["permission"]).get();
        let before = permission();
        let ran = std::thread::spawn(move || {
            drop_sys_admin_on_this_thread();
            (can_enter().map_err(|err| err.raw_os_error()), in_namespace(own, || 42))
        })
        .join()
        .unwrap();
        assert_eq!(ran, (Err(Some(libc::EPERM)), None));
        assert_eq!(permission() - before, 1, "one refused entry, one count (can_enter counts none)");
        let gone = ENTER_FAILURES.with_label_values(&["gone"]).get();
        assert_eq!(in_namespace(Path::new("/proc/0/ns/net"), || 42), None);
        assert_eq!(ENTER_FAILURES.with_label_values(&["gone"]).get() - gone, 1);
    }
}
