//! Records of who may change what: API tokens (hashed), the audit log, and the
//! source digest each built module version is pinned to.
//!
//! [`AccessRecords`] is a supertrait of [`Records`](super::Records): the same seam,
//! kept in its own file. The SQLite implementation shares the records' connection.

use kmodforge_api::auth::{AuditEntry, TokenInfo};
use kmodforge_api::names::{ModuleName, ModuleVersion, TokenName};
use kmodforge_api::wire::PublicKey;
use rusqlite::{params, OptionalExtension};

use super::records::{from_json, to_json, RecordsError, SqliteRecords};

/// A stored token: its public id (the lookup key, part of the token string), the
/// sha256 of the whole token, and what it may do. The secret itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub hash: String,
    pub info: TokenInfo,
}

/// Tokens already read, valid while the database's `data_version` stays the same
/// (SQLite changes it when another connection, say `kmodforge-server token revoke`
/// in another process, commits) and cleared by this process's own token writes.
/// A revocation is therefore seen by the very next request either way.
#[derive(Default)]
pub struct TokenCache {
    data_version: i64,
    rows: std::collections::HashMap<String, Option<TokenRow>>,
}

/// Most tokens kept in the cache; beyond that it starts over (ids of failed
/// guesses are cached too, as misses, so the bound matters).
const TOKEN_CACHE_MAX: usize = 4096;

impl SqliteRecords {
    fn token_cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.token_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_cached_tokens(&self) {
        self.token_cache().rows.clear();
    }
}

/// Outcome of a revocation.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    Now(TokenInfo),
    Already(TokenInfo),
    Unknown,
}

/// Which audit entries to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub limit: u32,
    pub module: Option<ModuleName>,
    /// Only entries with a smaller `seq` (paging backwards).
    pub before: Option<u64>,
}

/// Tokens, audit and version pins: part of the records seam.
#[async_trait::async_trait]
pub trait AccessRecords: Send + Sync {
    /// Stores a new token. False (nothing stored) when an unrevoked token already
    /// has this name; a revoked token of that name is replaced.
    async fn insert_token(&self, row: &TokenRow) -> Result<bool, RecordsError>;
    /// The token with this public id, revoked or not.
    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRow>, RecordsError>;
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, RecordsError>;
    /// Revokes by name, effective for the next request.
    async fn revoke_token(&self, name: &TokenName, at: &str) -> Result<Revoked, RecordsError>;
    /// True when any token was ever stored (revoked ones count).
    async fn any_tokens(&self) -> Result<bool, RecordsError>;
    /// Removes a token record entirely (undoing a bootstrap that could not finish).
    async fn forget_token(&self, name: &TokenName) -> Result<(), RecordsError>;

    /// Appends an entry; returns its `seq`.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, RecordsError>;
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, RecordsError>;

    /// Records a public key the server signs with; makes it the current one of its
    /// purpose. True when it was not known before (a key change).
    async fn put_public_key(&self, key: &PublicKey) -> Result<bool, RecordsError>;
    /// Every public key ever used, the current one of each purpose marked.
    async fn list_public_keys(&self) -> Result<Vec<PublicKey>, RecordsError>;

    /// The source digest this module version is pinned to (it had artifacts).
    async fn pinned_digest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Option<String>, RecordsError>;
    /// Pins (or, with an admin's explicit consent, re-pins) a module version.
    async fn pin_digest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        digest: &str,
        at: &str,
    ) -> Result<(), RecordsError>;
}

impl SqliteRecords {
    pub(crate) fn insert_token(&self, row: &TokenRow) -> Result<bool, RecordsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let active: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM tokens WHERE name = ?1 AND revoked = 0",
                [row.info.name.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if active.is_some() {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO tokens (name, id, hash, revoked, json) VALUES (?1, ?2, ?3, 0, ?4)",
            params![row.info.name.as_str(), row.id, row.hash, to_json(&row.info)],
        )?;
        tx.commit()?;
        // Still under the connection's lock: no lookup can cache the old state after this.
        self.forget_cached_tokens();
        Ok(true)
    }

