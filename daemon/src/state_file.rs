//! State kept across restarts, one JSON file per kind in the state directory (`--state-dir`):
//! the pre-cutover baselines, the rollback triggers' pending times. Each file names its
//! format, version and the node that wrote it; it is written atomically (a temporary file,
//! synced, renamed over the old one); at start-up a file that does not parse, has another
//! format or version, or was written on another node is renamed aside, logged and counted
//! in `cniguard_state_file_rejected_total`, and the daemon starts afresh: never silently
//! trusted.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use prometheus::{IntCounterVec, Registry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::metrics::catalogue;

const VERSION: u32 = 1;

#[derive(Serialize)]
struct Envelope<'a, T> {
    format: &'a str,
    version: u32,
    node: &'a str,
    body: &'a T,
}

#[derive(Deserialize)]
struct Loaded<T> {
    format: String,
    version: u32,
    node: String,
    body: T,
}

/// One state file.
#[derive(Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
    format: &'static str,
    node: String,
    rejected: IntCounterVec,
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
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                self.rejected.with_label_values(&["unreadable"]).inc();
                tracing::warn!(path = %path.display(), "cannot read the state file ({err}): starting afresh");
                return None;
            }
        };
        match self.trusted(&bytes, &check) {
            Ok(body) => {
                tracing::info!(path = %path.display(), "state loaded");
                Some(body)
            }
            Err((reason, why)) => {
                self.rejected.with_label_values(&[reason]).inc();
                let aside = set_aside(path);
                tracing::warn!(
                    path = %path.display(),
                    aside = %aside.display(),
                    "the state file is not trusted ({why}): set aside, starting afresh"
                );
                None
            }
        }
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
        let envelope = Envelope { format: self.format, version: VERSION, node: &self.node, body };
        if let Err(err) = write_atomically(path, &envelope) {
            tracing::warn!(path = %path.display(), "cannot save state: {err:#}");
        }
    }
}

/// Renames `path` to `<path>.rejected-<unix seconds>[-n]`; returns the new name.
fn set_aside(path: &Path) -> PathBuf {
    let seconds =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut aside = path.with_extension(format!("json.rejected-{seconds}"));
    // Never over an earlier one: each may be needed to understand what went wrong.
    for attempt in 1.. {
        if !aside.exists() {
            break;
        }
        aside = path.with_extension(format!("json.rejected-{seconds}-{attempt}"));
    }
    if let Err(err) = std::fs::rename(path, &aside) {
        tracing::warn!(path = %path.display(), "cannot set the state file aside: {err}");
    }
    aside
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
}
