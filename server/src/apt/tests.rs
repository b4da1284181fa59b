use std::process::Command;

use super::deb::{self, DebFile, DebSpec};
use super::*;

#[test]
fn names_and_versions_follow_debian_policy() {
    let n = |s: &str| ModuleName::parse(s).unwrap();
    let k = |s: &str| KernelRelease::parse(s).unwrap();
    let v = |s: &str| ModuleVersion::parse(s).unwrap();
    assert_eq!(
        module_package_name(&n("r8152"), &k("6.1.0-47-amd64")).unwrap(),
        "r8152-modules-6.1.0-47-amd64"
    );
    assert_eq!(
        module_package_name(&n("My_Driver"), &k("6.12.9+deb13-amd64")).unwrap(),
        "my-driver-modules-6.12.9+deb13-amd64"
    );
    let at = "2026-12-07T07:22:33Z";
    assert_eq!(
        module_deb_version(&v("0.12.7"), at),
        "0.12.7-kmf20261207072233"
    );
    assert_eq!(
        module_deb_version(&v("git_2020:1"), at),
        "0~git.2020.1-kmf20261207072233"
    );
    assert_eq!(
        module_deb_version(&v("2.17.1-1"), at),
        "2.17.1-1-kmf20261207072233"
    );
    for ok in ["1.0", "1.0-1", "2.17.1-1-kmf2026", "0~git+1"] {
        assert!(valid_version(ok), "{ok}");
    }
    for bad in ["", "a1", "1.0-", "1 0", "1:2", "1.0-a_b"] {
        assert!(!valid_version(bad), "{bad}");
    }
    for bad in ["Kmodforge-agent", "-x", "a", "a_b", "x y"] {
        assert!(!valid_package_name(bad), "{bad}");
    }
}

#[test]
fn release_dates_are_rfc2822_in_utc() {
    assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 UTC");
    assert_eq!(rfc2822(1_796_626_800), "Mon, 07 Dec 2026 07:00:00 UTC");
    assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 UTC");
}

fn spec() -> DebSpec {
    DebSpec {
        control:
            "Package: hello-modules-6.1.0-47-amd64\nVersion: 1.0-kmf1\nArchitecture: amd64\n\
                  Maintainer: kmodforge <kmodforge@localhost>\nDescription: test\n a test package\n"
                .into(),
        files: vec![DebFile {
            path: "lib/modules/6.1.0-47-amd64/updates/dkms/hello.ko".into(),
            mode: 0o644,
            data: Bytes::from_static(b"\x7fELF not really a module"),
        }],
        scripts: vec![("postinst", "#!/bin/sh\nexit 0\n".into())],
        mtime: 1_796_626_800,
    }
}

#[test]
fn dpkg_deb_reads_what_is_written_and_it_is_deterministic() {
    let (bytes, kib) = deb::build(&spec()).unwrap();
    assert_eq!(kib, 1);
    assert_eq!(
        bytes,
        deb::build(&spec()).unwrap().0,
        "same input, same bytes"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.deb");
    std::fs::write(&path, &bytes).unwrap();
    let field = |f: &str| {
        let out = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&path)
            .arg(f)
            .output()
            .expect("dpkg-deb is installed (Debian's dpkg); this test never skips");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(field("Package"), "hello-modules-6.1.0-47-amd64");
    assert_eq!(field("Installed-Size"), "1");
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        listing.contains("-rw-r--r-- root/root")
            && listing.contains(" lib/modules/6.1.0-47-amd64/updates/dkms/hello.ko"),
        "{listing}"
    );
    let x = dir.path().join("x");
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&path)
        .arg(&x)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md5 = std::fs::read_to_string(x.join("md5sums")).unwrap();
    assert!(
        md5.ends_with("  lib/modules/6.1.0-47-amd64/updates/dkms/hello.ko\n"),
        "{md5}"
    );
    let control = deb::read_control(&bytes).unwrap();
    assert!(control.contains("Installed-Size: 1"), "{control}");
}

#[test]
fn the_control_of_a_deb_that_dpkg_deb_built_with_xz_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/kmodforge-x"), "#!/bin/sh\n").unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: kmodforge-x\nVersion: 1.2.3-1\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: x\n",
    )
    .unwrap();
    let out_deb = dir.path().join("x.deb");
    let out = Command::new("dpkg-deb")
        .args(["-Zxz", "--root-owner-group", "--build"])
        .arg(&root)
        .arg(&out_deb)
        .output()
        .expect("dpkg-deb is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let control = deb::read_control(&std::fs::read(&out_deb).unwrap()).unwrap();
    let fields = deb::parse_stanza(&control);
    assert!(
        fields.contains(&("Version".into(), "1.2.3-1".into())),
        "{fields:?}"
    );
}

#[test]
fn garbage_is_not_a_deb() {
    for bad in [&b""[..], b"!<arch>\n", b"!<arch>\nshort", b"PK\x03\x04zip"] {
        assert!(deb::read_control(bad).is_err());
    }
    // An ar whose size field lies.
    let mut lying = b"!<arch>\n".to_vec();
    lying.extend_from_slice(
        format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            "debian-binary", 0, 0, 0, "100644", 999
        )
        .as_bytes(),
    );
    lying.extend_from_slice(b"2.0\n");
    assert!(deb::read_control(&lying).is_err());
}

#[test]
fn an_uploaded_control_is_one_clean_stanza() {
    let good = "Package: kmodforge-agent\nVersion: 1.0-1\nArchitecture: amd64\n\
                Description: the agent\n more text\n .\n last\n";
    check_control(good).unwrap();
    for (bad, says) in [
        (
            "Package: kmodforge-a\nVersion: 1\n\nPackage: r8152-modules-6.1.0-47-amd64\n",
            "blank line",
        ),
        (
            "Package: kmodforge-a\nSHA256: 00\n",
            "SHA256 is the repository's",
        ),
        ("Package: kmodforge-a\nfilename: x\n", "repository's"),
        ("Package: kmodforge-a\nPackage: kmodforge-b\n", "twice"),
        (" leading continuation\n", "continuation"),
        ("Package kmodforge-a\n", "not a field"),
        ("Pack age: x\n", "not a field name"),
    ] {
        let err = check_control(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}
