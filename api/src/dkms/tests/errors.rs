//! Every rule that makes a dump invalid.

use super::*;

#[test]
fn conf_errors() {
    let hole_built: &[Rec] = &[
        ("d", "BUILT_MODULE_NAME", 1, "b"),
        ("d", "DEST_MODULE_LOCATION", 1, "/extra"),
    ];
    let cases: Vec<(Vec<Rec>, &str, &str)> = vec![
        (
            vec![("d", "PACKAGE_VERSION", 0, "1")],
            "missing_required",
            "No 'PACKAGE_NAME' directive specified",
        ),
        (
            vec![("d", "PACKAGE_NAME", 0, "x")],
            "missing_required",
            "No 'PACKAGE_VERSION' directive specified",
        ),
        (
            vec![
                ("d", "PACKAGE_NAME", 0, ""),
                ("d", "PACKAGE_VERSION", 0, "1"),
            ],
            "missing_required",
            "PACKAGE_NAME",
        ),
        (
            with(hole_built),
            "hole",
            "No 'BUILT_MODULE_NAME' directive specified for record #0",
        ),
        (
            with(&[
                ("d", "BUILT_MODULE_NAME", 0, "a"),
                ("d", "BUILT_MODULE_NAME", 1, "b"),
            ]),
            "hole",
            "No 'DEST_MODULE_LOCATION' directive specified for record #1",
        ),
        (
            with(&[("d", "BUILT_MODULE_NAME", 0, "foo.ko")]),
            "bad_module_name",
            "'BUILT_MODULE_NAME[0]' \"foo.ko\"",
        ),
        (
            with(&[("d", "DEST_MODULE_NAME", 0, "foo.o")]),
            "bad_module_name",
            "'DEST_MODULE_NAME[0]'",
        ),
        (
            with(&[("d", "BUILT_MODULE_NAME", 0, "../x")]),
            "bad_module_name",
            "only A-Z",
        ),
        (
            with(&[("d", "DEST_MODULE_NAME", 0, "a b")]),
            "bad_module_name",
            "only A-Z",
        ),
        (
            with(&[("d", "BUILT_MODULE_LOCATION", 0, "/abs")]),
            "bad_built_location",
            "relative",
        ),
        (
            with(&[("d", "BUILT_MODULE_LOCATION", 0, "src/../../x")]),
            "bad_built_location",
            "'..'",
        ),
        (
            with(&[("d", "AUTOINSTALL", 0, "maybe")]),
            "invalid_yes_no",
            "'AUTOINSTALL'",
        ),
        (
            with(&[("d", "NO_WEAK_MODULES", 0, "1")]),
            "invalid_yes_no",
            "'NO_WEAK_MODULES'",
        ),
        (
            with(&[("d", "BUILD_DEPENDS_REBUILD", 0, "true")]),
            "invalid_yes_no",
            "'BUILD_DEPENDS_REBUILD'",
        ),
        (
            with(&[("d", "PATCH", 0, "../x.patch")]),
            "bad_patch_path",
            "'PATCH[0]'",
        ),
        (
            with(&[("d", "PATCH", 0, "/etc/x.patch")]),
            "bad_patch_path",
            "relative",
        ),
        (
            with(&[
                ("d", "MAKE", 1, "make x"),
                ("d", "MAKE", 0, "make"),
                ("d", "MAKE_MATCH", 1, "(("),
                ("m", "MAKE_MATCH", 1, "2"),
            ]),
            "invalid_regex",
            "'MAKE_MATCH[1]'",
        ),
        (
            with(&[("d", "PATCH", 0, "a"), ("d", "PATCH_MATCH", 0, "[")]),
            "bad_dump",
            "no match result for PATCH_MATCH[0]",
        ),
        (
            with(&[
                ("d", "BUILD_EXCLUSIVE_KERNEL", 0, "(("),
                ("m", "BUILD_EXCLUSIVE_KERNEL", 0, "2"),
            ]),
            "invalid_regex",
            "BUILD_EXCLUSIVE_KERNEL[0]",
        ),
        (
            with(&[("v", "kernelver", 0, "6.1.0-56-amd64")]),
            "bad_dump",
            "kernelver",
        ),
        (
            with(&[("v", "dkms_tree", 0, "/srv/dkms")]),
            "bad_dump",
            "dkms_tree",
        ),
        (
            with(&[("d", "BUILT_MODULE_NAME", 4_000_000_000, "x")]),
            "hole",
            "BUILT_MODULE_NAME' directive specified for record #0",
        ),
    ];
    let mut dest_cases: Vec<(Vec<Rec>, &str, &str)> =
        ["/lib/x", "updates", "/updates/../../etc", ""]
            .iter()
            .map(|loc| {
                let kind = if loc.is_empty() {
                    "hole"
                } else {
                    "bad_dest_location"
                };
                (
                    vec![
                        ("d", "PACKAGE_NAME", 0, "p"),
                        ("d", "PACKAGE_VERSION", 0, "1"),
                        ("d", "DEST_MODULE_LOCATION", 0, *loc),
                    ],
                    kind,
                    "DEST_MODULE_LOCATION",
                )
            })
            .collect();
    dest_cases.extend(cases);
    for (records, kind, needle) in dest_cases {
        let err = eval(&records).expect_err(needle);
        assert_eq!(err.kind(), kind, "{err}");
        assert!(
            err.to_string().contains(needle),
            "{err:?} should contain {needle:?}"
        );
    }
}
