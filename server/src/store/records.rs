//! Records of modules, builds, artifacts and dkms.conf evaluations, in SQLite.
//! Tokens, the audit log and version pins are in `access.rs`.
//!
//! The `Records` trait is the seam (SQLite now, PostgreSQL later). Rows keep the
//! wire types as JSON next to the columns that are queried, so the schema stays
//! small and a record reads back exactly as it was written.

use std::path::Path;
use std::sync::Mutex;

use kmodforge_api::names::{Arch, ArtifactKey, KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::settings::SettingsRecord;
use kmodforge_api::wire::{BuildRecord, BuildState, Failure, FailureKind, Manifest, ModuleSource};
use rusqlite::{params, Connection, OptionalExtension};

use super::access::AccessRecords;
use super::kernels::KernelRecords;
use super::retention::RetentionRecords;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Pg(#[from] tokio_postgres::Error),
    #[error("PostgreSQL is unavailable: {0}")]
    PgUnavailable(String),
    #[error("the database schema is version {found}, newer than this server knows ({known}): upgrade the server")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("corrupt record in table {table}: {source}")]
    Corrupt {
        table: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl RecordsError {
    /// The database cannot be reached (down, restarting, pool exhausted): the
    /// request may succeed later, and is answered 503 meanwhile.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RecordsError::PgUnavailable(_) => true,
            RecordsError::Pg(e) => e.is_closed() || e.code().is_none(),
            RecordsError::Sql(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
            ),
            _ => false,
        }
    }

    /// The database's disk is full (`SQLITE_FULL`, or an I/O error whose cause is
    /// ENOSPC/EDQUOT): answered 507 until space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            RecordsError::Sql(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::DiskFull
            }
            RecordsError::Pg(e) => e.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL),
            _ => false,
        }
    }
}

/// Outcome of registering a module source.
#[derive(Debug, PartialEq, Eq)]
pub enum PutModule {
    Created,
    /// Same name, version and digest: nothing changed.
    Unchanged(ModuleSource),
    /// Same name and version, other content.
    Conflict(ModuleSource),
}

/// The persistence seam (tokens, audit and version pins are in [`AccessRecords`]).
#[async_trait::async_trait]
pub trait Records:
    AccessRecords + KernelRecords + RetentionRecords + super::apt::AptRecords + Send + Sync
{
    async fn put_module(&self, m: &ModuleSource) -> Result<PutModule, RecordsError>;
    async fn get_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Option<ModuleSource>, RecordsError>;
    async fn list_modules(&self) -> Result<Vec<ModuleSource>, RecordsError>;
    async fn delete_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<bool, RecordsError>;
    /// True when any module record still uses this source digest.
    async fn digest_in_use(&self, digest: &str) -> Result<bool, RecordsError>;

    async fn put_build(&self, b: &BuildRecord) -> Result<(), RecordsError>;
    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, RecordsError>;
    async fn list_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, RecordsError>;
    /// Marks builds left queued/running by a previous process as failed; returns their ids.
    async fn fail_unfinished(&self, message: &str, now: &str) -> Result<Vec<String>, RecordsError>;

    async fn put_artifact(&self, m: &Manifest) -> Result<(), RecordsError>;
    async fn get_artifact(&self, key: &ArtifactKey) -> Result<Option<Manifest>, RecordsError>;
    /// Replaces the manifest of an existing artifact (same key and blobs, e.g. a
    /// boot check added), keeping its place in the "latest" order. False when
    /// there is no such artifact.
    async fn update_manifest(&self, m: &Manifest) -> Result<bool, RecordsError>;
    async fn latest_artifact(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        kernel: &KernelRelease,
        arch: &Arch,
    ) -> Result<Option<Manifest>, RecordsError>;
    /// The newest artifact of (name, version, arch) for each kernel that has one,
    /// in kernel order (the DKMS bundle of every kernel).
    async fn latest_artifacts_per_kernel(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        arch: &Arch,
    ) -> Result<Vec<Manifest>, RecordsError>;
    /// Deletes the artifacts of a module version; returns them (for blob clean-up).
    async fn delete_artifacts(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Vec<Manifest>, RecordsError>;
    /// True when some artifact still references the blob.
    async fn blob_in_use(&self, sha256: &str) -> Result<bool, RecordsError>;

    async fn put_eval(&self, key: &str, value: &str) -> Result<(), RecordsError>;
    async fn get_eval(&self, key: &str) -> Result<Option<String>, RecordsError>;

    /// Stores (replaces) a module's settings.
    async fn put_settings(&self, s: &SettingsRecord) -> Result<(), RecordsError>;
    async fn get_settings(&self, name: &ModuleName)
        -> Result<Option<SettingsRecord>, RecordsError>;
    /// True when there were settings to delete.
    async fn delete_settings(&self, name: &ModuleName) -> Result<bool, RecordsError>;

    /// The cluster's shared job queue, when these records are shared by replicas.
    fn jobs(&self) -> Option<&dyn super::jobs::JobQueue> {
        None
    }
}

/// The newest artifact of (name, version, arch) per kernel, in kernel order.
const LATEST_PER_KERNEL_SQLITE: &str = "SELECT json FROM artifacts a
    WHERE name = ?1 AND version = ?2 AND arch = ?3
    AND seq = (SELECT MAX(seq) FROM artifacts b WHERE b.name = a.name
               AND b.version = a.version AND b.kernel = a.kernel AND b.arch = a.arch)
    ORDER BY kernel";

/// SQLite-backed records (one connection, serialized; calls are sub-millisecond).
pub struct SqliteRecords {
    conn: Mutex<Connection>,
    /// Tokens read before, by id, with the database's `data_version` they were read
    /// at (see `access.rs`): a bearer check then costs no query of the tokens table.
    pub(super) token_cache: Mutex<super::access::TokenCache>,
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    table: &'static str,
    text: &str,
) -> Result<T, RecordsError> {
    serde_json::from_str(text).map_err(|source| RecordsError::Corrupt { table, source })
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising our own plain data types cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

impl SqliteRecords {
    pub fn open(path: &Path) -> Result<Self, RecordsError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        super::migrate::sqlite(&mut conn)?;
        Ok(SqliteRecords {
            conn: Mutex::new(conn),
            token_cache: Mutex::new(Default::default()),
        })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when the one-parameter query returns a row.
    fn exists(&self, sql: &str, arg: &str) -> Result<bool, RecordsError> {
        let conn = self.conn();
        let found: Option<i64> = conn.query_row(sql, [arg], |r| r.get(0)).optional()?;
        Ok(found.is_some())
    }

    pub(super) fn query_json<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<T>, RecordsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_json(table, &row?)?);
        }
        Ok(out)
    }
}

