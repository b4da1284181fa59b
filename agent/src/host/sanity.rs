//! DKMS's version sanity check (`check_version_sanity` in DKMS 3.x's `dkms` script).
//!
//! Before a `.ko` is installed, the kernel tree is searched for regular files with the
//! same name (`m.ko`, `m.ko.xz`, `m.ko.gz`, `m.ko.zst`), other than the files this agent
//! itself installed. With exactly one, its `version`/`srcversion` decide: an existing
//! newer module, or the very same version and srcversion, makes DKMS skip the file unless
//! `--force`. Unlike DKMS on other distributions, nothing is moved: as on Debian, the
//! original stays where it is and depmod's `updates/` priority selects ours.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

use kmodforge_api::dkms::version_cmp;
use kmodforge_api::modinfo::{parse_modinfo, ModInfo};
use kmodforge_api::names::KernelRelease;

use super::{tools, HostError, HostPaths};

/// The suffixes a module file can have in a kernel tree.
const SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.gz", ".ko.zst"];

/// The `version` (first token) and `srcversion` (or the legacy checksum) of a module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct VerInfo {
    pub version: Option<String>,
    pub srcversion: Option<String>,
}

impl VerInfo {
    /// DKMS's `get_module_verinfo`: `version:` is split at whitespace, its second token
    /// being the old checksum, used when `srcversion:` is absent.
    pub fn new(version: Option<&str>, srcversion: Option<&str>) -> VerInfo {
        let mut tokens = version.unwrap_or("").split_whitespace();
        let version = tokens.next().map(str::to_owned);
        let checksum = tokens.next().map(str::to_owned);
        let srcversion = srcversion
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or(checksum);
        VerInfo {
            version,
            srcversion,
        }
    }

    pub fn from_modinfo(m: &ModInfo) -> VerInfo {
        VerInfo::new(m.version.as_deref(), m.srcversion.as_deref())
    }
}

/// The result of the check for one file.
#[derive(Clone, Debug, Default)]
pub(crate) struct Verdict {
    /// Same-named modules found (absolute paths); they stay in place.
    pub originals: Vec<PathBuf>,
    /// Why DKMS would not install this file; `None` to install.
    pub skip: Option<Skip>,
    /// A note for the report (e.g. several same-named modules).
    pub warning: Option<String>,
}

/// Why a file is skipped.
#[derive(Clone, Debug)]
pub(crate) struct Skip {
    /// The existing module is newer (`>`); otherwise it is the same (`==`).
    pub newer: bool,
    pub existing: PathBuf,
    pub existing_version: Option<String>,
    pub new_version: Option<String>,
    /// DKMS's message.
    pub message: String,
}

/// One file to check: its name, parsed modinfo and bytes.
pub(crate) struct Candidate<'a> {
    pub file: &'a str,
    pub modinfo: &'a ModInfo,
    pub data: &'a [u8],
}

/// Runs the check for one file on `kernel`, ignoring `own` (files we installed).
pub(crate) fn check(
    paths: &HostPaths,
    kernel: &KernelRelease,
    new: &Candidate<'_>,
    own: &[PathBuf],
    force: bool,
) -> Result<Verdict, HostError> {
    let stem = new.file.strip_suffix(".ko").unwrap_or(new.file);
    let mut found = Vec::new();
    find_same_named(&paths.kernel_tree(kernel), stem, own, &mut found)?;
    found.sort();
    let mut verdict = Verdict {
        originals: found.clone(),
        ..Verdict::default()
    };
    match found.as_slice() {
        [] => {}
        [one] => verdict.skip = compare(paths, kernel, new, one)?.filter(|_| !force),
        _ => {
            verdict.warning = Some(format!(
                "Cannot do version sanity checking because multiple {} modules were found in kernel {kernel}.",
                new.file
            ));
        }
    }
    Ok(verdict)
}

