//! The host side's one error type.
//!
//! Every variant names what it was doing to (module, kernel, path), so the CLI can print
//! one line per failure and map [`HostError::kind`] to an exit code.

use std::path::PathBuf;

use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Another run holds `<state_dir>/lock`.
    #[error("another kmodforge-agent run holds the lock {path}")]
    LockHeld { path: PathBuf },

    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A downloaded file's sha256 (or size) is not what the manifest says.
    #[error("{module} on {kernel}: {file}: sha256 mismatch: manifest says {expected}, the download is {got}")]
    Sha256Mismatch {
        module: ModuleName,
        kernel: KernelRelease,
        file: String,
        // Boxed strings keep `HostError` under clippy's large-error threshold.
        expected: Box<str>,
        got: Box<str>,
    },

    /// A `.ko`'s vermagic does not name the target kernel.
    #[error("{module} on {kernel}: {file}: vermagic {vermagic:?} is not for kernel {kernel}")]
    WrongVermagic {
        module: ModuleName,
        kernel: KernelRelease,
        file: String,
        vermagic: String,
    },

    /// A file is not a kernel module (not ELF, no `.modinfo`, or not named `*.ko`).
    #[error("{module} on {kernel}: {file}: not a kernel module: {reason}")]
    NotAModule {
        module: ModuleName,
        kernel: KernelRelease,
        file: String,
        reason: String,
    },

    /// The manifest lists a file that was not supplied.
    #[error("{module} on {kernel}: {file}: listed in the manifest but not downloaded")]
    FileMissing {
        module: ModuleName,
        kernel: KernelRelease,
        file: String,
    },

    /// The manifest itself is unusable (wrong kernel, unsafe destination, duplicate files).
    #[error("{module} on {kernel}: bad manifest: {reason}")]
    BadManifest {
        module: ModuleName,
        kernel: KernelRelease,
        reason: String,
    },

    /// The server booted the artifact's kernel with its modules and the check failed:
    /// such an artifact is never installed.
    #[error("{module} on {kernel}: boot check failed: {reason}")]
    BootCheckFailed {
        module: ModuleName,
        kernel: KernelRelease,
        reason: String,
    },

    /// `<modules_dir>/<kernel>` does not exist (DKMS exit 6).
    #[error("{kernel}: {path} does not exist: cannot install onto a kernel that is not installed")]
    NoKernelTree {
        kernel: KernelRelease,
        path: PathBuf,
    },

    /// The version sanity check skipped every file: an existing module is newer.
    #[error("{module} on {kernel}: not installed: {message}")]
    NotNewer {
        module: ModuleName,
        kernel: KernelRelease,
        existing_version: Option<String>,
        new_version: Option<String>,
        /// DKMS's message, e.g. "Module version 1.0 for m.ko is not newer than …".
        message: Box<str>,
    },

    /// The version sanity check skipped every file: the same version and srcversion is there.
    #[error("{module} on {kernel}: not installed: {message}")]
    AlreadyInstalled {
        module: ModuleName,
        kernel: KernelRelease,
        version: Option<String>,
        path: PathBuf,
        /// DKMS's message, e.g. "Module m.ko already installed at version 1.0".
        message: Box<str>,
    },

    /// `uninstall` found nothing recorded for this module/version (on this kernel).
    #[error("{module}/{version}: not installed{}", kernel.as_ref().map(|k| format!(" on {k}")).unwrap_or_default())]
    NotInstalled {
        module: ModuleName,
        version: ModuleVersion,
        kernel: Option<KernelRelease>,
    },

    /// depmod failed after an install; the install was rolled back (DKMS exit 6).
    #[error("{kernel}: depmod failed ({status}); the install was rolled back: {stderr_tail}")]
    Depmod {
        kernel: KernelRelease,
        status: String,
        stderr_tail: String,
    },

    /// The state file or the transaction journal is unreadable or inconsistent.
    #[error("{path}: bad agent state: {reason}")]
    State { path: PathBuf, reason: String },

    /// Test-only: a simulated kill at a fault-injection point (no clean-up runs).
    #[cfg(test)]
    #[error("simulated kill at {at}")]
    Killed { at: &'static str },
}

impl HostError {
    /// A stable snake_case name for the failure, for exit-code mapping and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::LockHeld { .. } => "lock_held",
            HostError::Io { .. } => "io",
            HostError::Sha256Mismatch { .. } => "sha256_mismatch",
            HostError::WrongVermagic { .. } => "wrong_vermagic",
            HostError::NotAModule { .. } => "not_a_module",
            HostError::FileMissing { .. } => "file_missing",
            HostError::BadManifest { .. } => "bad_manifest",
            HostError::BootCheckFailed { .. } => "boot_check_failed",
            HostError::NoKernelTree { .. } => "no_kernel_tree",
            HostError::NotNewer { .. } => "not_newer",
            HostError::AlreadyInstalled { .. } => "already_installed",
            HostError::NotInstalled { .. } => "not_installed",
            HostError::Depmod { .. } => "depmod_failed",
            HostError::State { .. } => "state",
            #[cfg(test)]
            HostError::Killed { .. } => "killed",
        }
    }

    /// True for failures of the artifact itself (verification), as opposed to the host.
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            HostError::Sha256Mismatch { .. }
                | HostError::WrongVermagic { .. }
                | HostError::NotAModule { .. }
                | HostError::FileMissing { .. }
                | HostError::BadManifest { .. }
                | HostError::BootCheckFailed { .. }
        )
    }

    /// Wraps an IO error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HostError {
        let path = path.into();
        move |source| HostError::Io { path, source }
    }
}