impl SqliteRecords {
    pub(crate) fn put_module(&self, m: &ModuleSource) -> Result<PutModule, RecordsError> {
        if let Some(existing) = self.get_module(&m.name, &m.version)? {
            return Ok(if existing.digest == m.digest {
                PutModule::Unchanged(existing)
            } else {
                PutModule::Conflict(existing)
            });
        }
        self.conn().execute(
            "INSERT INTO modules (name, version, digest, json) VALUES (?1, ?2, ?3, ?4)",
            params![
                m.name.as_str(),
                m.version.as_str(),
                m.digest.as_str(),
                to_json(m)
            ],
        )?;
        Ok(PutModule::Created)
    }

    pub(crate) fn get_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Option<ModuleSource>, RecordsError> {
        let sql = "SELECT json FROM modules WHERE name = ?1 AND version = ?2";
        Ok(self
            .query_json("modules", sql, params![name.as_str(), version.as_str()])?
            .pop())
    }

    pub(crate) fn list_modules(&self) -> Result<Vec<ModuleSource>, RecordsError> {
        self.query_json(
            "modules",
            "SELECT json FROM modules ORDER BY name, version",
            [],
        )
    }

    pub(crate) fn delete_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<bool, RecordsError> {
        let n = self.conn().execute(
            "DELETE FROM modules WHERE name = ?1 AND version = ?2",
            params![name.as_str(), version.as_str()],
        )?;
        Ok(n > 0)
    }

    pub(crate) fn digest_in_use(&self, digest: &str) -> Result<bool, RecordsError> {
        self.exists("SELECT 1 FROM modules WHERE digest = ?1 LIMIT 1", digest)
    }

    pub(crate) fn put_build(&self, b: &BuildRecord) -> Result<(), RecordsError> {
        self.conn().execute(
            "INSERT INTO builds (id, state, created_at, json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, json = excluded.json",
            params![b.id, b.state.as_str(), b.created_at, to_json(b)],
        )?;
        Ok(())
    }

    pub(crate) fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, RecordsError> {
        Ok(self
            .query_json("builds", "SELECT json FROM builds WHERE id = ?1", [id])?
            .pop())
    }

    pub(crate) fn list_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, RecordsError> {
        let sql = "SELECT json FROM builds ORDER BY created_at DESC, rowid DESC LIMIT ?1";
        self.query_json("builds", sql, [limit])
    }

    pub(crate) fn fail_unfinished(
        &self,
        message: &str,
        now: &str,
    ) -> Result<Vec<String>, RecordsError> {
        let sql = "SELECT json FROM builds WHERE state IN ('queued', 'running')";
        let stale: Vec<BuildRecord> = self.query_json("builds", sql, [])?;
        let mut ids = Vec::new();
        for mut b in stale {
            b.state = BuildState::Failed;
            b.finished_at = Some(now.to_string());
            b.failure = Some(Failure {
                kind: FailureKind::Infrastructure,
                message: format!("{}/{} for {}: {message}", b.name, b.version, b.kernel),
                log_tail: String::new(),
            });
            self.put_build(&b)?;
            ids.push(b.id);
        }
        Ok(ids)
    }

