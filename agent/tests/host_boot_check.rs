//! Boot checks on the host side: a failed check is never installed, a passed one is
//! recorded in the state and shown by `status`, and a check seen after the install
//! is recorded without touching the kernel tree.

mod host_support;

use std::path::Path;

use host_support::*;
use kmodforge_agent::host::{Host, HostError, HostPaths, InstallOptions, VerifiedArtifact};
use kmodforge_api::names::{ModuleName, ModuleVersion};
use kmodforge_api::wire::BootCheck;

const DEST: &str = "updates/dkms/kmf_hello.ko";

fn host(root: &Path) -> Host {
    Host::new(HostPaths::under(root))
}

fn check(passed: bool) -> BootCheck {
    serde_json::from_value(serde_json::json!({
        "passed": passed, "booted": true, "completed": true,
        "reason": if passed { None } else { Some("kmf_hello.ko: insmod: Invalid module format") },
        "kernel": K1, "kernel_package_version": "6.1.158-1",
        "verifier_image": {"id": "sha256:verifier", "tag": "kmodforge-verifier:test"},
        "checked_at": "2026-01-02T03:04:05Z", "boot_seconds": 1.5, "seconds": 3.0,
        "initramfs_bytes": 100, "boot_image": "pvh", "timed_out": false,
        "modules": [{"file": "kmf_hello.ko", "name": "kmf_hello", "new": true, "loaded": passed,
                     "rc": 0, "error": null, "messages": [], "version": "1.0",
                     "srcversion": "ABC", "initstate": "live", "taint": "O"}],
        "console_tail": "console"
    }))
    .expect("boot check")
}

fn artifact(boot: Option<BootCheck>) -> VerifiedArtifact {
    let ko = Ko::new("kmf_hello", "1.0", "ABC", K1).build();
    let mut m = manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", &ko)]);
    m.boot_check = boot;
    VerifiedArtifact::verify(m, vec![("kmf_hello.ko".into(), ko)], &krel(K1)).expect("verifies")
}

fn names() -> (ModuleName, ModuleVersion) {
    (
        ModuleName::parse("kmf_hello").expect("name"),
        ModuleVersion::parse("1.0").expect("version"),
    )
}

#[test]
fn a_failed_boot_check_installs_nothing() {
    let root = tempfile::tempdir().expect("temp dir");
    add_kernel(root.path(), K1);
    let h = host(root.path());
    let lock = h.lock().expect("lock");
    let e = h
        .install(
            &lock,
            &artifact(Some(check(false))),
            &InstallOptions {
                force: true,
                ..InstallOptions::default()
            },
        )
        .expect_err("refused");
    assert!(matches!(e, HostError::BootCheckFailed { .. }), "{e:?}");
    assert!(e.is_verification());
    assert_eq!(
        e.to_string(),
        format!(
            "kmf_hello on {K1}: boot check failed: kmf_hello.ko: insmod: Invalid module format"
        )
    );
    assert!(!tree(root.path(), K1).join(DEST).exists());
    assert!(h.status(None).expect("status").is_empty());
}

#[test]
fn a_passed_check_is_recorded_and_shown_by_status() {
    let root = tempfile::tempdir().expect("temp dir");
    add_kernel(root.path(), K1);
    let h = host(root.path());
    let lock = h.lock().expect("lock");
    h.install(
        &lock,
        &artifact(Some(check(true))),
        &InstallOptions::default(),
    )
    .expect("installs");
    let status = h.status(None).expect("status");
    assert_eq!(status.len(), 1);
    assert!(status[0].boot_verified);
    // The plain line stays DKMS's.
    assert_eq!(
        status[0].dkms_line(),
        format!("kmf_hello/1.0, {K1}, x86_64: installed")
    );
    let json = serde_json::to_value(&status[0]).expect("json");
    assert_eq!(json["boot_verified"], true);
    let bc = &json["boot_check"];
    assert_eq!(bc["passed"], true);
    assert_eq!(bc["checked_at"], "2026-01-02T03:04:05Z");
    assert_eq!(bc["kernel_package_version"], "6.1.158-1");
    assert_eq!(bc["verifier_image"]["tag"], "kmodforge-verifier:test");
    assert_eq!(bc["boot_seconds"], 1.5);
    assert_eq!(bc["loaded"], serde_json::json!(["kmf_hello.ko"]));
    let (name, version) = names();
    let rec = h
        .installed(&name, &version, &krel(K1))
        .expect("state")
        .expect("installed");
    assert!(rec.boot_check.is_some_and(|c| c.passed));
}

#[test]
fn a_check_seen_after_the_install_is_recorded_without_writing_modules() {
    let root = tempfile::tempdir().expect("temp dir");
    add_kernel(root.path(), K1);
    let h = host(root.path());
    let lock = h.lock().expect("lock");
    let plain = artifact(None);
    h.install(&lock, &plain, &InstallOptions::default())
        .expect("installs");
    let status = h.status(None).expect("status");
    assert!(!status[0].boot_verified && status[0].boot_check.is_none());
    let json = serde_json::to_value(&status[0]).expect("json");
    assert_eq!(json["boot_verified"], false);
    assert!(json["boot_check"].is_null(), "{json}");

    let ko = tree(root.path(), K1).join(DEST);
    let dep = tree(root.path(), K1).join("modules.dep");
    let before = (mtime(&ko), mtime(&dep));
    let (name, version) = names();
    let key = plain.manifest.key.as_str();
    let k = krel(K1);
    // Another artifact key is not what is installed: nothing recorded.
    assert!(!h
        .record_boot_check(&lock, &name, &version, &k, "other", &check(true))
        .expect("record"));
    assert!(h
        .record_boot_check(&lock, &name, &version, &k, key, &check(true))
        .expect("record"));
    assert!(!h
        .record_boot_check(&lock, &name, &version, &k, key, &check(true))
        .expect("record again"));
    assert!(h.status(None).expect("status")[0].boot_verified);

    // A later failed check of the installed artifact is recorded; the files stay.
    assert!(h
        .record_boot_check(&lock, &name, &version, &k, key, &check(false))
        .expect("record"));
    let status = h.status(None).expect("status");
    assert!(!status[0].boot_verified);
    assert_eq!(
        status[0]
            .boot_check
            .as_ref()
            .and_then(|c| c.reason.as_deref()),
        Some("kmf_hello.ko: insmod: Invalid module format")
    );

    // The unchanged path of install records a check the manifest carries.
    let r = h
        .install(
            &lock,
            &VerifiedArtifact {
                manifest: {
                    let mut m = plain.manifest.clone();
                    m.boot_check = Some(check(true));
                    m
                },
                files: plain.files.clone(),
                manifest_key: None,
            },
            &InstallOptions::default(),
        )
        .expect("unchanged");
    assert!(r.unchanged);
    assert!(h.status(None).expect("status")[0].boot_verified);
    assert_eq!(
        (mtime(&ko), mtime(&dep)),
        before,
        "the kernel tree was rewritten"
    );
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .expect("mtime")
}