/// Compares the one existing module with the new one; `Some` when DKMS would skip.
fn compare(
    paths: &HostPaths,
    kernel: &KernelRelease,
    new: &Candidate<'_>,
    existing: &Path,
) -> Result<Option<Skip>, HostError> {
    let old = read_verinfo(paths, existing)?;
    let ours = VerInfo::from_modinfo(new.modinfo);
    let same_binary = || fs::read(existing).is_ok_and(|d| d == new.data);
    let skip = |newer: bool, message: String| Skip {
        newer,
        existing: existing.to_owned(),
        existing_version: old.version.clone(),
        new_version: ours.version.clone(),
        message,
    };
    let file = new.file;
    Ok(match (&old.version, &ours.version) {
        (Some(o), Some(n)) if o == n => (old.srcversion == ours.srcversion)
            .then(|| skip(false, format!("Module {file} already installed at version {n}"))),
        (None, None) if old.srcversion.is_none() && ours.srcversion.is_none() => same_binary()
            .then(|| skip(false, format!("Module {file} already installed (unversioned module)"))),
        (None, None) => (old.srcversion == ours.srcversion)
            .then(|| skip(false, format!("Module {file} already installed (unversioned module)"))),
        (Some(o), Some(n)) if version_cmp(o, n) == Ordering::Greater => Some(skip(
            true,
            format!("Module version {n} for {file} is not newer than what is already found in kernel {kernel} ({o})."),
        )),
        // `<` (existing older) or `?` (one side unversioned): install.
        _ => None,
    })
}

/// The version info of an existing module: parsed when uncompressed, else via `modinfo`.
fn read_verinfo(paths: &HostPaths, path: &Path) -> Result<VerInfo, HostError> {
    if path.extension().is_some_and(|e| e == "ko") {
        let data = fs::read(path).map_err(HostError::io(path))?;
        // An unreadable .modinfo is DKMS's "missing info" (`?`): the install goes ahead.
        return Ok(parse_modinfo(&data)
            .map(|m| VerInfo::from_modinfo(&m))
            .unwrap_or_default());
    }
    let version = tools::modinfo_field(paths, "version", path)?;
    let srcversion = tools::modinfo_field(paths, "srcversion", path)?;
    Ok(VerInfo::new(version.as_deref(), srcversion.as_deref()))
}

/// `find TREE -name 'STEM.ko*' -type f`, without following symlinks, minus `own`.
fn find_same_named(
    dir: &Path,
    stem: &str,
    own: &[PathBuf],
    out: &mut Vec<PathBuf>,
) -> Result<(), HostError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HostError::io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(HostError::io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(HostError::io(&path))?;
        if kind.is_dir() {
            find_same_named(&path, stem, own, out)?;
        } else if kind.is_file()
            && is_named(&entry.file_name().to_string_lossy(), stem)
            && !own.contains(&path)
        {
            out.push(path);
        }
    }
    Ok(())
}

fn is_named(name: &str, stem: &str) -> bool {
    name.strip_prefix(stem)
        .is_some_and(|suffix| SUFFIXES.contains(&suffix))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn verinfo_splits_legacy_checksum() {
        let v = VerInfo::new(Some("1.2 ABCDEF"), None);
        assert_eq!(v.version.as_deref(), Some("1.2"));
        assert_eq!(v.srcversion.as_deref(), Some("ABCDEF"));
        let v = VerInfo::new(Some("1.2 ABCDEF"), Some("SRC"));
        assert_eq!(v.srcversion.as_deref(), Some("SRC"));
        assert_eq!(VerInfo::new(None, None), VerInfo::default());
    }

    #[test]
    fn names_match_suffixes_only() {
        assert!(is_named("m.ko", "m"));
        assert!(is_named("m.ko.zst", "m"));
        assert!(!is_named("m.ko.kmodforge-old", "m"));
        assert!(!is_named("mm.ko", "m"));
        assert!(!is_named(".m.ko.kmodforge-new", "m"));
    }
}
