//! `Host::install`: one verified artifact onto its kernel, with DKMS's semantics.

use std::path::{Path, PathBuf};

use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::{ArtifactFile, BootCheck};
use serde::Serialize;

use super::journal::{new_txn_id, Journal, Step};
use super::sanity::{self, Candidate, Skip, VerInfo};
use super::state::{BootCheckRecord, Entry, FileRecord, SigningRecord, State};
use super::txn::Txn;
use super::{
    fsx, tools, DepmodOutcome, Host, HostError, HostLock, ModprobeOutcome, VerifiedArtifact,
};

/// Knobs of one install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallOptions {
    /// Install even when the version sanity check says the existing module is newer or
    /// the same (DKMS `--force`). Default false.
    pub force: bool,
    /// Run depmod after the files are in place (DKMS `--no-depmod` clears it). Default true.
    pub run_depmod: bool,
    /// `modprobe` the modules after install when the kernel is `running`. Default false.
    pub modprobe: bool,
    /// The running kernel (`uname -r`), for `modprobe`.
    pub running: Option<KernelRelease>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            force: false,
            run_depmod: true,
            modprobe: false,
            running: None,
        }
    }
}

/// What one install did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub kernel: KernelRelease,
    /// Files written.
    pub installed: Vec<String>,
    /// Files the version sanity check skipped, with DKMS's message.
    pub skipped: Vec<(String, String)>,
    /// The same artifact was already installed and intact: nothing was written.
    pub unchanged: bool,
    /// Same-named modules left in place (absolute paths).
    pub originals: Vec<PathBuf>,
    /// The version of ours this install replaced on this kernel, if another one.
    pub replaced_version: Option<ModuleVersion>,
    pub depmod: DepmodOutcome,
    /// A modprobe failure is a warning: the install stands.
    pub modprobe: ModprobeOutcome,
    /// Notes such as DKMS's "multiple same-named modules" warning.
    pub warnings: Vec<String>,
}

/// The files to write after the sanity check.
#[derive(Default)]
struct Plan<'a> {
    files: Vec<&'a (ArtifactFile, Vec<u8>)>,
    skips: Vec<(String, Skip)>,
    originals: Vec<PathBuf>,
    warnings: Vec<String>,
}

impl Host {
    /// Installs a verified artifact for its kernel into `<modules_dir>/<krel><dest_location>/`.
    ///
    /// A no-op when the same artifact is installed and intact (except that a boot
    /// check the manifest carries and the state lacks is recorded). Files the version
    /// sanity check rejects are skipped (all skipped: [`HostError::NotNewer`] or
    /// [`HostError::AlreadyInstalled`]). A depmod failure rolls the install back
    /// ([`HostError::Depmod`]). An artifact whose boot check failed is refused before
    /// anything is written ([`HostError::BootCheckFailed`]).
    pub fn install(
        &self,
        _lock: &HostLock,
        art: &VerifiedArtifact,
        opts: &InstallOptions,
    ) -> Result<InstallReport, HostError> {
        self.recover()?;
        let m = &art.manifest;
        if let Some(check) = m.boot_check.as_ref().filter(|c| !c.passed) {
            return Err(HostError::BootCheckFailed {
                module: m.name.clone(),
                kernel: m.kernel.clone(),
                reason: BootCheckRecord::failure_reason(check),
            });
        }
        let tree = self.paths.kernel_tree(&m.kernel);
        if !tree.is_dir() {
            return Err(HostError::NoKernelTree {
                kernel: m.kernel.clone(),
                path: tree,
            });
        }
        let mut state = State::load(&self.paths.state_file())?;
        let current = state.find(&m.name, &m.kernel).cloned();
        if let Some(cur) = &current {
            if cur.artifact_key == m.key.as_str() && self.files_intact(cur)? {
                if let Some(check) = &m.boot_check {
                    self.put_boot_check(&mut state, cur, check)?;
                }
                return Ok(self.unchanged_report(art, cur));
            }
        }
        let plan = self.plan(art, current.as_ref(), opts.force)?;
        if plan.files.is_empty() {
            return Err(all_skipped(art, plan.skips));
        }
        let report = self.write(art, &plan, current.as_ref(), &mut state, opts)?;
        Ok(report)
    }

