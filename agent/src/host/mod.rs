//! The host side of the agent: installing verified modules into `/lib/modules` with
//! DKMS's semantics, and reporting what is installed.
//!
//! # Design
//!
//! Every host path hangs off a configurable root ([`HostPaths`]), so the whole module
//! runs against a temporary directory in tests with the real `depmod -b ROOT`. The
//! external tools (`depmod`, `modprobe`, `modinfo`) are run by absolute path.
//!
//! State changes happen only while holding [`HostLock`] (an exclusive `flock` on
//! `<state_dir>/lock`), and each install or uninstall is one journalled transaction
//! (see `journal`): a process killed at any point leaves every destination file either
//! old or new, and the next [`Host::lock`] finishes or rolls back what was left.
//!
//! What is installed is recorded in `<state_dir>/state.json` (see `state`), which plays
//! the role of DKMS's `/var/lib/dkms` tree: one entry per module and kernel.
//!
//! # Limits
//!
//! Only uncompressed `.ko` artifacts are installed (existing compressed modules in the
//! kernel tree are read with `modinfo` for the sanity check). Original modules are never
//! moved, as DKMS does on Debian and Ubuntu, so there is nothing to restore on uninstall.

pub mod bootloader;
mod error;
mod fsx;
mod install;
mod journal;
mod sanity;
pub mod secureboot;
mod state;
mod status;
mod tools;
mod txn;
mod uninstall;
mod verify;

#[cfg(test)]
mod tests;

/// The fixtures of the integration tests, shared with the unit tests.
#[cfg(test)]
#[path = "../../tests/host_support/mod.rs"]
pub(crate) mod test_support;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use kmodforge_api::dkms::version_cmp;
use kmodforge_api::names::{KernelRelease, ModuleName};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

pub use error::HostError;
pub use install::{InstallOptions, InstallReport};
pub use journal::RecoveryAction;
pub use state::{BootCheckRecord, SigningRecord};
pub use status::{InstalledRecord, LoadedInfo, StatusEntry};
pub use tools::{DepmodOutcome, ModprobeOutcome};
pub use uninstall::UninstallReport;
pub use verify::VerifiedArtifact;

use journal::Journal;
use state::State;

/// Every host path the agent touches, already joined under the configured root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostPaths {
    /// `/` in production, a temp dir in tests.
    pub root: PathBuf,
    /// `<root>/lib/modules`. depmod is run with `-b <root>`, so it must be under root.
    pub modules_dir: PathBuf,
    /// `<root>/boot`: `vmlinuz-<krel>` marks an installed kernel, `System.map-<krel>`
    /// is passed to depmod with `-F`.
    pub boot_dir: PathBuf,
    /// `<root>/var/lib/kmodforge-agent`: `lock`, `state.json`, `txn.json`.
    pub state_dir: PathBuf,
    /// `<root>/sys/module`: loaded modules, for `status`; `module/parameters/sig_enforce`.
    pub sys_module: PathBuf,
    /// `<root>/sys/firmware/efi/efivars`: UEFI variables (`SecureBoot-...`).
    pub efivars: PathBuf,
    /// `<root>/sys/kernel/security/lockdown`: the kernel's lockdown mode.
    pub lockdown: PathBuf,
    /// The real mokutil binary (not under root). Default `/usr/bin/mokutil`.
    pub mokutil: PathBuf,
    /// GRUB's `grub-editenv` (not under root; it edits `<boot_dir>/grub/grubenv`).
    /// Default `/usr/bin/grub-editenv`.
    pub grub_editenv: PathBuf,
    /// The real depmod binary (not under root). Default `/sbin/depmod`.
    pub depmod: PathBuf,
    /// The real modprobe binary (not under root). Default `/sbin/modprobe`.
    pub modprobe: PathBuf,
    /// The real modinfo binary (not under root), used for compressed modules only.
    /// Default `/sbin/modinfo`.
    pub modinfo: PathBuf,
}

impl HostPaths {
    /// The default layout under `root`.
    pub fn under(root: &Path) -> Self {
        HostPaths {
            root: root.to_owned(),
            modules_dir: root.join("lib/modules"),
            boot_dir: root.join("boot"),
            state_dir: root.join("var/lib/kmodforge-agent"),
            sys_module: root.join("sys/module"),
            efivars: root.join("sys/firmware/efi/efivars"),
            lockdown: root.join("sys/kernel/security/lockdown"),
            mokutil: PathBuf::from("/usr/bin/mokutil"),
            grub_editenv: PathBuf::from("/usr/bin/grub-editenv"),
            depmod: PathBuf::from("/sbin/depmod"),
            modprobe: PathBuf::from("/sbin/modprobe"),
            modinfo: PathBuf::from("/sbin/modinfo"),
        }
    }

