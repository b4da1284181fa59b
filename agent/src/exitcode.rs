//! The agent's documented exit codes (table in `agent/README.md`).
//!
//! A run that handles several (module, kernel) pairs exits with the *worst*
//! outcome: [`Exit::severity`] orders them, so a lock held or a broken config
//! outranks one module's failed build, and a failed install outranks a skip.

use std::process::ExitCode;

/// One documented exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exit {
    /// 0: everything asked for is installed (or was already, or does not apply).
    Ok,
    /// 1: an unexpected local error (I/O on the host, state file unreadable, ...).
    Internal,
    /// 2: bad command line or configuration.
    Usage,
    /// 3: the server could not be reached (connect error, timeout, 5xx after retries).
    Unreachable,
    /// 4: the build failed (compile error, wrong vermagic, timeout, ...), or the
    /// server refused the request (unknown module or kernel).
    BuildFailed,
    /// 5: a download did not match its manifest (sha256, size) or the `.ko`'s
    /// vermagic is not the target kernel's; or the artifact's boot check failed,
    /// or none passed while one is required.
    Verification,
    /// 6: installing (or uninstalling) on the host failed, depmod included.
    InstallFailed,
    /// 7: another agent run holds the lock.
    LockHeld,
    /// 8: DKMS's version sanity check skipped the install (an existing module is
    /// newer or identical); `--force` overrides.
    NotNewer,
    /// 9: with `trusted_keys` pinned, the manifest is unsigned, signed by another
    /// key, badly signed, about another module/version/kernel/arch, or a file
    /// does not match it.
    Untrusted,
    /// 10: this host enforces module signatures (Secure Boot, lockdown,
    /// sig_enforce) and the artifact is unsigned or its signing key is not
    /// enrolled (`kmodforge-agent mok enroll`).
    NotEnrolled,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Internal => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::BuildFailed => 4,
            Exit::Verification => 5,
            Exit::InstallFailed => 6,
            Exit::LockHeld => 7,
            Exit::NotNewer => 8,
            Exit::Untrusted => 9,
            Exit::NotEnrolled => 10,
        }
    }

    /// Which outcome wins when a run has several: higher is worse. A skip by the
    /// version sanity check is the mildest failure; a broken host (install, I/O)
    /// is worse than a remote problem, because it needs an operator on the host.
    pub fn severity(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::NotNewer => 1,
            Exit::BuildFailed => 2,
            Exit::Unreachable => 3,
            Exit::NotEnrolled => 4,
            Exit::Verification => 5,
            Exit::Untrusted => 6,
            Exit::InstallFailed => 7,
            Exit::Internal => 8,
            Exit::LockHeld => 9,
            Exit::Usage => 10,
        }
    }

    /// The worse of two outcomes.
    pub fn worst(self, other: Exit) -> Exit {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_worst_is_symmetric() {
        let all = [
            Exit::Ok,
            Exit::Internal,
            Exit::Usage,
            Exit::Unreachable,
            Exit::BuildFailed,
            Exit::Verification,
            Exit::InstallFailed,
            Exit::LockHeld,
            Exit::NotNewer,
            Exit::Untrusted,
            Exit::NotEnrolled,
        ];
        let mut codes: Vec<u8> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for a in all {
            for b in all {
                assert_eq!(a.worst(b), b.worst(a), "{a:?} vs {b:?}");
            }
        }
        assert_eq!(Exit::NotNewer.worst(Exit::BuildFailed), Exit::BuildFailed);
        assert_eq!(Exit::Ok.worst(Exit::NotNewer), Exit::NotNewer);
    }
}