    /// Records `check`, a boot check of the artifact installed as `name`/`version` on
    /// `kernel` with `artifact_key`, in that entry of the state (nothing is written to
    /// the kernel tree). True when the state changed; false when it already said so,
    /// or when that artifact is not what is installed.
    pub fn record_boot_check(
        &self,
        _lock: &HostLock,
        name: &ModuleName,
        version: &ModuleVersion,
        kernel: &KernelRelease,
        artifact_key: &str,
        check: &BootCheck,
    ) -> Result<bool, HostError> {
        self.recover()?;
        let mut state = State::load(&self.paths.state_file())?;
        let Some(cur) = state
            .find(name, kernel)
            .filter(|e| &e.version == version && e.artifact_key == artifact_key)
            .cloned()
        else {
            return Ok(false);
        };
        self.put_boot_check(&mut state, &cur, check)
    }

    /// Sets `cur`'s boot check in `state` and saves it, unless it is already recorded.
    fn put_boot_check(
        &self,
        state: &mut State,
        cur: &Entry,
        check: &BootCheck,
    ) -> Result<bool, HostError> {
        let record = BootCheckRecord::from_wire(check);
        if cur.boot_check.as_ref() == Some(&record) {
            return Ok(false);
        }
        state.put(Entry {
            boot_check: Some(record),
            ..cur.clone()
        });
        // A state-only change: no journal (no file of the kernel tree changes), and the
        // state file is replaced atomically like at every commit.
        state.save(&self.paths.state_file(), &new_txn_id())?;
        Ok(true)
    }

