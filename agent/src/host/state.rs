//! The agent's record of what it installed: `<state_dir>/state.json`.
//!
//! The file is only ever replaced whole (temp + fsync + rename), and writing it is the
//! commit point of every install and uninstall transaction: `last_txn` names the
//! transaction that wrote it, which is how recovery tells a committed journal from an
//! unfinished one (see `journal`).

use std::path::{Path, PathBuf};

use kmodforge_api::names::{Arch, KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::{BootCheck, ImageRef};
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The server's boot check of the installed artifact, once the agent saw one
    /// (absent in state files written before boot checks existed).
    #[serde(default)]
    pub boot_check: Option<BootCheckRecord>,
    /// Who signed the installed modules and the manifest they came with.
    #[serde(default)]
    pub signing: Option<SigningRecord>,
}

/// Who signed an installed artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningRecord {
    /// The modules carry a signature in the kernel's format.
    pub signed: bool,
    /// The module-signing certificate's common name, serial and sha256.
    #[serde(default)]
    pub signer: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub certificate_sha256: Option<String>,
    /// The pinned key (`trusted_keys`) that signed the manifest; `None`: the
    /// manifest was not verified (no keys pinned).
    #[serde(default)]
    pub manifest_key: Option<String>,
}

impl SigningRecord {
    pub fn of(m: &kmodforge_api::wire::Manifest, manifest_key: Option<String>) -> Self {
        let s = m.module_signing.clone().unwrap_or_default();
        SigningRecord {
            signed: s.signed,
            signer: s.signer,
            key_id: s.key_id,
            certificate_sha256: s.certificate_sha256,
            manifest_key,
        }
    }
}

/// What the agent keeps of an artifact's boot check (the manifest's `boot_check`):
/// the server booted the artifact's kernel under qemu and loaded its modules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootCheckRecord {
    /// The kernel booted and every built module loaded.
    pub passed: bool,
    /// Why the check failed, in one line; `None` when it passed.
    #[serde(default)]
    pub reason: Option<String>,
    /// RFC 3339, UTC, as the server recorded it.
    pub checked_at: String,
    /// The Debian `linux-image-<krel>` package version that was booted.
    #[serde(default)]
    pub kernel_package_version: Option<String>,
    /// The server's verifier image (ID and tag) that ran the check.
    pub verifier_image: ImageRef,
    /// Wall time of the guest, in seconds.
    pub boot_seconds: f64,
    /// The built modules that loaded (`/sys/module/<name>` live), by file name.
    #[serde(default)]
    pub loaded: Vec<String>,
}

impl BootCheckRecord {
    /// The summary of a manifest's boot check.
    pub fn from_wire(c: &BootCheck) -> Self {
        BootCheckRecord {
            passed: c.passed,
            reason: c.reason.clone(),
            checked_at: c.checked_at.clone(),
            kernel_package_version: c.kernel_package_version.clone(),
            verifier_image: c.verifier_image.clone(),
            boot_seconds: c.boot_seconds,
            loaded: c
                .modules
                .iter()
                .filter(|m| m.new && m.loaded)
                .map(|m| m.file.clone())
                .collect(),
        }
    }

    /// The one-line reason of a failed check: the server's, else a generic one.
    pub fn failure_reason(c: &BootCheck) -> String {
        let reason = c.reason.as_deref().map(str::trim).unwrap_or_default();
        if reason.is_empty() {
            let what = if !c.booted {
                "the kernel did not boot"
            } else if c.timed_out {
                "the guest timed out"
            } else {
                "not every module loaded"
            };
            format!("{what} (the server gave no reason)")
        } else {
            reason.to_owned()
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file as agents wrote it before boot checks existed.
    const OLD: &str = r#"{
      "format": 1,
      "last_txn": "t1",
      "entries": [{
        "name": "kmf_hello", "version": "1.0", "kernel": "6.1.0-47-amd64", "arch": "x86_64",
        "artifact_key": "abc",
        "files": [{"file": "kmf_hello.ko", "dest_location": "/updates/dkms", "sha256": "00",
                   "version": "1.0", "srcversion": "S"}],
        "originals": [],
        "installed_at": "2026-01-01T00:00:00Z"
      }]
    }"#;

    fn record() -> BootCheckRecord {
        BootCheckRecord {
            passed: true,
            reason: None,
            checked_at: "2026-01-02T03:04:05Z".into(),
            kernel_package_version: Some("6.1.158-1".into()),
            verifier_image: ImageRef {
                id: "sha256:verifier".into(),
                tag: "kmodforge-verifier:test".into(),
            },
            boot_seconds: 1.234_567,
            loaded: vec!["kmf_hello.ko".into()],
        }
    }

    #[test]
    fn an_old_state_file_reads_without_a_boot_check_and_round_trips_with_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, OLD).expect("write old state");
        let mut state = State::load(&path).expect("old state loads");
        assert_eq!(state.entries.len(), 1);
        assert_eq!(state.entries[0].boot_check, None);

        let mut entry = state.entries[0].clone();
        entry.boot_check = Some(record());
        state.put(entry.clone());
        state.save(&path, "t2").expect("save");
        let again = State::load(&path).expect("new state loads");
        assert_eq!(again.entries, vec![entry]);
        assert_eq!(again.last_txn.as_deref(), Some("t2"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"boot_check\""), "{text}");
    }

    #[test]
    fn a_record_summarises_the_check() {
        let check: BootCheck = serde_json::from_value(serde_json::json!({
            "passed": false, "booted": true, "completed": false,
            "reason": "kmf_hello.ko: insmod: Exec format error",
            "kernel": "6.1.0-47-amd64", "kernel_package_version": "6.1.158-1",
            "verifier_image": {"id": "sha256:v", "tag": "t"},
            "checked_at": "2026-01-02T03:04:05Z", "boot_seconds": 2.5, "seconds": 4.0,
            "initramfs_bytes": 10, "boot_image": "pvh", "timed_out": false,
            "modules": [
                {"file": "crc.ko", "name": "crc", "new": false, "loaded": true, "rc": 0,
                 "error": null, "messages": [], "version": null, "srcversion": null,
                 "initstate": "live", "taint": null},
                {"file": "kmf_hello.ko", "name": "kmf_hello", "new": true, "loaded": false,
                 "rc": 8, "error": "Exec format error", "messages": [], "version": null,
                 "srcversion": null, "initstate": null, "taint": null}
            ],
            "console_tail": ""
        }))
        .expect("a wire boot check");
        let r = BootCheckRecord::from_wire(&check);
        assert!(!r.passed && r.loaded.is_empty());
        assert_eq!(r.verifier_image.tag, "t");
        assert_eq!(
            BootCheckRecord::failure_reason(&check),
            "kmf_hello.ko: insmod: Exec format error"
        );
    }
}
