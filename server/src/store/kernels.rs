//! Records of the kernels the server knows: published in a watched archive,
//! requested by a build, prebuilt. A supertrait of [`Records`](super::Records),
//! like the access records.

use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::KnownKernel;
use rusqlite::{params, OptionalExtension};

use super::records::{from_json, to_json, RecordsError, SqliteRecords};

/// The kernels the server knows.
#[async_trait::async_trait]
pub trait KernelRecords: Send + Sync {
    /// Stores (replaces) a kernel's record.
    async fn put_kernel(&self, k: &KnownKernel) -> Result<(), RecordsError>;
    async fn get_kernel(&self, kernel: &KernelRelease)
        -> Result<Option<KnownKernel>, RecordsError>;
    /// Every known kernel, in kernel order.
    async fn list_kernels(&self) -> Result<Vec<KnownKernel>, RecordsError>;
    /// Stores `k` (published) unless its kernel is recorded as published already;
    /// true when this call published it. Atomic: of replicas that see a new kernel
    /// at once, one prebuilds it.
    async fn publish_kernel(&self, k: &KnownKernel) -> Result<bool, RecordsError>;
}

impl SqliteRecords {
    pub(crate) fn publish_kernel(&self, k: &KnownKernel) -> Result<bool, RecordsError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let before: Option<String> = tx
            .query_row(
                "SELECT json FROM kernels WHERE kernel = ?1",
                [k.kernel.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(json) = before {
            let known: KnownKernel = from_json("kernels", &json)?;
            if known.published {
                return Ok(false);
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO kernels (kernel, json) VALUES (?1, ?2)",
            params![k.kernel.as_str(), to_json(k)],
        )?;
        tx.commit()?;
        Ok(true)
    }

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
