//! `archive::ingest` rejects hostile, malformed and oversized archives, each with
//! its stable error kind. Archives are built in memory, malicious headers byte by byte.

#[path = "fixtures/archive/build.rs"]
mod build;

use build::*;
use kmodforge_api::archive::{ingest, ArchiveLimits};
use tar::{EntryType, Header};

#[test]
fn archive_rejects_hostile_entries() {
    let long = "d/".repeat(520) + "f";
    let cases: Vec<(&str, Vec<Ent>, &str)> = vec![
        (
            "dot-dot path",
            vec![conf(), file("../../etc/passwd", "x")],
            "parent_dir",
        ),
        (
            "dot-dot inside",
            vec![conf(), file("a/../../x", "x")],
            "parent_dir",
        ),
        ("dot-dot dir", vec![conf(), dir("..")], "parent_dir"),
        (
            "dot-dot via pax path",
            vec![
                conf(),
                pax(EntryType::XHeader, "path", "../evil"),
                file("innocent", "x"),
            ],
            "parent_dir",
        ),
        (
            "absolute path",
            vec![conf(), file("/etc/passwd", "x")],
            "absolute_path",
        ),
        (
            "non-UTF-8 path",
            vec![
                conf(),
                Ent {
                    name: b"bad\xff.c".to_vec(),
                    ..file("", "x")
                },
            ],
            "invalid_path",
        ),
        (
            "root as a file",
            vec![conf(), file("./", "x")],
            "invalid_path",
        ),
        (
            "symlink empty",
            vec![conf(), symlink("l", "")],
            "invalid_path",
        ),
        (
            "symlink cycle",
            vec![conf(), symlink("a", "b"), symlink("b", "a")],
            "link_loop",
        ),
        (
            "hard link up",
            vec![conf(), hardlink("h", "../etc/passwd")],
            "link_escapes",
        ),
        (
            "hard link absolute",
            vec![conf(), hardlink("h", "/etc/passwd")],
            "link_escapes",
        ),
        (
            "hard link dangling",
            vec![conf(), hardlink("h", "missing")],
            "bad_hard_link",
        ),
        (
            "hard link forward",
            vec![conf(), hardlink("h", "later"), file("later", "x")],
            "bad_hard_link",
        ),
        (
            "hard link to dir",
            vec![conf(), dir("d"), hardlink("h", "d")],
            "bad_hard_link",
        ),
        (
            "hard link to symlink",
            vec![conf(), symlink("s", "dkms.conf"), hardlink("h", "s")],
            "bad_hard_link",
        ),
        (
            "char device",
            vec![conf(), ent("null", EntryType::Char)],
            "special_file",
        ),
        (
            "block device",
            vec![conf(), ent("sda", EntryType::Block)],
            "special_file",
        ),
        (
            "fifo",
            vec![conf(), ent("pipe", EntryType::Fifo)],
            "special_file",
        ),
        (
            "volume label",
            vec![conf(), ent("vol", EntryType::new(b'V'))],
            "unsupported_entry",
        ),
        (
            "duplicate file",
            vec![conf(), file("a", "1"), file("a", "2")],
            "duplicate_entry",
        ),
        (
            "duplicate via ./",
            vec![conf(), file("a", "1"), file("./a", "2")],
            "duplicate_entry",
        ),
        (
            "duplicate dkms.conf",
            vec![conf(), conf()],
            "duplicate_entry",
        ),
        (
            "file then dir",
            vec![conf(), file("a", "1"), dir("a")],
            "duplicate_entry",
        ),
        (
            "dir then symlink",
            vec![conf(), dir("a"), symlink("a", "b")],
            "duplicate_entry",
        ),
        (
            "below a file",
            vec![conf(), file("a", "1"), file("a/b", "2")],
            "path_conflict",
        ),
        (
            "below a symlink",
            vec![conf(), symlink("l", "d"), dir("d"), file("l/x", "2")],
            "path_conflict",
        ),
        (
            "path too long",
            vec![conf(), file(&long, "x")],
            "path_too_long",
        ),
        (
            "link target too long",
            vec![conf(), symlink("l", &long)],
            "path_too_long",
        ),
        (
            "no dkms.conf",
            vec![file("Makefile", "all:")],
            "no_dkms_conf",
        ),
        (
            "two top folders",
            vec![file("a/dkms.conf", "x"), file("b/dkms.conf", "x")],
            "no_dkms_conf",
        ),
        (
            "folder plus file",
            vec![file("pkg/dkms.conf", "x"), file("README", "x")],
            "no_dkms_conf",
        ),
        (
            "two levels deep",
            vec![file("a/b/dkms.conf", "x")],
            "no_dkms_conf",
        ),
        (
            "dkms.conf is a dir",
            vec![dir("dkms.conf"), file("dkms.conf/x", "x")],
            "no_dkms_conf",
        ),
        (
            "dkms.conf is a symlink",
            vec![file("real", "x"), symlink("dkms.conf", "real")],
            "no_dkms_conf",
        ),
        ("only the root", vec![dir("./"), dir(".")], "empty_archive"),
        ("nothing", vec![], "empty_archive"),
    ];
    for (name, entries, expected) in cases {
        let kind = kind_of(&tar_of(&entries), &ArchiveLimits::default());
        assert_eq!(kind, expected, "case {name}");
    }
}

