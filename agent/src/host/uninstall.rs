//! `Host::uninstall`: removing what this agent installed.

use std::path::PathBuf;

use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use serde::Serialize;

use super::journal::{new_txn_id, Journal, Step};
use super::state::{Entry, State};
use super::txn::Txn;
use super::{fsx, DepmodOutcome, Host, HostError, HostLock};

/// What one uninstall did on one kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UninstallReport {
    pub kernel: KernelRelease,
    /// Files deleted (absolute paths). Recorded files already gone are not listed.
    pub removed: Vec<PathBuf>,
    /// depmod reindexes the tree so any original module is used again. A failure is
    /// reported here: the files are gone either way.
    pub depmod: DepmodOutcome,
}

impl Host {
    /// Removes the files recorded for `name`/`version` on `kernel` (or on every kernel
    /// with `None`), deletes their state entries and reruns depmod.
    ///
    /// Original modules were never moved, so nothing is restored.
    /// Errors: [`HostError::NotInstalled`] when nothing matches.
    pub fn uninstall(
        &self,
        _lock: &HostLock,
        name: &ModuleName,
        version: &ModuleVersion,
        kernel: Option<&KernelRelease>,
    ) -> Result<Vec<UninstallReport>, HostError> {
        self.recover()?;
        let mut state = State::load(&self.paths.state_file())?;
        let targets: Vec<Entry> = state
            .entries
            .iter()
            .filter(|e| &e.name == name && &e.version == version)
            .filter(|e| kernel.is_none_or(|k| &e.kernel == k))
            .cloned()
            .collect();
        if targets.is_empty() {
            return Err(HostError::NotInstalled {
                module: name.clone(),
                version: version.clone(),
                kernel: kernel.cloned(),
            });
        }
        targets
            .iter()
            .map(|entry| self.uninstall_one(entry, &mut state))
            .collect()
    }

    /// One kernel's entry: move the files out, depmod, drop the entry, delete the files.
    fn uninstall_one(
        &self,
        entry: &Entry,
        state: &mut State,
    ) -> Result<UninstallReport, HostError> {
        let tree = self.paths.kernel_tree(&entry.kernel);
        let removed: Vec<PathBuf> = entry
            .files
            .iter()
            .map(|f| tree.join(f.rel_path()))
            .filter(|p| fsx::exists(p))
            .collect();
        let txn = Txn {
            journal: Journal {
                txn: new_txn_id(),
                module: entry.name.clone(),
                kernel: entry.kernel.clone(),
                steps: removed.iter().cloned().map(Step::remove).collect(),
            },
            contents: Vec::new(),
            run_depmod: true,
            depmod_failure_aborts: false,
        };
        let depmod = self.execute(&txn, state, |s| s.remove(&entry.name, &entry.kernel))?;
        Ok(UninstallReport {
            kernel: entry.kernel.clone(),
            removed,
            depmod,
        })
    }
}
