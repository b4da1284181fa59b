//! Persistence, behind two seams: [`Records`] (SQLite embedded, or PostgreSQL)
//! and [`Objects`] (a local directory, or an S3-compatible bucket).
//!
//! Records: modules, builds, artifacts (manifests), dkms.conf evaluations,
//! settings, known kernels, the apt repository's packages; tokens, the audit log, public keys and version pins
//! (`access`). Objects: `.ko` blobs, source tars, build logs.
//!
//! Embedded layout under the data directory: `kmodforge.db`, `blobs/sha256/..`,
//! `sources/<source digest>.tar`, `logs/<build id>.log`.

pub mod access;
pub mod apt;
pub mod files;
pub mod jobs;
pub mod kernels;
pub mod migrate;
pub mod objects;
pub mod postgres;
pub mod records;
pub mod retention;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

pub use access::{AccessRecords, AuditQuery, Revoked, TokenRow};
pub use apt::AptRecords;
pub use files::write_secret;
pub use jobs::{ClaimedJob, Enqueued, JobQueue};
pub use kernels::KernelRecords;
pub use objects::{BlobError, Objects, ObjectsConfig, S3Config, StoredObject};
pub use records::{PutModule, Records, RecordsError, SqliteRecords};
pub use retention::{GcLock, RetentionRecords};

/// Where the records live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordsConfig {
    /// `kmodforge.db` in the data directory.
    Sqlite,
    /// A PostgreSQL connection URL (`postgres://user:password@host:port/db`).
    Postgres(String),
}

/// Everything the server persists, behind its seams.
#[derive(Clone)]
pub struct Store {
    pub records: Arc<dyn Records>,
    pub objects: Objects,
}

impl Store {
    /// Opens the configured records and object store (creating and migrating as needed).
    pub async fn connect(
        data_dir: &Path,
        records: &RecordsConfig,
        objects: &ObjectsConfig,
    ) -> Result<Self, StoreOpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreOpenError::Dir {
            dir: data_dir.to_path_buf(),
            source,
        })?;
        let records: Arc<dyn Records> = match records {
            RecordsConfig::Sqlite => Arc::new(SqliteRecords::open(&data_dir.join("kmodforge.db"))?),
            RecordsConfig::Postgres(url) => Arc::new(postgres::PgRecords::connect(url).await?),
        };
        let objects = Objects::open(objects)?;
        Ok(Store { records, objects })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error("cannot create data directory {dir}: {source}")]
    Dir {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("object store: {0}")]
    Objects(#[from] objects::ObjectsOpenError),
}
