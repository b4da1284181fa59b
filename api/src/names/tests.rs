//! Table-driven tests of the name types.

use super::*;

fn check_table<T>(parse: fn(&str) -> Result<T, NameError>, valid: &[&str], invalid: &[&str]) {
    for s in valid {
        assert!(parse(s).is_ok(), "{s:?} should be valid");
    }
    for s in invalid {
        assert!(parse(s).is_err(), "{s:?} should be invalid");
    }
}

#[test]
fn kernel_release_table() {
    let long = "6".repeat(65);
    check_table(
        KernelRelease::parse,
        &[
            "6.1.0-47-amd64",
            "6.12.38+deb13-amd64",
            "5.15.0-91-generic",
            "4.18.0-513.el8.x86_64",
            "6.6.8~rc1",
            "6",
        ],
        &[
            "",
            "../x",
            "linux-6.1",
            "6.1/../x",
            "6.1..0",
            "6.1.0 amd64",
            "6.1.0-47-amd64\n",
            &long,
            "6.1;rm",
        ],
    );
}

#[test]
fn kernel_release_error_message() {
    let cases = [
        ("../x", "must start with a digit"),
        ("6.1..0", "must not contain '..'"),
        ("6/1", "only A-Z a-z 0-9 . _ + ~ - are allowed"),
        ("", "must not be empty"),
    ];
    for (input, reason) in cases {
        let err = KernelRelease::parse(input).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid kernel release {input:?}: {reason}")
        );
    }
}

#[test]
fn debian_suite_table() {
    let cases = [
        ("6.1.0-47-amd64", Some("bookworm")),
        ("6.1.0-47-rt-amd64", Some("bookworm")),
        ("5.10.0-30-arm64", Some("bullseye")),
        ("4.19.0-27-amd64", Some("buster")),
        ("6.12.38+deb13-amd64", Some("trixie")),
        ("6.12.9", Some("trixie")),
        ("6.1.0-amd64", None),
        ("6.1.0-47", None),
        ("6.1.10-47-amd64", None),
        ("5.15.0-91-generic", None),
        ("6.8.0-40-generic", None),
    ];
    for (krel, suite) in cases {
        let k = KernelRelease::parse(krel).unwrap();
        assert_eq!(k.debian_suite(), suite, "{krel}");
    }
}

#[test]
fn headers_package_name() {
    let k = KernelRelease::parse("6.1.0-47-amd64").unwrap();
    assert_eq!(k.headers_package(), "linux-headers-6.1.0-47-amd64");
}

#[test]
fn arch_table() {
    check_table(
        Arch::parse,
        &["x86_64", "aarch64", "riscv64", "i686", "s390x"],
        &["", "X86_64", "arm-64", "x86 64", &"a".repeat(33)],
    );
    assert_eq!(Arch::host_default().as_str(), "x86_64");
    assert_eq!(Arch::parse("aarch64").unwrap().debian_arch(), Some("arm64"));
    assert_eq!(Arch::host_default().debian_arch(), Some("amd64"));
    assert_eq!(Arch::parse("riscv64").unwrap().debian_arch(), None);
}

#[test]
fn module_name_table() {
    check_table(
        ModuleName::parse,
        &[
            "acpi-call",
            "librem_ec_acpi",
            "linux-apfs-rw",
            "v4l2loopback",
            "nat-rtsp",
            "a.b+c",
        ],
        &[
            "",
            "-x",
            ".hidden",
            "_x",
            "a/b",
            "a b",
            "a~b",
            "a:b",
            &"m".repeat(65),
        ],
    );
}

#[test]
fn module_version_table() {
    check_table(
        ModuleVersion::parse,
        &[
            "1.2.2",
            "0~20220829+git",
            "2.11.1.0.20170917",
            "0.3.0-1",
            "1:2.3",
            "0.1.1dev+git20220316.e5c53d64",
        ],
        &[
            "",
            "~1",
            "-1",
            ".1",
            "1/2",
            "1 2",
            "1..2/x",
            &"1".repeat(129),
        ],
    );
}

#[test]
fn digest_and_key_table() {
    let good = "a".repeat(64);
    let bad = [
        "",
        "A".repeat(64).as_str(),
        &"a".repeat(63),
        &"a".repeat(65),
        &"g".repeat(64),
    ]
    .map(String::from);
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    check_table(SourceDigest::parse, &[&good], &bad);
    check_table(ArtifactKey::parse, &[&good], &bad);
    let d = SourceDigest::from_sha256([0xab; 32]);
    assert_eq!(d.as_str(), "ab".repeat(32));
    assert_eq!(ArtifactKey::from_sha256([1; 32]).as_str(), "01".repeat(32));
}

#[test]
fn serde_validates() {
    let k: KernelRelease = serde_json::from_str("\"6.1.0-47-amd64\"").unwrap();
    assert_eq!(serde_json::to_string(&k).unwrap(), "\"6.1.0-47-amd64\"");
    assert!(serde_json::from_str::<KernelRelease>("\"../etc\"").is_err());
    assert!(serde_json::from_str::<ModuleName>("\"a/b\"").is_err());
}

#[test]
fn traits_roundtrip() {
    let m: ModuleName = "acpi-call".parse().unwrap();
    assert_eq!(m.to_string(), "acpi-call");
    assert_eq!(AsRef::<str>::as_ref(&m), "acpi-call");
    assert_eq!(String::from(m.clone()), "acpi-call");
    assert_eq!(ModuleName::try_from("acpi-call".to_owned()).unwrap(), m);
}

#[test]
fn long_values_are_cut_in_errors() {
    let err = ModuleName::parse(&"x".repeat(1000)).unwrap_err();
    assert_eq!(err.value.chars().count(), MAX_QUOTED);
}

#[test]
fn module_patterns_match_whole_names() {
    let m = |s: &str| ModuleName::parse(s).unwrap();
    let p = |s: &str| ModulePattern::parse(s).unwrap();
    let cases = [
        ("r8152", "r8152", true),
        ("r8152", "r8152x", false),
        ("r8152", "xr8152", false),
        ("realtek-*", "realtek-r8152", true),
        ("realtek-*", "realtek-", true),
        ("realtek-*", "realtek", false),
        ("*", "anything", true),
        ("kmfhello*", "kmf-hello", false),
        ("kmf*hello", "kmf-hello", true),
        ("*-dkms-*", "a-dkms-b", true),
        (
            "a*a*a*a*b",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            false,
        ),
        ("R8152", "r8152", false),
    ];
    for (pattern, name, want) in cases {
        assert_eq!(p(pattern).matches(&m(name)), want, "{pattern} vs {name}");
    }
}

#[test]
fn patterns_and_token_names_are_closed_sets() {
    for bad in ["", "a/b", "a b", "../x", "-x", &"x".repeat(65)] {
        assert!(ModulePattern::parse(bad).is_err(), "pattern {bad:?}");
    }
    for bad in ["", "a/b", "cli:root", "*", "-x", "a b"] {
        assert!(TokenName::parse(bad).is_err(), "token name {bad:?}");
    }
    assert!(TokenName::parse("ci-realtek.2").is_ok());
}