    pub(crate) fn token_by_id(&self, id: &str) -> Result<Option<TokenRow>, RecordsError> {
        let conn = self.conn();
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        {
            let mut cache = self.token_cache();
            if cache.data_version != version {
                cache.rows.clear();
                cache.data_version = version;
            }
            if let Some(row) = cache.rows.get(id) {
                return Ok(row.clone());
            }
        }
        let found: Option<(String, String, String)> = conn
            .prepare_cached("SELECT id, hash, json FROM tokens WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let row = found
            .map(|(id, hash, json)| {
                Ok::<_, RecordsError>(TokenRow {
                    id,
                    hash,
                    info: from_json("tokens", &json)?,
                })
            })
            .transpose()?;
        let mut cache = self.token_cache();
        if cache.rows.len() >= TOKEN_CACHE_MAX {
            cache.rows.clear();
        }
        cache.rows.insert(id.to_string(), row.clone());
        Ok(row)
    }

    pub(crate) fn list_tokens(&self) -> Result<Vec<TokenInfo>, RecordsError> {
        self.query_json("tokens", "SELECT json FROM tokens ORDER BY name", [])
    }

    pub(crate) fn revoke_token(&self, name: &TokenName, at: &str) -> Result<Revoked, RecordsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let json: Option<String> = tx
            .query_row(
                "SELECT json FROM tokens WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(json) = json else {
            return Ok(Revoked::Unknown);
        };
        let mut info: TokenInfo = from_json("tokens", &json)?;
        if info.revoked_at.is_some() {
            return Ok(Revoked::Already(info));
        }
        info.revoked_at = Some(at.to_string());
        tx.execute(
            "UPDATE tokens SET revoked = 1, json = ?2 WHERE name = ?1",
            params![name.as_str(), to_json(&info)],
        )?;
        tx.commit()?;
        // Still under the connection's lock: no lookup can cache the old state after this.
        self.forget_cached_tokens();
        Ok(Revoked::Now(info))
    }

