//! Running one journalled transaction to its commit (see `journal` for the protocol).

use super::journal::{checkpoint, Journal};
use super::state::State;
use super::{tools, DepmodOutcome, Host, HostError};

/// What a transaction does besides its file steps.
pub(crate) struct Txn<'a> {
    pub journal: Journal,
    /// New bytes of each write step, in step order.
    pub contents: Vec<&'a [u8]>,
    /// Run depmod between the file steps and the commit.
    pub run_depmod: bool,
    /// A depmod failure rolls everything back (install) instead of being reported (uninstall).
    pub depmod_failure_aborts: bool,
}

impl Host {
    /// Journal, file steps, depmod, commit (`state` edited by `commit`, then saved),
    /// clean-up. Any failure before the commit rolls the files back.
    pub(crate) fn execute(
        &self,
        txn: &Txn<'_>,
        state: &mut State,
        commit: impl FnOnce(&mut State),
    ) -> Result<DepmodOutcome, HostError> {
        let journal_path = self.paths.journal_file();
        txn.journal.save(&journal_path)?;
        checkpoint("journal written")?;
        let mut indexed = false;
        let depmod = match self.apply_and_index(txn, &mut indexed) {
            Ok(d) => d,
            Err(e) => return Err(self.abort(txn, e, indexed)),
        };
        commit(state);
        let state_path = self.paths.state_file();
        if let Err(e) = state.save(&state_path, &txn.journal.txn) {
            // The rename may have happened before a later fsync failed: trust the disk.
            let on_disk = State::load(&state_path).ok().and_then(|s| s.last_txn);
            if on_disk.as_deref() != Some(txn.journal.txn.as_str()) {
                return Err(self.abort(txn, e, indexed));
            }
        }
        checkpoint("state committed")?;
        // Committed: a failed clean-up is finished by recovery at the next lock.
        txn.journal.finish(&journal_path)?;
        Ok(depmod)
    }

    /// The file steps, then depmod.
    fn apply_and_index(
        &self,
        txn: &Txn<'_>,
        indexed: &mut bool,
    ) -> Result<DepmodOutcome, HostError> {
        txn.journal.apply(&txn.contents)?;
        if !txn.run_depmod {
            return Ok(DepmodOutcome::Skipped {
                reason: "disabled (--no-depmod)".to_owned(),
            });
        }
        let kernel = &txn.journal.kernel;
        let outcome = tools::depmod(&self.paths, kernel)?;
        match &outcome {
            DepmodOutcome::Failed {
                status,
                stderr_tail,
            } if txn.depmod_failure_aborts => {
                return Err(HostError::Depmod {
                    kernel: kernel.clone(),
                    status: status.clone(),
                    stderr_tail: stderr_tail.clone(),
                })
            }
            DepmodOutcome::Ran => *indexed = true,
            _ => {}
        }
        checkpoint("depmod ran")?;
        Ok(outcome)
    }

    /// Rolls the files back after `err`; reindexes if depmod had already seen the new files.
    fn abort(&self, txn: &Txn<'_>, err: HostError, indexed: bool) -> HostError {
        #[cfg(test)]
        if matches!(err, HostError::Killed { .. }) {
            return err; // a killed process runs no clean-up
        }
        if txn.journal.roll_back(&self.paths.journal_file()).is_err() {
            // The journal stays, and recovery at the next lock retries the roll-back;
            // the error worth reporting is the one that caused the abort.
            return err;
        }
        if indexed {
            // Best effort: the error being returned is the one that matters.
            let _ = tools::depmod(&self.paths, &txn.journal.kernel);
        }
        err
    }
}
