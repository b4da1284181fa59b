//! Checking downloaded modules with the real `modinfo` (kmod) and sha256.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use kmodforge_api::wire::{ArtifactFile, Manifest};
use sha2::{Digest, Sha256};

use crate::client::Client;

/// Where kmod's `modinfo` lives on Debian (`/sbin` is a link to `/usr/sbin` there).
const MODINFO: [&str; 2] = ["/sbin/modinfo", "/usr/sbin/modinfo"];

/// `modinfo -F <field>` of a module file's bytes, trimmed; fails when kmod is missing.
pub fn real_modinfo(ko: &[u8], field: &str) -> Result<String> {
    let modinfo = MODINFO
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("kmod's modinfo is not installed (/sbin/modinfo): apt-get install kmod")?;
    let file = tempfile::Builder::new()
        .suffix(".ko")
        .tempfile()
        .context("temp file for a .ko")?;
    std::fs::write(file.path(), ko)?;
    let out = Command::new(&modinfo)
        .arg("-F")
        .arg(field)
        .arg(file.path())
        .output()
        .with_context(|| format!("running {}", modinfo.display()))?;
    if !out.status.success() {
        bail!(
            "modinfo -F {field} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Downloads every file of `m` and checks it: sha256 and size equal the manifest's,
/// the blob address serves the same bytes, and both the manifest's and the real
/// `modinfo`'s vermagic start with `"<krel> "`, and a signed artifact's signature
/// checks out (`signature::check_signature`). Returns each file with its bytes.
pub async fn check_downloads(
    client: &Client,
    m: &Manifest,
) -> Result<Vec<(ArtifactFile, Vec<u8>)>> {
    ensure!(!m.files.is_empty(), "artifact {} has no files", m.key);
    let krel = m.kernel.as_str();
    let mut out = Vec::new();
    for f in &m.files {
        let ko = client
            .download(m.name.as_str(), m.version.as_str(), krel, &f.file)
            .await?;
        let sha = hex::encode(Sha256::digest(&ko));
        ensure!(
            sha == f.sha256,
            "{}: sha256 {sha} != manifest {}",
            f.file,
            f.sha256
        );
        ensure!(ko.len() as u64 == f.size, "{}: size differs", f.file);
        let blob = client.bytes(&format!("/v1/blobs/{}", f.sha256)).await?;
        ensure!(blob == ko, "{}: /v1/blobs/{} differs", f.file, f.sha256);
        let prefix = format!("{krel} ");
        let manifest_vm = f.modinfo.vermagic.clone().unwrap_or_default();
        ensure!(
            manifest_vm.starts_with(&prefix),
            "{}: manifest vermagic {manifest_vm:?} is not for {krel}",
            f.file
        );
        let real_vm = real_modinfo(&ko, "vermagic")?;
        ensure!(
            real_vm.starts_with(&prefix),
            "{}: modinfo -F vermagic says {real_vm:?}, not {krel}",
            f.file
        );
        crate::signature::check_signature(client, m, &f.file, &ko).await?;
        out.push((f.clone(), ko));
    }
    Ok(out)
}
