//! Failures after the files are in place (depmod), modprobe, and the loaded-module view.

#![allow(clippy::unwrap_used)]

mod host_support;

use std::path::{Path, PathBuf};

use host_support::*;
use kmodforge_agent::host::{
    DepmodOutcome, Host, HostError, HostPaths, InstallOptions, ModprobeOutcome, VerifiedArtifact,
};

const DEST: &str = "updates/dkms/kmf_hello.ko";

fn artifact(version: &str, src: &str) -> VerifiedArtifact {
    let ko = Ko::new("kmf_hello", version, src, K1).build();
    let m = manifest("kmf_hello", version, K1, &[("kmf_hello.ko", &ko)]);
    VerifiedArtifact::verify(m, vec![("kmf_hello.ko".into(), ko)], &krel(K1)).unwrap()
}

fn host_with(root: &Path, edit: impl FnOnce(&mut HostPaths)) -> Host {
    let mut paths = HostPaths::under(root);
    edit(&mut paths);
    Host::new(paths)
}

fn install(
    h: &Host,
    art: &VerifiedArtifact,
    opts: &InstallOptions,
) -> Result<kmodforge_agent::host::InstallReport, HostError> {
    let lock = h.lock()?;
    h.install(&lock, art, opts)
}

#[test]
fn depmod_failure_rolls_back_to_the_previous_version() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    let good = host_with(root, |_| {});
    let v1 = artifact("1.0", "AAA");
    install(&good, &v1, &InstallOptions::default()).unwrap();
    let before = snapshot(root);
    let state_before = std::fs::read(good.paths.state_file()).unwrap();

    let broken = host_with(root, |p| p.depmod = PathBuf::from("/bin/false"));
    let err = install(&broken, &artifact("2.0", "BBB"), &InstallOptions::default()).unwrap_err();
    assert!(matches!(err, HostError::Depmod { .. }), "{err:?}");
    assert_eq!(err.kind(), "depmod_failed");
    assert_eq!(snapshot(root), before, "the tree is back to the old state");
    assert_eq!(
        std::fs::read(good.paths.state_file()).unwrap(),
        state_before
    );
    assert!(!good.paths.journal_file().exists());
    assert_eq!(
        std::fs::read(tree(root, K1).join(DEST)).unwrap(),
        v1.files[0].1
    );
}

#[test]
fn depmod_failure_on_a_first_install_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    let before = snapshot(root);
    let broken = host_with(root, |p| p.depmod = PathBuf::from("/bin/false"));
    let err = install(&broken, &artifact("1.0", "AAA"), &InstallOptions::default()).unwrap_err();
    assert_eq!(err.kind(), "depmod_failed");
    let after: Vec<_> = snapshot(root)
        .into_keys()
        .filter(|p| !p.starts_with("var"))
        .collect();
    assert_eq!(after, before.into_keys().collect::<Vec<_>>());
    assert!(broken.status(None).unwrap().is_empty());
}

#[test]
fn a_missing_depmod_binary_is_an_io_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    add_kernel(root.path(), K1);
    let h = host_with(root.path(), |p| {
        p.depmod = PathBuf::from("/nonexistent/depmod")
    });
    let err = install(&h, &artifact("1.0", "AAA"), &InstallOptions::default()).unwrap_err();
    assert!(
        matches!(&err, HostError::Io { path, .. } if path == Path::new("/nonexistent/depmod")),
        "{err:?}"
    );
    assert!(!tree(root.path(), K1).join(DEST).exists());
}

#[test]
fn modprobe_runs_only_for_the_running_kernel_and_its_failure_is_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    let opts = |running: &str| InstallOptions {
        modprobe: true,
        running: Some(krel(running)),
        ..InstallOptions::default()
    };
    let ok = host_with(root, |p| p.modprobe = PathBuf::from("/bin/true"));
    let r = install(&ok, &artifact("1.0", "A"), &opts(K2)).unwrap();
    assert_eq!(r.modprobe, ModprobeOutcome::NotRun);
    let r = install(&ok, &artifact("1.1", "B"), &opts(K1)).unwrap();
    assert_eq!(
        r.modprobe,
        ModprobeOutcome::Loaded {
            modules: vec!["kmf_hello".into()]
        }
    );

    let failing = host_with(root, |p| p.modprobe = PathBuf::from("/bin/false"));
    let r = install(&failing, &artifact("1.2", "C"), &opts(K1)).unwrap();
    assert!(
        matches!(r.modprobe, ModprobeOutcome::Failed { .. }),
        "{:?}",
        r.modprobe
    );
    assert_eq!(r.depmod, DepmodOutcome::Ran);
    assert!(tree(root, K1).join(DEST).exists(), "the install stands");
}

#[test]
fn status_reports_the_loaded_module_for_the_running_kernel() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    add_kernel(root, K2);
    let h = host_with(root, |_| {});
    install(&h, &artifact("1.0", "ABC"), &InstallOptions::default()).unwrap();
    let ko2 = Ko::new("kmf_hello", "1.0", "ABC", K2).build();
    let m2 = manifest("kmf_hello", "1.0", K2, &[("kmf_hello.ko", &ko2)]);
    let a2 = VerifiedArtifact::verify(m2, vec![("kmf_hello.ko".into(), ko2)], &krel(K2)).unwrap();
    install(&h, &a2, &InstallOptions::default()).unwrap();

    let loaded = |running: &str| h.status(Some(&krel(running))).unwrap();
    let s = loaded(K1);
    let info = s[0].loaded.clone().unwrap();
    assert!(!info.loaded && info.matches_installed.is_none());
    assert!(s[1].loaded.is_none(), "only the running kernel is checked");

    let sys = root.join("sys/module/kmf_hello");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(sys.join("srcversion"), "ABC\n").unwrap();
    std::fs::write(sys.join("version"), "1.0\n").unwrap();
    let info = loaded(K1)[0].loaded.clone().unwrap();
    assert_eq!((info.loaded, info.matches_installed), (true, Some(true)));
    assert_eq!(info.version.as_deref(), Some("1.0"));
    std::fs::write(sys.join("srcversion"), "OTHER\n").unwrap();
    let s = loaded(K1);
    assert_eq!(s[0].loaded.as_ref().unwrap().matches_installed, Some(false));
    let json = serde_json::to_value(&s[0]).unwrap();
    assert_eq!(json["loaded"]["srcversion"], "OTHER");
    assert_eq!(json["boot_verified"], false);
    assert_eq!(json["boot_check"], serde_json::Value::Null);
}
