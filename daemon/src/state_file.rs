//! State kept across restarts, one JSON file per kind in the state directory (`--state-dir`):
//! the pre-cutover baselines, the rollback triggers' pending times. Each file names its
//! format, version and the node that wrote it; it is written atomically (a temporary file,
//! synced, renamed over the old one); at start-up a file that does not parse, has another
//! format or version, or was written on another node is renamed aside, logged and counted
//! in `cniguard_state_file_rejected_total`, and the daemon starts afresh: never silently
//! trusted. So is a file that cannot be read, or is larger than 16 MiB (never read whole);
//! one that cannot even be set aside is never written over.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use prometheus::{IntCounterVec, Registry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::metrics::catalogue;

const VERSION: u32 = 1;

/// The largest state file read: the biggest real one (baselines of 10,000 windows) is a
/// few MiB.
pub const MAX_BYTES: u64 = 16 << 20;

/// What every persisted file holds around its body: which format, which version of it, and
/// which node wrote it. (The rollback hook's record uses the same envelope.)
#[derive(Serialize)]
pub(crate) struct Envelope<'a, T> {
    pub format: &'a str,
    pub version: u32,
    pub node: &'a str,
    pub body: &'a T,
}

/// An [`Envelope`] as read back.
#[derive(Deserialize)]
pub(crate) struct Loaded<T> {
    pub format: String,
    pub version: u32,
    pub node: String,
    pub body: T,
}

/// One state file.
#[derive(Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
    format: &'static str,
    node: String,
    rejected: IntCounterVec,
    /// Set when an untrusted file could not be set aside: it is never written over.
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StateFile {
    /// `<dir>/<name>.json` holding `format` (e.g. `cniguard-baselines`) for `node`; without a
    /// directory, nothing is read or written.
    #[must_use]
    pub fn new(
        dir: Option<&Path>,
        name: &str,
        format: &'static str,
        node: &str,
        rejected: IntCounterVec,
    ) -> Self {
        Self {
            path: dir.map(|dir| dir.join(format!("{name}.json"))),
            format,
            node: node.to_owned(),
            rejected,
            blocked: std::sync::Arc::default(),
        }
    }

    /// Where the file lives (`None`: state is kept in memory only).
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The stored body if the file exists and is trusted; `check` may reject a body that
    /// parses but cannot be right (a negative count...).
    pub fn load<T: DeserializeOwned>(&self, check: impl Fn(&T) -> Result<(), String>) -> Option<T> {
        let path = self.path.as_deref()?;
        let rejected = match read_bounded(path) {
            Ok(None) => return None,
            Ok(Some(bytes)) => match self.trusted(&bytes, &check) {
                Ok(body) => {
                    tracing::info!(path = %path.display(), "state loaded");
                    return Some(body);
                }
                Err(rejected) => rejected,
            },
            Err(rejected) => rejected,
        };
        let (reason, why) = rejected;
        self.rejected.with_label_values(&[reason]).inc();
        match set_aside(path) {
            Ok(aside) => tracing::warn!(
                path = %path.display(),
                aside = %aside.display(),
                "the state file is not trusted ({why}): set aside, starting afresh"
            ),
            Err(err) => {
                // Never written over: it may be all that explains what went wrong.
                self.blocked.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    path = %path.display(),
                    "the state file is not trusted ({why}) and cannot be set aside ({err}): \
                     state is kept in memory only until it is moved away"
                );
            }
        }
        None
    }

    fn trusted<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        check: &impl Fn(&T) -> Result<(), String>,
    ) -> Result<T, (&'static str, String)> {
        let loaded: Loaded<T> =
            serde_json::from_slice(bytes).map_err(|err| ("corrupt", format!("not valid: {err}")))?;
        if loaded.format != self.format || loaded.version != VERSION {
            return Err((
                "foreign",
                format!(
                    "format {:?} version {}, expected {:?} version {VERSION}",
                    loaded.format, loaded.version, self.format
                ),
            ));
        }
        if loaded.node != self.node {
            return Err(("foreign", format!("written on node {:?}, this is {:?}", loaded.node, self.node)));
        }
        check(&loaded.body).map_err(|why| ("corrupt", why))?;
        Ok(loaded.body)
    }

    /// Writes `body` atomically; a failure is logged, the daemon goes on.
    pub fn save<T: Serialize>(&self, body: &T) {
        let Some(path) = &self.path else { return };
        if self.blocked.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!(path = %path.display(), "not saved: an untrusted file is still in the way");
            return;
        }
        let envelope = Envelope { format: self.format, version: VERSION, node: &self.node, body };
        if let Err(err) = write_atomically(path, &envelope) {
            tracing::warn!(path = %path.display(), "cannot save state: {err:#}");
        }
    }
}

/// The file's bytes (`None` if there is none), or why it is rejected unread: it cannot be
/// read, or it is larger than [`MAX_BYTES`] (never read whole: the daemon's memory limit is
/// 256 MiB).
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, (&'static str, String)> {
    use std::io::Read as _;
    let unreadable = |err: std::io::Error| ("unreadable", format!("cannot read it: {err}"));
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(unreadable(err)),
    };
    let too_large =
        |size: u64| ("too_large", format!("{size} bytes, more than the {MAX_BYTES} a state file may have"));
    let size = file.metadata().map_err(unreadable)?.len();
    if size > MAX_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::new();
    // Bounded even if the file grows while it is read.
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// `<path>.rejected-<unix seconds>[-n]`, never an existing one: each rejected file may be
/// needed to understand what went wrong.
pub(crate) fn aside_name(path: &Path) -> PathBuf {
    let seconds =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut aside = path.with_extension(format!("json.rejected-{seconds}"));
    for attempt in 1.. {
        if !aside.exists() {
            break;
        }
        aside = path.with_extension(format!("json.rejected-{seconds}-{attempt}"));
    }
    aside
}