    pub(crate) fn any_tokens(&self) -> Result<bool, RecordsError> {
        let conn = self.conn();
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))?;
        Ok(n > 0)
    }

    pub(crate) fn forget_token(&self, name: &TokenName) -> Result<(), RecordsError> {
        let conn = self.conn();
        conn.execute("DELETE FROM tokens WHERE name = ?1", [name.as_str()])?;
        self.forget_cached_tokens();
        Ok(())
    }

    pub(crate) fn append_audit(&self, entry: &AuditEntry) -> Result<u64, RecordsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO audit (module, json) VALUES (?1, '')",
            [entry.module.as_ref().map(|m| m.as_str())],
        )?;
        let seq = tx.last_insert_rowid();
        let mut stored = entry.clone();
        stored.seq = u64::try_from(seq).unwrap_or_default();
        tx.execute(
            "UPDATE audit SET json = ?2 WHERE seq = ?1",
            params![seq, to_json(&stored)],
        )?;
        tx.commit()?;
        Ok(stored.seq)
    }

    pub(crate) fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, RecordsError> {
        let before = q
            .before
            .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        match &q.module {
            Some(m) => self.query_json(
                "audit",
                "SELECT json FROM audit WHERE module = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                params![m.as_str(), before, q.limit],
            ),
            None => self.query_json(
                "audit",
                "SELECT json FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
                params![before, q.limit],
            ),
        }
    }

    pub(crate) fn put_public_key(&self, key: &PublicKey) -> Result<bool, RecordsError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM public_keys",
            [],
            |r| r.get(0),
        )?;
        let purpose = key.purpose.as_str();
        let known: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM public_keys WHERE purpose = ?1 AND id = ?2",
                params![purpose, key.id],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_some() {
            // Current again (a key used before, back after a rotation): latest seq wins.
            tx.execute(
                "UPDATE public_keys SET seq = ?3 WHERE purpose = ?1 AND id = ?2",
                params![purpose, key.id, seq],
            )?;
        } else {
            tx.execute(
                "INSERT INTO public_keys (purpose, id, seq, json) VALUES (?1, ?2, ?3, ?4)",
                params![purpose, key.id, seq, to_json(key)],
            )?;
        }
        tx.commit()?;
        Ok(known.is_none())
    }

    pub(crate) fn list_public_keys(&self) -> Result<Vec<PublicKey>, RecordsError> {
        let mut keys: Vec<PublicKey> = self.query_json(
            "public_keys",
            "SELECT json FROM public_keys ORDER BY purpose, seq DESC",
            [],
        )?;
        let mut seen = Vec::new();
        for k in &mut keys {
            k.current = !seen.contains(&k.purpose);
            seen.push(k.purpose);
        }
        Ok(keys)
    }

    pub(crate) fn pinned_digest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Option<String>, RecordsError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT digest FROM version_pins WHERE name = ?1 AND version = ?2",
                params![name.as_str(), version.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub(crate) fn pin_digest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        digest: &str,
        at: &str,
    ) -> Result<(), RecordsError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO version_pins (name, version, digest, pinned_at) VALUES (?1, ?2, ?3, ?4)",
            params![name.as_str(), version.as_str(), digest, at],
        )?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kmodforge_api::auth::{AuditAction, AuditOutcome, Scope};

    fn records() -> (tempfile::TempDir, SqliteRecords) {
        let dir = tempfile::tempdir().unwrap();
        let r = SqliteRecords::open(&dir.path().join("db")).unwrap();
        (dir, r)
    }

    fn row(name: &str, id: &str) -> TokenRow {
        TokenRow {
            id: id.into(),
            hash: "h".repeat(64),
            info: TokenInfo {
                name: TokenName::parse(name).unwrap(),
                scope: Scope::Read,
                modules: vec![],
                created_at: "t0".into(),
                created_by: "cli:test".into(),
                revoked_at: None,
            },
        }
    }

    #[test]
    fn token_names_are_unique_until_revoked() {
        let (_d, r) = records();
        assert!(!r.any_tokens().unwrap());
        assert!(r.insert_token(&row("ci", "id1")).unwrap());
        assert!(
            !r.insert_token(&row("ci", "id2")).unwrap(),
            "active name taken"
        );
        assert!(r.token_by_id("id2").unwrap().is_none());
        let name = TokenName::parse("ci").unwrap();
        assert!(matches!(
            r.revoke_token(&name, "t1").unwrap(),
            Revoked::Now(_)
        ));
        assert!(matches!(
            r.revoke_token(&name, "t2").unwrap(),
            Revoked::Already(_)
        ));
        assert_eq!(
            r.token_by_id("id1")
                .unwrap()
                .unwrap()
                .info
                .revoked_at
                .as_deref(),
            Some("t1")
        );
        assert!(r.insert_token(&row("ci", "id3")).unwrap(), "rotation");
        assert!(r.token_by_id("id1").unwrap().is_none(), "old secret gone");
        assert!(r.any_tokens().unwrap());
        let nope = TokenName::parse("nope").unwrap();
        assert_eq!(r.revoke_token(&nope, "t").unwrap(), Revoked::Unknown);
    }

    #[test]
    fn a_revocation_by_another_process_is_seen_at_once() {
        let (dir, server) = records();
        let cli = SqliteRecords::open(&dir.path().join("db")).unwrap();
        assert!(server.insert_token(&row("fleet", "id1")).unwrap());
        // Cached by the server's connection...
        assert!(server
            .token_by_id("id1")
            .unwrap()
            .unwrap()
            .info
            .revoked_at
            .is_none());
        assert!(server.token_by_id("id1").unwrap().is_some());
        // ...revoked through another connection (the command line), seen by the next lookup.
        let name = TokenName::parse("fleet").unwrap();
        assert!(matches!(
            cli.revoke_token(&name, "t1").unwrap(),
            Revoked::Now(_)
        ));
        assert_eq!(
            server
                .token_by_id("id1")
                .unwrap()
                .unwrap()
                .info
                .revoked_at
                .as_deref(),
            Some("t1")
        );
        // A token created elsewhere after a cached miss is found too.
        assert!(server.token_by_id("id2").unwrap().is_none());
        assert!(cli.insert_token(&row("ci", "id2")).unwrap());
        assert!(server.token_by_id("id2").unwrap().is_some());
    }

    #[test]
    fn audit_lists_newest_first_and_filters_by_module() {
        let (_d, r) = records();
        let entry = |module: Option<&str>| AuditEntry {
            seq: 0,
            at: "t".into(),
            actor: "ci".into(),
            action: AuditAction::ModuleAdd,
            outcome: AuditOutcome::Done,
            module: module.map(|m| ModuleName::parse(m).unwrap()),
            version: None,
            digest: None,
            token: None,
            detail: "d".into(),
        };
        assert_eq!(r.append_audit(&entry(Some("a"))).unwrap(), 1);
        assert_eq!(r.append_audit(&entry(None)).unwrap(), 2);
        assert_eq!(r.append_audit(&entry(Some("a"))).unwrap(), 3);
        let all = r
            .list_audit(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 2, 1]);
        let q = AuditQuery {
            limit: 10,
            module: Some(ModuleName::parse("a").unwrap()),
            before: Some(3),
        };
        assert_eq!(
            r.list_audit(&q)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [1]
        );
    }

    #[test]
    fn pins_hold_until_replaced() {
        let (_d, r) = records();
        let (m, v) = (
            ModuleName::parse("m").unwrap(),
            ModuleVersion::parse("1").unwrap(),
        );
        assert_eq!(r.pinned_digest(&m, &v).unwrap(), None);
        r.pin_digest(&m, &v, "d1", "t").unwrap();
        assert_eq!(r.pinned_digest(&m, &v).unwrap().as_deref(), Some("d1"));
        r.pin_digest(&m, &v, "d2", "t").unwrap();
        assert_eq!(r.pinned_digest(&m, &v).unwrap().as_deref(), Some("d2"));
    }
}
