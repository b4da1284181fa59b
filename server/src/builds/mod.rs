//! Build jobs: submission, single-flight, status and logs.
//!
//! A request is identified by its *request key* (module, source digest, kernel,
//! arch, options). Identical requests while a job runs join that job; a job
//! evaluates dkms.conf (cached per builder image), derives the cache key, and
//! either answers from the artifact cache or builds in a fresh sandbox. Two jobs
//! that end up with the same cache key share one build as well.

mod boot;
mod cluster;
pub mod collect;
mod deps;
mod evaluate;
mod execute;
mod first_error;
pub mod log;
mod retry;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kmodforge_api::names::{Arch, ArtifactKey, ModuleName, ModuleVersion};
use kmodforge_api::settings::ModuleSettings;
use kmodforge_api::wire::{
    BuildRecord, BuildRequest, BuildResponse, BuildState, Failure, FailureKind, ModuleSource,
};
use tokio::sync::{watch, Semaphore};

use crate::bootcheck::BootChecker;
use crate::images::BuilderImages;
use crate::keys::Keys;
use crate::sandbox::Sandbox;
use crate::store::{RecordsError, Store};
use crate::usr_volumes::UsrVolumeCache;
use log::LogBuffer;

pub use cluster::ClusterSettings;

/// Errors of build submission and lookup (not build failures: those are records).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("module {name}/{version} is not registered (PUT /v1/modules/{name}/{version} first)")]
    UnknownModule {
        name: ModuleName,
        version: ModuleVersion,
    },
    #[error("arch {arch} is not supported for kernel {kernel}: builder images are amd64 (x86_64)")]
    UnsupportedArch { arch: String, kernel: String },
    #[error("build {0} not found")]
    NotFound(String),
    #[error("reading the settings of {name}: {source}")]
    Settings {
        name: ModuleName,
        source: RecordsError,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// A cluster submission on a server that is not in a cluster (a programming error).
    #[error("not in a cluster")]
    NotClustered,
    #[error("encoding the queued job: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Why a job could not get its inputs in place (an infrastructure failure of that job).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("{what}: {source}")]
    Blob {
        what: String,
        source: crate::store::BlobError,
    },
    #[error("{0} is missing from the store")]
    Missing(String),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("kmf {step} of BUILD_DEPENDS {dependency} failed (exit {exit:?})")]
    DependencyStep {
        step: &'static str,
        dependency: String,
        exit: Option<i64>,
    },
    #[error("packing a dependency's files: {0}")]
    Tar(#[from] std::io::Error),
    #[error("the queued job cannot be read: {0}")]
    Queued(#[from] serde_json::Error),
    #[error("{0} builders claimed this build and none finished it (their replicas stopped)")]
    Abandoned(i32),
    #[error("module {name}/{version} was deleted")]
    Deleted {
        name: ModuleName,
        version: ModuleVersion,
    },
}

/// A running (or just finished) job.
pub struct Job {
    pub id: String,
    pub log: LogBuffer,
    state: watch::Sender<BuildResponse>,
    /// Nobody waits for it yet (a prebuild): it yields build slots to jobs that
    /// clients wait for. Cleared when a client's request joins it.
    background: std::sync::atomic::AtomicBool,
    /// This replica runs it (not a follower of a build on another replica).
    runner: std::sync::atomic::AtomicBool,
}

/// How urgently a job wants a build slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A client waits for it.
    Foreground,
    /// A prebuild nobody waits for yet: runs when no foreground job waits for a slot.
    Background,
}

