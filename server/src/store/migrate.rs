//! Versioned schema migrations, for SQLite and PostgreSQL.
//!
//! Each list only grows: migration N is applied once, in order, to a database at
//! version N-1, and the version is recorded in the same transaction (SQLite:
//! `PRAGMA user_version`; PostgreSQL: the `schema_migrations` table, under an
//! advisory lock so that replicas starting together migrate once). A database
//! newer than the server is refused rather than guessed at.

use rusqlite::Connection;

use super::records::RecordsError;

/// SQLite migrations; index 0 is version 1. Version 1 is the schema of the
/// releases before versioning (every statement `IF NOT EXISTS`), so their
/// databases (at `user_version` 0) take it as a no-op.
pub const SQLITE: &[&str] = &[
    // 1: modules, builds, artifacts, evaluations, settings; tokens, audit, keys, pins; kernels.
    concat!(
        include_str!("schema/sqlite-1-records.sql"),
        include_str!("schema/sqlite-1-access.sql"),
        include_str!("schema/sqlite-1-kernels.sql"),
    ),
    // 2: the apt repository's packages.
    include_str!("schema/sqlite-2-apt.sql"),
];

/// Brings a SQLite database to the newest schema.
pub fn sqlite(conn: &mut Connection) -> Result<(), RecordsError> {
    let known = SQLITE.len() as i64;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(RecordsError::SchemaTooNew { found, known });
    }
    for (i, sql) in SQLITE.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut conn = Connection::open(&path).unwrap();
        sqlite(&mut conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SQLITE.len() as i64);
        sqlite(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let err = sqlite(&mut conn).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }

    #[test]
    fn a_database_from_before_versioning_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("db")).unwrap();
        // What the releases before versioning created (user_version 0), with a row.
        conn.execute_batch(SQLITE[0]).unwrap();
        conn.execute("INSERT INTO evals (key, json) VALUES ('k', 'v')", [])
            .unwrap();
        sqlite(&mut conn).unwrap();
        let kept: String = conn
            .query_row("SELECT json FROM evals WHERE key = 'k'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "v");
    }
}
