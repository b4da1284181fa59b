//! The records seam in PostgreSQL, shared by every replica.
//!
//! The same tables as SQLite (wire types as JSON beside the queried columns), made
//! safe for several writers: upserts and `ON CONFLICT` instead of read-then-write,
//! sequences for ordering, row locks where a read decides a write. Every call is
//! async on a connection pool (deadpool), so a slow database never blocks a worker;
//! a restarted database is reconnected to on the next call. Token lookups are not
//! cached: a revocation through any replica is seen by the next request anywhere.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use kmodforge_api::auth::{AuditEntry, TokenInfo};
use kmodforge_api::names::{
    Arch, ArtifactKey, KernelRelease, ModuleName, ModuleVersion, TokenName,
};
use kmodforge_api::settings::SettingsRecord;
use kmodforge_api::wire::{
    BuildRecord, BuildState, Failure, FailureKind, KnownKernel, Manifest, ModuleSource, PublicKey,
};
use tokio_postgres::types::ToSql;

use std::time::Duration;

use super::access::{AccessRecords, AuditQuery, Revoked, TokenRow};
use super::jobs::{ClaimedJob, Enqueued, JobQueue};
use super::kernels::KernelRecords;
use super::records::{from_json, to_json, PutModule, Records, RecordsError};

/// PostgreSQL migrations; index 0 is version 1.
pub const MIGRATIONS: &[&str] = &[
    include_str!("schema/postgres-1.sql"),
    include_str!("schema/postgres-2-jobs.sql"),
    include_str!("schema/postgres-3-cluster.sql"),
    include_str!("schema/postgres-4-apt.sql"),
];

/// Serialises migrations of replicas that start together (any constant of ours).
const MIGRATION_LOCK: i64 = 0x6b6d_6f64_6667;

/// Records in PostgreSQL.
pub struct PgRecords {
    pool: Pool,
}

type Param<'a> = &'a (dyn ToSql + Sync);

