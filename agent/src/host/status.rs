//! `Host::status` and `Host::installed`: what the state file says, checked against the
//! disk and, for the running kernel, against `/sys/module`.

use std::path::{Path, PathBuf};

use kmodforge_api::dkms::version_cmp;
use kmodforge_api::names::{Arch, KernelRelease, ModuleName, ModuleVersion};
use serde::Serialize;

use super::state::{BootCheckRecord, Entry, FileRecord, SigningRecord, State};
use super::{fsx, Host, HostError};

/// One installed module on one kernel, as `dkms status` would list it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusEntry {
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub kernel: KernelRelease,
    pub arch: Arch,
    /// Always `"installed"`: the agent has no built-but-not-installed state.
    pub state: String,
    /// A same-named module found at install time is still in the kernel tree.
    pub original_modules: bool,
    /// A recorded file is gone from the kernel tree.
    pub files_missing: bool,
    /// A recorded file's content differs from the sha256 recorded at install.
    pub differs: bool,
    pub artifact_key: String,
    /// RFC 3339, UTC.
    pub installed_at: String,
    /// The installed files (absolute paths).
    pub files: Vec<PathBuf>,
    /// For the running kernel only: whether the module is loaded, and which build.
    pub loaded: Option<LoadedInfo>,
    /// The server booted this artifact's kernel and loaded its modules, and the
    /// check passed (`boot_check.passed`).
    pub boot_verified: bool,
    /// The boot check recorded for the installed artifact; `None` when none ran (or
    /// none was seen by the agent yet).
    pub boot_check: Option<BootCheckRecord>,
    /// Who signed the modules and their manifest (absent for installs made before
    /// signing existed).
    pub signing: Option<SigningRecord>,
}

/// The loaded state of a module's main `.ko` (the one named after the package, else
/// the first), from `/sys/module/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadedInfo {
    /// The kernel's name for the module (`-` read as `_`).
    pub module: String,
    pub loaded: bool,
    /// `/sys/module/<name>/srcversion`.
    pub srcversion: Option<String>,
    /// `/sys/module/<name>/version`.
    pub version: Option<String>,
    /// Loaded srcversion == the installed file's srcversion; `None` when either is unknown.
    pub matches_installed: Option<bool>,
}

/// What the state file records for one module/version on one kernel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstalledRecord {
    pub artifact_key: String,
    /// (file name, sha256, absolute path) of each installed file.
    pub files: Vec<(String, String, PathBuf)>,
    /// RFC 3339, UTC.
    pub installed_at: String,
    /// The boot check recorded for the installed artifact.
    pub boot_check: Option<BootCheckRecord>,
}

impl StatusEntry {
    /// The DKMS 3.x `dkms status` line, e.g.
    /// `kmf_hello/1.0, 6.1.0-47-amd64, x86_64: installed (Original modules exist)`.
    pub fn dkms_line(&self) -> String {
        let mut line = format!(
            "{}/{}, {}, {}: {}",
            self.name, self.version, self.kernel, self.arch, self.state
        );
        if self.original_modules {
            line.push_str(" (Original modules exist)");
        }
        if self.files_missing {
            line.push_str(" (Built modules are missing in the kernel modules folder)");
        } else if self.differs {
            line.push_str(" (Differences between built and installed modules)");
        }
        line
    }
}

impl Host {
    /// Every installed entry, sorted by module, version and kernel (DKMS version order).
    ///
    /// Reads without the lock: the state file only ever changes by atomic rename.
    pub fn status(&self, running: Option<&KernelRelease>) -> Result<Vec<StatusEntry>, HostError> {
        let mut entries = State::load(&self.paths.state_file())?.entries;
        entries.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| version_cmp(a.version.as_str(), b.version.as_str()))
                .then_with(|| version_cmp(a.kernel.as_str(), b.kernel.as_str()))
        });
        entries
            .iter()
            .map(|e| self.status_entry(e, running))
            .collect()
    }

    /// The installed files of `name`/`version` on `krel`, if the state records them.
    pub fn installed(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        krel: &KernelRelease,
    ) -> Result<Option<InstalledRecord>, HostError> {
        let state = State::load(&self.paths.state_file())?;
        let tree = self.paths.kernel_tree(krel);
        Ok(state
            .find(name, krel)
            .filter(|e| &e.version == version)
            .map(|e| InstalledRecord {
                artifact_key: e.artifact_key.clone(),
                files: e
                    .files
                    .iter()
                    .map(|f| (f.file.clone(), f.sha256.clone(), tree.join(f.rel_path())))
                    .collect(),
                installed_at: e.installed_at.clone(),
                boot_check: e.boot_check.clone(),
            }))
    }

    fn status_entry(
        &self,
        e: &Entry,
        running: Option<&KernelRelease>,
    ) -> Result<StatusEntry, HostError> {
        let tree = self.paths.kernel_tree(&e.kernel);
        let files: Vec<PathBuf> = e.files.iter().map(|f| tree.join(f.rel_path())).collect();
        let (mut files_missing, mut differs) = (false, false);
        for (record, path) in e.files.iter().zip(&files) {
            match fsx::file_sha256(path)? {
                None => files_missing = true,
                Some(sha) if sha != record.sha256 => differs = true,
                Some(_) => {}
            }
        }
        let is_running = running == Some(&e.kernel);
        Ok(StatusEntry {
            name: e.name.clone(),
            version: e.version.clone(),
            kernel: e.kernel.clone(),
            arch: e.arch.clone(),
            state: "installed".to_owned(),
            original_modules: e.originals.iter().any(|o| fsx::exists(&tree.join(o))),
            files_missing,
            differs,
            artifact_key: e.artifact_key.clone(),
            installed_at: e.installed_at.clone(),
            files,
            loaded: is_running.then(|| self.loaded_info(e)).flatten(),
            boot_verified: e.boot_check.as_ref().is_some_and(|c| c.passed),
            boot_check: e.boot_check.clone(),
            signing: e.signing.clone(),
        })
    }

    /// Reads `/sys/module/<name>` for the entry's main module.
    fn loaded_info(&self, e: &Entry) -> Option<LoadedInfo> {
        let main = main_file(e)?;
        let module = main.module_name();
        let sys = self.paths.sys_module.join(&module);
        let loaded = sys.is_dir();
        let srcversion = loaded
            .then(|| read_trimmed(&sys.join("srcversion")))
            .flatten();
        let version = loaded.then(|| read_trimmed(&sys.join("version"))).flatten();
        let matches_installed = match (&srcversion, &main.srcversion) {
            (Some(live), Some(installed)) => Some(live == installed),
            _ => None,
        };
        Some(LoadedInfo {
            module,
            loaded,
            srcversion,
            version,
            matches_installed,
        })
    }
}

/// The file named after the package (`acpi-call` → `acpi_call.ko`), else the first.
fn main_file(e: &Entry) -> Option<&FileRecord> {
    let wanted = e.name.as_str().replace('-', "_");
    e.files
        .iter()
        .find(|f| f.module_name() == wanted)
        .or_else(|| e.files.first())
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