    /// `<modules_dir>/<krel>`.
    pub fn kernel_tree(&self, krel: &KernelRelease) -> PathBuf {
        self.modules_dir.join(krel.as_str())
    }

    /// `<state_dir>/state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// `<state_dir>/txn.json`, present only while a transaction is under way.
    pub fn journal_file(&self) -> PathBuf {
        self.state_dir.join("txn.json")
    }

    /// `<state_dir>/lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    /// True when root is `/`: tools then run without `-b`/`-d`.
    pub fn is_system_root(&self) -> bool {
        self.root == Path::new("/")
    }
}

/// The host: installs, uninstalls and reports modules under [`HostPaths`].
#[derive(Clone, Debug)]
pub struct Host {
    pub paths: HostPaths,
}

/// Proof of holding the exclusive lock; released on drop.
#[derive(Debug)]
pub struct HostLock {
    _flock: Flock<File>,
    path: PathBuf,
    recovered: Option<Recovery>,
}

impl HostLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `lock()` did with a transaction left by an interrupted run, if there was one.
    pub fn recovered(&self) -> Option<&Recovery> {
        self.recovered.as_ref()
    }
}

/// A leftover transaction that [`Host::lock`] finished or rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recovery {
    pub module: ModuleName,
    pub kernel: KernelRelease,
    pub action: RecoveryAction,
    /// depmod rerun after a roll-back, so the index matches the restored files.
    pub depmod: Option<DepmodOutcome>,
}

impl Host {
    pub fn new(paths: HostPaths) -> Self {
        Host { paths }
    }

    /// Takes an exclusive non-blocking `flock` on `<state_dir>/lock` (created if missing),
    /// then finishes or rolls back a transaction an interrupted run left behind.
    ///
    /// Errors: [`HostError::LockHeld`] if another run holds the lock.
    pub fn lock(&self) -> Result<HostLock, HostError> {
        let dir = &self.paths.state_dir;
        std::fs::create_dir_all(dir).map_err(HostError::io(dir))?;
        let path = self.paths.lock_file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(HostError::io(&path))?;
        let flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(HostError::LockHeld { path }),
            Err((_, errno)) => return Err(HostError::io(&path)(errno.into())),
        };
        let recovered = self.recover()?;
        Ok(HostLock {
            _flock: flock,
            path,
            recovered,
        })
    }

    /// Finishes (committed) or rolls back (not committed) a leftover journal.
    fn recover(&self) -> Result<Option<Recovery>, HostError> {
        let journal_path = self.paths.journal_file();
        let Some(journal) = Journal::load(&journal_path)? else {
            return Ok(None);
        };
        let state = State::load(&self.paths.state_file())?;
        let (action, depmod) = if state.last_txn.as_deref() == Some(journal.txn.as_str()) {
            journal.finish(&journal_path)?;
            (RecoveryAction::Completed, None)
        } else {
            journal.roll_back(&journal_path)?;
            let depmod = tools::depmod(&self.paths, &journal.kernel)?;
            (RecoveryAction::RolledBack, Some(depmod))
        };
        Ok(Some(Recovery {
            module: journal.module,
            kernel: journal.kernel,
            action,
            depmod,
        }))
    }

    /// Kernels to act on by default: `running` plus every `<modules_dir>/<KREL>` that has
    /// a `modules.dep` or a `<boot_dir>/vmlinuz-<KREL>`, in DKMS version order, deduplicated.
    pub fn default_kernels(&self, running: Option<&KernelRelease>) -> Vec<KernelRelease> {
        let mut kernels: Vec<KernelRelease> = running.into_iter().cloned().collect();
        let entries = std::fs::read_dir(&self.paths.modules_dir)
            .into_iter()
            .flatten();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(krel) = KernelRelease::parse(&name.to_string_lossy()) else {
                continue;
            };
            let has_dep = entry.path().join("modules.dep").is_file();
            let has_image = self
                .paths
                .boot_dir
                .join(format!("vmlinuz-{krel}"))
                .is_file();
            if has_dep || has_image {
                kernels.push(krel);
            }
        }
        kernels.sort_by(|a, b| version_cmp(a.as_str(), b.as_str()).then_with(|| a.cmp(b)));
        kernels.dedup();
        kernels
    }

    /// True when `<modules_dir>/<krel>` exists (DKMS: install requires it).
    pub fn has_kernel_tree(&self, krel: &KernelRelease) -> bool {
        self.paths.kernel_tree(krel).is_dir()
    }
}
