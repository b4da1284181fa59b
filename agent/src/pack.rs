//! Packing a source tree as the tar.gz the server takes (`PUT /v1/modules/...`),
//! in-process: the tree's content at the archive root, paths sorted, metadata
//! normalised (same tree → same bytes), symlinks stored as links (the server
//! refuses links that escape the tree).

use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

#[derive(Debug, thiserror::Error)]
#[error("packing {path}: {source}")]
pub struct PackError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError {
        path: path.to_path_buf(),
        source,
    }
}

/// A tar.gz of everything under `dir`.
pub fn tar_gz_dir(dir: &Path) -> Result<Vec<u8>, PackError> {
    let gz = GzEncoder::new(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for (path, rel) in walk(dir)? {
        tar.append_path_with_name(&path, &rel).map_err(at(&path))?;
    }
    let gz = tar.into_inner().map_err(at(dir))?;
    gz.finish().map_err(at(dir))
}

/// Every entry under `root` as (path, path relative to `root`), sorted by the
/// relative path (so parents come first).
fn walk(root: &Path) -> Result<Vec<(PathBuf, PathBuf)>, PackError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(at(&dir))? {
            let path = entry.map_err(at(&dir))?.path();
            let Ok(rel) = path.strip_prefix(root).map(Path::to_path_buf) else {
                continue;
            };
            if path.symlink_metadata().map_err(at(&path))?.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, rel));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn packs_sorted_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("dkms.conf"), "PACKAGE_NAME=x\n").unwrap();
        std::fs::write(dir.path().join("sub/a.c"), "int x;\n").unwrap();
        let one = tar_gz_dir(dir.path()).unwrap();
        assert_eq!(one, tar_gz_dir(dir.path()).unwrap());
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut raw)
            .unwrap();
        let mut ar = tar::Archive::new(&raw[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["dkms.conf", "sub", "sub/a.c"]);
    }
}
