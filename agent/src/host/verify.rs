//! Checking a downloaded artifact before anything touches the disk.

use std::collections::HashSet;

use kmodforge_api::modinfo::{parse_modinfo, vermagic_targets};
use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::{ArtifactFile, Manifest};

use super::{fsx, HostError};

/// An artifact whose every file matched its manifest entry (size, sha256), is a kernel
/// module, and carries the target kernel's vermagic.
///
/// Each `ArtifactFile::modinfo` holds what was parsed from the verified bytes, not what
/// the manifest claimed.
#[derive(Clone, Debug)]
pub struct VerifiedArtifact {
    pub manifest: Manifest,
    pub files: Vec<(ArtifactFile, Vec<u8>)>,
    /// The pinned key that signed the manifest (set by the caller that verified it).
    pub manifest_key: Option<String>,
}

impl VerifiedArtifact {
    /// Verifies downloaded `files` (file name, bytes) against `manifest` for `kernel`.
    ///
    /// Nothing is written. Files not listed in the manifest are ignored.
    pub fn verify(
        manifest: Manifest,
        mut files: Vec<(String, Vec<u8>)>,
        kernel: &KernelRelease,
    ) -> Result<Self, HostError> {
        check_manifest(&manifest, kernel)?;
        let mut verified = Vec::with_capacity(manifest.files.len());
        for entry in &manifest.files {
            let pos = files.iter().position(|(name, _)| name == &entry.file);
            let Some(pos) = pos else {
                return Err(HostError::FileMissing {
                    module: manifest.name.clone(),
                    kernel: kernel.clone(),
                    file: entry.file.clone(),
                });
            };
            let (_, data) = files.swap_remove(pos);
            let file = verify_file(&manifest, entry, &data, kernel)?;
            verified.push((file, data));
        }
        Ok(VerifiedArtifact {
            manifest,
            files: verified,
            manifest_key: None,
        })
    }
}

/// The checks of one file: sha256 and size, then `.modinfo`, then vermagic.
fn verify_file(
    manifest: &Manifest,
    entry: &ArtifactFile,
    data: &[u8],
    kernel: &KernelRelease,
) -> Result<ArtifactFile, HostError> {
    let got = fsx::sha256_hex(data);
    if got != entry.sha256 || data.len() as u64 != entry.size {
        return Err(HostError::Sha256Mismatch {
            module: manifest.name.clone(),
            kernel: kernel.clone(),
            file: entry.file.clone(),
            expected: format!("{} ({} bytes)", entry.sha256, entry.size).into(),
            got: format!("{got} ({} bytes)", data.len()).into(),
        });
    }
    let modinfo = parse_modinfo(data).map_err(|e| HostError::NotAModule {
        module: manifest.name.clone(),
        kernel: kernel.clone(),
        file: entry.file.clone(),
        reason: e.to_string(),
    })?;
    let vermagic = modinfo.vermagic.clone().unwrap_or_default();
    if !vermagic_targets(&vermagic, kernel) {
        return Err(HostError::WrongVermagic {
            module: manifest.name.clone(),
            kernel: kernel.clone(),
            file: entry.file.clone(),
            vermagic,
        });
    }
    Ok(ArtifactFile {
        modinfo,
        ..entry.clone()
    })
}

/// Manifest-level checks: right kernel, at least one file, safe and distinct paths.
fn check_manifest(manifest: &Manifest, kernel: &KernelRelease) -> Result<(), HostError> {
    let bad = |reason: String| HostError::BadManifest {
        module: manifest.name.clone(),
        kernel: kernel.clone(),
        reason,
    };
    if &manifest.kernel != kernel {
        return Err(bad(format!("it is for kernel {}", manifest.kernel)));
    }
    if manifest.files.is_empty() {
        return Err(bad("it lists no files".to_owned()));
    }
    let mut seen = HashSet::new();
    for f in &manifest.files {
        if !is_module_file_name(&f.file) {
            return Err(HostError::NotAModule {
                module: manifest.name.clone(),
                kernel: kernel.clone(),
                file: f.file.clone(),
                reason: "the name must be a plain `<name>.ko` file name".to_owned(),
            });
        }
        if !is_safe_dest_location(&f.dest_location) {
            return Err(bad(format!(
                "unsafe dest_location {:?} for {}",
                f.dest_location, f.file
            )));
        }
        if !seen.insert(f.file.as_str()) {
            return Err(bad(format!("{} is listed twice", f.file)));
        }
    }
    Ok(())
}

pub(crate) use kmodforge_api::names::{is_module_file_name, is_safe_dest_location};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        for ok in ["kmf_hello.ko", "acpi-call.ko", "a.b.ko"] {
            assert!(is_module_file_name(ok), "{ok}");
        }
        for bad in ["x.ko.xz", ".ko", "../x.ko", "a/b.ko", "-x.ko", ".x.ko", "x"] {
            assert!(!is_module_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn dest_locations() {
        for ok in ["/updates/dkms", "/extra", "/kernel/drivers/net"] {
            assert!(is_safe_dest_location(ok), "{ok}");
        }
        for bad in [
            "updates",
            "/",
            "/updates/../../etc",
            "/a//b",
            "/a/./b",
            "/a b",
        ] {
            assert!(!is_safe_dest_location(bad), "{bad}");
        }
    }
}
