//! The records side of retention (`gc`): which build records have expired, which
//! blobs artifacts still refer to, and the cluster's lock on the periodic run.
//! A supertrait of [`Records`](super::Records), like the kernel records.
//!
//! A build record goes only when it is final (never a queued or running build)
//! and no artifact's manifest names it as the build that made it; the check is
//! repeated in the deleting statement itself, so a record that became
//! referenced between the listing and the delete stays.

use std::collections::HashSet;

use kmodforge_api::wire::BuildRecord;
use rusqlite::params;

use super::records::{RecordsError, SqliteRecords};

/// Held while a garbage collection runs; dropping it lets another replica run one.
pub struct GcLock(#[allow(dead_code)] Box<dyn Send + Sync>);

impl GcLock {
    /// A lock with nothing to release (one process: its own mutex is enough).
    pub fn local() -> Self {
        GcLock(Box::new(()))
    }
}

/// Queries of retention.
#[async_trait::async_trait]
pub trait RetentionRecords: Send + Sync {
    /// Ids of final builds created before `before` (RFC 3339, UTC) that no
    /// artifact's manifest names, oldest first, at most `limit`.
    async fn expired_builds(&self, before: &str, limit: u32) -> Result<Vec<String>, RecordsError>;
    /// Deletes those of `ids` that are still final and unreferenced; returns them.
    async fn delete_builds(&self, ids: &[String]) -> Result<Vec<String>, RecordsError>;
    /// Builds recorded as queued or running (on any replica).
    async fn unfinished_builds(&self) -> Result<Vec<BuildRecord>, RecordsError>;
    /// Every blob address an artifact refers to (its `.ko` files and symvers).
    async fn referenced_blobs(&self) -> Result<HashSet<String>, RecordsError>;
    /// Every source digest a module record refers to.
    async fn referenced_sources(&self) -> Result<HashSet<String>, RecordsError>;
    /// The cluster-wide GC lock, `None` while another replica holds it.
    async fn try_gc_lock(&self) -> Result<Option<GcLock>, RecordsError>;
}

/// Final states (`state` column) a retention query may touch.
const FINAL: &str = "state NOT IN ('queued', 'running')";

impl SqliteRecords {
    fn strings(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<String>, RecordsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn expired_builds(
        &self,
        before: &str,
        limit: u32,
    ) -> Result<Vec<String>, RecordsError> {
        let sql = format!(
            "SELECT id FROM builds WHERE {FINAL} AND created_at < ?1 AND id NOT IN
               (SELECT json_extract(json, '$.build_id') FROM artifacts
                WHERE json_extract(json, '$.build_id') IS NOT NULL)
             ORDER BY created_at, rowid LIMIT ?2"
        );
        self.strings(&sql, params![before, limit])
    }

    pub(crate) fn delete_builds(&self, ids: &[String]) -> Result<Vec<String>, RecordsError> {
        let sql = format!(
            "DELETE FROM builds WHERE id = ?1 AND {FINAL} AND id NOT IN
               (SELECT json_extract(json, '$.build_id') FROM artifacts
                WHERE json_extract(json, '$.build_id') IS NOT NULL)"
        );
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut gone = Vec::new();
        for id in ids {
            if tx.execute(&sql, [id])? == 1 {
                gone.push(id.clone());
            }
        }
        tx.commit()?;
        Ok(gone)
    }

    pub(crate) fn unfinished_builds(&self) -> Result<Vec<BuildRecord>, RecordsError> {
        let sql = "SELECT json FROM builds WHERE state IN ('queued', 'running')";
        self.query_json("builds", sql, [])
    }

    pub(crate) fn referenced_blobs(&self) -> Result<HashSet<String>, RecordsError> {
        Ok(self
            .strings(
                "SELECT sha256 FROM artifact_blobs UNION SELECT sha256 FROM apt_packages",
                [],
            )?
            .into_iter()
            .collect())
    }

    pub(crate) fn referenced_sources(&self) -> Result<HashSet<String>, RecordsError> {
        Ok(self
            .strings("SELECT DISTINCT digest FROM modules", [])?
            .into_iter()
            .collect())
    }
}

#[async_trait::async_trait]
impl RetentionRecords for SqliteRecords {
    async fn expired_builds(&self, before: &str, limit: u32) -> Result<Vec<String>, RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::expired_builds(self, before, limit))
    }
    async fn delete_builds(&self, ids: &[String]) -> Result<Vec<String>, RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::delete_builds(self, ids))
    }
    async fn unfinished_builds(&self) -> Result<Vec<BuildRecord>, RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::unfinished_builds(self))
    }
    async fn referenced_blobs(&self) -> Result<HashSet<String>, RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::referenced_blobs(self))
    }
    async fn referenced_sources(&self) -> Result<HashSet<String>, RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::referenced_sources(self))
    }
    async fn try_gc_lock(&self) -> Result<Option<GcLock>, RecordsError> {
        // One process owns an SQLite database: the collector's own mutex suffices.
        Ok(Some(GcLock::local()))
    }
}

/// The advisory lock key of the periodic GC in PostgreSQL (any constant of ours).
const PG_GC_LOCK: i64 = 0x6b6d_6667_6763;

/// The build id a manifest names, in PostgreSQL's JSON.
const PG_MANIFEST_BUILDS: &str = "SELECT a.json::jsonb ->> 'build_id' FROM artifacts a
     WHERE a.json::jsonb ->> 'build_id' IS NOT NULL";

/// In a cluster, one replica collects at a time: a session-level advisory lock
/// on a connection taken out of the pool. The connection is closed when the lock
/// is dropped, which releases the lock (also when the replica dies: PostgreSQL
/// ends the session).
struct PgGcLock(Option<deadpool_postgres::Object>);

impl Drop for PgGcLock {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            // Not back into the pool: closing the session releases the lock.
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

#[async_trait::async_trait]
impl RetentionRecords for super::postgres::PgRecords {
    async fn expired_builds(&self, before: &str, limit: u32) -> Result<Vec<String>, RecordsError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT id FROM builds WHERE {FINAL} AND created_at < $1
               AND id NOT IN ({PG_MANIFEST_BUILDS}) ORDER BY created_at, seq LIMIT $2"
        );
        let rows = client.query(&sql, &[&before, &i64::from(limit)]).await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    async fn delete_builds(&self, ids: &[String]) -> Result<Vec<String>, RecordsError> {
        let client = self.client().await?;
        let sql = format!(
            "DELETE FROM builds WHERE id = ANY($1) AND {FINAL}
               AND id NOT IN ({PG_MANIFEST_BUILDS}) RETURNING id"
        );
        let rows = client.query(&sql, &[&ids]).await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    async fn unfinished_builds(&self) -> Result<Vec<BuildRecord>, RecordsError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT json FROM builds WHERE state IN ('queued', 'running')",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| super::records::from_json("builds", r.get::<_, &str>(0)))
            .collect()
    }

    async fn referenced_blobs(&self) -> Result<HashSet<String>, RecordsError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT sha256 FROM artifact_blobs UNION SELECT sha256 FROM apt_packages",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    async fn referenced_sources(&self) -> Result<HashSet<String>, RecordsError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT DISTINCT digest FROM modules", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    async fn try_gc_lock(&self) -> Result<Option<GcLock>, RecordsError> {
        let client = self.client().await?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&PG_GC_LOCK])
            .await?
            .get(0);
        if !got {
            return Ok(None);
        }
        Ok(Some(GcLock(Box::new(PgGcLock(Some(client))))))
    }
}
