//! Module records, flags and warnings.

use super::*;

#[test]
fn module_defaults_and_distro_override() {
    let records = with(&[
        ("d", "BUILT_MODULE_NAME", 0, "a"),
        ("d", "BUILT_MODULE_LOCATION", 0, "src/mod"),
        ("d", "BUILT_MODULE_NAME", 1, "b"),
        ("d", "BUILT_MODULE_LOCATION", 1, "drv/"),
        ("d", "DEST_MODULE_NAME", 1, "b2"),
        ("d", "DEST_MODULE_LOCATION", 1, "/kernel/drivers/misc"),
    ]);
    let cases = [
        (Distro::Debian, ["/updates/dkms", "/updates/dkms"]),
        (Distro::Ubuntu, ["/updates/dkms", "/updates/dkms"]),
        (Distro::Arch, ["/updates/dkms", "/updates/dkms"]),
        (Distro::Fedora, ["/extra", "/extra"]),
        (Distro::Rhel, ["/extra", "/extra"]),
        (Distro::Suse, ["/updates", "/updates"]),
        (Distro::Other, ["/extra", "/kernel/drivers/misc"]),
    ];
    for (distro, locations) in cases {
        let mut c = ctx();
        c.distro = distro;
        let Ok(Evaluation::Build(p)) = eval_in(&records, &c) else {
            panic!("{distro:?}")
        };
        let got: Vec<_> = p
            .modules
            .iter()
            .map(|m| {
                (
                    m.built_location.as_str(),
                    m.built_name.as_str(),
                    m.dest_name.as_str(),
                    m.dest_location.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("src/mod/", "a", "a", locations[0]),
                ("drv/", "b", "b2", locations[1])
            ],
            "{distro:?}"
        );
    }
}

#[test]
fn single_record_defaults_to_package_name() {
    let p = plan(&with(&[]));
    assert_eq!(
        (
            p.modules[0].built_name.as_str(),
            p.modules[0].dest_name.as_str()
        ),
        ("acpi-call", "acpi-call")
    );
}

#[test]
fn distro_names_follow_dkms_prefixes() {
    let cases = [
        ("debian", Distro::Debian),
        ("ubuntu", Distro::Ubuntu),
        ("archlinux", Distro::Arch),
        ("fedora", Distro::Fedora),
        ("rhel fedora", Distro::Rhel),
        ("ovm", Distro::Rhel),
        ("opensuse", Distro::Suse),
        ("suse", Distro::Suse),
        ("sles", Distro::Suse),
        ("gentoo", Distro::Other),
    ];
    for (name, distro) in cases {
        assert_eq!(Distro::from_dkms_name(name), distro, "{name}");
    }
}

#[test]
fn strip_table() {
    let three: [Rec; 3] = [
        ("d", "BUILT_MODULE_NAME", 0, "a"),
        ("d", "BUILT_MODULE_NAME", 1, "b"),
        ("d", "BUILT_MODULE_NAME", 2, "c"),
    ];
    let dests: [Rec; 2] = [
        ("d", "DEST_MODULE_LOCATION", 1, "/extra"),
        ("d", "DEST_MODULE_LOCATION", 2, "/extra"),
    ];
    let cases: [(&[Rec], [bool; 3], usize); 6] = [
        (&[], [true, true, true], 0),
        (&[("d", "STRIP", 0, "no")], [false, false, false], 0),
        (
            &[("d", "STRIP", 0, "N"), ("d", "STRIP", 2, "yes")],
            [false, false, true],
            0,
        ),
        (
            &[("d", "STRIP", 1, "n"), ("d", "STRIP", 2, "")],
            [true, false, true],
            0,
        ),
        (
            &[("d", "STRIP", 0, "YES"), ("d", "STRIP", 1, "nope")],
            [true, false, true],
            0,
        ),
        (
            &[("d", "STRIP", 0, "bogus"), ("d", "STRIP", 1, "maybe")],
            [true, true, true],
            2,
        ),
    ];
    for (strip, expected, warnings) in cases {
        let mut records = with(&three);
        records.extend_from_slice(&dests);
        records.extend_from_slice(strip);
        let p = plan(&records);
        let got: Vec<bool> = p.modules.iter().map(|m| m.strip).collect();
        assert_eq!(got, expected, "{strip:?}");
        assert_eq!(p.warnings.len(), warnings, "{:?}", p.warnings);
    }
}

#[test]
fn yes_no_table() {
    let cases = [
        (None, false),
        (Some(""), false),
        (Some("yes"), true),
        (Some("YES"), true),
        (Some("Yes"), true),
        (Some("no"), false),
        (Some("NO"), false),
    ];
    for (value, expected) in cases {
        let extra: Vec<Rec> = value
            .into_iter()
            .flat_map(|v| {
                [
                    ("d", "AUTOINSTALL", 0, v),
                    ("d", "NO_WEAK_MODULES", 0, v),
                    ("d", "BUILD_DEPENDS_REBUILD", 0, v),
                ]
            })
            .collect();
        let p = plan(&with(&extra));
        assert_eq!(
            (p.autoinstall, p.no_weak_modules),
            (expected, expected),
            "{value:?}"
        );
    }
}

#[test]
fn deprecation_warnings() {
    let cases: [(&[Rec], &[&str]); 5] = [
        (
            &[("d", "CLEAN", 0, "make clean")],
            &["Deprecated feature: CLEAN"],
        ),
        (&[("d", "CLEAN", 0, "true")], &[]),
        (&[("d", "CLEAN", 0, "/bin/true")], &[]),
        (
            &[("d", "REMAKE_INITRD", 0, "yes")],
            &["Deprecated feature: REMAKE_INITRD"],
        ),
        (
            &[
                ("d", "MODULES_CONF", 1, "x"),
                ("d", "MODULES_CONF_OBSOLETES", 0, ""),
                ("d", "MODULES_CONF_ALIAS_TYPE", 0, "a"),
                ("d", "MODULES_CONF_OBSOLETE_ONLY", 0, "y"),
            ],
            &[
                "Deprecated feature: MODULES_CONF",
                "Deprecated feature: MODULES_CONF_OBSOLETES",
                "Deprecated feature: MODULES_CONF_ALIAS_TYPE",
                "Deprecated feature: MODULES_CONF_OBSOLETE_ONLY",
            ],
        ),
    ];
    for (records, expected) in cases {
        assert_eq!(plan(&with(records)).warnings, expected, "{records:?}");
    }
}

#[test]
fn duplicates_are_warnings() {
    // ipu6-drivers: the same record twice. Both duplicate checks fire; one copy is kept.
    let dup: [Rec; 3] = [
        ("d", "BUILT_MODULE_NAME", 0, "hm2170"),
        ("d", "BUILT_MODULE_NAME", 1, "hm2170"),
        ("d", "DEST_MODULE_LOCATION", 1, "/extra"),
    ];
    let p = plan(&with(&dup));
    assert_eq!(p.modules.len(), 1);
    assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
    assert!(
        p.warnings[0].starts_with("Duplicate module \"hm2170\" in 'BUILT_MODULE_NAME[1]'"),
        "{}",
        p.warnings[0]
    );
    assert!(
        p.warnings[1].starts_with("Duplicate module \"hm2170\" in 'DEST_MODULE_NAME[1]'"),
        "{}",
        p.warnings[1]
    );
    // Same DEST name from different sources: the later record wins.
    let clash: [Rec; 5] = [
        ("d", "BUILT_MODULE_NAME", 0, "a"),
        ("d", "DEST_MODULE_NAME", 0, "x"),
        ("d", "BUILT_MODULE_NAME", 1, "b"),
        ("d", "DEST_MODULE_NAME", 1, "x"),
        ("d", "DEST_MODULE_LOCATION", 1, "/extra"),
    ];
    let p = plan(&with(&clash));
    assert_eq!(
        p.modules
            .iter()
            .map(|m| m.built_name.as_str())
            .collect::<Vec<_>>(),
        vec!["b"]
    );
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn zero_modules_is_a_warning() {
    let p = plan(&[
        ("d", "PACKAGE_NAME", 0, "p"),
        ("d", "PACKAGE_VERSION", 0, "1"),
    ]);
    assert!(p.modules.is_empty());
    assert_eq!(p.warnings, vec!["Zero modules specified"]);
}
