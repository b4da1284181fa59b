//! Crash-safe file transactions: the journal `<state_dir>/txn.json`.
//!
//! A transaction replaces or removes a few files under `/lib/modules/<kernel>` and then
//! commits by rewriting `state.json`. Its order of steps is chosen so that a process
//! killed between any two of them leaves each destination path holding either the old
//! file or the new one, never a partial file:
//!
//! 1. write the journal (the list of steps, with temp and backup names);
//! 2. write every new file to a dot-named temp file next to its destination, fsync;
//! 3. per replaced file: hard-link the old file to `<dest>.kmodforge-old`, then
//!    `rename(temp, dest)`, which swaps the content atomically;
//! 4. per removed file: `rename(dest, <dest>.kmodforge-old)`;
//! 5. (caller) run depmod; 6. (caller) write `state.json` with `last_txn` = this id;
//! 7. delete the backups and the journal.
//!
//! Recovery (at the next `lock()`) reads a leftover journal: if `state.json` carries its
//! id, the transaction committed and only the clean-up (7) is redone; otherwise every
//! step is undone from the backups and the temp files are deleted.

use std::fs;
use std::path::{Path, PathBuf};

use kmodforge_api::names::{KernelRelease, ModuleName};
use serde::{Deserialize, Serialize};

use super::{fsx, HostError};

/// Suffix of the backup that keeps an old file until the transaction commits.
pub(crate) const BACKUP_SUFFIX: &str = ".kmodforge-old";
/// Suffix of the temp file a new file is written to before its rename.
const TEMP_SUFFIX: &str = ".kmodforge-new";

/// One journalled transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Journal {
    /// Unique id, also written to `state.json` at commit.
    pub txn: String,
    pub module: ModuleName,
    pub kernel: KernelRelease,
    pub steps: Vec<Step>,
}

/// One file changed by a transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Step {
    /// The destination path (absolute, under the configured root).
    pub dest: PathBuf,
    /// For a write: the temp file and the new content's sha256. `None` for a removal.
    pub new: Option<NewFile>,
    /// Where the file that was at `dest` is kept until commit; `None` when there was none.
    pub backup: Option<PathBuf>,
}

/// The new content of a written file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NewFile {
    pub temp: PathBuf,
    pub sha256: String,
}

/// What recovery did with a leftover journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryAction {
    /// The transaction had committed; its backups and temp files were deleted.
    Completed,
    /// The transaction had not committed; the old files were put back.
    RolledBack,
}

impl Step {
    /// A step writing a new file at `dest`; `had_old` says whether one is there now.
    pub fn write(dest: PathBuf, sha256: String, had_old: bool) -> Step {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
        let temp_name = format!(".{}{TEMP_SUFFIX}", name.unwrap_or_default());
        let temp = fsx::parent(&dest).join(temp_name);
        let backup = had_old.then(|| fsx::with_suffix(&dest, BACKUP_SUFFIX));
        Step {
            new: Some(NewFile { temp, sha256 }),
            backup,
            dest,
        }
    }

    /// A step removing the file at `dest`.
    pub fn remove(dest: PathBuf) -> Step {
        let backup = Some(fsx::with_suffix(&dest, BACKUP_SUFFIX));
        Step {
            dest,
            new: None,
            backup,
        }
    }
}