    pub(crate) fn put_artifact(&self, m: &Manifest) -> Result<(), RecordsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let seq: i64 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM artifacts", [], |r| {
                r.get(0)
            })?;
        tx.execute(
            "INSERT OR REPLACE INTO artifacts (key, name, version, kernel, arch, seq, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                m.key.as_str(),
                m.name.as_str(),
                m.version.as_str(),
                m.kernel.as_str(),
                m.arch.as_str(),
                seq,
                to_json(m)
            ],
        )?;
        tx.execute(
            "DELETE FROM artifact_blobs WHERE key = ?1",
            [m.key.as_str()],
        )?;
        let blobs = m.files.iter().map(|f| &f.sha256);
        for sha256 in blobs.chain(m.symvers.as_ref().map(|b| &b.sha256)) {
            tx.execute(
                "INSERT INTO artifact_blobs (key, sha256) VALUES (?1, ?2)",
                params![m.key.as_str(), sha256],
            )?;
        }
        // A version with artifacts means this source from now on (immutable versions).
        tx.execute(
            "INSERT OR IGNORE INTO version_pins (name, version, digest, pinned_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                m.name.as_str(),
                m.version.as_str(),
                m.source_digest.as_str(),
                m.built_at
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn update_manifest(&self, m: &Manifest) -> Result<bool, RecordsError> {
        let n = self.conn().execute(
            "UPDATE artifacts SET json = ?2 WHERE key = ?1",
            params![m.key.as_str(), to_json(m)],
        )?;
        Ok(n == 1)
    }

    pub(crate) fn get_artifact(&self, key: &ArtifactKey) -> Result<Option<Manifest>, RecordsError> {
        let sql = "SELECT json FROM artifacts WHERE key = ?1";
        Ok(self.query_json("artifacts", sql, [key.as_str()])?.pop())
    }

    pub(crate) fn latest_artifact(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        kernel: &KernelRelease,
        arch: &Arch,
    ) -> Result<Option<Manifest>, RecordsError> {
        let sql = "SELECT json FROM artifacts WHERE name = ?1 AND version = ?2 AND kernel = ?3
                   AND arch = ?4 ORDER BY seq DESC LIMIT 1";
        let args = params![
            name.as_str(),
            version.as_str(),
            kernel.as_str(),
            arch.as_str()
        ];
        Ok(self.query_json("artifacts", sql, args)?.pop())
    }

    pub(crate) fn latest_artifacts_per_kernel(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        arch: &Arch,
    ) -> Result<Vec<Manifest>, RecordsError> {
        let args = params![name.as_str(), version.as_str(), arch.as_str()];
        self.query_json("artifacts", LATEST_PER_KERNEL_SQLITE, args)
    }

    pub(crate) fn delete_artifacts(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Vec<Manifest>, RecordsError> {
        let sql = "SELECT json FROM artifacts WHERE name = ?1 AND version = ?2";
        let gone: Vec<Manifest> =
            self.query_json("artifacts", sql, params![name.as_str(), version.as_str()])?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for m in &gone {
            tx.execute(
                "DELETE FROM artifact_blobs WHERE key = ?1",
                [m.key.as_str()],
            )?;
            tx.execute("DELETE FROM artifacts WHERE key = ?1", [m.key.as_str()])?;
        }
        tx.commit()?;
        Ok(gone)
    }

    pub(crate) fn blob_in_use(&self, sha256: &str) -> Result<bool, RecordsError> {
        self.exists(
            "SELECT 1 FROM artifact_blobs WHERE sha256 = ?1
             UNION ALL SELECT 1 FROM apt_packages WHERE sha256 = ?1 LIMIT 1",
            sha256,
        )
    }

    pub(crate) fn put_eval(&self, key: &str, value: &str) -> Result<(), RecordsError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO evals (key, json) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    pub(crate) fn get_eval(&self, key: &str) -> Result<Option<String>, RecordsError> {
        let conn = self.conn();
        Ok(conn
            .query_row("SELECT json FROM evals WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub(crate) fn put_settings(&self, s: &SettingsRecord) -> Result<(), RecordsError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO module_settings (name, json) VALUES (?1, ?2)",
            params![s.name.as_str(), to_json(s)],
        )?;
        Ok(())
    }

    pub(crate) fn get_settings(
        &self,
        name: &ModuleName,
    ) -> Result<Option<SettingsRecord>, RecordsError> {
        let sql = "SELECT json FROM module_settings WHERE name = ?1";
        Ok(self
            .query_json("module_settings", sql, [name.as_str()])?
            .pop())
    }

    pub(crate) fn delete_settings(&self, name: &ModuleName) -> Result<bool, RecordsError> {
        let n = self.conn().execute(
            "DELETE FROM module_settings WHERE name = ?1",
            [name.as_str()],
        )?;
        Ok(n > 0)
    }
}
