//! MAKE/PATCH selection and BUILD_EXCLUSIVE.

use super::*;

#[test]
fn make_selection_table() {
    let j = "make -j2 KERNELRELEASE=6.1.0-47-amd64";
    let default =
        format!("{j} -C /lib/modules/6.1.0-47-amd64/build M=/var/lib/dkms/acpi-call/1.2.2/build");
    let cases: Vec<(Vec<Rec>, String, usize)> = vec![
        (vec![("d", "MAKE", 0, "make a")], format!("{j} a"), 0),
        (
            vec![
                ("d", "MAKE", 0, "make a"),
                ("d", "MAKE_MATCH", 0, "^5"),
                ("m", "MAKE_MATCH", 0, "0"),
            ],
            default.clone(),
            0,
        ),
        (
            vec![
                ("d", "MAKE", 0, "make a"),
                ("d", "MAKE_MATCH", 0, "^6"),
                ("m", "MAKE_MATCH", 0, "1"),
            ],
            format!("{j} a"),
            0,
        ),
        (
            vec![
                ("d", "MAKE", 0, "make a"),
                ("d", "MAKE", 1, "make b"),
                ("d", "MAKE_MATCH", 1, "^6"),
                ("m", "MAKE_MATCH", 1, "1"),
            ],
            format!("{j} b"),
            0,
        ),
        (
            vec![
                ("d", "MAKE", 0, "make a"),
                ("d", "MAKE", 1, "make b"),
                ("d", "MAKE_MATCH", 1, "^5"),
                ("m", "MAKE_MATCH", 1, "0"),
            ],
            format!("{j} a"),
            0,
        ),
        (
            vec![
                ("d", "MAKE", 1, "make b"),
                ("d", "MAKE_MATCH", 1, "."),
                ("m", "MAKE_MATCH", 1, "1"),
                ("d", "MAKE", 2, "make c"),
                ("d", "MAKE_MATCH", 2, "6"),
                ("m", "MAKE_MATCH", 2, "1"),
                ("d", "MAKE", 0, ""),
            ],
            format!("{j} c"),
            0,
        ),
        // Sparse: one set element, so DKMS's loop never reaches index 3.
        (
            vec![
                ("d", "MAKE", 3, "make d"),
                ("d", "MAKE_MATCH", 3, "."),
                ("m", "MAKE_MATCH", 3, "1"),
            ],
            default.clone(),
            1,
        ),
        // An empty MAKE[i] short-circuits before its regex is tested.
        (
            vec![("d", "MAKE", 0, ""), ("d", "MAKE_MATCH", 0, "(")],
            default,
            0,
        ),
    ];
    for (records, expected, warnings) in cases {
        let p = plan(&with(&records));
        assert_eq!(p.make, expected, "{records:?}");
        assert_eq!(p.warnings.len(), warnings, "{:?}", p.warnings);
    }
}

#[test]
fn parallel_jobs_zero_gives_bare_j() {
    let mut c = ctx();
    c.parallel_jobs = 0;
    let Ok(Evaluation::Build(p)) = eval_in(&with(&[("d", "MAKE", 0, "make all")]), &c) else {
        panic!()
    };
    assert_eq!(p.make, "make -j KERNELRELEASE=6.1.0-47-amd64 all");
}

#[test]
fn patch_selection() {
    let p = plan(&with(&[
        ("d", "PATCH", 0, "always.patch"),
        ("d", "PATCH", 1, "old.patch"),
        ("d", "PATCH_MATCH", 1, "^4\\."),
        ("m", "PATCH_MATCH", 1, "0"),
        ("d", "PATCH", 2, "new.patch"),
        ("d", "PATCH_MATCH", 2, "^6\\."),
        ("m", "PATCH_MATCH", 2, "1"),
        ("d", "PATCH", 3, ""),
    ]));
    assert_eq!(p.patches, vec!["always.patch", "new.patch"]);
}