#[test]
fn archive_rejects_malformed_bodies() {
    let mut noise = Vec::with_capacity(4096);
    let mut x: u32 = 0x1234_5678;
    while noise.len() < 4096 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        noise.push((x >> 24) as u8);
    }
    let valid = tar_of(&[conf(), file("big.c", &"x".repeat(2000))]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random bytes", noise.clone(), "not_a_tar"),
        ("text", b"PACKAGE_NAME=hello\n".repeat(40), "not_a_tar"),
        ("xz", [&b"\xfd7zXZ\x00"[..], &noise].concat(), "not_a_tar"),
        ("bzip2", [&b"BZh91AY&SY"[..], &noise].concat(), "not_a_tar"),
        (
            "corrupt gzip",
            [&[0x1f, 0x8b][..], &noise].concat(),
            "bad_gzip",
        ),
        ("truncated gzip", gz(&valid)[..100].to_vec(), "bad_gzip"),
        (
            "truncated data",
            valid[..512 * 3 + 100].to_vec(),
            "truncated",
        ),
        (
            "truncated header",
            valid[..512 * 2 + 100].to_vec(),
            "not_a_tar",
        ),
        ("empty body", Vec::new(), "empty_archive"),
    ];
    for (name, input, expected) in cases {
        assert_eq!(
            kind_of(&input, &ArchiveLimits::default()),
            expected,
            "case {name}"
        );
    }
}

#[test]
fn archive_limits_are_enforced_while_streaming() {
    let small = ArchiveLimits {
        max_input_bytes: 64 * 1024,
        max_unpacked_bytes: 1000,
        max_entries: 6,
        max_gzip_ratio: 200,
        max_path_bytes: 64,
    };
    let many: Vec<Ent> = (0..7).map(|i| file(&format!("f{i}"), "x")).collect();
    let huge_claim = Ent {
        data: Vec::new(),
        ..file("claims-1TiB", "")
    };
    let mut huge_claim_tar = tar_of(&[conf(), huge_claim]);
    let mut h = Header::new_gnu();
    h.as_mut_bytes()
        .copy_from_slice(&huge_claim_tar[1024..1536]);
    h.set_size(1 << 40);
    h.set_cksum();
    huge_claim_tar[1024..1536].copy_from_slice(h.as_bytes());
    // Padding disguised as a pax record: no file data, but a long tar stream.
    let filler = Ent {
        data: vec![b'a'; 200_000],
        ..ent("pax", EntryType::XGlobalHeader)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("too many entries", tar_of(&many), "too_many_entries"),
        (
            "pax headers count",
            tar_of(&vec![pax(EntryType::XGlobalHeader, "comment", "x"); 7]),
            "too_many_entries",
        ),
        (
            "implicit parents count",
            tar_of(&[conf(), file("a/b/c/d/e/f", "x")]),
            "too_many_entries",
        ),
        ("input too large", vec![0; 64 * 1024 + 1], "too_large"),
        (
            "unpacked too large",
            tar_of(&[conf(), file("big", &"x".repeat(1001))]),
            "too_large",
        ),
        (
            "hard-link copies count",
            tar_of(&[conf(), file("a", &"x".repeat(600)), hardlink("b", "a")]),
            "too_large",
        ),
        ("size claim over budget", huge_claim_tar, "too_large"),
        ("stream filler", gz(&tar_of(&[conf(), filler])), "too_large"),
        (
            "path over limit",
            tar_of(&[conf(), file(&"p".repeat(65), "x")]),
            "path_too_long",
        ),
    ];
    for (name, input, expected) in cases {
        assert_eq!(kind_of(&input, &small), expected, "case {name}");
    }
}

#[test]
fn archive_gzip_bomb_hits_the_ratio_limit() {
    let bomb = zeros_tar_gz(64);
    assert!(bomb.len() < 200_000, "the bomb is small: {}", bomb.len());
    assert_eq!(kind_of(&bomb, &ArchiveLimits::default()), "gzip_bomb");
    let err = ingest(&bomb, &ArchiveLimits::default()).expect_err("bomb");
    assert!(err.to_string().contains("200x"), "{err}");
    // With the ratio out of the way, the size budget still stops it.
    let lenient = ArchiveLimits {
        max_gzip_ratio: 1_000_000,
        max_unpacked_bytes: 32 << 20,
        ..Default::default()
    };
    assert_eq!(kind_of(&bomb, &lenient), "too_large");
}

#[test]
fn archive_gzip_ratio_is_not_checked_below_16_mib() {
    let tree = ok(&zeros_tar_gz(8));
    assert_eq!(tree.files, 2);
    assert_eq!(tree.bytes, (8 << 20) - 512 + 39);
}

#[test]
fn archive_errors_are_one_line_and_name_the_entry() {
    let err = ingest(
        &tar_of(&[conf(), file("../../etc/passwd", "x")]),
        &ArchiveLimits::default(),
    )
    .expect_err("parent dir");
    assert_eq!(
        err.to_string(),
        r#"archive entry "../../etc/passwd" leaves the source tree"#
    );
    let mut noise = b"\n\x1b[31m".repeat(100);
    noise.resize(4096, b'x');
    let garbage = ingest(&noise, &ArchiveLimits::default()).expect_err("garbage");
    assert!(!garbage.to_string().contains(['\n', '\x1b']), "{garbage}");
    let evil = tar_of(&[conf(), hardlink("a\nERROR forged", "/etc/passwd")]);
    let message = ingest(&evil, &ArchiveLimits::default())
        .expect_err("escape")
        .to_string();
    assert!(
        !message.contains('\n') && message.contains(r#""a\nERROR forged""#),
        "{message}"
    );
    let long = ingest(
        &tar_of(&[conf(), file(&"x/".repeat(600), "")]),
        &ArchiveLimits::default(),
    );
    assert!(long.expect_err("long").to_string().len() < 400);
}
