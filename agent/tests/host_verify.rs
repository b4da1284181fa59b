//! Verification: a download that does not match its manifest never reaches the disk.

#![allow(clippy::unwrap_used)]

mod host_support;

use host_support::*;
use kmodforge_agent::host::{HostError, VerifiedArtifact};
use kmodforge_api::wire::Manifest;

fn hello(kernel: &str) -> Vec<u8> {
    Ko::new("kmf_hello", "1.0", "ABC", kernel).build()
}

fn verify(m: Manifest, files: Vec<(&str, Vec<u8>)>) -> Result<VerifiedArtifact, HostError> {
    let files = files.into_iter().map(|(n, d)| (n.to_owned(), d)).collect();
    VerifiedArtifact::verify(m, files, &krel(K1))
}

#[test]
fn a_good_artifact_verifies_and_carries_the_parsed_modinfo() {
    let ko = hello(K1);
    let art = verify(
        manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", &ko)]),
        vec![("kmf_hello.ko", ko.clone())],
    )
    .unwrap();
    let (file, data) = &art.files[0];
    assert_eq!(data, &ko);
    assert_eq!(file.modinfo.version.as_deref(), Some("1.0"));
    assert_eq!(file.modinfo.srcversion.as_deref(), Some("ABC"));
}

#[test]
fn sha256_mismatch_is_refused() {
    let ko = hello(K1);
    let m = manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", &ko)]);
    let mut tampered = ko.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    let err = verify(m, vec![("kmf_hello.ko", tampered.clone())]).unwrap_err();
    match &err {
        HostError::Sha256Mismatch {
            file,
            expected,
            got,
            ..
        } => {
            assert_eq!(file, "kmf_hello.ko");
            assert!(expected.starts_with(&sha256_hex(&ko)));
            assert!(got.starts_with(&sha256_hex(&tampered)));
        }
        other => panic!("expected Sha256Mismatch, got {other:?}"),
    }
    assert_eq!(err.kind(), "sha256_mismatch");
    assert!(err.is_verification());
    let line = err.to_string();
    assert!(
        line.contains("kmf_hello") && line.contains(K1) && !line.contains('\n'),
        "{line}"
    );
}

#[test]
fn wrong_vermagic_is_refused() {
    let ko = hello(K2);
    let m = manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", &ko)]);
    let err = verify(m, vec![("kmf_hello.ko", ko)]).unwrap_err();
    assert!(
        matches!(&err, HostError::WrongVermagic { vermagic, .. } if vermagic.starts_with(K2)),
        "{err:?}"
    );
    assert_eq!(err.kind(), "wrong_vermagic");
}

#[test]
fn a_file_that_is_not_a_module_is_refused() {
    let junk = b"#!/bin/sh\necho not a module\n".to_vec();
    let m = manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", &junk)]);
    let err = verify(m, vec![("kmf_hello.ko", junk)]).unwrap_err();
    assert_eq!(err.kind(), "not_a_module", "{err}");
}

#[test]
fn a_missing_file_is_refused() {
    let ko = hello(K1);
    let m = manifest(
        "kmf_hello",
        "1.0",
        K1,
        &[("kmf_hello.ko", &ko), ("kmf_extra.ko", &ko)],
    );
    let err = verify(m, vec![("kmf_hello.ko", ko)]).unwrap_err();
    assert!(
        matches!(&err, HostError::FileMissing { file, .. } if file == "kmf_extra.ko"),
        "{err:?}"
    );
}

#[test]
fn unsafe_or_foreign_manifests_are_refused() {
    let ko = hello(K1);
    let base = manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", &ko)]);
    let files = || vec![("kmf_hello.ko", ko.clone())];

    let other_kernel = manifest("kmf_hello", "1.0", K2, &[("kmf_hello.ko", &ko)]);
    assert_eq!(
        verify(other_kernel, files()).unwrap_err().kind(),
        "bad_manifest"
    );

    let mut escape = base.clone();
    escape.files[0].dest_location = "/../../../etc".into();
    assert_eq!(verify(escape, files()).unwrap_err().kind(), "bad_manifest");

    let mut traversal = base.clone();
    traversal.files[0].file = "../../x.ko".into();
    let err = verify(traversal, vec![("../../x.ko", ko.clone())]).unwrap_err();
    assert_eq!(err.kind(), "not_a_module");

    let mut twice = base.clone();
    twice.files.push(twice.files[0].clone());
    assert_eq!(verify(twice, files()).unwrap_err().kind(), "bad_manifest");

    let mut empty = base;
    empty.files.clear();
    assert_eq!(verify(empty, files()).unwrap_err().kind(), "bad_manifest");
}
