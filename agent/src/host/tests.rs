//! Crash-consistency tests: a simulated kill at every checkpoint of a transaction, then
//! recovery by the next `lock()`. Uses the real depmod on temp roots.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kmodforge_api::names::{ModuleName, ModuleVersion};

use super::journal::fault;
use super::test_support::*;
use super::*;

type Snapshot = BTreeMap<PathBuf, Vec<u8>>;

/// What a run looks like from outside: the module files and the status lines.
#[derive(Debug, PartialEq)]
struct View {
    files: Snapshot,
    status: Vec<String>,
}

fn host(root: &Path) -> Host {
    Host::new(HostPaths::under(root))
}

fn view(root: &Path) -> View {
    let status = host(root).status(None).unwrap();
    assert!(
        status.iter().all(|s| !s.differs && !s.files_missing),
        "{status:?}"
    );
    View {
        files: snapshot(&root.join("lib/modules")),
        status: status.iter().map(StatusEntry::dkms_line).collect(),
    }
}

fn artifact(version: &str, files: &[(&str, &[u8])]) -> VerifiedArtifact {
    let m = manifest("kmf_hello", version, K1, files);
    let owned = files
        .iter()
        .map(|(f, d)| (f.to_string(), d.to_vec()))
        .collect();
    VerifiedArtifact::verify(m, owned, &krel(K1)).unwrap()
}

/// Kernel K1 with an original kmf_hello 0.1, plus what `prepare` installs.
fn fresh_root(prepare: &dyn Fn(&Host)) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    add_kernel(root.path(), K1);
    let original = Ko::new("kmf_hello", "0.1", "ORIG", K1).build();
    add_original(
        root.path(),
        K1,
        "kernel/drivers/misc/kmf_hello.ko",
        &original,
    );
    prepare(&host(root.path()));
    root
}

/// Between a kill and recovery, every path holds its old or its new content, and
/// paths present both before and after are never missing.
fn assert_never_half_written(root: &Path, old: &Snapshot, new: &Snapshot) {
    let now = snapshot(&root.join("lib/modules"));
    for (path, data) in now
        .iter()
        .filter(|(p, _)| !p.to_string_lossy().contains(".kmodforge-"))
    {
        assert!(
            old.get(path) == Some(data) || new.get(path) == Some(data),
            "{} holds neither its old nor its new content",
            path.display()
        );
    }
    for path in old.keys().filter(|p| new.contains_key(*p)) {
        assert!(now.contains_key(path), "{} went missing", path.display());
    }
}

/// Runs `act` once undisturbed to learn the new view, then once per checkpoint with a
/// simulated kill there, checking the tree mid-way and after recovery. Returns the
/// recovery actions seen.
fn kill_at_every_step(
    prepare: &dyn Fn(&Host),
    act: &dyn Fn(&Host, &HostLock) -> Result<(), HostError>,
) -> Vec<RecoveryAction> {
    let reference = fresh_root(prepare);
    let old = view(reference.path());
    let h = host(reference.path());
    act(&h, &h.lock().unwrap()).unwrap();
    let new = view(reference.path());
    assert_ne!(old, new);

    let mut actions = Vec::new();
    for k in 1.. {
        let root = fresh_root(prepare);
        let h = host(root.path());
        let lock = h.lock().unwrap();
        fault::arm(Some(k));
        let result = act(&h, &lock);
        let passed = fault::passed();
        fault::arm(None);
        drop(lock);
        match result {
            Ok(()) => {
                assert!(k > 3, "too few checkpoints: {k}");
                assert_eq!(passed, k - 1, "every checkpoint was passed");
                assert_eq!(view(root.path()), new);
                break;
            }
            Err(HostError::Killed { .. }) => assert_eq!(passed, k),
            Err(e) => panic!("kill at {k}: unexpected error {e}"),
        }
        assert_never_half_written(root.path(), &old.files, &new.files);
        let lock = h.lock().unwrap();
        let recovery = lock
            .recovered()
            .unwrap_or_else(|| panic!("kill at {k}: no journal left"))
            .clone();
        let after = view(root.path());
        assert!(after == old || after == new, "kill at {k}: {after:?}");
        let expected = if after == new {
            RecoveryAction::Completed
        } else {
            RecoveryAction::RolledBack
        };
        assert_eq!(recovery.action, expected, "kill at {k}");
        assert!(
            leftovers(root.path()).is_empty(),
            "kill at {k}: {:?}",
            leftovers(root.path())
        );
        assert!(!h.paths.journal_file().exists());
        // depmod's index matches the files again: ours is listed iff installed.
        let listed = modules_dep(root.path(), K1).contains("updates/dkms/kmf_extra.ko:");
        assert_eq!(
            listed,
            after
                .files
                .contains_key(Path::new("6.1.0-47-amd64/updates/dkms/kmf_extra.ko"))
        );
        actions.push(recovery.action);
    }
    actions
}