impl Job {
    pub fn is_runner(&self) -> bool {
        self.runner.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn mark_runner(&self) {
        self.runner
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_background(&self) -> bool {
        self.background.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> BuildResponse {
        self.state.borrow().clone()
    }

    /// Waits until the job is final and returns its last state.
    pub async fn wait(&self) -> BuildResponse {
        let mut rx = self.state.subscribe();
        let done = rx.wait_for(|r| r.build.state.is_final()).await;
        match done {
            Ok(r) => r.clone(),
            Err(_) => self.snapshot(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut BuildResponse)) {
        self.state.send_modify(f);
    }
}

#[derive(Default)]
struct Inflight {
    by_request: HashMap<String, Arc<Job>>,
    by_id: HashMap<String, Arc<Job>>,
    by_cache_key: HashMap<ArtifactKey, Arc<Job>>,
    /// Job id -> the job it waits for (a BUILD_DEPENDS dependency).
    waits: HashMap<String, String>,
}

/// Settings of the build service.
#[derive(Clone, Debug)]
pub struct BuildSettings {
    pub max_builds: usize,
    /// How long a job whose attempt failed as `infrastructure` waits for the
    /// engine before its one retry (zero: no retry).
    pub engine_retry_wait: std::time::Duration,
    /// Mount builder images' /usr from read-only volumes (see `usr_volumes`).
    pub usr_volumes: bool,
    /// Set in a cluster (shared PostgreSQL): the shared job queue is used.
    pub cluster: Option<ClusterSettings>,
    /// Build outcomes, durations and cache hits are counted here.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The build service: shared by the HTTP handlers.
pub struct Builds {
    store: Store,
    sandbox: Sandbox,
    images: Arc<BuilderImages>,
    checker: BootChecker,
    /// Module signing and manifest attestation (private keys stay in this process).
    keys: Arc<Keys>,
    /// Per-artifact locks of boot checks.
    check_locks: Mutex<HashMap<ArtifactKey, Arc<tokio::sync::Mutex<()>>>>,
    usr_volumes: UsrVolumeCache,
    permits: Semaphore,
    /// Foreground jobs waiting for a build slot (background jobs yield to them).
    waiting_foreground: std::sync::atomic::AtomicUsize,
    inflight: Mutex<Inflight>,
    /// Jobs this replica runs now (builders claim more while below `max_builds`).
    runners: std::sync::atomic::AtomicUsize,
    max_builds: usize,
    engine_retry_wait: std::time::Duration,
    cluster: Option<ClusterSettings>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Final records the store refused (its disk full): served from here and
    /// written again until the store takes them, so that no build reads as
    /// running forever.
    unsaved: Arc<Mutex<HashMap<String, BuildRecord>>>,
}

/// The answer to a submission.
pub struct Submitted {
    pub response: BuildResponse,
    /// The job to follow; `None` when answered from the cache.
    pub job: Option<Arc<Job>>,
}

impl Builds {
    pub fn new(
        store: Store,
        sandbox: Sandbox,
        images: Arc<BuilderImages>,
        checker: BootChecker,
        keys: Arc<Keys>,
        settings: BuildSettings,
    ) -> Arc<Self> {
        Arc::new(Builds {
            keys,
            store,
            usr_volumes: UsrVolumeCache::new(sandbox.clone(), settings.usr_volumes),
            sandbox,
            images,
            checker,
            check_locks: Mutex::new(HashMap::new()),
            permits: Semaphore::new(settings.max_builds),
            waiting_foreground: std::sync::atomic::AtomicUsize::new(0),
            inflight: Mutex::new(Inflight::default()),
            runners: std::sync::atomic::AtomicUsize::new(0),
            max_builds: settings.max_builds,
            engine_retry_wait: settings.engine_retry_wait,
            cluster: settings.cluster,
            metrics: settings.metrics,
            unsaved: Arc::default(),
        })
    }

    /// The certificate (sha256) `req`'s modules are signed with; `None`: unsigned.
    fn signing_identity(&self, req: &BuildRequest) -> Option<&str> {
        self.keys
            .module_signer(req.sign)
            .map(|k| k.info().cert_sha256.as_str())
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Submits a build: a cache hit answers at once, an identical running job is
    /// joined, otherwise a new job starts.
    pub async fn submit(self: &Arc<Self>, req: BuildRequest) -> Result<Submitted, BuildError> {
        self.submit_with(req, Priority::Foreground).await
    }

    /// [`Builds::submit`] at `priority`.
    pub async fn submit_with(
        self: &Arc<Self>,
        req: BuildRequest,
        priority: Priority,
    ) -> Result<Submitted, BuildError> {
        // A client's request, not a prebuild: `requested` says a host or CI asked for
        // the kernel (the matrix shows it; retention keeps its images in use).
        if priority == Priority::Foreground {
            self.note_requested(&req.kernel).await;
        }
        let module = self
            .store
            .records
            .get_module(&req.name, &req.version)
            .await?
            .ok_or_else(|| BuildError::UnknownModule {
                name: req.name.clone(),
                version: req.version.clone(),
            })?;
        let arch = check_arch(&req)?;
        // Read once: the request key, the cache lookup and the job all use this snapshot.
        let settings = self.settings_of(&req.name).await?;
        if let Some(hit) = self.cache_hit(&module, &req, &arch, &settings).await? {
            self.metrics.cache_hit();
            return Ok(Submitted {
                response: hit,
                job: None,
            });
        }
        // Settings change what a job does: a request after a change never joins a job
        // started before it.
        let signing = self.signing_identity(&req);
        let key = request_key(
            &module,
            &req,
            &arch,
            &settings,
            self.wants_check(&req),
            signing,
        );
        if self.cluster().is_some() {
            let joined = self.inflight().by_request.get(&key).cloned();
            if let Some(job) = joined {
                return Ok(join(job, priority));
            }
            return self
                .submit_clustered(module, req, arch, settings, key, priority)
                .await;
        }
        let job = {
            let mut inflight = self.inflight();
            if let Some(job) = inflight.by_request.get(&key) {
                let job = job.clone();
                drop(inflight);
                return Ok(join(job, priority));
            }
            let job = self.new_job(&new_build_id(), &module, &req, arch, priority);
            job.mark_runner();
            self.runners
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            inflight.by_request.insert(key.clone(), job.clone());
            inflight.by_id.insert(job.id.clone(), job.clone());
            job
        };
        if let Err(e) = self.store.records.put_build(&job.snapshot().build).await {
            // Nothing will run this job: take it back out so that later requests start afresh.
            let mut inflight = self.inflight();
            inflight.by_request.remove(&key);
            inflight.by_id.remove(&job.id);
            drop(inflight);
            self.runners
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            // A request that joined meanwhile must not wait forever.
            let f = failure(
                FailureKind::Infrastructure,
                format!("cannot record the build: {e}"),
                &job.log,
            );
            job.update(|r| {
                r.build.state = BuildState::Failed;
                r.build.failure = Some(f);
            });
            job.log.finish();
            return Err(e.into());
        }
        let this = self.clone();
        let job2 = job.clone();
        tokio::spawn(async move { this.run_job(job2, module, req, settings, key).await });
        Ok(Submitted {
            response: job.snapshot(),
            job: Some(job),
        })
    }

    fn new_job(
        &self,
        id: &str,
        module: &ModuleSource,
        req: &BuildRequest,
        arch: Arch,
        priority: Priority,
    ) -> Arc<Job> {
        let id = id.to_string();
        let record = BuildRecord {
            id: id.clone(),
            name: req.name.clone(),
            version: req.version.clone(),
            kernel: req.kernel.clone(),
            arch,
            state: BuildState::Queued,
            source_digest: module.digest.clone(),
            image_id: None,
            artifact_key: None,
            failure: None,
            created_at: now_rfc3339(),
            finished_at: None,
            seconds: None,
            warnings: Vec::new(),
        };
        let response = BuildResponse {
            build: record,
            cached: false,
            artifact: None,
        };
        let cap = self.sandbox.limits().log_cap_bytes;
        Arc::new(Job {
            id,
            log: LogBuffer::new(cap),
            state: watch::channel(response).0,
            background: std::sync::atomic::AtomicBool::new(priority == Priority::Background),
            runner: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Records that a build was asked for `kernel` (the matrix lists it), and when
    /// (retention keeps the images of kernels in use); written at most once a
    /// minute per kernel.
    pub(crate) async fn note_requested(&self, kernel: &kmodforge_api::names::KernelRelease) {
        let records = &self.store.records;
        let known = records.get_kernel(kernel).await.ok().flatten();
        let now = now_rfc3339();
        if known
            .as_ref()
            .is_some_and(|k| k.requested && !request_note_stale(k, &now))
        {
            return;
        }
        let record = match known {
            Some(k) => kmodforge_api::wire::KnownKernel {
                requested: true,
                last_requested: Some(now),
                ..k
            },
            None => kmodforge_api::wire::KnownKernel {
                kernel: kernel.clone(),
                suite: kernel.debian_suite().map(str::to_string),
                headers_version: None,
                published: false,
                requested: true,
                first_seen: now.clone(),
                last_requested: Some(now),
                prebuild: None,
            },
        };
        if let Err(e) = records.put_kernel(&record).await {
            tracing::warn!(%kernel, error = %e, "could not record the requested kernel");
        }
    }

    /// The jobs in flight on this replica (their records as they stand).
    pub fn in_flight(&self) -> Vec<BuildRecord> {
        self.inflight()
            .by_id
            .values()
            .map(|j| j.snapshot().build)
            .collect()
    }

    /// The per-kernel images and their `/usr` volumes (retention removes them).
    pub(crate) fn image_caches(&self) -> (&BuilderImages, &BootChecker, &UsrVolumeCache) {
        (&self.images, &self.checker, &self.usr_volumes)
    }

    /// The boot-check settings and verifier images (`GET`/`PUT /v1/kernels`).
    pub fn checker(&self) -> &BootChecker {
        &self.checker
    }

    /// Jobs this replica runs now: (waiting for a build slot, running).
    pub fn load(&self) -> (usize, usize) {
        let inflight = self.inflight();
        let states = inflight.by_id.values().filter(|j| j.is_runner());
        states.fold((0, 0), |(queued, running), j| {
            match j.snapshot().build.state {
                BuildState::Queued => (queued + 1, running),
                BuildState::Running => (queued, running + 1),
                _ => (queued, running),
            }
        })
    }

    /// The counters this service feeds (`GET /metrics`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The job with this id, while it is in flight.
    pub fn live(&self, id: &str) -> Option<Arc<Job>> {
        self.inflight().by_id.get(id).cloned()
    }

    /// Current state of a build, live or from the records.
    pub async fn get(&self, id: &str) -> Result<BuildResponse, BuildError> {
        if let Some(job) = self.live(id) {
            return Ok(job.snapshot());
        }
        self.recorded(id).await
    }

    /// Serves `build` until the store takes it, retrying every few seconds.
    pub(crate) fn keep_unsaved(&self, build: BuildRecord) {
        let id = build.id.clone();
        let first = {
            let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
            unsaved.insert(id.clone(), build).is_none()
        };
        if !first {
            return;
        }
        let (unsaved, records) = (self.unsaved.clone(), self.store.records.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let pending = unsaved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .cloned();
                let Some(build) = pending else { return };
                if records.put_build(&build).await.is_ok() {
                    tracing::info!(build = %id, "build record stored after all");
                    unsaved
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    return;
                }
            }
        });
    }

    /// A build's state as the records hold it (written by whichever replica runs it).
    pub(crate) async fn recorded(&self, id: &str) -> Result<BuildResponse, BuildError> {
        let unsaved = self
            .unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let build = match unsaved {
            Some(b) => b,
            None => self
                .store
                .records
                .get_build(id)
                .await?
                .ok_or_else(|| BuildError::NotFound(id.to_string()))?,
        };
        // A build whose boot check failed (or could not run) made its modules: they
        // are shown with the check.
        let check_failed = build
            .failure
            .as_ref()
            .is_some_and(|f| f.kind.keeps_artifact());
        let artifact = match (&build.state, &build.artifact_key) {
            (BuildState::Succeeded, Some(key)) => self.store.records.get_artifact(key).await?,
            (BuildState::Failed, Some(key)) if check_failed => {
                self.store.records.get_artifact(key).await?
            }
            _ => None,
        };
        // A build answered from the cache carries the manifest of the build that made it.
        let cached = artifact.as_ref().is_some_and(|m| m.build_id != build.id);
        Ok(BuildResponse {
            build,
            cached,
            artifact,
        })
    }

    pub async fn list(&self, limit: u32) -> Result<Vec<BuildRecord>, BuildError> {
        Ok(self.store.records.list_builds(limit).await?)
    }

    /// True while any job of this module version is in flight, here or (in a
    /// cluster) on any replica.
    pub async fn module_busy(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<bool, RecordsError> {
        let here = self.inflight().by_id.values().any(|j| {
            let s = j.snapshot();
            &s.build.name == name && &s.build.version == version
        });
        if here {
            return Ok(true);
        }
        match self.cluster() {
            Some((_, queue)) => queue.module_busy(name.as_str(), version.as_str()).await,
            None => Ok(false),
        }
    }

    /// Marks builds interrupted by a restart as failed and removes leftover containers.
    pub async fn recover(&self) -> Result<(), BuildError> {
        if self.cluster().is_some() {
            // Other replicas' builds are in flight: leases, not restarts, end them.
            match self.sandbox.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(count = n, "removed leftover job containers"),
                Err(e) => tracing::error!(error = %e, "cannot sweep leftover containers"),
            }
            return Ok(());
        }
        let ids = self
            .store
            .records
            .fail_unfinished("the server restarted while the build ran", &now_rfc3339())
            .await?;
        if !ids.is_empty() {
            tracing::warn!(count = ids.len(), "marked interrupted builds as failed");
        }
        match self.sandbox.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "removed leftover job containers"),
            Err(e) => tracing::error!(error = %e, "cannot sweep leftover containers"),
        }
        Ok(())
    }

    /// On shutdown: creates no more containers and removes this server's job
    /// containers, so that a server that is stopped (and perhaps never started again
    /// on this data directory) leaves none behind. Its unfinished builds are marked failed by the next start's [`Self::recover`].
    pub async fn release_containers(&self) {
        self.sandbox.close();
        self.release_jobs().await;
        match tokio::time::timeout(std::time::Duration::from_secs(20), self.sandbox.sweep()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::warn!(count = n, "shutdown: removed running job containers"),
            Ok(Err(e)) => tracing::error!(error = %e, "shutdown: cannot remove job containers"),
            Err(_) => tracing::error!(
                "shutdown: removing job containers took over 20 s; the next start sweeps them"
            ),
        }
    }
}

/// A request joins a job in flight here; a client that waits makes it compete for
/// build slots like any build.
fn join(job: Arc<Job>, priority: Priority) -> Submitted {
    if priority == Priority::Foreground {
        job.background
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
    Submitted {
        response: job.snapshot(),
        job: Some(job),
    }
}

fn check_arch(req: &BuildRequest) -> Result<Arch, BuildError> {
    let arch = req.arch.clone().unwrap_or_else(Arch::host_default);
    if arch.as_str() != "x86_64" {
        return Err(BuildError::UnsupportedArch {
            arch: arch.to_string(),
            kernel: req.kernel.to_string(),
        });
    }
    Ok(arch)
}

/// Identity of a request before dkms.conf is evaluated.
fn request_key(
    module: &ModuleSource,
    req: &BuildRequest,
    arch: &Arch,
    settings: &ModuleSettings,
    boot_check: bool,
    signing: Option<&str>,
) -> String {
    let inputs = serde_json::json!({
        "name": module.name, "version": module.version, "digest": module.digest,
        "kernel": req.kernel, "arch": arch, "options": req.options, "settings": settings,
        "boot_check": boot_check, "signing": signing,
    });
    kmodforge_api::canonical::hex_digest("kmodforge-request-key-v1\n", &inputs)
}

/// True when `k`'s last request is over a minute before `now` (or unknown).
fn request_note_stale(k: &kmodforge_api::wire::KnownKernel, now: &str) -> bool {
    let parse = |t: &str| humantime::parse_rfc3339(t).ok();
    match (k.last_requested.as_deref().and_then(parse), parse(now)) {
        (Some(last), Some(now)) => now
            .duration_since(last)
            .is_ok_and(|d| d >= std::time::Duration::from_secs(60)),
        _ => true,
    }
}

fn new_build_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A failure record for `kind` with a one-line message.
pub(crate) fn failure(kind: FailureKind, message: String, log: &LogBuffer) -> Failure {
    Failure {
        kind,
        message,
        log_tail: log.tail_lines(40),
    }
}
