//! DKMS's version sanity check against same-named modules already in the kernel tree.

#![allow(clippy::unwrap_used)]

mod host_support;

use std::path::Path;
use std::process::Command;

use host_support::*;
use kmodforge_agent::host::{
    Host, HostError, HostPaths, InstallOptions, InstallReport, VerifiedArtifact,
};

const ORIGINAL: &str = "kernel/drivers/misc/kmf_hello.ko";
const DEST: &str = "updates/dkms/kmf_hello.ko";

/// A temp root with kernel K1 holding an original `kmf_hello` of `version`/`src`.
fn root_with_original(version: &str, src: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    add_kernel(root.path(), K1);
    add_original(
        root.path(),
        K1,
        ORIGINAL,
        &Ko::new("kmf_hello", version, src, K1).build(),
    );
    root
}

fn artifact(files: &[Ko<'_>]) -> VerifiedArtifact {
    let built: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|k| (format!("{}.ko", k.name), k.build()))
        .collect();
    let refs: Vec<(&str, &[u8])> = built
        .iter()
        .map(|(f, d)| (f.as_str(), d.as_slice()))
        .collect();
    let version = files[0].version.unwrap_or("0");
    let m = manifest("kmf_hello", version, K1, &refs);
    VerifiedArtifact::verify(m, built, &krel(K1)).unwrap()
}

fn install(root: &Path, art: &VerifiedArtifact, force: bool) -> Result<InstallReport, HostError> {
    let h = Host::new(HostPaths::under(root));
    let lock = h.lock()?;
    let opts = InstallOptions {
        force,
        ..InstallOptions::default()
    };
    h.install(&lock, art, &opts)
}

fn hello(version: &str, src: &str) -> VerifiedArtifact {
    artifact(&[Ko::new("kmf_hello", version, src, K1)])
}

/// Nothing of ours is in the tree and no state was recorded.
fn assert_nothing_installed(root: &Path) {
    assert!(!tree(root, K1).join(DEST).exists());
    let h = Host::new(HostPaths::under(root));
    assert!(h.status(None).unwrap().is_empty());
    assert!(leftovers(root).is_empty());
}

#[test]
fn newer_existing_module_blocks_without_force_and_installs_with_it() {
    let root = root_with_original("2.0", "NEWSRC");
    let art = hello("1.0", "OURSRC");
    let err = install(root.path(), &art, false).unwrap_err();
    match &err {
        HostError::NotNewer {
            existing_version,
            new_version,
            message,
            ..
        } => {
            assert_eq!(existing_version.as_deref(), Some("2.0"));
            assert_eq!(new_version.as_deref(), Some("1.0"));
            assert_eq!(
                &**message,
                format!("Module version 1.0 for kmf_hello.ko is not newer than what is already found in kernel {K1} (2.0).")
            );
        }
        other => panic!("expected NotNewer, got {other:?}"),
    }
    assert_eq!(err.kind(), "not_newer");
    assert_nothing_installed(root.path());

    let r = install(root.path(), &art, true).unwrap();
    assert_eq!(r.installed, vec!["kmf_hello.ko".to_string()]);
    assert_eq!(r.originals, vec![tree(root.path(), K1).join(ORIGINAL)]);
    assert!(
        tree(root.path(), K1).join(ORIGINAL).exists(),
        "the original stays in place"
    );
    assert!(modules_dep(root.path(), K1).contains(&format!("{DEST}:")));
}

#[test]
fn dkms_version_order_is_used_not_string_order() {
    // "1.10" > "1.9" for DKMS's VER(); a plain string comparison says the opposite.
    let root = root_with_original("1.9", "OLD");
    install(root.path(), &hello("1.10", "NEW"), false).unwrap();
    let root = root_with_original("1.10", "OLD");
    let err = install(root.path(), &hello("1.9", "NEW"), false).unwrap_err();
    assert_eq!(err.kind(), "not_newer");
}

#[test]
fn same_version_other_srcversion_replaces() {
    let root = root_with_original("1.0", "THEIRS");
    let r = install(root.path(), &hello("1.0", "OURS"), false).unwrap();
    assert_eq!(r.installed.len(), 1);
    let s = &Host::new(HostPaths::under(root.path()))
        .status(None)
        .unwrap()[0];
    assert!(
        s.dkms_line()
            .ends_with(": installed (Original modules exist)"),
        "{}",
        s.dkms_line()
    );
    let dep = modules_dep(root.path(), K1);
    assert!(
        dep.contains(&format!("{DEST}:")) && !dep.contains(ORIGINAL),
        "{dep}"
    );
}

