//! One automatic retry of a job whose attempt failed for the service's reasons.
//!
//! An attempt (the pipeline, then the boot check) that ends as `infrastructure`
//! is not the module's fault: the Docker engine restarted under the build (its
//! exec stream broke, its container was stopped), a container vanished, the
//! store failed for a moment. The job then runs once more by itself, under the
//! same build id, as soon as the engine answers again: its followers see one log
//! and the retry's outcome, and the record's warnings keep the first attempt's
//! line. Nothing of the first attempt is reused but what it finished (a stored
//! artifact is a cache hit): its containers are removed first, and an artifact
//! appears whole or not at all (`store::objects`).
//!
//! Not retried: a server that is stopping, and a second `infrastructure`
//! failure (one retry, like a cluster's bounded attempts per claimed job).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kmodforge_api::settings::ModuleSettings;
use kmodforge_api::wire::{BuildRequest, Failure, FailureKind, ModuleSource};

use super::run::Outcome;
use super::{Builds, Job};
use crate::engine::LabelSelector;
use crate::sandbox::{JOB_LABEL, OWNER_LABEL};

/// Pause between two pings of an engine that does not answer.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Pause between two pings while waiting to sweep a failed build's containers.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

impl Builds {
    /// Runs a job's attempt, and once more when it ended as `infrastructure`.
    pub(super) async fn attempts(
        self: &Arc<Self>,
        job: &Job,
        module: &ModuleSource,
        req: &BuildRequest,
        settings: &ModuleSettings,
    ) -> Outcome {
        let first = self.attempt(job, module, req, settings).await;
        let Some(failed) = self.retryable(&first) else {
            return first;
        };
        let engine = self.sandbox.engine().name();
        job.log.note(&format!(
            "attempt 1 failed (infrastructure): {}; retrying once when the {engine} engine answers",
            failed.message
        ));
        if let Err(waited) = self.engine_back().await {
            let mut f = failed.clone();
            f.message = format!(
                "{} (not retried: the {engine} engine did not answer within {} s)",
                f.message,
                waited.as_secs()
            );
            job.log.note(&format!("not retried: {}", f.message));
            // Its stopped containers outlive the engine's restart: removed once it is back.
            let (me, id) = (self.clone(), job.id.clone());
            tokio::spawn(async move { me.sweep_when_back(&id).await });
            return Outcome::Failed(f);
        }
        let warning = format!(
            "attempt 1 failed (infrastructure) and was retried: {}",
            failed.message
        );
        self.forget_attempt(job).await;
        job.log.note("attempt 2 (the retry)");
        let second = self.attempt(job, module, req, settings).await;
        job.update(|r| r.build.warnings.push(warning));
        second
    }

    /// The pipeline (build or cache hit), then the boot check the request asks for.
    async fn attempt(
        self: &Arc<Self>,
        job: &Job,
        module: &ModuleSource,
        req: &BuildRequest,
        settings: &ModuleSettings,
    ) -> Outcome {
        let outcome = self.pipeline(job, module, req, settings).await;
        self.with_boot_check(job, req, outcome).await
    }

    /// The failure of an attempt that is to be run again.
    fn retryable<'o>(&self, outcome: &'o Outcome) -> Option<&'o Failure> {
        match outcome {
            Outcome::Failed(f)
                if f.kind == FailureKind::Infrastructure
                    && !self.engine_retry_wait.is_zero()
                    && !self.sandbox.is_closed() =>
            {
                Some(f)
            }
            _ => None,
        }
    }

    /// Waits until the engine answers (`Err`: not within the retry wait, or the
    /// server began stopping).
    async fn engine_back(&self) -> Result<(), Duration> {
        let started = Instant::now();
        loop {
            if self.sandbox.engine().ping().await.is_ok() && !self.sandbox.is_closed() {
                return Ok(());
            }
            if self.sandbox.is_closed() || started.elapsed() >= self.engine_retry_wait {
                return Err(self.engine_retry_wait);
            }
            tokio::time::sleep(PING_EVERY).await;
        }
    }

    /// Removes build `id`'s containers once the engine answers again (gives up
    /// when the server stops: its next start sweeps them).
    async fn sweep_when_back(&self, id: &str) {
        while !self.sandbox.is_closed() {
            if self.sandbox.engine().ping().await.is_ok() {
                for c in self.remove_containers_of(id).await {
                    tracing::info!(build = %id, container = %c, "removed a container of a build that was not retried");
                }
                return;
            }
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    }

    /// Clears what the failed attempt left: its containers (a restarted engine
    /// keeps the stopped ones, and their names would collide with the retry's),
    /// and its claim on the cache key (the retry would wait for itself).
    async fn forget_attempt(&self, job: &Job) {
        self.inflight().by_cache_key.retain(|_, j| j.id != job.id);
        for c in self.remove_containers_of(&job.id).await {
            job.log.note(&format!("removed container {c} of attempt 1"));
        }
    }

    /// Removes this server's containers of build `id`; returns the removed ids.
    async fn remove_containers_of(&self, id: &str) -> Vec<String> {
        let engine = self.sandbox.engine();
        let selector = LabelSelector::default()
            .eq(JOB_LABEL, id)
            .eq(OWNER_LABEL, self.sandbox.owner());
        let left = match engine.list_containers(&selector).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(build = %id, error = %e, "cannot list a failed attempt's containers");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for c in left {
            match engine.remove_container(&c.id).await {
                Ok(()) => removed.push(c.id),
                Err(e) => {
                    tracing::warn!(build = %id, container = %c.id, error = %e, "cannot remove a failed attempt's container")
                }
            }
        }
        removed
    }
}