impl PgRecords {
    /// Connects (the URL's password is never logged) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, RecordsError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| RecordsError::PgUnavailable(format!("invalid database URL: {e}")))?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(std::time::Duration::from_secs(10)),
                create: Some(std::time::Duration::from_secs(5)),
                recycle: Some(std::time::Duration::from_secs(5)),
            })
            .build()
            .map_err(|e| RecordsError::PgUnavailable(e.to_string()))?;
        let records = PgRecords { pool };
        records.migrate().await?;
        Ok(records)
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, RecordsError> {
        self.pool
            .get()
            .await
            .map_err(|e| RecordsError::PgUnavailable(e.to_string()))
    }

    /// Applies the migrations this database lacks, once across replicas.
    pub async fn migrate(&self) -> Result<(), RecordsError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let found: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(RecordsError::SchemaTooNew { found, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&(i as i64 + 1)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The schema version (for tests and `--version`-style reports).
    pub async fn schema_version(&self) -> Result<i64, RecordsError> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0))
    }

    pub(super) async fn query_json<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        sql: &str,
        args: &[Param<'_>],
    ) -> Result<Vec<T>, RecordsError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        let rows = client.query(&stmt, args).await?;
        rows.iter()
            .map(|r| from_json(table, r.get::<_, &str>(0)))
            .collect()
    }

    pub(super) async fn execute(&self, sql: &str, args: &[Param<'_>]) -> Result<u64, RecordsError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.execute(&stmt, args).await?)
    }

    async fn exists(&self, sql: &str, args: &[Param<'_>]) -> Result<bool, RecordsError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await?;
        Ok(client.query_opt(&stmt, args).await?.is_some())
    }
}

#[async_trait::async_trait]
impl Records for PgRecords {
    async fn put_module(&self, m: &ModuleSource) -> Result<PutModule, RecordsError> {
        let inserted = self
            .execute(
                "INSERT INTO modules (name, version, digest, json) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name, version) DO NOTHING",
                &[
                    &m.name.as_str(),
                    &m.version.as_str(),
                    &m.digest.as_str(),
                    &to_json(m),
                ],
            )
            .await?;
        if inserted == 1 {
            return Ok(PutModule::Created);
        }
        let existing = self.get_module(&m.name, &m.version).await?;
        // Deleted between the two statements: try once more.
        let Some(existing) = existing else {
            return Box::pin(self.put_module(m)).await;
        };
        Ok(if existing.digest == m.digest {
            PutModule::Unchanged(existing)
        } else {
            PutModule::Conflict(existing)
        })
    }

    async fn get_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Option<ModuleSource>, RecordsError> {
        let sql = "SELECT json FROM modules WHERE name = $1 AND version = $2";
        Ok(self
            .query_json("modules", sql, &[&name.as_str(), &version.as_str()])
            .await?
            .pop())
    }

    async fn list_modules(&self) -> Result<Vec<ModuleSource>, RecordsError> {
        self.query_json(
            "modules",
            "SELECT json FROM modules ORDER BY name, version",
            &[],
        )
        .await
    }

    async fn delete_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<bool, RecordsError> {
        let n = self
            .execute(
                "DELETE FROM modules WHERE name = $1 AND version = $2",
                &[&name.as_str(), &version.as_str()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn digest_in_use(&self, digest: &str) -> Result<bool, RecordsError> {
        self.exists(
            "SELECT 1 FROM modules WHERE digest = $1 LIMIT 1",
            &[&digest],
        )
        .await
    }

    async fn put_build(&self, b: &BuildRecord) -> Result<(), RecordsError> {
        self.execute(
            "INSERT INTO builds (id, state, created_at, json) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, json = excluded.json",
            &[&b.id, &b.state.as_str(), &b.created_at, &to_json(b)],
        )
        .await?;
        Ok(())
    }

    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, RecordsError> {
        Ok(self
            .query_json("builds", "SELECT json FROM builds WHERE id = $1", &[&id])
            .await?
            .pop())
    }

    async fn list_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, RecordsError> {
        let sql = "SELECT json FROM builds ORDER BY created_at DESC, seq DESC LIMIT $1";
        self.query_json("builds", sql, &[&i64::from(limit)]).await
    }

    async fn fail_unfinished(&self, message: &str, now: &str) -> Result<Vec<String>, RecordsError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT json FROM builds WHERE state IN ('queued', 'running') FOR UPDATE",
                &[],
            )
            .await?;
        let mut ids = Vec::new();
        for row in rows {
            let mut b: BuildRecord = from_json("builds", row.get::<_, &str>(0))?;
            b.state = BuildState::Failed;
            b.finished_at = Some(now.to_string());
            b.failure = Some(Failure {
                kind: FailureKind::Infrastructure,
                message: format!("{}/{} for {}: {message}", b.name, b.version, b.kernel),
                log_tail: String::new(),
            });
            tx.execute(
                "UPDATE builds SET state = $2, json = $3 WHERE id = $1",
                &[&b.id, &b.state.as_str(), &to_json(&b)],
            )
            .await?;
            ids.push(b.id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn put_artifact(&self, m: &Manifest) -> Result<(), RecordsError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO artifacts (key, name, version, kernel, arch, seq, json)
             VALUES ($1, $2, $3, $4, $5, nextval('artifacts_seq'), $6)
             ON CONFLICT (key) DO UPDATE SET name = excluded.name, version = excluded.version,
               kernel = excluded.kernel, arch = excluded.arch, seq = excluded.seq,
               json = excluded.json",
            &[
                &m.key.as_str(),
                &m.name.as_str(),
                &m.version.as_str(),
                &m.kernel.as_str(),
                &m.arch.as_str(),
                &to_json(m),
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM artifact_blobs WHERE key = $1",
            &[&m.key.as_str()],
        )
        .await?;
        let blobs = m.files.iter().map(|f| &f.sha256);
        for sha256 in blobs.chain(m.symvers.as_ref().map(|b| &b.sha256)) {
            tx.execute(
                "INSERT INTO artifact_blobs (key, sha256) VALUES ($1, $2)",
                &[&m.key.as_str(), sha256],
            )
            .await?;
        }
        // A version with artifacts means this source from now on (immutable versions).
        tx.execute(
            "INSERT INTO version_pins (name, version, digest, pinned_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name, version) DO NOTHING",
            &[
                &m.name.as_str(),
                &m.version.as_str(),
                &m.source_digest.as_str(),
                &m.built_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_artifact(&self, key: &ArtifactKey) -> Result<Option<Manifest>, RecordsError> {
        let sql = "SELECT json FROM artifacts WHERE key = $1";
        Ok(self
            .query_json("artifacts", sql, &[&key.as_str()])
            .await?
            .pop())
    }

    async fn update_manifest(&self, m: &Manifest) -> Result<bool, RecordsError> {
        let n = self
            .execute(
                "UPDATE artifacts SET json = $2 WHERE key = $1",
                &[&m.key.as_str(), &to_json(m)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn latest_artifact(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        kernel: &KernelRelease,
        arch: &Arch,
    ) -> Result<Option<Manifest>, RecordsError> {
        let sql = "SELECT json FROM artifacts WHERE name = $1 AND version = $2 AND kernel = $3
                   AND arch = $4 ORDER BY seq DESC LIMIT 1";
        Ok(self
            .query_json(
                "artifacts",
                sql,
                &[
                    &name.as_str(),
                    &version.as_str(),
                    &kernel.as_str(),
                    &arch.as_str(),
                ],
            )
            .await?
            .pop())
    }

    async fn latest_artifacts_per_kernel(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        arch: &Arch,
    ) -> Result<Vec<Manifest>, RecordsError> {
        let sql = "SELECT json FROM artifacts a WHERE name = $1 AND version = $2 AND arch = $3
                   AND seq = (SELECT MAX(seq) FROM artifacts b WHERE b.name = a.name
                              AND b.version = a.version AND b.kernel = a.kernel AND b.arch = a.arch)
                   ORDER BY kernel";
        self.query_json(
            "artifacts",
            sql,
            &[&name.as_str(), &version.as_str(), &arch.as_str()],
        )
        .await
    }

    async fn delete_artifacts(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Vec<Manifest>, RecordsError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "DELETE FROM artifacts WHERE name = $1 AND version = $2 RETURNING key, json",
                &[&name.as_str(), &version.as_str()],
            )
            .await?;
        let mut gone = Vec::new();
        for row in rows {
            tx.execute(
                "DELETE FROM artifact_blobs WHERE key = $1",
                &[&row.get::<_, &str>(0)],
            )
            .await?;
            gone.push(from_json("artifacts", row.get::<_, &str>(1))?);
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn blob_in_use(&self, sha256: &str) -> Result<bool, RecordsError> {
        self.exists(
            "SELECT 1 FROM artifact_blobs WHERE sha256 = $1
             UNION ALL SELECT 1 FROM apt_packages WHERE sha256 = $1 LIMIT 1",
            &[&sha256],
        )
        .await
    }

    async fn put_eval(&self, key: &str, value: &str) -> Result<(), RecordsError> {
        self.execute(
            "INSERT INTO evals (key, json) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET json = excluded.json",
            &[&key, &value],
        )
        .await?;
        Ok(())
    }

    async fn get_eval(&self, key: &str) -> Result<Option<String>, RecordsError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT json FROM evals WHERE key = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&key])
            .await?
            .map(|r| r.get::<_, String>(0)))
    }

    async fn put_settings(&self, s: &SettingsRecord) -> Result<(), RecordsError> {
        self.execute(
            "INSERT INTO module_settings (name, json) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET json = excluded.json",
            &[&s.name.as_str(), &to_json(s)],
        )
        .await?;
        Ok(())
    }

    async fn get_settings(
        &self,
        name: &ModuleName,
    ) -> Result<Option<SettingsRecord>, RecordsError> {
        let sql = "SELECT json FROM module_settings WHERE name = $1";
        Ok(self
            .query_json("module_settings", sql, &[&name.as_str()])
            .await?
            .pop())
    }

    async fn delete_settings(&self, name: &ModuleName) -> Result<bool, RecordsError> {
        let n = self
            .execute(
                "DELETE FROM module_settings WHERE name = $1",
                &[&name.as_str()],
            )
            .await?;
        Ok(n > 0)
    }

    fn jobs(&self) -> Option<&dyn JobQueue> {
        Some(self)
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[async_trait::async_trait]
impl JobQueue for PgRecords {
    async fn enqueue_or_join(
        &self,
        request_key: &str,
        build_id: &str,
        payload: &str,
        owner: Option<&str>,
        lease: Duration,
        background: bool,
    ) -> Result<Enqueued, RecordsError> {
        loop {
            let client = self.client().await?;
            let inserted = client
                .query_opt(
                    "INSERT INTO jobs (request_key, build_id, payload, owner, lease_until, attempts, background)
                     VALUES ($1, $2, $3, $4::TEXT,
                       CASE WHEN $4::TEXT IS NULL THEN NULL
                            ELSE now() + make_interval(secs => $5) END,
                       CASE WHEN $4::TEXT IS NULL THEN 0 ELSE 1 END, $6)
                     ON CONFLICT (request_key) DO NOTHING RETURNING build_id",
                    &[&request_key, &build_id, &payload, &owner, &seconds(lease), &background],
                )
                .await?;
            if inserted.is_some() {
                return Ok(Enqueued::New);
            }
            let existing = client
                .query_opt(
                    "SELECT build_id FROM jobs WHERE request_key = $1",
                    &[&request_key],
                )
                .await?;
            // Completed between the two statements: try again.
            if let Some(row) = existing {
                return Ok(Enqueued::Joined {
                    build_id: row.get(0),
                });
            }
        }
    }

    async fn renew(
        &self,
        build_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, RecordsError> {
        let n = self
            .execute(
                "UPDATE jobs SET lease_until = now() + make_interval(secs => $3)
                 WHERE build_id = $1 AND owner = $2",
                &[&build_id, &owner, &seconds(lease)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn claim_next(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, RecordsError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE jobs SET owner = $1, lease_until = now() + make_interval(secs => $2),
                   attempts = attempts + 1
                 WHERE request_key = (
                   SELECT request_key FROM jobs
                   WHERE owner IS NULL OR lease_until < now()
                   ORDER BY background, created_at
                   LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING request_key, build_id, payload, attempts",
                &[&owner, &seconds(lease)],
            )
            .await?;
        Ok(row.map(|r| ClaimedJob {
            request_key: r.get(0),
            build_id: r.get(1),
            payload: r.get(2),
            attempts: r.get(3),
        }))
    }

    async fn make_foreground(&self, build_id: &str) -> Result<(), RecordsError> {
        self.execute(
            "UPDATE jobs SET background = false WHERE build_id = $1 AND background",
            &[&build_id],
        )
        .await?;
        Ok(())
    }

    async fn complete(&self, request_key: &str, build_id: &str) -> Result<(), RecordsError> {
        self.execute(
            "DELETE FROM jobs WHERE request_key = $1 AND build_id = $2",
            &[&request_key, &build_id],
        )
        .await?;
        Ok(())
    }

    async fn release(&self, owner: &str) -> Result<u64, RecordsError> {
        self.execute(
            "UPDATE jobs SET owner = NULL, lease_until = NULL WHERE owner = $1",
            &[&owner],
        )
        .await
    }

    async fn cluster_id(&self) -> Result<String, RecordsError> {
        let client = self.client().await?;
        Ok(client
            .query_one("SELECT id FROM cluster_identity", &[])
            .await?
            .get(0))
    }

    async fn module_busy(&self, name: &str, version: &str) -> Result<bool, RecordsError> {
        self.exists(
            "SELECT 1 FROM jobs WHERE payload::jsonb -> 'request' ->> 'name' = $1
               AND payload::jsonb -> 'request' ->> 'version' = $2 LIMIT 1",
            &[&name, &version],
        )
        .await
    }

    async fn live_builds(&self) -> Result<Vec<(String, String)>, RecordsError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT build_id, owner FROM jobs WHERE lease_until > now() AND owner IS NOT NULL",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[async_trait::async_trait]
impl AccessRecords for PgRecords {
    async fn insert_token(&self, row: &TokenRow) -> Result<bool, RecordsError> {
        // One statement: a revoked token of this name is replaced, an active one kept.
        let n = self
            .execute(
                "INSERT INTO tokens (name, id, hash, revoked, json) VALUES ($1, $2, $3, false, $4)
                 ON CONFLICT (name) DO UPDATE SET id = excluded.id, hash = excluded.hash,
                   revoked = false, json = excluded.json
                 WHERE tokens.revoked",
                &[
                    &row.info.name.as_str(),
                    &row.id,
                    &row.hash,
                    &to_json(&row.info),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRow>, RecordsError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id, hash, json FROM tokens WHERE id = $1")
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
            return Ok(None);
        };
        Ok(Some(TokenRow {
            id: row.get(0),
            hash: row.get(1),
            info: from_json("tokens", row.get::<_, &str>(2))?,
        }))
    }

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, RecordsError> {
        self.query_json("tokens", "SELECT json FROM tokens ORDER BY name", &[])
            .await
    }

    async fn revoke_token(&self, name: &TokenName, at: &str) -> Result<Revoked, RecordsError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT json FROM tokens WHERE name = $1 FOR UPDATE",
                &[&name.as_str()],
            )
            .await?
        else {
            return Ok(Revoked::Unknown);
        };
        let mut info: TokenInfo = from_json("tokens", row.get::<_, &str>(0))?;
        if info.revoked_at.is_some() {
            return Ok(Revoked::Already(info));
        }
        info.revoked_at = Some(at.to_string());
        tx.execute(
            "UPDATE tokens SET revoked = true, json = $2 WHERE name = $1",
            &[&name.as_str(), &to_json(&info)],
        )
        .await?;
        tx.commit().await?;
        Ok(Revoked::Now(info))
    }

    async fn any_tokens(&self) -> Result<bool, RecordsError> {
        self.exists("SELECT 1 FROM tokens LIMIT 1", &[]).await
    }

    async fn forget_token(&self, name: &TokenName) -> Result<(), RecordsError> {
        self.execute("DELETE FROM tokens WHERE name = $1", &[&name.as_str()])
            .await?;
        Ok(())
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, RecordsError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let module = entry.module.as_ref().map(|m| m.as_str());
        let seq: i64 = tx
            .query_one(
                "INSERT INTO audit (module, json) VALUES ($1, '') RETURNING seq",
                &[&module],
            )
            .await?
            .get(0);
        let mut stored = entry.clone();
        stored.seq = u64::try_from(seq).unwrap_or_default();
        tx.execute(
            "UPDATE audit SET json = $2 WHERE seq = $1",
            &[&seq, &to_json(&stored)],
        )
        .await?;
        tx.commit().await?;
        Ok(stored.seq)
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, RecordsError> {
        let before = q
            .before
            .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::from(q.limit);
        match &q.module {
            Some(m) => {
                self.query_json(
                    "audit",
                    "SELECT json FROM audit WHERE module = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                    &[&m.as_str(), &before, &limit],
                )
                .await
            }
            None => {
                self.query_json(
                    "audit",
                    "SELECT json FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                    &[&before, &limit],
                )
                .await
            }
        }
    }

    async fn put_public_key(&self, key: &PublicKey) -> Result<bool, RecordsError> {
        // Inserted rows have xmax = 0; a key seen before gets a new seq (current again).
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO public_keys (purpose, id, seq, json)
                 VALUES ($1, $2, nextval('public_keys_seq'), $3)
                 ON CONFLICT (purpose, id) DO UPDATE SET seq = excluded.seq
                 RETURNING (xmax = 0)",
                &[&key.purpose.as_str(), &key.id, &to_json(key)],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn list_public_keys(&self) -> Result<Vec<PublicKey>, RecordsError> {
        let mut keys: Vec<PublicKey> = self
            .query_json(
                "public_keys",
                "SELECT json FROM public_keys ORDER BY purpose, seq DESC",
                &[],
            )
            .await?;
        let mut seen = Vec::new();
        for k in &mut keys {
            k.current = !seen.contains(&k.purpose);
            seen.push(k.purpose);
        }
        Ok(keys)
    }

    async fn pinned_digest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Option<String>, RecordsError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT digest FROM version_pins WHERE name = $1 AND version = $2")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&name.as_str(), &version.as_str()])
            .await?
            .map(|r| r.get(0)))
    }

    async fn pin_digest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        digest: &str,
        at: &str,
    ) -> Result<(), RecordsError> {
        self.execute(
            "INSERT INTO version_pins (name, version, digest, pinned_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name, version) DO UPDATE SET digest = excluded.digest,
               pinned_at = excluded.pinned_at",
            &[&name.as_str(), &version.as_str(), &digest, &at],
        )
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl KernelRecords for PgRecords {
    async fn put_kernel(&self, k: &KnownKernel) -> Result<(), RecordsError> {
        self.execute(
            "INSERT INTO kernels (kernel, json) VALUES ($1, $2)
             ON CONFLICT (kernel) DO UPDATE SET json = excluded.json",
            &[&k.kernel.as_str(), &to_json(k)],
        )
        .await?;
        Ok(())
    }

    async fn get_kernel(
        &self,
        kernel: &KernelRelease,
    ) -> Result<Option<KnownKernel>, RecordsError> {
        Ok(self
            .query_json(
                "kernels",
                "SELECT json FROM kernels WHERE kernel = $1",
                &[&kernel.as_str()],
            )
            .await?
            .pop())
    }

    async fn publish_kernel(&self, k: &KnownKernel) -> Result<bool, RecordsError> {
        let n = self
            .execute(
                "INSERT INTO kernels (kernel, json) VALUES ($1, $2)
                 ON CONFLICT (kernel) DO UPDATE SET json = excluded.json
                 WHERE (kernels.json::jsonb ->> 'published') IS DISTINCT FROM 'true'",
                &[&k.kernel.as_str(), &to_json(k)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn list_kernels(&self) -> Result<Vec<KnownKernel>, RecordsError> {
        self.query_json("kernels", "SELECT json FROM kernels ORDER BY kernel", &[])
            .await
    }
}
