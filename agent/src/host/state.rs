//! The agent's record of what it installed: `<state_dir>/state.json`.
//!
//! The file is only ever replaced whole (temp + fsync + rename), and writing it is the
//! commit point of every install and uninstall transaction: `last_txn` names the
//! transaction that wrote it, which is how recovery tells a committed journal from an
//! unfinished one (see `journal`).

use std::path::{Path, PathBuf};

use kmodforge_api::names::{Arch, KernelRelease, ModuleName, ModuleVersion};
use serde::{Deserialize, Serialize};

use super::{fsx, HostError};

/// Version of the state file layout.
const FORMAT: u32 = 1;

/// The whole state file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    pub format: u32,
    /// The transaction that last wrote this file.
    #[serde(default)]
    pub last_txn: Option<String>,
    #[serde(default)]
    pub entries: Vec<Entry>,
}

/// One module (DKMS package) installed on one kernel. At most one per (name, kernel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub kernel: KernelRelease,
    pub arch: Arch,
    pub artifact_key: String,
    pub files: Vec<FileRecord>,
    /// Same-named modules found in the kernel tree at install time and left in place,
    /// relative to `<modules_dir>/<kernel>`.
    #[serde(default)]
    pub originals: Vec<PathBuf>,
    /// RFC 3339, UTC.
    pub installed_at: String,
}

/// One installed `.ko`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    /// File name, e.g. `kmf_hello.ko`.
    pub file: String,
    /// Directory under `<modules_dir>/<kernel>`, e.g. `/updates/dkms`.
    pub dest_location: String,
    pub sha256: String,
    /// `.modinfo` `version=` and `srcversion=` of the installed file.
    pub version: Option<String>,
    pub srcversion: Option<String>,
}

impl FileRecord {
    /// Path relative to `<modules_dir>/<kernel>`, e.g. `updates/dkms/kmf_hello.ko`.
    pub fn rel_path(&self) -> PathBuf {
        Path::new(self.dest_location.trim_start_matches('/')).join(&self.file)
    }

    /// The kernel's name for the module: the file stem with `-` read as `_`.
    pub fn module_name(&self) -> String {
        let stem = self.file.strip_suffix(".ko").unwrap_or(&self.file);
        stem.replace('-', "_")
    }
}

impl State {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, HostError> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    format: FORMAT,
                    ..State::default()
                })
            }
            Err(e) => return Err(HostError::io(path)(e)),
        };
        let state: State = serde_json::from_slice(&data).map_err(|e| HostError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if state.format != FORMAT {
            return Err(HostError::State {
                path: path.to_owned(),
                reason: format!("unsupported format {} (expected {FORMAT})", state.format),
            });
        }
        Ok(state)
    }

    /// Replaces the state file atomically, stamped with transaction `txn`.
    pub fn save(&mut self, path: &Path, txn: &str) -> Result<(), HostError> {
        self.format = FORMAT;
        self.last_txn = Some(txn.to_owned());
        self.entries
            .sort_by(|a, b| (&a.name, &a.kernel).cmp(&(&b.name, &b.kernel)));
        let data = serde_json::to_vec_pretty(self).map_err(|e| HostError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        fsx::write_atomic(path, &data)
    }

    /// The entry for module `name` on `kernel`, whatever its version.
    pub fn find(&self, name: &ModuleName, kernel: &KernelRelease) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| &e.name == name && &e.kernel == kernel)
    }

    /// Inserts or replaces the entry for (`entry.name`, `entry.kernel`).
    pub fn put(&mut self, entry: Entry) {
        self.remove(&entry.name.clone(), &entry.kernel.clone());
        self.entries.push(entry);
    }

    /// Removes the entry for `name` on `kernel`, if any.
    pub fn remove(&mut self, name: &ModuleName, kernel: &KernelRelease) {
        self.entries
            .retain(|e| !(&e.name == name && &e.kernel == kernel));
    }
}
