//! Persistence: records (SQLite), content-addressed blobs, source trees, build logs;
//! tokens, the audit log and version pins are records too (`access`).
//!
//! Layout under the data directory:
//! `kmodforge.db`, `blobs/sha256/..`, `sources/<source digest>.tar` (the
//! normalized tar), `logs/<build id>.log`, and `tmp/` for atomic writes.

pub mod access;
pub mod blobs;
pub mod kernels;
pub mod records;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kmodforge_api::names::SourceDigest;

pub use access::{AccessRecords, AuditQuery, Revoked, TokenRow};
pub use blobs::{write_atomic, write_secret, BlobError, BlobStore, FsBlobStore};
pub use kernels::KernelRecords;
pub use records::{PutModule, Records, RecordsError, SqliteRecords};

/// Everything the server persists, behind its seams.
#[derive(Clone)]
pub struct Store {
    pub records: Arc<dyn Records>,
    pub blobs: Arc<dyn BlobStore>,
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreOpenError> {
        for sub in ["sources", "logs", "tmp"] {
            let dir = data_dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| StoreOpenError::Dir { dir, source })?;
        }
        let records = SqliteRecords::open(&data_dir.join("kmodforge.db"))?;
        let blobs = FsBlobStore::open(data_dir.join("blobs"))?;
        Ok(Store {
            records: Arc::new(records),
            blobs: Arc::new(blobs),
            root: data_dir.to_path_buf(),
        })
    }

    fn source_path(&self, digest: &SourceDigest) -> PathBuf {
        self.root.join("sources").join(format!("{digest}.tar"))
    }

    /// Stores a normalized source tar under its digest (idempotent, atomic).
    pub fn put_source(&self, digest: &SourceDigest, tar: &[u8]) -> Result<(), BlobError> {
        let path = self.source_path(digest);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&self.root.join("tmp"), &path, tar)
    }

    pub fn get_source(&self, digest: &SourceDigest) -> Result<Vec<u8>, BlobError> {
        let path = self.source_path(digest);
        std::fs::read(&path).map_err(|source| BlobError::Io { path, source })
    }

    pub fn delete_source(&self, digest: &SourceDigest) -> Result<(), BlobError> {
        let path = self.source_path(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BlobError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    fn log_path(&self, build_id: &str) -> PathBuf {
        self.root.join("logs").join(format!("{build_id}.log"))
    }

    pub fn put_log(&self, build_id: &str, log: &[u8]) -> Result<(), BlobError> {
        write_atomic(&self.root.join("tmp"), &self.log_path(build_id), log)
    }

    /// A finished build's stored log, `None` when there is none.
    pub fn get_log(&self, build_id: &str) -> Option<Vec<u8>> {
        std::fs::read(self.log_path(build_id)).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error("cannot create data directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error(transparent)]
    Blobs(#[from] BlobError),
}
