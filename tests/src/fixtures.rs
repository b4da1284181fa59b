//! Module source fixtures: the shared ones (`tests/fixtures/`), this crate's own
//! (`tests/fixtures-e2e/`), real Debian DKMS packages, and tar.gz packing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;

/// `tests/fixtures/<name>` (shared fixtures, see its README).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// `tests/fixtures-e2e/<name>` (fixtures of these tests only).
pub fn e2e_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures-e2e")
        .join(name)
}

/// Cargo's target directory (the test executable lives in `<target>/<profile>/deps`).
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(std::env::temp_dir)
}

/// A tar.gz of the tree under `dir`, with `dir`'s content at the archive root
/// (`dkms.conf`, not `dir/dkms.conf`). Paths are sorted and metadata normalised, so the
/// same tree gives the same bytes.
pub fn tar_gz_dir(dir: &Path) -> Result<Vec<u8>> {
    let gz = GzEncoder::new(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for (path, rel) in walk(dir)? {
        tar.append_path_with_name(&path, &rel)
            .with_context(|| format!("adding {} to the tar", path.display()))?;
    }
    let gz = tar.into_inner().context("finishing the tar")?;
    gz.finish().context("finishing the gzip stream")
}

/// Every entry under `root` as (path, path relative to `root`), parents first, sorted.
fn walk(root: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        entries.sort();
        for path in entries.into_iter().rev() {
            let rel = path.strip_prefix(root)?.to_path_buf();
            if path.symlink_metadata()?.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, rel));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// The `/usr/src/<name>-<version>/` tree of a real Debian `*-dkms` package, fetched
/// once per process with `tests/fixtures/fetch-debian-dkms.sh` (the .deb is cached
/// under `<target>/kmodforge-e2e/debs`, outside git). Runs `apt-get update` and retries
/// once when apt does not know the package yet.
pub fn debian_dkms_source(package: &str) -> Result<PathBuf> {
    static FETCHED: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let fetched = FETCHED.get_or_init(Default::default);
    let mut fetched = fetched.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path)) = fetched.iter().find(|(p, _)| p == package) {
        return Ok(path.clone());
    }
    let path = match fetch(package, false) {
        Ok(p) => p,
        Err(first) => fetch(package, true)
            .with_context(|| format!("first attempt (without apt-get update): {first:#}"))?,
    };
    fetched.push((package.to_string(), path.clone()));
    Ok(path)
}

fn fetch(package: &str, apt_update: bool) -> Result<PathBuf> {
    let base = target_dir().join("kmodforge-e2e");
    let script = fixture("fetch-debian-dkms.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(package)
        .arg(base.join("src"))
        .env("KMODFORGE_DEB_CACHE", base.join("debs"))
        .env("KMODFORGE_APT_UPDATE", if apt_update { "1" } else { "0" })
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {package} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.join("dkms.conf").is_file() {
        bail!("{package}: {} has no dkms.conf", path.display());
    }
    Ok(path)
}

/// The (path, content) of every regular file of a tar, in archive order.
pub fn tar_entries(tar: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().context("reading the tar")? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data)?;
        out.push((path, data));
    }
    Ok(out)
}
