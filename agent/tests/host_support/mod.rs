//! Fixtures shared by the host tests (`agent/tests/host_*.rs`, and the unit tests in
//! `agent/src/host/tests.rs` through `#[path]`): real module files compiled with gcc,
//! manifests, and temp roots laid out like `/lib/modules`.
//!
//! Depends only on std, `kmodforge_api` and `sha2`/`hex`, so it compiles in both places.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::Manifest;
use sha2::{Digest, Sha256};

pub const K1: &str = "6.1.0-47-amd64";
pub const K2: &str = "6.1.0-48-amd64";
pub const DEPMOD: &str = "/sbin/depmod";

/// A module to compile: its `.modinfo` fields.
#[derive(Clone, Debug)]
pub struct Ko<'a> {
    pub name: &'a str,
    pub version: Option<&'a str>,
    pub srcversion: Option<&'a str>,
    pub kernel: &'a str,
}

impl<'a> Ko<'a> {
    pub fn new(name: &'a str, version: &'a str, srcversion: &'a str, kernel: &'a str) -> Self {
        Ko {
            name,
            version: Some(version),
            srcversion: Some(srcversion),
            kernel,
        }
    }

    /// `gcc -c` of a C file whose `.modinfo` section holds these fields: an ELF
    /// relocatable object that depmod and modinfo accept as a module.
    pub fn build(&self) -> Vec<u8> {
        let mut info = String::new();
        if let Some(v) = self.version {
            info.push_str(&format!("version={v}\\0"));
        }
        if let Some(s) = self.srcversion {
            info.push_str(&format!("srcversion={s}\\0"));
        }
        info.push_str(&format!(
            "depends=\\0name={}\\0vermagic={} SMP preempt mod_unload modversions ",
            self.name, self.kernel
        ));
        let source = format!(
            "static const char kmf_modinfo[] __attribute__((section(\".modinfo\"), used, aligned(1))) = \"{info}\";\n\
             int init_module(void) {{ return 0; }}\n"
        );
        let dir = tempfile::tempdir().expect("temp dir for gcc");
        let (c, o) = (dir.path().join("m.c"), dir.path().join("m.o"));
        std::fs::write(&c, source).unwrap();
        let status = Command::new("gcc")
            .args(["-c", "-o"])
            .arg(&o)
            .arg(&c)
            .status()
            .expect("gcc must be installed for the host tests");
        assert!(status.success(), "gcc failed");
        std::fs::read(&o).unwrap()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A manifest for `files` (name, bytes) installed to `/updates/dkms`; the key is
/// derived from the contents, so other bytes give another key.
pub fn manifest(name: &str, version: &str, kernel: &str, files: &[(&str, &[u8])]) -> Manifest {
    let mut key = Sha256::new();
    let entries: Vec<serde_json::Value> = files
        .iter()
        .map(|(file, data)| {
            key.update(data);
            serde_json::json!({
                "file": file, "dest_location": "/updates/dkms", "size": data.len(),
                "sha256": sha256_hex(data), "modinfo": {
                    "name": null, "vermagic": null, "version": null, "srcversion": null,
                    "depends": [], "license": null, "fields": []
                }
            })
        })
        .collect();
    key.update(kernel.as_bytes());
    serde_json::from_value(serde_json::json!({
        "key": hex::encode(key.finalize()), "name": name, "version": version,
        "kernel": kernel, "arch": "x86_64", "source_digest": "0".repeat(64),
        "builder_image": {"id": "sha256:test", "tag": "test"}, "files": entries,
        "plan": {
            "package_name": name, "package_version": version, "modules": [], "make": "make",
            "patches": [], "pre_build": null, "post_build": null, "build_depends": [],
            "autoinstall": true, "no_weak_modules": false, "obsolete_by": null, "warnings": []
        },
        "build_id": "test", "built_at": "2026-01-01T00:00:00Z", "build_seconds": 1.0
    }))
    .expect("test manifest")
}

pub fn krel(s: &str) -> KernelRelease {
    KernelRelease::parse(s).unwrap()
}

/// `<root>/lib/modules/<krel>`.
pub fn tree(root: &Path, kernel: &str) -> PathBuf {
    root.join("lib/modules").join(kernel)
}

/// Creates a kernel tree with an (empty) `modules.dep`, as an installed kernel has.
pub fn add_kernel(root: &Path, kernel: &str) -> PathBuf {
    let t = tree(root, kernel);
    std::fs::create_dir_all(t.join("kernel")).unwrap();
    for index in [
        "modules.dep",
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        std::fs::write(t.join(index), "").unwrap();
    }
    t
}

/// Puts an "original" module at `<tree>/<rel>` and reindexes with the real depmod.
pub fn add_original(root: &Path, kernel: &str, rel: &str, data: &[u8]) -> PathBuf {
    let path = tree(root, kernel).join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    run_depmod(root, kernel);
    path
}

pub fn run_depmod(root: &Path, kernel: &str) {
    let status = Command::new(DEPMOD)
        .arg("-a")
        .arg("-b")
        .arg(root)
        .arg(kernel)
        .status()
        .expect("depmod (kmod) must be installed for the host tests");
    assert!(status.success(), "depmod failed");
}

/// The real depmod's `modules.dep` of a kernel.
pub fn modules_dep(root: &Path, kernel: &str) -> String {
    std::fs::read_to_string(tree(root, kernel).join("modules.dep")).unwrap_or_default()
}

/// Every regular file under `dir` (relative path → bytes), except depmod's `modules.*`.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(base, &path, out);
        } else if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("modules.")
        {
            out.insert(
                path.strip_prefix(base).unwrap().to_owned(),
                std::fs::read(&path).unwrap(),
            );
        }
    }
}

/// Paths of leftover transaction files (temp files, backups) under `dir`.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir)
        .into_keys()
        .filter(|p| p.to_string_lossy().contains(".kmodforge-"))
        .collect()
}
