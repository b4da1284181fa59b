//! `archive::ingest` normalizes: the digest and the normalized tar depend on the
//! tree only, never on how it was packed.

#[path = "fixtures/archive/build.rs"]
mod build;

use build::*;
use tar::EntryType;

/// The base tree of the digest tests, as the uploader might have packed it.
fn base(prefix: &str) -> Vec<Ent> {
    let p = |path: &str| format!("{prefix}{path}");
    vec![
        conf_at(&p("dkms.conf")),
        file(&p("Makefile"), "obj-m += hello.o\n"),
        dir(&p("src")),
        file(&p("src/hello.c"), "int x;\n"),
        symlink(&p("src/alias.c"), "hello.c"),
        exe(&p("scripts/run.sh"), "#!/bin/sh\n"),
    ]
}

fn conf_at(path: &str) -> Ent {
    Ent {
        name: path.as_bytes().to_vec(),
        ..conf()
    }
}

#[test]
fn archive_digest_ignores_packing() {
    let reference = ok(&tar_of(&base("")));
    let restamped: Vec<Ent> = base("")
        .into_iter()
        .map(|e| Ent {
            mtime: 7,
            uid: 0,
            ..e
        })
        .collect();
    let reordered: Vec<Ent> = base("").into_iter().rev().collect();
    let exec_700: Vec<Ent> = base("")
        .into_iter()
        .map(|e| {
            if e.mode == 0o755 {
                Ent { mode: 0o700, ..e }
            } else {
                e
            }
        })
        .collect();
    let mut with_extras = vec![
        pax(EntryType::XGlobalHeader, "comment", "git-archive"),
        dir("./"),
        dir("scripts/"),
    ];
    with_extras.extend(base("./"));
    with_extras.push(dir("src"));
    let mut with_pax_path = base("");
    with_pax_path[1] = Ent {
        name: b"ignored".to_vec(),
        ..with_pax_path[1].clone()
    };
    with_pax_path.insert(1, pax(EntryType::XHeader, "path", "Makefile"));
    let variants: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("mtime and owner", tar_of(&restamped), None),
        ("entry order", tar_of(&reordered), None),
        ("any exec bit", tar_of(&exec_700), None),
        ("gzip", gz(&tar_of(&base(""))), None),
        ("top folder", tar_of(&base("hello-1.0/")), Some("hello-1.0")),
        (
            "other top folder, gzip",
            gz(&tar_of(&base("./other-2.0/"))),
            Some("other-2.0"),
        ),
        ("pax, ./ and repeated dirs", tar_of(&with_extras), None),
        ("pax path", tar_of(&with_pax_path), None),
        ("normalized tar", reference.normalized_tar.clone(), None),
    ];
    for (name, input, prefix) in variants {
        let tree = ok(&input);
        assert_eq!(tree.digest, reference.digest, "variant {name}");
        assert_eq!(
            tree.normalized_tar, reference.normalized_tar,
            "variant {name}"
        );
        assert_eq!(tree.stripped_prefix.as_deref(), prefix, "variant {name}");
    }
}

#[test]
fn archive_hard_links_become_copies() {
    let copy = ok(&tar_of(&[conf(), exe("a", "data"), exe("b", "data")]));
    let linked = ok(&tar_of(&[
        conf(),
        exe("a", "data"),
        Ent {
            mode: 0o644,
            ..hardlink("b", "a")
        },
    ]));
    assert_eq!(linked.digest, copy.digest);
    assert_eq!((linked.files, linked.bytes), (3, 39 + 8));
}

#[test]
fn archive_digest_follows_content() {
    let edit = |f: fn(&mut Vec<Ent>)| {
        let mut entries = base("");
        f(&mut entries);
        ok(&tar_of(&entries)).digest
    };
    let digests = [
        ("reference", edit(|_| {})),
        ("content", edit(|e| e[3].data = b"int y;\n".to_vec())),
        ("exec bit", edit(|e| e[1].mode = 0o755)),
        ("exec bit off", edit(|e| e[5].mode = 0o644)),
        ("rename", edit(|e| e[3].name = b"src/hello2.c".to_vec())),
        (
            "symlink target",
            edit(|e| e[4].link = b"./missing.c".to_vec()),
        ),
        (
            "symlink as file",
            edit(|e| e[4] = file("src/alias.c", "hello.c")),
        ),
        ("empty dir", edit(|e| e.push(dir("empty")))),
        ("empty file", edit(|e| e.push(file("empty", "")))),
    ];
    for (i, (a, da)) in digests.iter().enumerate() {
        for (b, db) in &digests[i + 1..] {
            assert_ne!(da, db, "{a} vs {b}");
        }
    }
}

