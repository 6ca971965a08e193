//! What the hook keeps across restarts, in two files of its state directory:
//!
//! - `rollback-hook.json`, the run record: written durably (file and directory synced)
//!   *before* the command starts, and again when it ends. It is the proof that the rollback
//!   has not run; a record that cannot be read or trusted is no such proof, so it is set
//!   aside (copied to `rollback-hook.json.rejected-<unix seconds>`) and replaced by an
//!   `untrusted` record, which refuses every run until an operator removes it.
//! - `rollback-hook-firing.json`, the rollback alerts firing as last notified, by
//!   fingerprint with their `startsAt`: a restarted hook acts on them without waiting for
//!   Alertmanager's next notice. Losing it only delays a run, so an untrusted one is set
//!   aside and the hook starts with no alert firing.
//!
//! Both use the state files' envelope (format, version, node, body), as `state_file.rs`
//! writes them, but every failure is returned: nothing here is "logged and ignored".

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::state_file::{Envelope, Loaded};

pub const RECORD_FILE: &str = "rollback-hook.json";
pub const FIRING_FILE: &str = "rollback-hook-firing.json";
const RECORD_FORMAT: &str = "cniguard-rollback-hook";
const FIRING_FORMAT: &str = "cniguard-rollback-hook-firing";
const VERSION: u32 = 1;
const NODE: &str = "rollback-hook";
/// Far above what either file holds: a larger one is not the hook's.
const MAX_BYTES: u64 = 1 << 20;

/// The run record's body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub ran: Option<Ran>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ran {
    /// Unix seconds.
    pub at: f64,
    /// The `startsAt` (Unix seconds) of the alert that led to it.
    pub firing_since: f64,
    /// `started` until the command ends, then `succeeded` or `failed`; `unknown` once a
    /// restarted hook found it `started` (it never saw the end); `untrusted` when the
    /// record was unreadable (see `note`).
    pub result: String,
    /// The alert's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The command's process (and process group) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Unix seconds the command ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One firing rollback alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiringAlert {
    /// Unix seconds, from the alert's `startsAt`.
    pub starts_at: f64,
    /// `startsAt` as Alertmanager sent it.
    pub starts_at_text: String,
    /// Unix seconds of the first notice that said it fires.
    pub first_notified_at: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub alerts: BTreeMap<String, FiringAlert>,
}

/// What reading a file found.
#[derive(Debug)]
pub enum Found<T> {
    Missing,
    Trusted(T),
    /// `reason` for `cniguard_state_file_rejected_total`; `why` for the operator; `aside`
    /// where its bytes were kept (`None`: it could not even be read, or not copied).
    Untrusted {
        reason: &'static str,
        why: String,
        aside: Option<PathBuf>,
    },
}

/// The two files of one state directory.
#[derive(Debug, Clone)]
pub struct Files {
    pub record: PathBuf,
    pub firing: PathBuf,
}

impl Files {
    #[must_use]
    pub fn new(dir: &Path) -> Self {
        Self { record: dir.join(RECORD_FILE), firing: dir.join(FIRING_FILE) }
    }

    /// The run record. An untrusted one is copied aside and replaced by an `untrusted`
    /// record (if the directory allows; otherwise it stays as it is, and is found untrusted
    /// again at the next start): it never reads as "never ran".
    pub fn load_record(&self) -> Found<Persisted> {
        match read(&self.record, RECORD_FORMAT) {
            Found::Untrusted { reason, why, aside: _ } => {
                let aside = copy_aside(&self.record).ok();
                if aside.is_some() {
                    let untrusted = Persisted {
                        ran: Some(Ran {
                            at: crate::judgement::phase::unix_now(),
                            firing_since: 0.0,
                            result: "untrusted".into(),
                            fingerprint: None,
                            pid: None,
                            ended_at: None,
                            note: Some(format!("the record was not readable ({why})")),
                        }),
                    };
                    if let Err(err) = self.save_record(&untrusted) {
                        tracing::error!(path = %self.record.display(), "cannot replace the untrusted record: {err:#}");
                    }
                }
                Found::Untrusted { reason, why, aside }
            }
            found => found,
        }
    }

    /// Writes the run record durably; only after `Ok` may the command start.
    pub fn save_record(&self, body: &Persisted) -> Result<()> {
        write_durably(&self.record, &Envelope { format: RECORD_FORMAT, version: VERSION, node: NODE, body })
    }

    /// The firing alerts; an untrusted file is renamed aside.
    pub fn load_firing(&self) -> Found<Firing> {
        match read(&self.firing, FIRING_FORMAT) {
            Found::Untrusted { reason, why, aside: _ } => {
                let aside = crate::state_file::aside_name(&self.firing);
                let aside = std::fs::rename(&self.firing, &aside).ok().map(|()| aside);
                Found::Untrusted { reason, why, aside }
            }
            found => found,
        }
    }

