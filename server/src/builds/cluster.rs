//! Builds across replicas that share PostgreSQL and the object store.
//!
//! A request that is neither a cache hit nor in flight on this replica goes to the
//! shared job queue ([`JobQueue`]): the first replica to insert the request's row
//! owns the build (when it is a builder) or leaves it queued (an `api` replica);
//! every other replica *follows* that build: it polls the build record and the
//! log the owner pushes to the object store, so that its clients see the live log
//! and the final state. The owner renews its lease while the build runs; when a
//! replica dies, its lease expires, a builder claims the row and runs the build
//! again under the same build id, and the dead replica's container is removed by a
//! replica on the same engine. A replica stopping cleanly gives its rows back.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kmodforge_api::names::Arch;
use kmodforge_api::settings::ModuleSettings;
use kmodforge_api::wire::{BuildRequest, BuildState, FailureKind, ModuleSource};
use serde::{Deserialize, Serialize};

use super::{check_arch, new_build_id, now_rfc3339, BuildError, Builds, Job, Priority, Submitted};
use crate::sandbox::OutputSink;
use crate::store::{ClaimedJob, Enqueued, JobQueue};

/// A replica's part in the cluster.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// This replica's id: owns leases, labels its containers.
    pub replica: String,
    /// Runs builds (role `builder` or `both`); an `api` replica only queues them.
    pub builds: bool,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
}

/// What a queued job carries, for whichever builder claims it.
#[derive(Serialize, Deserialize)]
struct QueuedJob {
    request: BuildRequest,
}

/// How often a follower reads the build's record (and, every other time, its log).
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// How often a builder looks for jobs nobody holds.
const CLAIM_POLL: Duration = Duration::from_secs(1);
/// Builders that may claim a job before it is failed for good (replicas keep dying on it).
const MAX_ATTEMPTS: i32 = 3;

impl Builds {
    /// The cluster settings and the shared queue, when this replica is in a cluster.
    pub(super) fn cluster(&self) -> Option<(&ClusterSettings, &dyn JobQueue)> {
        Some((self.cluster.as_ref()?, self.store.records.jobs()?))
    }