impl Journal {
    /// Reads a leftover journal, if there is one.
    pub fn load(path: &Path) -> Result<Option<Journal>, HostError> {
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HostError::io(path)(e)),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| HostError::State {
                path: path.to_owned(),
                reason: format!("unreadable transaction journal: {e}"),
            })
    }

    /// Writes the journal durably (step 1).
    pub fn save(&self, path: &Path) -> Result<(), HostError> {
        let data = serde_json::to_vec_pretty(self).map_err(|e| HostError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        fsx::write_atomic(path, &data)
    }

    /// Steps 2 to 4. `contents` holds the new bytes of each write step, in step order.
    pub fn apply(&self, contents: &[&[u8]]) -> Result<(), HostError> {
        let writes = self
            .steps
            .iter()
            .filter_map(|s| s.new.as_ref().map(|n| (s, n)));
        for ((step, new), data) in writes.clone().zip(contents) {
            fs::create_dir_all(fsx::parent(&step.dest)).map_err(HostError::io(&step.dest))?;
            fsx::write_synced(&new.temp, data)?;
            checkpoint("temp file written")?;
        }
        for (step, new) in writes {
            if let Some(backup) = &step.backup {
                fsx::remove_if_exists(backup)?;
                fs::hard_link(&step.dest, backup).map_err(HostError::io(backup))?;
            }
            checkpoint("backup linked")?;
            fs::rename(&new.temp, &step.dest).map_err(HostError::io(&step.dest))?;
            fsx::sync_dir(fsx::parent(&step.dest))?;
            checkpoint("file renamed in")?;
        }
        for step in self.steps.iter().filter(|s| s.new.is_none()) {
            if let Some(backup) = &step.backup {
                fs::rename(&step.dest, backup).map_err(HostError::io(&step.dest))?;
                fsx::sync_dir(fsx::parent(&step.dest))?;
                checkpoint("file moved out")?;
            }
        }
        Ok(())
    }

    /// Undoes every step that happened, in reverse order, then deletes the journal.
    pub fn roll_back(&self, path: &Path) -> Result<(), HostError> {
        for step in self.steps.iter().rev() {
            undo(step)?;
            // A kill before the destination directory was created leaves none.
            fsx::sync_dir_if_exists(fsx::parent(&step.dest))?;
        }
        fsx::remove_if_exists(path)?;
        fsx::sync_dir(fsx::parent(path))
    }

    /// Step 7: deletes backups and temp files, then the journal.
    pub fn finish(&self, path: &Path) -> Result<(), HostError> {
        for step in &self.steps {
            if let Some(new) = &step.new {
                fsx::remove_if_exists(&new.temp)?;
            }
            if let Some(backup) = &step.backup {
                fsx::remove_if_exists(backup)?;
            }
            fsx::sync_dir_if_exists(fsx::parent(&step.dest))?;
        }
        fsx::remove_if_exists(path)?;
        fsx::sync_dir(fsx::parent(path))
    }
}

/// Restores what was at `step.dest` before the transaction.
fn undo(step: &Step) -> Result<(), HostError> {
    if let Some(new) = &step.new {
        fsx::remove_if_exists(&new.temp)?;
    }
    match &step.backup {
        // The backup is a hard link of the old file while the old file is still in place.
        Some(b) if fsx::same_inode(b, &step.dest) => fsx::remove_if_exists(b),
        Some(b) if fsx::exists(b) => fs::rename(b, &step.dest).map_err(HostError::io(&step.dest)),
        // Nothing was moved out yet: dest still holds the old file.
        Some(_) => Ok(()),
        // There was no old file: remove the new one if it was renamed in.
        None => remove_if_new(step),
    }
}

/// Removes `step.dest` when it holds this transaction's new content.
fn remove_if_new(step: &Step) -> Result<(), HostError> {
    let Some(new) = &step.new else {
        return Ok(());
    };
    if fsx::file_sha256(&step.dest)?.as_deref() == Some(new.sha256.as_str()) {
        fsx::remove_if_exists(&step.dest)?;
    }
    Ok(())
}

/// A fresh transaction id: time and process id, unique enough under the lock.
pub(crate) fn new_txn_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}-{}", std::process::id())
}

/// A point between two steps where tests can simulate a kill.
pub(crate) fn checkpoint(at: &'static str) -> Result<(), HostError> {
    #[cfg(test)]
    if fault::hit() {
        return Err(HostError::Killed { at });
    }
    let _ = at;
    Ok(())
}

/// Test-only fault injection: kill the current thread's transaction at the n-th checkpoint.
#[cfg(test)]
pub(crate) mod fault {
    use std::cell::Cell;

    thread_local! {
        static KILL_AT: Cell<Option<usize>> = const { Cell::new(None) };
        static PASSED: Cell<usize> = const { Cell::new(0) };
    }

    /// Arms a kill at checkpoint number `n` (1-based), or disarms with `None`.
    pub(crate) fn arm(n: Option<usize>) {
        KILL_AT.set(n);
        PASSED.set(0);
    }

    /// How many checkpoints were passed since the last `arm`.
    pub(crate) fn passed() -> usize {
        PASSED.get()
    }

    pub(super) fn hit() -> bool {
        let n = PASSED.get() + 1;
        PASSED.set(n);
        KILL_AT.get() == Some(n)
    }
}