/// Renames `path` to [`aside_name`]; returns the new name.
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let aside = aside_name(path);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

fn write_atomically<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(&serde_json::to_vec_pretty(value)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        // The rename itself must survive a crash too.
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).ok();
    }
    Ok(())
}

/// `cniguard_state_file_rejected_total{reason}`: state files set aside.
///
/// # Errors
/// On a duplicate metric name.
pub fn rejections(registry: &Registry) -> Result<IntCounterVec> {
    let counter = catalogue::STATE_FILE_REJECTED_TOTAL.int_counter_vec()?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

/// A directory of its own for tests, removed on drop.
#[cfg(test)]
pub struct TempDir(PathBuf);

#[cfg(test)]
impl TempDir {
    #[must_use]
    pub fn new(name: &str) -> Self {
        // Unique per call: tests run in parallel threads of one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cniguard-state-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    fn file(dir: &Path, node: &str, rejected: &IntCounterVec) -> StateFile {
        StateFile::new(Some(dir), "things", "cniguard-things", node, rejected.clone())
    }

    #[test]
    fn round_trip_and_what_is_set_aside() {
        let dir = TempDir::new("state-file");
        let rejected = IntCounterVec::new(Opts::new("r", "r"), &["reason"]).unwrap();
        let mine = file(dir.path(), "node-a", &rejected);
        mine.save(&vec![1.5_f64, 0.1]);
        assert_eq!(mine.load::<Vec<f64>>(|_| Ok(())), Some(vec![1.5, 0.1]));
        let picky = mine.load::<Vec<f64>>(|v| if v.len() == 2 { Err("two".into()) } else { Ok(()) });
        assert_eq!(picky, None);
        assert_eq!(rejected.with_label_values(&["corrupt"]).get(), 1);
        mine.save(&vec![2.0_f64]);
        assert_eq!(file(dir.path(), "node-b", &rejected).load::<Vec<f64>>(|_| Ok(())), None);
        assert_eq!(rejected.with_label_values(&["foreign"]).get(), 1);
        std::fs::write(dir.path().join("things.json"), b"{\"format\":").unwrap();
        assert_eq!(mine.load::<Vec<f64>>(|_| Ok(())), None);
        assert_eq!(rejected.with_label_values(&["corrupt"]).get(), 2);
        let aside = std::fs::read_dir(dir.path()).unwrap().filter_map(Result::ok);
        assert_eq!(aside.filter(|e| e.file_name().to_string_lossy().contains(".rejected-")).count(), 3);
    }

    fn set_aside_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".rejected-"))
            .collect();
        names.sort();
        names
    }

    /// A file that cannot be read (here a directory in its place: EISDIR, even for root) is
    /// set aside with what it holds, then a fresh file is written beside it.
    #[test]
    fn an_unreadable_file_is_set_aside_never_written_over() {
        let dir = TempDir::new("state-unreadable");
        let rejected = IntCounterVec::new(Opts::new("r", "r"), &["reason"]).unwrap();
        let mine = file(dir.path(), "node-a", &rejected);
        std::fs::create_dir(dir.path().join("things.json")).unwrap();
        std::fs::write(dir.path().join("things.json/evidence"), b"kept").unwrap();
        assert_eq!(mine.load::<Vec<f64>>(|_| Ok(())), None);
        assert_eq!(rejected.with_label_values(&["unreadable"]).get(), 1);
        let aside = set_aside_names(dir.path());
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(dir.path().join(&aside[0]).join("evidence")).unwrap(), b"kept");
        mine.save(&vec![3.0_f64]);
        assert_eq!(mine.load::<Vec<f64>>(|_| Ok(())), Some(vec![3.0]));
    }

    /// A file over 16 MiB is set aside by its size, unread; one at exactly 16 MiB is read
    /// (and, being zeros, is corrupt).
    #[test]
    fn a_huge_file_is_set_aside_unread() {
        let dir = TempDir::new("state-huge");
        let rejected = IntCounterVec::new(Opts::new("r", "r"), &["reason"]).unwrap();
        let mine = file(dir.path(), "node-a", &rejected);
        let path = dir.path().join("things.json");
        // Sparse: 300 MiB of nothing on disk, as the issue's file.
        std::fs::File::create(&path).unwrap().set_len(300 << 20).unwrap();
        assert_eq!(mine.load::<Vec<f64>>(|_| Ok(())), None);
        assert_eq!(rejected.with_label_values(&["too_large"]).get(), 1);
        assert_eq!(rejected.with_label_values(&["corrupt"]).get(), 0, "never parsed");
        let aside = set_aside_names(dir.path());
        assert_eq!(std::fs::metadata(dir.path().join(&aside[0])).unwrap().len(), 300 << 20);
        std::fs::File::create(&path).unwrap().set_len(MAX_BYTES).unwrap();
        assert_eq!(mine.load::<Vec<f64>>(|_| Ok(())), None);
        assert_eq!(rejected.with_label_values(&["too_large"]).get(), 1);
        assert_eq!(rejected.with_label_values(&["corrupt"]).get(), 1);
    }
}