    /// The submission of a request that is not in flight on this replica.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn submit_clustered(
        self: &Arc<Self>,
        module: ModuleSource,
        req: BuildRequest,
        arch: Arch,
        settings: ModuleSettings,
        key: String,
        priority: Priority,
    ) -> Result<Submitted, BuildError> {
        let Some((c, queue)) = self.cluster() else {
            return Err(BuildError::NotClustered);
        };
        let id = new_build_id();
        let payload = serde_json::to_string(&QueuedJob {
            request: req.clone(),
        })?;
        let owner = c.builds.then(|| c.replica.clone());
        let background = priority == Priority::Background;
        let mut enqueued = queue
            .enqueue_or_join(&key, &id, &payload, owner.as_deref(), c.lease, background)
            .await?;
        if let Enqueued::Joined { build_id } = &enqueued {
            // A row whose build is final is stale (its owner stopped between the final
            // record and removing the row): remove it and queue afresh.
            if self
                .recorded(build_id)
                .await
                .is_ok_and(|r| r.build.state.is_final())
            {
                queue.complete(&key, build_id).await?;
                enqueued = queue
                    .enqueue_or_join(&key, &id, &payload, owner.as_deref(), c.lease, background)
                    .await?;
            }
        }
        let build_id = match enqueued {
            Enqueued::New => {
                let job = self.new_job(&id, &module, &req, arch, priority);
                if let Err(e) = self.store.records.put_build(&job.snapshot().build).await {
                    let _ = queue.complete(&key, &id).await;
                    return Err(e.into());
                }
                self.register(&key, &job);
                if owner.is_some() {
                    job.mark_runner();
                    self.runners.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(self.clone().keep_lease(job.clone()));
                    let this = self.clone();
                    let job2 = job.clone();
                    tokio::spawn(async move {
                        this.run_job(job2, module, req, settings, key).await;
                    });
                } else {
                    tokio::spawn(self.clone().follow(job.clone(), key));
                }
                return Ok(Submitted {
                    response: job.snapshot(),
                    job: Some(job),
                });
            }
            Enqueued::Joined { build_id } => build_id,
        };
        if priority == Priority::Foreground {
            if let Err(e) = queue.make_foreground(&build_id).await {
                tracing::warn!(build = %build_id, error = %e, "cannot raise the build's priority");
            }
        }
        if let Some(job) = self.live(&build_id) {
            return Ok(Submitted {
                response: job.snapshot(),
                job: Some(job),
            });
        }
        // Running elsewhere: follow it from the records and the object store.
        let job = self.new_job(&build_id, &module, &req, arch, priority);
        if let Ok(r) = self.recorded(&build_id).await {
            job.update(|s| *s = r);
        }
        job.log.note(&format!(
            "an identical request is in flight on another replica: following build {build_id}"
        ));
        let (job, ours) = self.register(&key, &job);
        if ours {
            // Not one registered meanwhile: nobody follows it yet.
            tokio::spawn(self.clone().follow(job.clone(), key));
        }
        Ok(Submitted {
            response: job.snapshot(),
            job: Some(job),
        })
    }

    /// Registers `job` as this replica's job for `key`, unless another job of that
    /// id is registered: that one is returned, with `false`.
    fn register(&self, key: &str, job: &Arc<Job>) -> (Arc<Job>, bool) {
        let mut inflight = self.inflight();
        if let Some(existing) = inflight.by_id.get(&job.id) {
            return (existing.clone(), false);
        }
        inflight.by_request.insert(key.to_string(), job.clone());
        inflight.by_id.insert(job.id.clone(), job.clone());
        (job.clone(), true)
    }

    /// Forgets a finished job of this replica (only the entries that are this job's).
    pub(super) fn unregister(&self, key: &str, job: &Job) {
        let mut inflight = self.inflight();
        if inflight.by_request.get(key).is_some_and(|j| j.id == job.id) {
            inflight.by_request.remove(key);
        }
        if inflight
            .by_id
            .get(&job.id)
            .is_some_and(|j| std::ptr::eq(Arc::as_ptr(j), job))
        {
            inflight.by_id.remove(&job.id);
        }
        inflight.by_cache_key.retain(|_, j| j.id != job.id);
        inflight.waits.remove(&job.id);
    }

    /// While this replica runs `job`: renews its lease (a third of the lease) and
    /// pushes the live log to the object store (every second) for followers elsewhere.
    async fn keep_lease(self: Arc<Self>, job: Arc<Job>) {
        let Some((c, _)) = self.cluster() else {
            return;
        };
        let renew_every = (c.lease.as_secs() / 3).max(1);
        let mut pushed = 0u64;
        let mut tick = 0u64;
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = job.wait() => return,
            }
            tick += 1;
            let version = job.log.version();
            if version != pushed {
                pushed = version;
                if let Err(e) = self
                    .store
                    .objects
                    .put_log(&job.id, job.log.contents().into())
                    .await
                {
                    tracing::warn!(build = %job.id, error = %e, "cannot push the live log");
                }
            }
            if tick % renew_every == 0 {
                let Some((c, queue)) = self.cluster() else {
                    return;
                };
                match queue.renew(&job.id, &c.replica, c.lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(build = %job.id, "lost the build's lease: another builder may run it too")
                    }
                    Err(e) => {
                        tracing::warn!(build = %job.id, error = %e, "cannot renew the build's lease")
                    }
                }
            }
        }
    }

    /// Mirrors a build that runs on another replica into `job`: its record, and
    /// its log as the owner pushes it, until the record is final.
    async fn follow(self: Arc<Self>, job: Arc<Job>, key: String) {
        let mut seen: Vec<u8> = Vec::new();
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            if self.sandbox.is_closed() {
                break;
            }
            tick += 1;
            let state = self.recorded(&job.id).await;
            let done = matches!(&state, Ok(r) if r.build.state.is_final());
            if done || tick % 2 == 0 {
                self.pull_log(&job, &mut seen).await;
            }
            match state {
                Ok(r) => {
                    job.update(|s| *s = r);
                    if done {
                        break;
                    }
                }
                Err(BuildError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(build = %job.id, error = %e, "cannot read the followed build")
                }
            }
        }
        job.log.finish();
        self.unregister(&key, &job);
    }

    /// Appends what the owner added to the build's log since the last pull (all of
    /// it, marked, when another builder started the build over).
    async fn pull_log(&self, job: &Job, seen: &mut Vec<u8>) {
        let log = match self.store.objects.get_log(&job.id).await {
            Ok(Some(log)) => log,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(build = %job.id, error = %e, "cannot read the followed build's log");
                return;
            }
        };
        if log.starts_with(seen) {
            job.log.append(&log[seen.len()..]);
        } else {
            job.log
                .note("the build started over on another builder (its replica died); its log from the start:");
            job.log.append(&log);
        }
        *seen = log.to_vec();
    }

    /// On builders: claims jobs that nobody holds (queued by an `api` replica, or
    /// left by a replica that died) while this replica has room, and removes the
    /// containers such replicas left on this engine.
    pub fn spawn_claimer(self: &Arc<Self>) {
        if self.cluster().is_some_and(|(c, _)| c.builds) {
            tokio::spawn(self.clone().claim_loop());
        }
    }

    async fn claim_loop(self: Arc<Self>) {
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(CLAIM_POLL).await;
            if self.sandbox.is_closed() {
                return;
            }
            let Some((c, queue)) = self.cluster() else {
                return;
            };
            tick += 1;
            if tick % 10 == 0 {
                self.sweep_orphans().await;
            }
            while self.runners.load(Ordering::SeqCst) < self.max_builds {
                match queue.claim_next(&c.replica, c.lease).await {
                    Ok(Some(claimed)) => {
                        if self.live(&claimed.build_id).is_some_and(|j| j.is_runner()) {
                            // Ours already (our lease lapsed while the database was away).
                            continue;
                        }
                        self.runners.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(self.clone().run_claimed(claimed));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim queued builds");
                        break;
                    }
                }
            }
        }
    }

    async fn sweep_orphans(&self) {
        let Some((c, queue)) = self.cluster() else {
            return;
        };
        let live: HashSet<(String, String)> = match queue.live_builds().await {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list live builds");
                return;
            }
        };
        match self.sandbox.sweep_orphans(&live, c.lease).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "removed containers of builds whose replica died"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep orphaned containers"),
        }
    }

    /// Runs a job this builder claimed, under the build id its submitter gave it.
    async fn run_claimed(self: Arc<Self>, claimed: ClaimedJob) {
        let Some((c, queue)) = self.cluster() else {
            return;
        };
        let replica = c.replica.clone();
        let key = claimed.request_key.clone();
        if self
            .recorded(&claimed.build_id)
            .await
            .is_ok_and(|r| r.build.state.is_final())
        {
            // Finished; its owner stopped before removing the row.
            if let Err(e) = queue.complete(&key, &claimed.build_id).await {
                tracing::warn!(build = %claimed.build_id, error = %e, "cannot remove a finished job");
            }
            self.runners.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let prepared = self.prepare_claimed(&claimed).await;
        let (module, req, arch, settings) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.fail_claimed(&claimed, e.to_string()).await;
                if let Err(e) = queue.complete(&key, &claimed.build_id).await {
                    tracing::warn!(build = %claimed.build_id, error = %e, "cannot complete a failed job");
                }
                self.runners.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        };
        let job = self.new_job(&claimed.build_id, &module, &req, arch, Priority::Foreground);
        job.mark_runner();
        if let Ok(Some(b)) = self.store.records.get_build(&claimed.build_id).await {
            job.update(|r| r.build.created_at = b.created_at);
        }
        job.log.note(&format!(
            "replica {replica} claimed the build (attempt {})",
            claimed.attempts
        ));
        tracing::info!(build = %job.id, attempt = claimed.attempts, "claimed a queued build");
        if let Err(e) = self.store.records.put_build(&job.snapshot().build).await {
            tracing::warn!(build = %job.id, error = %e, "cannot record the claimed build");
        }
        {
            // Local clients of this build follow the live buffer, not the records.
            let mut inflight = self.inflight();
            inflight.by_id.insert(job.id.clone(), job.clone());
        }
        tokio::spawn(self.clone().keep_lease(job.clone()));
        self.run_job(job, module, req, settings, key).await;
    }

    async fn prepare_claimed(
        &self,
        claimed: &ClaimedJob,
    ) -> Result<(ModuleSource, BuildRequest, Arch, ModuleSettings), super::SetupError> {
        if claimed.attempts > MAX_ATTEMPTS {
            return Err(super::SetupError::Abandoned(claimed.attempts - 1));
        }
        let queued: QueuedJob = serde_json::from_str(&claimed.payload)?;
        let req = queued.request;
        let module = self
            .store
            .records
            .get_module(&req.name, &req.version)
            .await?
            .ok_or_else(|| super::SetupError::Deleted {
                name: req.name.clone(),
                version: req.version.clone(),
            })?;
        let arch = check_arch(&req)?;
        let settings = self.settings_of(&req.name).await?;
        Ok((module, req, arch, settings))
    }

    /// Records a claimed job that cannot run as failed (its waiters see it end).
    async fn fail_claimed(&self, claimed: &ClaimedJob, message: String) {
        let Ok(Some(mut build)) = self.store.records.get_build(&claimed.build_id).await else {
            return;
        };
        build.state = BuildState::Failed;
        build.finished_at = Some(now_rfc3339());
        build.failure = Some(kmodforge_api::wire::Failure {
            kind: FailureKind::Infrastructure,
            message,
            log_tail: String::new(),
        });
        if let Err(e) = self.store.records.put_build(&build).await {
            tracing::warn!(build = %build.id, error = %e, "cannot record the failed build");
        }
    }

    /// On shutdown: gives this replica's jobs back to the queue, so that another
    /// builder takes them over at once instead of after the lease.
    pub(super) async fn release_jobs(&self) {
        let Some((c, queue)) = self.cluster() else {
            return;
        };
        match queue.release(&c.replica).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "shutdown: gave running builds back to the queue"),
            Err(e) => {
                tracing::error!(error = %e, "shutdown: cannot give builds back; they are taken over when the lease ends")
            }
        }
    }
}