    /// True when every recorded file of `entry` is on disk with its recorded sha256.
    pub(crate) fn files_intact(&self, entry: &Entry) -> Result<bool, HostError> {
        let tree = self.paths.kernel_tree(&entry.kernel);
        for f in &entry.files {
            if fsx::file_sha256(&tree.join(f.rel_path()))?.as_deref() != Some(f.sha256.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs the sanity check on every file.
    fn plan<'a>(
        &self,
        art: &'a VerifiedArtifact,
        current: Option<&Entry>,
        force: bool,
    ) -> Result<Plan<'a>, HostError> {
        let kernel = &art.manifest.kernel;
        let tree = self.paths.kernel_tree(kernel);
        let own: Vec<PathBuf> = current
            .map(|e| e.files.iter().map(|f| tree.join(f.rel_path())).collect())
            .unwrap_or_default();
        let mut plan = Plan::default();
        for pair in &art.files {
            let (file, data) = pair;
            let candidate = Candidate {
                file: &file.file,
                modinfo: &file.modinfo,
                data,
            };
            let verdict = sanity::check(&self.paths, kernel, &candidate, &own, force)?;
            plan.warnings.extend(verdict.warning);
            for o in verdict.originals {
                if !plan.originals.contains(&o) {
                    plan.originals.push(o);
                }
            }
            match verdict.skip {
                Some(skip) => plan.skips.push((file.file.clone(), skip)),
                None => plan.files.push(pair),
            }
        }
        // A same-named file at one of our destinations is replaced, so it is no original.
        let dests: Vec<PathBuf> = plan
            .files
            .iter()
            .map(|(f, _)| dest_path(&tree, f))
            .collect();
        plan.originals.retain(|o| !dests.contains(o));
        Ok(plan)
    }

    /// The transaction: write the planned files, drop our files the new entry no longer
    /// lists, depmod, record.
    fn write(
        &self,
        art: &VerifiedArtifact,
        plan: &Plan<'_>,
        current: Option<&Entry>,
        state: &mut State,
        opts: &InstallOptions,
    ) -> Result<InstallReport, HostError> {
        let m = &art.manifest;
        let tree = self.paths.kernel_tree(&m.kernel);
        let dest = |f: &ArtifactFile| dest_path(&tree, f);
        let mut steps: Vec<Step> = plan
            .files
            .iter()
            .map(|(f, _)| Step::write(dest(f), f.sha256.clone(), fsx::exists(&dest(f))))
            .collect();
        let new_paths: Vec<PathBuf> = steps.iter().map(|s| s.dest.clone()).collect();
        for old in current.iter().flat_map(|e| &e.files) {
            let path = tree.join(old.rel_path());
            if !new_paths.contains(&path) && fsx::exists(&path) {
                steps.push(Step::remove(path));
            }
        }
        let txn = Txn {
            journal: Journal {
                txn: new_txn_id(),
                module: m.name.clone(),
                kernel: m.kernel.clone(),
                steps,
            },
            contents: plan.files.iter().map(|(_, d)| d.as_slice()).collect(),
            run_depmod: opts.run_depmod,
            depmod_failure_aborts: true,
        };
        let entry = self.new_entry(art, plan, &tree);
        let depmod = self.execute(&txn, state, |s| s.put(entry))?;
        let installed: Vec<String> = plan.files.iter().map(|(f, _)| f.file.clone()).collect();
        Ok(InstallReport {
            name: m.name.clone(),
            version: m.version.clone(),
            kernel: m.kernel.clone(),
            modprobe: self.maybe_modprobe(&m.kernel, plan, opts),
            installed,
            skipped: plan
                .skips
                .iter()
                .map(|(f, s)| (f.clone(), s.message.clone()))
                .collect(),
            unchanged: false,
            originals: plan.originals.clone(),
            replaced_version: current
                .map(|e| e.version.clone())
                .filter(|v| v != &m.version),
            depmod,
            warnings: plan.warnings.clone(),
        })
    }

    /// The state entry recording this install.
    fn new_entry(&self, art: &VerifiedArtifact, plan: &Plan<'_>, tree: &Path) -> Entry {
        let m = &art.manifest;
        let files = plan
            .files
            .iter()
            .map(|(f, _)| {
                let info = VerInfo::from_modinfo(&f.modinfo);
                FileRecord {
                    file: f.file.clone(),
                    dest_location: f.dest_location.clone(),
                    sha256: f.sha256.clone(),
                    version: info.version,
                    srcversion: info.srcversion,
                }
            })
            .collect();
        let originals = plan
            .originals
            .iter()
            .filter_map(|o| o.strip_prefix(tree).ok().map(Path::to_path_buf))
            .collect();
        Entry {
            name: m.name.clone(),
            version: m.version.clone(),
            kernel: m.kernel.clone(),
            arch: m.arch.clone(),
            artifact_key: m.key.as_str().to_owned(),
            files,
            originals,
            installed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            boot_check: m.boot_check.as_ref().map(BootCheckRecord::from_wire),
            signing: Some(SigningRecord::of(m, art.manifest_key.clone())),
        }
    }

    /// `modprobe -a` the installed modules when asked and `kernel` is the running one.
    fn maybe_modprobe(
        &self,
        kernel: &KernelRelease,
        plan: &Plan<'_>,
        opts: &InstallOptions,
    ) -> ModprobeOutcome {
        if !opts.modprobe || opts.running.as_ref() != Some(kernel) {
            return ModprobeOutcome::NotRun;
        }
        let names = plan
            .files
            .iter()
            .map(|(f, _)| f.file.trim_end_matches(".ko").to_owned())
            .collect();
        tools::modprobe(&self.paths, names).unwrap_or_else(|e| ModprobeOutcome::Failed {
            status: "not started".to_owned(),
            stderr_tail: e.to_string(),
        })
    }

    fn unchanged_report(&self, art: &VerifiedArtifact, cur: &Entry) -> InstallReport {
        let tree = self.paths.kernel_tree(&cur.kernel);
        InstallReport {
            name: art.manifest.name.clone(),
            version: art.manifest.version.clone(),
            kernel: cur.kernel.clone(),
            installed: Vec::new(),
            skipped: Vec::new(),
            unchanged: true,
            originals: cur.originals.iter().map(|o| tree.join(o)).collect(),
            replaced_version: None,
            depmod: DepmodOutcome::Skipped {
                reason: "unchanged".to_owned(),
            },
            modprobe: ModprobeOutcome::NotRun,
            warnings: Vec::new(),
        }
    }
}

/// `<tree><dest_location>/<file>`.
fn dest_path(tree: &Path, f: &ArtifactFile) -> PathBuf {
    tree.join(f.dest_location.trim_start_matches('/'))
        .join(&f.file)
}

/// The error when the sanity check skipped every file: "not newer" wins over "same".
fn all_skipped(art: &VerifiedArtifact, skips: Vec<(String, Skip)>) -> HostError {
    let m = &art.manifest;
    let newer = skips.iter().position(|(_, s)| s.newer).unwrap_or(0);
    let Some((_, skip)) = skips.into_iter().nth(newer) else {
        return HostError::BadManifest {
            module: m.name.clone(),
            kernel: m.kernel.clone(),
            reason: "it lists no files".to_owned(),
        };
    };
    if skip.newer {
        HostError::NotNewer {
            module: m.name.clone(),
            kernel: m.kernel.clone(),
            existing_version: skip.existing_version,
            new_version: skip.new_version,
            message: skip.message.into(),
        }
    } else {
        HostError::AlreadyInstalled {
            module: m.name.clone(),
            kernel: m.kernel.clone(),
            version: skip.existing_version,
            path: skip.existing,
            message: skip.message.into(),
        }
    }
}