#[test]
fn archive_normalized_tar_is_canonical() {
    let tree = ok(&gz(&tar_of(&base("pkg-1/"))));
    assert_eq!(tree.dkms_conf, "PACKAGE_NAME=hello\nPACKAGE_VERSION=1.0\n");
    assert_eq!((tree.files, tree.bytes), (4, 39 + 17 + 7 + 10));
    assert_eq!(tree.digest.as_str().len(), 64);
    let rows = entries_of(&tree.normalized_tar);
    let shape: Vec<(&str, char, u32, &str)> = rows
        .iter()
        .map(|r| (r.path.as_str(), r.kind, r.mode, r.link.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("Makefile", '0', 0o644, ""),
            ("dkms.conf", '0', 0o644, ""),
            ("scripts/", '5', 0o755, ""),
            ("scripts/run.sh", '0', 0o755, ""),
            ("src/", '5', 0o755, ""),
            ("src/alias.c", '2', 0o777, "hello.c"),
            ("src/hello.c", '0', 0o644, ""),
        ]
    );
    assert_eq!(rows[3].data, b"#!/bin/sh\n");
    assert_eq!(ok(&tree.normalized_tar).normalized_tar, tree.normalized_tar);
}

#[test]
fn archive_long_paths_survive_normalization() {
    let long_dir = "very-long-directory-name/".repeat(6);
    let long = format!("{long_dir}file.c");
    let target = format!("../{}", "x".repeat(120));
    let tree = ok(&tar_of(&[
        conf(),
        file(&long, "x"),
        symlink(&format!("{long_dir}l"), &target),
    ]));
    let rows = entries_of(&tree.normalized_tar);
    assert!(
        rows.iter().any(|r| r.path == long && r.data == b"x"),
        "long file kept"
    );
    assert!(
        rows.iter().any(|r| r.link == target),
        "long link target kept"
    );
    assert_eq!(
        rows.iter().filter(|r| r.kind == '5').count(),
        6,
        "parents explicit"
    );
}

/// Symlinks that lead outside the tree are dropped and reported, never refused:
/// Debian ships `README.gz -> ../../share/doc/…` inside `/usr/src/<m>-<v>`. The
/// tree without them has the same digest as a tree that never had them.
#[test]
fn archive_drops_escaping_symlinks_and_reports_them() {
    let escaping = [
        ("README.gz", "../../share/doc/pkg/README.gz"),
        ("abs", "/etc/shadow"),
        ("src/up", "../../x"),
    ];
    let mut with_links = base("pkg-1.0/");
    for (path, target) in escaping {
        with_links.push(symlink(&format!("pkg-1.0/{path}"), target));
    }
    // Through another link: d/up -> .. is the root, so d/up/.. is above it.
    with_links.push(dir("pkg-1.0/d"));
    with_links.push(symlink("pkg-1.0/d/up", ".."));
    with_links.push(symlink("pkg-1.0/through", "d/up/.."));
    let mut clean = base("");
    clean.push(dir("d"));
    clean.push(symlink("d/up", ".."));

    let tree = ok(&tar_of(&with_links));
    let dropped: Vec<(String, String)> = tree
        .dropped_links
        .iter()
        .map(|l| (l.path.clone(), l.target.clone()))
        .collect();
    assert_eq!(
        dropped,
        vec![
            ("README.gz".into(), "../../share/doc/pkg/README.gz".into()),
            ("abs".into(), "/etc/shadow".into()),
            ("src/up".into(), "../../x".into()),
            ("through".into(), "d/up/..".into()),
        ]
    );
    let reference = ok(&tar_of(&clean));
    assert!(reference.dropped_links.is_empty());
    assert_eq!(tree.digest, reference.digest);
    assert_eq!(tree.normalized_tar, reference.normalized_tar);
}
