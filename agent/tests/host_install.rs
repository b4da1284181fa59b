//! Install, status, no-op, upgrade and uninstall against a temp root with the real depmod.

#![allow(clippy::unwrap_used)]

mod host_support;

use std::path::Path;

use host_support::*;
use kmodforge_agent::host::{
    DepmodOutcome, Host, HostError, HostPaths, InstallOptions, InstallReport, VerifiedArtifact,
};
use kmodforge_api::names::{ModuleName, ModuleVersion};

const ORIGINAL: &str = "kernel/drivers/misc/kmf_hello.ko";
const DEST: &str = "updates/dkms/kmf_hello.ko";

fn host(root: &Path) -> Host {
    Host::new(HostPaths::under(root))
}

fn artifact(version: &str, src: &str, kernel: &str) -> VerifiedArtifact {
    let ko = Ko::new("kmf_hello", version, src, kernel).build();
    let m = manifest("kmf_hello", version, kernel, &[("kmf_hello.ko", &ko)]);
    VerifiedArtifact::verify(m, vec![("kmf_hello.ko".into(), ko)], &krel(kernel)).unwrap()
}

fn install(h: &Host, art: &VerifiedArtifact) -> Result<InstallReport, HostError> {
    let lock = h.lock()?;
    h.install(&lock, art, &InstallOptions::default())
}

fn name() -> ModuleName {
    ModuleName::parse("kmf_hello").unwrap()
}

fn ver(v: &str) -> ModuleVersion {
    ModuleVersion::parse(v).unwrap()
}

#[test]
fn install_on_two_kernels_then_noop_then_uninstall_restores_the_original() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    add_kernel(root, K2);
    let old = Ko::new("kmf_hello", "0.9", "OLDSRC", K1).build();
    let original = add_original(root, K1, ORIGINAL, &old);
    assert!(modules_dep(root, K1).contains(&format!("{ORIGINAL}:")));
    let h = host(root);

    let (a1, a2) = (artifact("1.0", "ABC", K1), artifact("1.0", "ABC", K2));
    let r1 = install(&h, &a1).unwrap();
    let r2 = install(&h, &a2).unwrap();
    assert_eq!(r1.installed, vec!["kmf_hello.ko".to_string()]);
    assert_eq!(r1.originals, vec![original.clone()]);
    assert!(r2.originals.is_empty());
    assert_eq!(
        (r1.depmod.clone(), r2.depmod.clone()),
        (DepmodOutcome::Ran, DepmodOutcome::Ran)
    );
    assert!(!r1.unchanged && r1.skipped.is_empty());
    assert_eq!(
        std::fs::read(tree(root, K1).join(DEST)).unwrap(),
        a1.files[0].1
    );

    // depmod indexed ours, and prefers updates/ over the original.
    let dep1 = modules_dep(root, K1);
    assert!(dep1.contains(&format!("{DEST}:")), "{dep1}");
    assert!(!dep1.contains(&format!("{ORIGINAL}:")), "{dep1}");
    assert!(modules_dep(root, K2).contains(&format!("{DEST}:")));

    let status = h.status(None).unwrap();
    let lines: Vec<String> = status.iter().map(|s| s.dkms_line()).collect();
    assert_eq!(
        lines,
        vec![
            format!("kmf_hello/1.0, {K1}, x86_64: installed (Original modules exist)"),
            format!("kmf_hello/1.0, {K2}, x86_64: installed"),
        ]
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json[0]["original_modules"], true);
    assert_eq!(json[1]["kernel"], K2);

    // A second install of the same artifact writes nothing.
    let state_before = std::fs::read(h.paths.state_file()).unwrap();
    let dep_before = modules_dep(root, K1);
    let again = install(&h, &a1).unwrap();
    assert!(again.unchanged);
    assert!(again.installed.is_empty());
    assert_eq!(again.originals, vec![original.clone()]);
    assert_eq!(std::fs::read(h.paths.state_file()).unwrap(), state_before);
    assert_eq!(modules_dep(root, K1), dep_before);

    let rec = h
        .installed(&name(), &ver("1.0"), &krel(K1))
        .unwrap()
        .unwrap();
    assert_eq!(rec.artifact_key, a1.manifest.key.as_str());
    assert_eq!(rec.files[0].1, sha256_hex(&a1.files[0].1));
    assert_eq!(rec.files[0].2, tree(root, K1).join(DEST));
    assert!(h
        .installed(&name(), &ver("2.0"), &krel(K1))
        .unwrap()
        .is_none());

    // Uninstall everywhere: ours gone, the original stays and is indexed again.
    let lock = h.lock().unwrap();
    let reports = h.uninstall(&lock, &name(), &ver("1.0"), None).unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].removed, vec![tree(root, K1).join(DEST)]);
    assert!(reports.iter().all(|r| r.depmod == DepmodOutcome::Ran));
    assert!(!tree(root, K1).join(DEST).exists() && !tree(root, K2).join(DEST).exists());
    assert_eq!(std::fs::read(&original).unwrap(), old);
    let dep1 = modules_dep(root, K1);
    assert!(dep1.contains(&format!("{ORIGINAL}:")), "{dep1}");
    assert!(!dep1.contains(DEST));
    assert!(!modules_dep(root, K2).contains(DEST));
    assert!(h.status(None).unwrap().is_empty());
    assert!(leftovers(root).is_empty());

    let err = h.uninstall(&lock, &name(), &ver("1.0"), None).unwrap_err();
    assert_eq!(err.kind(), "not_installed");
}