    pub fn save_firing(&self, body: &Firing) -> Result<()> {
        write_durably(&self.firing, &Envelope { format: FIRING_FORMAT, version: VERSION, node: NODE, body })
    }
}

fn read<T: DeserializeOwned>(path: &Path, format: &str) -> Found<T> {
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|file| file.take(MAX_BYTES + 1).read_to_end(&mut bytes));
    match read {
        Ok(_) if bytes.len() as u64 > MAX_BYTES => {
            return Found::Untrusted {
                reason: "corrupt",
                why: format!("larger than {MAX_BYTES} bytes"),
                aside: None,
            };
        }
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Found::Missing,
        Err(err) => return Found::Untrusted { reason: "unreadable", why: err.to_string(), aside: None },
    }
    let loaded: Loaded<T> = match serde_json::from_slice(&bytes) {
        Ok(loaded) => loaded,
        Err(err) => {
            return Found::Untrusted { reason: "corrupt", why: format!("not valid: {err}"), aside: None };
        }
    };
    if loaded.format != format || loaded.version != VERSION || loaded.node != NODE {
        return Found::Untrusted {
            reason: "foreign",
            why: format!(
                "format {:?} version {} node {:?}, expected {format:?} version {VERSION} node {NODE:?}",
                loaded.format, loaded.version, loaded.node
            ),
            aside: None,
        };
    }
    Found::Trusted(loaded.body)
}

/// Copies the file's bytes to a new aside file, synced; the original stays until replaced.
fn copy_aside(path: &Path) -> Result<PathBuf> {
    let aside = crate::state_file::aside_name(path);
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&aside)
        .with_context(|| format!("creating {}", aside.display()))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    Ok(aside)
}

/// A temporary file, synced, renamed over the old one, the directory synced: once this
/// returns `Ok`, the new content survives a crash or a power cut.
fn write_durably<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let temporary = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(&serde_json::to_vec_pretty(value)?)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_file::TempDir;

    fn ran(result: &str) -> Persisted {
        Persisted {
            ran: Some(Ran {
                at: 10.0,
                firing_since: 5.0,
                result: result.into(),
                fingerprint: Some("abc".into()),
                pid: None,
                ended_at: None,
                note: None,
            }),
        }
    }

    fn asides(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".rejected-"))
            .count()
    }

    #[test]
    fn a_saved_record_reads_back_and_a_missing_one_is_missing() {
        let dir = TempDir::new("hook-record");
        let files = Files::new(dir.path());
        assert!(matches!(files.load_record(), Found::Missing));
        files.save_record(&ran("started")).unwrap();
        assert!(matches!(files.load_record(), Found::Trusted(p) if p == ran("started")));
        let firing = Firing {
            alerts: BTreeMap::from([(
                "f1".into(),
                FiringAlert { starts_at: 1.0, starts_at_text: "x".into(), first_notified_at: 2.0 },
            )]),
        };
        files.save_firing(&firing).unwrap();
        assert!(matches!(files.load_firing(), Found::Trusted(f) if f == firing));
    }

    #[test]
    fn a_record_written_by_the_old_hook_still_reads() {
        let dir = TempDir::new("hook-record-old");
        std::fs::write(
            dir.path().join(RECORD_FILE),
            r#"{"format":"cniguard-rollback-hook","version":1,"node":"rollback-hook",
               "body":{"ran":{"at":1.5,"firing_since":1.0,"result":"succeeded"}}}"#,
        )
        .unwrap();
        let Found::Trusted(found) = Files::new(dir.path()).load_record() else { panic!("not trusted") };
        assert_eq!(found.ran.unwrap().result, "succeeded");
    }

    #[test]
    fn an_untrusted_record_is_kept_aside_and_never_reads_as_never_ran() {
        let dir = TempDir::new("hook-record-corrupt");
        let files = Files::new(dir.path());
        std::fs::write(&files.record, br#"{"format":"cniguard-rollback-hook","vers"#).unwrap();
        assert!(matches!(files.load_record(), Found::Untrusted { reason: "corrupt", aside: Some(_), .. }));
        assert_eq!(asides(dir.path()), 1);
        // The next start finds the `untrusted` record in its place: still no run.
        let Found::Trusted(found) = files.load_record() else { panic!("the replacement is not trusted") };
        assert_eq!(found.ran.unwrap().result, "untrusted");
        assert_eq!(asides(dir.path()), 1);
    }

    #[test]
    fn a_save_that_cannot_be_written_says_so() {
        let dir = TempDir::new("hook-record-unwritable");
        let files = Files::new(dir.path());
        std::fs::create_dir(dir.path().join("rollback-hook.json.tmp")).unwrap();
        let err = files.save_record(&ran("started")).unwrap_err();
        assert!(format!("{err:#}").contains("rollback-hook.json.tmp"), "{err:#}");
        assert!(matches!(files.load_record(), Found::Missing));
    }
}
