//! Content-addressed blobs on the local filesystem.
//!
//! `<root>/sha256/<first two hex>/<hex>`; every write goes to a temp file in
//! `<root>/tmp`, is fsynced, and renamed into place, so a crash never leaves a
//! partial blob under its address. The same bytes are stored once.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors of the blob store, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store IO on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid blob address {0:?}")]
    BadAddress(String),
}

/// The seam for artifact storage (filesystem now; object storage later).
pub trait BlobStore: Send + Sync {
    /// Stores `bytes`; returns their lowercase hex sha256.
    fn put(&self, bytes: &[u8]) -> Result<String, BlobError>;
    /// Reads a blob, `None` when absent.
    fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>, BlobError>;
    fn contains(&self, sha256: &str) -> bool;
    fn delete(&self, sha256: &str) -> Result<(), BlobError>;
}

/// Blobs in a directory.
pub struct FsBlobStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dest` atomically: temp file in `tmp_dir`, fsync, rename.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    std::fs::create_dir_all(tmp_dir).map_err(io(tmp_dir))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(io(tmp_dir))?;
    tmp.write_all(bytes).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(dest))?;
    tmp.persist(dest).map_err(|e| BlobError::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

impl FsBlobStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        for dir in [root.join("sha256"), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(FsBlobStore { root })
    }

    fn path_of(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(BlobError::BadAddress(sha256.to_string()));
        }
        Ok(self.root.join("sha256").join(&sha256[..2]).join(sha256))
    }
}

impl BlobStore for FsBlobStore {
    fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let sha = hex::encode(Sha256::digest(bytes));
        let path = self.path_of(&sha)?;
        if !path.exists() {
            write_atomic(&self.root.join("tmp"), &path, bytes)?;
        }
        Ok(sha)
    }

    fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path_of(sha256)?;
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BlobError::Io { path, source }),
        }
    }

    fn contains(&self, sha256: &str) -> bool {
        self.path_of(sha256).map(|p| p.exists()).unwrap_or(false)
    }

    fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        let path = self.path_of(sha256)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BlobError::Io { path, source }),
        }
    }
}

/// Writes `bytes` to `path` with mode 0600 from the first byte (a temp file in the
/// same directory, fsync'd, then renamed): a reader never sees half a secret.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret");
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::open(dir.path()).expect("open");
        let a = store.put(b"hello").expect("put");
        assert_eq!(
            a,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(store.put(b"hello").expect("put again"), a);
        assert_eq!(store.get(&a).expect("get"), Some(b"hello".to_vec()));
        assert!(store.get(&"0".repeat(64)).expect("get missing").is_none());
        assert!(matches!(store.get("../etc"), Err(BlobError::BadAddress(_))));
        store.delete(&a).expect("delete");
        assert!(!store.contains(&a));
        let leftovers = std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count();
        assert_eq!(leftovers, 0, "no temp files left behind");
    }
}
