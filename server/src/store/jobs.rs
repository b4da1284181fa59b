//! The shared job queue of a cluster: which replica runs which build, for how long.
//!
//! A row per build in flight, keyed by the request's identity, so that identical
//! requests anywhere in the fleet join one build (single-flight across replicas).
//! A builder holds a row through a lease that it renews while the build runs; a
//! replica that dies stops renewing, and once its lease expires another builder
//! claims the row (`FOR UPDATE SKIP LOCKED`) and runs the build again under the
//! same build id, so that every waiter sees one final state. Only PostgreSQL
//! implements it: the embedded SQLite default is one process, whose in-memory
//! single-flight is enough.

use std::time::Duration;

use super::records::RecordsError;

/// What [`JobQueue::enqueue_or_join`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// The row is new: this build id is the one that runs.
    New,
    /// An identical request is in flight: join its build.
    Joined { build_id: String },
}

/// A row a builder claimed.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub request_key: String,
    pub build_id: String,
    pub payload: String,
    /// How many builders have claimed it (1: the first).
    pub attempts: i32,
}

#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    /// Inserts the job, owned by `owner` (a builder that runs it now) or by nobody
    /// (queued for any builder); or, when the request is already in flight, names
    /// its build.
    async fn enqueue_or_join(
        &self,
        request_key: &str,
        build_id: &str,
        payload: &str,
        owner: Option<&str>,
        lease: Duration,
        background: bool,
    ) -> Result<Enqueued, RecordsError>;
    /// Extends `owner`'s lease; false when the row is gone or someone else owns it.
    async fn renew(
        &self,
        build_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, RecordsError>;
    /// Claims the oldest job nobody holds (foreground first): queued, or its
    /// owner's lease expired.
    async fn claim_next(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, RecordsError>;
    /// A client now waits for it: it no longer yields to other jobs.
    async fn make_foreground(&self, build_id: &str) -> Result<(), RecordsError>;
    /// The build ended (its record is final): the row goes.
    async fn complete(&self, request_key: &str, build_id: &str) -> Result<(), RecordsError>;
    /// Gives `owner`'s rows back to the queue at once (a replica stopping cleanly).
    async fn release(&self, owner: &str) -> Result<u64, RecordsError>;
    /// This cluster's identity (made once per database): its replicas label their
    /// containers with it.
    async fn cluster_id(&self) -> Result<String, RecordsError>;
    /// True when a job of this module version is queued or running anywhere.
    async fn module_busy(&self, name: &str, version: &str) -> Result<bool, RecordsError>;
    /// (build id, owner) of every job whose owner's lease is still running.
    async fn live_builds(&self) -> Result<Vec<(String, String)>, RecordsError>;
}
