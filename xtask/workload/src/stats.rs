//! The stats file: one JSON object of counters, rewritten atomically while a workload runs,
//! so that the lab and the tests can read exactly how much was sent and answered.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde_json::{Map, Value};

/// How often the file is rewritten while the workload runs.
const REWRITE_INTERVAL: Duration = Duration::from_millis(500);

/// A workload's counters, each named as it appears in the stats file.
pub trait Counters: Send + Sync + 'static {
    fn fields(&self) -> Vec<(&'static str, u64)>;
}

/// Declares a struct of atomic counters whose field names are the stats file's names.
macro_rules! counters {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$field_meta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $($(#[$field_meta])* pub $field: std::sync::atomic::AtomicU64,)*
        }

        impl $crate::stats::Counters for $name {
            fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(std::sync::atomic::Ordering::Relaxed))),*]
            }
        }
    };
}
pub(crate) use counters;

/// Adds one to a counter.
pub fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Keeps the stats file of one workload up to date.
pub struct Reporter<C: Counters> {
    file: Arc<StatsFile<C>>,
    rewriter: tokio::task::JoinHandle<()>,
}

struct StatsFile<C> {
    kind: &'static str,
    path: PathBuf,
    started_unix_ms: u64,
    counters: Arc<C>,
    /// Serialises writers and, once set, stops periodic writes: nothing may overwrite the
    /// final counts with an older snapshot.
    finished: Mutex<bool>,
}

impl<C: Counters> StatsFile<C> {
    fn write(&self, last: bool) -> Result<()> {
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if *finished {
            return Ok(());
        }
        *finished = last;
        let json = render(self.kind, self.started_unix_ms, unix_ms(), &self.counters.fields());
        write_atomically(&self.path, &json)
    }
}

impl<C: Counters> Reporter<C> {
    /// Writes the file once (all zeros: the workload is up) and then every 500 ms. Must be
    /// called inside the tokio runtime.
    ///
    /// # Errors
    /// If the first write fails (no such directory, no permission).
    pub fn start(kind: &'static str, path: &Path, counters: Arc<C>) -> Result<Self> {
        let file = Arc::new(StatsFile {
            kind,
            path: path.to_path_buf(),
            started_unix_ms: unix_ms(),
            counters,
            finished: Mutex::new(false),
        });
        file.write(false).with_context(|| format!("cannot write the stats file {}", path.display()))?;
        let rewriter = tokio::spawn({
            let file = Arc::clone(&file);
            async move {
                let mut ticker = tokio::time::interval(REWRITE_INTERVAL);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    if let Err(err) = file.write(false) {
                        eprintln!("{err:#}");
                    }
                }
            }
        });
        Ok(Self { file, rewriter })
    }

    /// The final write, with every count the workload made.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn finish(self) -> Result<()> {
        self.rewriter.abort();
        self.file
            .write(true)
            .with_context(|| format!("cannot write the final stats file {}", self.file.path.display()))
    }
}

fn unix_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

fn render(kind: &str, started_unix_ms: u64, updated_unix_ms: u64, fields: &[(&'static str, u64)]) -> String {
    let mut object = Map::new();
    object.insert("kind".into(), kind.into());
    object.insert("started_unix_ms".into(), started_unix_ms.into());
    object.insert("updated_unix_ms".into(), updated_unix_ms.into());
    for &(name, value) in fields {
        object.insert(name.into(), value.into());
    }
    let mut json = Value::Object(object).to_string();
    json.push('\n');
    json
}

/// Writes a temporary file next to `path` and renames it over `path`: a reader sees the old
/// contents or the new ones, never a half-written file. No fsync: readers are on the same
/// host, and a crash of the host ends the lab run anyway.
pub fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{} is not a file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let result = fs::File::create(&temp)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Reads a stats file back: its fields, `kind` aside.
#[cfg(test)]
pub fn read(path: &Path) -> Result<(String, std::collections::BTreeMap<String, u64>)> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let Value::Object(object) = serde_json::from_str(&text)? else { anyhow::bail!("not a JSON object") };
    let mut kind = None;
    let mut fields = std::collections::BTreeMap::new();
    for (name, value) in object {
        if name == "kind" {
            kind = value.as_str().map(str::to_owned);
        } else {
            let number = value.as_u64().with_context(|| format!("{name} is not an unsigned integer"))?;
            fields.insert(name, number);
        }
    }
    Ok((kind.context("no kind")?, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    counters! {
        struct Example { sent, lost }
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cniguard-workload-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn render_has_the_fixed_fields_and_the_counters() {
        let json = render("udp-send", 5, 7, &[("sent", 3), ("send_errors", 0)]);
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "kind": "udp-send", "started_unix_ms": 5, "updated_unix_ms": 7, "sent": 3, "send_errors": 0
            })
        );
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch_dir("atomic");
        let path = dir.join("stats.json");
        fs::write(&path, "old").unwrap();
        write_atomically(&path, &render("udp-sink", 1, 2, &[("received", 40), ("bytes", 2560)])).unwrap();
        let (kind, fields) = read(&path).unwrap();
        assert_eq!(kind, "udp-sink");
        assert_eq!(fields["received"], 40);
        assert_eq!(fields["bytes"], 2560);
        assert_eq!(fields["started_unix_ms"], 1);
        let entries: Vec<_> = fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(entries, [std::ffi::OsString::from("stats.json")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_write_into_a_missing_directory_fails() {
        let path = std::env::temp_dir().join("cniguard-workload-no-such-dir/stats.json");
        assert!(write_atomically(&path, "{}").is_err());
    }

    #[tokio::test]
    async fn reporter_writes_zeros_at_start_and_the_counts_at_finish() {
        let dir = scratch_dir("reporter");
        let path = dir.join("stats.json");
        let counters = Arc::new(Example::default());
        let reporter = Reporter::start("example", &path, Arc::clone(&counters)).unwrap();
        let (kind, fields) = read(&path).unwrap();
        assert_eq!(kind, "example");
        assert_eq!((fields["sent"], fields["lost"]), (0, 0));
        for _ in 0..3 {
            bump(&counters.sent);
        }
        reporter.finish().unwrap();
        let (_, fields) = read(&path).unwrap();
        assert_eq!((fields["sent"], fields["lost"]), (3, 0));
        assert!(fields["updated_unix_ms"] >= fields["started_unix_ms"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
