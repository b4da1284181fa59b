//! Records of the apt repository: the packages it serves (their `.deb` files are
//! blobs in the object store) and the artifacts it makes packages of. A
//! supertrait of [`Records`](super::Records), like the kernel records.

use kmodforge_api::wire::{AptPackage, Manifest};
use rusqlite::params;

use super::records::{to_json, RecordsError, SqliteRecords};

/// The apt repository's records.
#[async_trait::async_trait]
pub trait AptRecords: Send + Sync {
    /// Stores (replaces) a package, keyed by (package, version, architecture).
    async fn put_apt_package(&self, p: &AptPackage) -> Result<(), RecordsError>;
    /// Every package, by name, version and architecture.
    async fn list_apt_packages(&self) -> Result<Vec<AptPackage>, RecordsError>;
    /// True when there was such a package.
    async fn delete_apt_package(
        &self,
        package: &str,
        version: &str,
        arch: &str,
    ) -> Result<bool, RecordsError>;
    /// Every artifact that is the newest of its (name, version, kernel, arch): what
    /// the artifact routes and agents get, and what the repository packages.
    async fn latest_artifacts(&self) -> Result<Vec<Manifest>, RecordsError>;
}

/// The newest artifact of each (name, version, kernel, arch).
pub(super) const LATEST_ARTIFACTS: &str = "SELECT a.json FROM artifacts a
    WHERE a.seq = (SELECT MAX(b.seq) FROM artifacts b WHERE b.name = a.name
        AND b.version = a.version AND b.kernel = a.kernel AND b.arch = a.arch)
    ORDER BY a.name, a.version, a.kernel, a.arch";

const LIST: &str = "SELECT json FROM apt_packages ORDER BY package, version, arch";

impl SqliteRecords {
    pub(crate) fn put_apt_package(&self, p: &AptPackage) -> Result<(), RecordsError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO apt_packages (package, version, arch, sha256, json)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.package, p.version, p.architecture, p.sha256, to_json(p)],
        )?;
        Ok(())
    }

    pub(crate) fn list_apt_packages(&self) -> Result<Vec<AptPackage>, RecordsError> {
        self.query_json("apt_packages", LIST, [])
    }

    pub(crate) fn delete_apt_package(
        &self,
        package: &str,
        version: &str,
        arch: &str,
    ) -> Result<bool, RecordsError> {
        let n = self.conn().execute(
            "DELETE FROM apt_packages WHERE package = ?1 AND version = ?2 AND arch = ?3",
            params![package, version, arch],
        )?;
        Ok(n > 0)
    }

    pub(crate) fn latest_artifacts(&self) -> Result<Vec<Manifest>, RecordsError> {
        self.query_json("artifacts", LATEST_ARTIFACTS, [])
    }
}

#[async_trait::async_trait]
impl AptRecords for SqliteRecords {
    async fn put_apt_package(&self, p: &AptPackage) -> Result<(), RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::put_apt_package(self, p))
    }
    async fn list_apt_packages(&self) -> Result<Vec<AptPackage>, RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::list_apt_packages(self))
    }
    async fn delete_apt_package(
        &self,
        package: &str,
        version: &str,
        arch: &str,
    ) -> Result<bool, RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::delete_apt_package(self, package, version, arch))
    }
    async fn latest_artifacts(&self) -> Result<Vec<Manifest>, RecordsError> {
        super::sqlite::blocking(|| SqliteRecords::latest_artifacts(self))
    }
}

#[async_trait::async_trait]
impl AptRecords for super::postgres::PgRecords {
    async fn put_apt_package(&self, p: &AptPackage) -> Result<(), RecordsError> {
        self.execute(
            "INSERT INTO apt_packages (package, version, arch, sha256, json)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (package, version, arch)
             DO UPDATE SET sha256 = excluded.sha256, json = excluded.json",
            &[
                &p.package,
                &p.version,
                &p.architecture,
                &p.sha256,
                &to_json(p),
            ],
        )
        .await?;
        Ok(())
    }
    async fn list_apt_packages(&self) -> Result<Vec<AptPackage>, RecordsError> {
        self.query_json("apt_packages", LIST, &[]).await
    }
    async fn delete_apt_package(
        &self,
        package: &str,
        version: &str,
        arch: &str,
    ) -> Result<bool, RecordsError> {
        let n = self
            .execute(
                "DELETE FROM apt_packages WHERE package = $1 AND version = $2 AND arch = $3",
                &[&package, &version, &arch],
            )
            .await?;
        Ok(n > 0)
    }
    async fn latest_artifacts(&self) -> Result<Vec<Manifest>, RecordsError> {
        self.query_json("artifacts", LATEST_ARTIFACTS, &[]).await
    }
}