#[test]
fn build_exclusive_table() {
    let k = "6.1.0-47-amd64";
    let cases: Vec<(&str, Vec<Rec>, Option<&str>)> = vec![
        (k, vec![], None),
        (k, vec![("d", "BUILD_EXCLUSIVE_KERNEL", 0, "^6\\."), ("m", "BUILD_EXCLUSIVE_KERNEL", 0, "1")], None),
        (k, vec![("d", "BUILD_EXCLUSIVE_KERNEL", 0, "^5\\."), ("m", "BUILD_EXCLUSIVE_KERNEL", 0, "0")], Some("BUILD_EXCLUSIVE_KERNEL: kernel 6.1.0-47-amd64 does not match \"^5\\\\.\"")),
        (k, vec![("d", "BUILD_EXCLUSIVE_KERNEL_MIN", 0, "2.6.39")], None),
        (k, vec![("d", "BUILD_EXCLUSIVE_KERNEL_MIN", 0, "6.2")], Some("BUILD_EXCLUSIVE_KERNEL_MIN: kernel 6.1.0-47-amd64 is older than 6.2")),
        (k, vec![("d", "BUILD_EXCLUSIVE_KERNEL_MAX", 0, "6.1")], Some("BUILD_EXCLUSIVE_KERNEL_MAX: kernel 6.1.0-47-amd64 is newer than 6.1")),
        ("4.12", vec![("d", "BUILD_EXCLUSIVE_KERNEL_MAX", 0, "4.12")], None),
        ("4.11.3", vec![("d", "BUILD_EXCLUSIVE_KERNEL_MAX", 0, "4.12")], None),
        ("4.12-rc1", vec![("d", "BUILD_EXCLUSIVE_KERNEL_MAX", 0, "4.12")], Some("BUILD_EXCLUSIVE_KERNEL_MAX: kernel 4.12-rc1 is newer than 4.12")),
        ("4.12.1", vec![("d", "BUILD_EXCLUSIVE_KERNEL_MAX", 0, "4.12")], Some("BUILD_EXCLUSIVE_KERNEL_MAX: kernel 4.12.1 is newer than 4.12")),
        ("3.5-rc2", vec![("d", "BUILD_EXCLUSIVE_KERNEL_MIN", 0, "3.5")], None),
        ("3.4.9", vec![("d", "BUILD_EXCLUSIVE_KERNEL_MIN", 0, "3.5")], Some("BUILD_EXCLUSIVE_KERNEL_MIN: kernel 3.4.9 is older than 3.5")),
        (k, vec![("d", "OBSOLETE_BY", 0, "5.15")], Some("OBSOLETE_BY: kernel 6.1.0-47-amd64 is newer than 5.15")),
        (k, vec![("d", "OBSOLETE_BY", 0, "5.15"), ("d", "BUILD_EXCLUSIVE_KERNEL_MAX", 0, "7.0")], None),
        (k, vec![("d", "BUILD_EXCLUSIVE_ARCH", 0, "x86_64|i.86"), ("m", "BUILD_EXCLUSIVE_ARCH", 0, "1")], None),
        (k, vec![("d", "BUILD_EXCLUSIVE_ARCH", 0, "^do_not_build$"), ("m", "BUILD_EXCLUSIVE_ARCH", 0, "0")], Some("BUILD_EXCLUSIVE_ARCH: arch x86_64 does not match \"^do_not_build$\"")),
        (k, vec![("d", "BUILD_EXCLUSIVE_CONFIG", 0, "CONFIG_ACPI CONFIG_HWMON"), ("c", "CONFIG_ACPI", 0, "y"), ("c", "CONFIG_HWMON", 0, "m")], None),
        (k, vec![("d", "BUILD_EXCLUSIVE_CONFIG", 0, "CONFIG_ACPI"), ("c", "CONFIG_ACPI", 0, "")], Some("BUILD_EXCLUSIVE_CONFIG: CONFIG_ACPI is not set in kernel 6.1.0-47-amd64")),
        (k, vec![("d", "BUILD_EXCLUSIVE_CONFIG", 0, "CONFIG_PCI")], Some("BUILD_EXCLUSIVE_CONFIG: CONFIG_PCI is not set in kernel 6.1.0-47-amd64")),
        (k, vec![("d", "BUILD_EXCLUSIVE_CONFIG", 0, "CONFIG_X"), ("c", "CONFIG_X", 0, "\"str\"")], Some("BUILD_EXCLUSIVE_CONFIG: CONFIG_X is not set in kernel 6.1.0-47-amd64")),
        (k, vec![("d", "BUILD_EXCLUSIVE_CONFIG", 0, "!CONFIG_PREEMPT_RT"), ("c", "CONFIG_PREEMPT_RT", 0, "")], None),
        (k, vec![("d", "BUILD_EXCLUSIVE_CONFIG", 0, " !CONFIG_PREEMPT_RT\t"), ("c", "CONFIG_PREEMPT_RT", 0, "y")], Some("BUILD_EXCLUSIVE_CONFIG: CONFIG_PREEMPT_RT is set in kernel 6.1.0-47-amd64 (the module requires !CONFIG_PREEMPT_RT)")),
        // A conf error beats exclusion; exclusion beats a bad patch path (DKMS's order).
        (k, vec![("d", "BUILD_EXCLUSIVE_KERNEL_MIN", 0, "9"), ("d", "PATCH", 0, "../p")], Some("BUILD_EXCLUSIVE_KERNEL_MIN: kernel 6.1.0-47-amd64 is older than 9")),
    ];
    for (kernel, records, expected) in cases {
        let c = ctx_for(kernel, "acpi-call", "1.2.2");
        assert_eq!(
            not_applicable(&with(&records), &c).as_deref(),
            expected,
            "{kernel} {records:?}"
        );
    }
    let err = eval(&with(&[
        ("d", "BUILD_EXCLUSIVE_KERNEL_MIN", 0, "9"),
        ("d", "AUTOINSTALL", 0, "x"),
    ]))
    .unwrap_err();
    assert_eq!(err.kind(), "invalid_yes_no");
}
