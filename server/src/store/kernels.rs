//! Records of the kernels the server knows: published in a watched archive,
//! requested by a build, prebuilt. A supertrait of [`Records`](super::Records),
//! like the access records.

use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::KnownKernel;
use rusqlite::params;

use super::records::{to_json, RecordsError, SqliteRecords};

/// The kernels the server knows.
#[async_trait::async_trait]
pub trait KernelRecords: Send + Sync {
    /// Stores (replaces) a kernel's record.
    async fn put_kernel(&self, k: &KnownKernel) -> Result<(), RecordsError>;
    async fn get_kernel(&self, kernel: &KernelRelease)
        -> Result<Option<KnownKernel>, RecordsError>;
    /// Every known kernel, in kernel order.
    async fn list_kernels(&self) -> Result<Vec<KnownKernel>, RecordsError>;
}

impl SqliteRecords {
    pub(crate) fn put_kernel(&self, k: &KnownKernel) -> Result<(), RecordsError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO kernels (kernel, json) VALUES (?1, ?2)",
            params![k.kernel.as_str(), to_json(k)],
        )?;
        Ok(())
    }

    pub(crate) fn get_kernel(
        &self,
        kernel: &KernelRelease,
    ) -> Result<Option<KnownKernel>, RecordsError> {
        Ok(self
            .query_json(
                "kernels",
                "SELECT json FROM kernels WHERE kernel = ?1",
                [kernel.as_str()],
            )?
            .pop())
    }

    pub(crate) fn list_kernels(&self) -> Result<Vec<KnownKernel>, RecordsError> {
        self.query_json("kernels", "SELECT json FROM kernels ORDER BY kernel", [])
    }
}