struct Kos {
    hello1: Vec<u8>,
    extra1: Vec<u8>,
    hello2: Vec<u8>,
}

fn kos() -> Kos {
    Kos {
        hello1: Ko::new("kmf_hello", "1.0", "H1", K1).build(),
        extra1: Ko::new("kmf_extra", "1.0", "E1", K1).build(),
        hello2: Ko::new("kmf_hello", "2.0", "H2", K1).build(),
    }
}

fn install_with(h: &Host, lock: &HostLock, art: &VerifiedArtifact) -> Result<(), HostError> {
    h.install(lock, art, &InstallOptions::default()).map(|_| ())
}

#[test]
fn killed_first_install_leaves_old_or_new() {
    let k = kos();
    let v1 = artifact(
        "1.0",
        &[("kmf_hello.ko", &k.hello1), ("kmf_extra.ko", &k.extra1)],
    );
    let actions = kill_at_every_step(&|_| {}, &|h, l| install_with(h, l, &v1));
    assert!(
        actions.contains(&RecoveryAction::RolledBack)
            && actions.contains(&RecoveryAction::Completed)
    );
}

#[test]
fn killed_upgrade_leaves_old_or_new() {
    // v1 has two files, v2 one: the upgrade replaces one file and removes the other.
    let k = kos();
    let v1 = artifact(
        "1.0",
        &[("kmf_hello.ko", &k.hello1), ("kmf_extra.ko", &k.extra1)],
    );
    let v2 = artifact("2.0", &[("kmf_hello.ko", &k.hello2)]);
    let prepare = |h: &Host| install_with(h, &h.lock().unwrap(), &v1).unwrap();
    let actions = kill_at_every_step(&prepare, &|h, l| install_with(h, l, &v2));
    assert!(
        actions.contains(&RecoveryAction::RolledBack)
            && actions.contains(&RecoveryAction::Completed)
    );
}

#[test]
fn killed_uninstall_leaves_old_or_new() {
    let k = kos();
    let v1 = artifact(
        "1.0",
        &[("kmf_hello.ko", &k.hello1), ("kmf_extra.ko", &k.extra1)],
    );
    let prepare = |h: &Host| install_with(h, &h.lock().unwrap(), &v1).unwrap();
    let name = ModuleName::parse("kmf_hello").unwrap();
    let version = ModuleVersion::parse("1.0").unwrap();
    let uninstall = |h: &Host, l: &HostLock| h.uninstall(l, &name, &version, None).map(|_| ());
    let actions = kill_at_every_step(&prepare, &uninstall);
    assert!(
        actions.contains(&RecoveryAction::RolledBack)
            && actions.contains(&RecoveryAction::Completed)
    );
}

#[test]
fn a_corrupt_journal_is_reported_not_ignored() {
    let root = tempfile::tempdir().unwrap();
    let h = host(root.path());
    std::fs::create_dir_all(&h.paths.state_dir).unwrap();
    std::fs::write(h.paths.journal_file(), b"{not json").unwrap();
    let err = h.lock().unwrap_err();
    assert_eq!(err.kind(), "state", "{err}");
}

#[test]
fn dkms_lines_follow_dkms_3() {
    let entry = |original_modules, files_missing, differs| StatusEntry {
        name: ModuleName::parse("acpi-call").unwrap(),
        version: ModuleVersion::parse("1.2.2").unwrap(),
        kernel: krel(K1),
        arch: kmodforge_api::names::Arch::host_default(),
        state: "installed".into(),
        original_modules,
        files_missing,
        differs,
        artifact_key: String::new(),
        installed_at: String::new(),
        files: Vec::new(),
        loaded: None,
        boot_verified: true,
        boot_check: None,
        signing: None,
    };
    let base = format!("acpi-call/1.2.2, {K1}, x86_64: installed");
    let cases = [
        ((false, false, false), base.clone()),
        (
            (true, false, false),
            format!("{base} (Original modules exist)"),
        ),
        (
            (false, true, true),
            format!("{base} (Built modules are missing in the kernel modules folder)"),
        ),
        (
            (false, false, true),
            format!("{base} (Differences between built and installed modules)"),
        ),
        (
            (true, false, true),
            format!(
                "{base} (Original modules exist) (Differences between built and installed modules)"
            ),
        ),
    ];
    for ((o, m, d), want) in cases {
        assert_eq!(entry(o, m, d).dkms_line(), want);
    }
}

#[test]
fn host_error_stays_small() {
    // clippy's result_large_err threshold is 128 bytes.
    assert!(std::mem::size_of::<HostError>() < 128);
}