#[test]
fn uninstall_one_kernel_keeps_the_other() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    add_kernel(root, K2);
    let h = host(root);
    install(&h, &artifact("1.0", "ABC", K1)).unwrap();
    install(&h, &artifact("1.0", "ABC", K2)).unwrap();
    let lock = h.lock().unwrap();
    let r = h
        .uninstall(&lock, &name(), &ver("1.0"), Some(&krel(K2)))
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].kernel, krel(K2));
    let left: Vec<_> = h
        .status(None)
        .unwrap()
        .into_iter()
        .map(|s| s.kernel)
        .collect();
    assert_eq!(left, vec![krel(K1)]);
    assert!(tree(root, K1).join(DEST).exists());
}

#[test]
fn upgrade_replaces_our_previous_version() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    let h = host(root);
    install(&h, &artifact("1.0", "AAA", K1)).unwrap();
    let v2 = artifact("2.0", "BBB", K1);
    let r = install(&h, &v2).unwrap();
    assert_eq!(r.replaced_version, Some(ver("1.0")));
    assert!(
        r.originals.is_empty(),
        "our own old file is not an original"
    );
    assert_eq!(
        std::fs::read(tree(root, K1).join(DEST)).unwrap(),
        v2.files[0].1
    );
    let s = h.status(None).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].dkms_line(),
        format!("kmf_hello/2.0, {K1}, x86_64: installed")
    );
    assert!(h
        .installed(&name(), &ver("1.0"), &krel(K1))
        .unwrap()
        .is_none());
    assert!(leftovers(root).is_empty());
    assert!(!h.paths.journal_file().exists());
}

#[test]
fn damaged_or_missing_files_show_in_status_and_are_reinstalled() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    let h = host(root);
    let a = artifact("1.0", "ABC", K1);
    install(&h, &a).unwrap();
    let dest = tree(root, K1).join(DEST);

    std::fs::write(&dest, b"garbage").unwrap();
    let line = h.status(None).unwrap()[0].dkms_line();
    assert_eq!(line, format!("kmf_hello/1.0, {K1}, x86_64: installed (Differences between built and installed modules)"));
    let r = install(&h, &a).unwrap();
    assert!(!r.unchanged);
    assert_eq!(std::fs::read(&dest).unwrap(), a.files[0].1);

    std::fs::remove_file(&dest).unwrap();
    let s = &h.status(None).unwrap()[0];
    assert!(s.files_missing);
    assert!(s
        .dkms_line()
        .ends_with(" (Built modules are missing in the kernel modules folder)"));
    install(&h, &a).unwrap();
    assert!(dest.exists());
}

#[test]
fn lock_is_exclusive() {
    let root = tempfile::tempdir().unwrap();
    let h = host(root.path());
    let held = h.lock().unwrap();
    assert!(held.recovered().is_none());
    let err = h.lock().unwrap_err();
    assert!(matches!(err, HostError::LockHeld { .. }), "{err}");
    assert_eq!(err.kind(), "lock_held");
    drop(held);
    h.lock().unwrap();
}

#[test]
fn default_kernels_are_running_plus_installed_ones() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K2);
    std::fs::create_dir_all(tree(root, K1)).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join(format!("boot/vmlinuz-{K1}")), "").unwrap();
    std::fs::create_dir_all(tree(root, "6.1.0-49-amd64")).unwrap(); // headers only
    std::fs::create_dir_all(root.join("lib/modules/not-a-kernel")).unwrap();
    let h = host(root);
    let running = krel("6.1.0-10-amd64");
    assert_eq!(
        h.default_kernels(Some(&running)),
        vec![running.clone(), krel(K1), krel(K2)]
    );
    assert_eq!(h.default_kernels(Some(&krel(K2))), vec![krel(K1), krel(K2)]);
    assert!(h.has_kernel_tree(&krel("6.1.0-49-amd64")));
    assert!(!h.has_kernel_tree(&krel("6.1.0-50-amd64")));
}

#[test]
fn missing_kernel_tree_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let h = host(root.path());
    let err = install(&h, &artifact("1.0", "ABC", K1)).unwrap_err();
    assert!(matches!(err, HostError::NoKernelTree { .. }), "{err}");
    assert!(err.to_string().contains(K1));
}

#[test]
fn kernel_without_modules_dep_installs_and_skips_depmod() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    std::fs::create_dir_all(tree(root, K1)).unwrap();
    let h = host(root);
    let r = install(&h, &artifact("1.0", "ABC", K1)).unwrap();
    assert!(
        matches!(&r.depmod, DepmodOutcome::Skipped { reason } if reason.contains("modules.dep"))
    );
    assert!(tree(root, K1).join(DEST).exists());
    assert!(!tree(root, K1).join("modules.dep").exists());
}

#[test]
fn no_depmod_option_skips_depmod() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    add_kernel(root, K1);
    let h = host(root);
    let lock = h.lock().unwrap();
    let opts = InstallOptions {
        run_depmod: false,
        ..InstallOptions::default()
    };
    let r = h
        .install(&lock, &artifact("1.0", "ABC", K1), &opts)
        .unwrap();
    assert!(matches!(r.depmod, DepmodOutcome::Skipped { .. }));
    assert_eq!(modules_dep(root, K1), "");
}
