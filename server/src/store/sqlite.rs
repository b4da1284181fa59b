//! The records seam's async face for SQLite: every call runs the synchronous
//! rusqlite code (in `records.rs`, `access.rs`, `kernels.rs`) off the async
//! workers, so that a slow disk never stalls the tasks serving other requests.

use kmodforge_api::auth::{AuditEntry, TokenInfo};
use kmodforge_api::names::{
    Arch, ArtifactKey, KernelRelease, ModuleName, ModuleVersion, TokenName,
};
use kmodforge_api::settings::SettingsRecord;
use kmodforge_api::wire::{BuildRecord, KnownKernel, Manifest, ModuleSource, PublicKey};

use super::access::{AccessRecords, AuditQuery, Revoked, TokenRow};
use super::kernels::KernelRecords;
use super::records::{PutModule, Records, RecordsError, SqliteRecords};

/// Runs a blocking database call: on a multi-threaded runtime the worker hands its
/// other tasks to another thread for the duration (`block_in_place`); elsewhere
/// (a single-threaded test runtime, the command line) it simply runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[async_trait::async_trait]
impl Records for SqliteRecords {
    async fn put_module(&self, m: &ModuleSource) -> Result<PutModule, RecordsError> {
        blocking(|| SqliteRecords::put_module(self, m))
    }
    async fn get_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Option<ModuleSource>, RecordsError> {
        blocking(|| SqliteRecords::get_module(self, name, version))
    }
    async fn list_modules(&self) -> Result<Vec<ModuleSource>, RecordsError> {
        blocking(|| SqliteRecords::list_modules(self))
    }
    async fn delete_module(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::delete_module(self, name, version))
    }
    async fn digest_in_use(&self, digest: &str) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::digest_in_use(self, digest))
    }
    async fn put_build(&self, b: &BuildRecord) -> Result<(), RecordsError> {
        blocking(|| SqliteRecords::put_build(self, b))
    }
    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, RecordsError> {
        blocking(|| SqliteRecords::get_build(self, id))
    }
    async fn list_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, RecordsError> {
        blocking(|| SqliteRecords::list_builds(self, limit))
    }
    async fn fail_unfinished(&self, message: &str, now: &str) -> Result<Vec<String>, RecordsError> {
        blocking(|| SqliteRecords::fail_unfinished(self, message, now))
    }
    async fn put_artifact(&self, m: &Manifest) -> Result<(), RecordsError> {
        blocking(|| SqliteRecords::put_artifact(self, m))
    }
    async fn get_artifact(&self, key: &ArtifactKey) -> Result<Option<Manifest>, RecordsError> {
        blocking(|| SqliteRecords::get_artifact(self, key))
    }
    async fn update_manifest(&self, m: &Manifest) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::update_manifest(self, m))
    }
    async fn latest_artifact(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        kernel: &KernelRelease,
        arch: &Arch,
    ) -> Result<Option<Manifest>, RecordsError> {
        blocking(|| SqliteRecords::latest_artifact(self, name, version, kernel, arch))
    }
    async fn latest_artifacts_per_kernel(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        arch: &Arch,
    ) -> Result<Vec<Manifest>, RecordsError> {
        blocking(|| SqliteRecords::latest_artifacts_per_kernel(self, name, version, arch))
    }
    async fn delete_artifacts(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Vec<Manifest>, RecordsError> {
        blocking(|| SqliteRecords::delete_artifacts(self, name, version))
    }
    async fn blob_in_use(&self, sha256: &str) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::blob_in_use(self, sha256))
    }
    async fn put_eval(&self, key: &str, value: &str) -> Result<(), RecordsError> {
        blocking(|| SqliteRecords::put_eval(self, key, value))
    }
    async fn get_eval(&self, key: &str) -> Result<Option<String>, RecordsError> {
        blocking(|| SqliteRecords::get_eval(self, key))
    }
    async fn put_settings(&self, s: &SettingsRecord) -> Result<(), RecordsError> {
        blocking(|| SqliteRecords::put_settings(self, s))
    }
    async fn get_settings(
        &self,
        name: &ModuleName,
    ) -> Result<Option<SettingsRecord>, RecordsError> {
        blocking(|| SqliteRecords::get_settings(self, name))
    }
    async fn delete_settings(&self, name: &ModuleName) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::delete_settings(self, name))
    }
}

#[async_trait::async_trait]
impl AccessRecords for SqliteRecords {
    async fn insert_token(&self, row: &TokenRow) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::insert_token(self, row))
    }
    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRow>, RecordsError> {
        blocking(|| SqliteRecords::token_by_id(self, id))
    }
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, RecordsError> {
        blocking(|| SqliteRecords::list_tokens(self))
    }
    async fn revoke_token(&self, name: &TokenName, at: &str) -> Result<Revoked, RecordsError> {
        blocking(|| SqliteRecords::revoke_token(self, name, at))
    }
    async fn any_tokens(&self) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::any_tokens(self))
    }
    async fn forget_token(&self, name: &TokenName) -> Result<(), RecordsError> {
        blocking(|| SqliteRecords::forget_token(self, name))
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, RecordsError> {
        blocking(|| SqliteRecords::append_audit(self, entry))
    }
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, RecordsError> {
        blocking(|| SqliteRecords::list_audit(self, q))
    }
    async fn put_public_key(&self, key: &PublicKey) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::put_public_key(self, key))
    }
    async fn list_public_keys(&self) -> Result<Vec<PublicKey>, RecordsError> {
        blocking(|| SqliteRecords::list_public_keys(self))
    }
    async fn pinned_digest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<Option<String>, RecordsError> {
        blocking(|| SqliteRecords::pinned_digest(self, name, version))
    }
    async fn pin_digest(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        digest: &str,
        at: &str,
    ) -> Result<(), RecordsError> {
        blocking(|| SqliteRecords::pin_digest(self, name, version, digest, at))
    }
}

#[async_trait::async_trait]
impl KernelRecords for SqliteRecords {
    async fn put_kernel(&self, k: &KnownKernel) -> Result<(), RecordsError> {
        blocking(|| SqliteRecords::put_kernel(self, k))
    }
    async fn get_kernel(
        &self,
        kernel: &KernelRelease,
    ) -> Result<Option<KnownKernel>, RecordsError> {
        blocking(|| SqliteRecords::get_kernel(self, kernel))
    }
    async fn list_kernels(&self) -> Result<Vec<KnownKernel>, RecordsError> {
        blocking(|| SqliteRecords::list_kernels(self))
    }
    async fn publish_kernel(&self, k: &KnownKernel) -> Result<bool, RecordsError> {
        blocking(|| SqliteRecords::publish_kernel(self, k))
    }
}