#[test]
fn identical_version_and_srcversion_is_already_installed() {
    let root = root_with_original("1.0", "SAME");
    let art = hello("1.0", "SAME");
    let err = install(root.path(), &art, false).unwrap_err();
    assert!(
        matches!(&err, HostError::AlreadyInstalled { message, .. } if &**message == "Module kmf_hello.ko already installed at version 1.0"),
        "{err:?}"
    );
    assert_nothing_installed(root.path());
    install(root.path(), &art, true).unwrap();
}

#[test]
fn older_or_unversioned_existing_module_is_replaced() {
    let root = root_with_original("0.5", "OLD");
    assert_eq!(
        install(root.path(), &hello("1.0", "NEW"), false)
            .unwrap()
            .installed
            .len(),
        1
    );

    let root = tempfile::tempdir().unwrap();
    add_kernel(root.path(), K1);
    let unversioned = Ko {
        version: None,
        srcversion: None,
        ..Ko::new("kmf_hello", "", "", K1)
    };
    add_original(root.path(), K1, ORIGINAL, &unversioned.build());
    assert_eq!(
        install(root.path(), &hello("1.0", "NEW"), false)
            .unwrap()
            .installed
            .len(),
        1
    );
}

#[test]
fn compressed_existing_module_is_read_with_modinfo() {
    // Both compress in place (zstd keeps its input without --rm).
    for (tool, args, ext) in [
        ("xz", &["-q"][..], "xz"),
        ("zstd", &["-q", "--rm"][..], "zst"),
    ] {
        let root = tempfile::tempdir().unwrap();
        add_kernel(root.path(), K1);
        let path = add_original(
            root.path(),
            K1,
            ORIGINAL,
            &Ko::new("kmf_hello", "3.0", "Z", K1).build(),
        );
        let status = Command::new(tool).args(args).arg(&path).status().unwrap();
        assert!(status.success(), "{tool}");
        assert!(tree(root.path(), K1)
            .join(format!("{ORIGINAL}.{ext}"))
            .exists());
        assert!(!path.exists());
        let err = install(root.path(), &hello("1.0", "NEW"), false).unwrap_err();
        assert!(
            matches!(&err, HostError::NotNewer { existing_version: Some(v), .. } if v == "3.0"),
            "{tool}: {err:?}"
        );
    }
}

#[test]
fn several_same_named_modules_warn_and_install() {
    let root = root_with_original("9.0", "A");
    let other = Ko::new("kmf_hello", "9.1", "B", K1).build();
    add_original(root.path(), K1, "extra/kmf_hello.ko", &other);
    let r = install(root.path(), &hello("1.0", "NEW"), false).unwrap();
    assert_eq!(r.installed.len(), 1);
    assert_eq!(r.originals.len(), 2);
    assert!(
        r.warnings[0].contains("multiple kmf_hello.ko modules"),
        "{:?}",
        r.warnings
    );
}

#[test]
fn one_file_skipped_the_other_installed() {
    let root = root_with_original("2.0", "NEWSRC");
    let art = artifact(&[
        Ko::new("kmf_hello", "1.0", "A", K1),
        Ko::new("kmf_extra", "1.0", "B", K1),
    ]);
    let r = install(root.path(), &art, false).unwrap();
    assert_eq!(r.installed, vec!["kmf_extra.ko".to_string()]);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].0, "kmf_hello.ko");
    assert!(r.skipped[0].1.contains("is not newer than"));
    assert!(!tree(root.path(), K1).join(DEST).exists());
    assert!(tree(root.path(), K1)
        .join("updates/dkms/kmf_extra.ko")
        .exists());
    let h = Host::new(HostPaths::under(root.path()));
    let s = h.status(None).unwrap();
    assert_eq!(
        s[0].files,
        vec![tree(root.path(), K1).join("updates/dkms/kmf_extra.ko")]
    );
}

#[test]
fn an_untracked_older_file_at_our_destination_is_replaced_not_kept_as_original() {
    let root = tempfile::tempdir().unwrap();
    add_kernel(root.path(), K1);
    let stale = Ko::new("kmf_hello", "0.5", "STALE", K1).build();
    add_original(root.path(), K1, DEST, &stale);
    let art = hello("1.0", "NEW");
    let r = install(root.path(), &art, false).unwrap();
    assert!(r.originals.is_empty(), "{:?}", r.originals);
    assert_eq!(
        std::fs::read(tree(root.path(), K1).join(DEST)).unwrap(),
        art.files[0].1
    );
    let s = Host::new(HostPaths::under(root.path()))
        .status(None)
        .unwrap();
    assert_eq!(
        s[0].dkms_line(),
        format!("kmf_hello/1.0, {K1}, x86_64: installed")
    );
    assert!(leftovers(root.path()).is_empty());
}
