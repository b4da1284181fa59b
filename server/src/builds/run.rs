//! One build job: its life cycle (queue, run, finish) and phase 1, the builder
//! image and the sandbox; `evaluate` and `execute` hold the later phases.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use kmodforge_api::cachekey::{cache_key, CacheKeyParts};
use kmodforge_api::dkms::BuildPlan;
use kmodforge_api::names::{Arch, ArtifactKey, ModuleName};
use kmodforge_api::settings::ModuleSettings;
use kmodforge_api::wire::{
    BuildRequest, BuildResponse, BuildState, Failure, FailureKind, KernelInfo, Manifest,
    ModuleSource,
};
use tokio::sync::SemaphorePermit;

use super::deps::{Extras, MAX_DEPENDENCY_ROUNDS};
use super::evaluate::{eval_key, CachedEval, MAX_DUMP};
use super::execute::stopped_failure;
use super::execute::BuildCtx;
use super::{failure, now_rfc3339, Builds, Job};
use crate::images::ImageError;
use crate::sandbox::{ContainerSpec, Exec, ExecOutcome, JobContainer, SandboxError};

/// How a job ended (before it is written to the record).
pub(super) enum Outcome {
    Built(Manifest),
    Cached(Manifest),
    Failed(Failure),
    NotApplicable(Failure),
    /// The modules exist but their boot check failed or could not run.
    CheckFailed {
        manifest: Manifest,
        failure: Failure,
        cached: bool,
    },
}

/// Limit for unpacking and evaluating dkms.conf (it may run shell code).
pub(super) const EVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl Builds {
    /// Answers from the cache without a container, when image, evaluation and
    /// artifact are all known already.
    pub(super) async fn cache_hit(
        &self,
        module: &ModuleSource,
        req: &BuildRequest,
        arch: &Arch,
        settings: &ModuleSettings,
    ) -> Result<Option<BuildResponse>, super::BuildError> {
        let Some(image) = self.images.existing(&req.kernel).await else {
            return Ok(None);
        };
        // Dependencies and package images are resolved by a job (quickly, when cached).
        if !settings.build_depends.is_empty() || !settings.packages.is_empty() {
            return Ok(None);
        }
        let extras = Extras::new(settings, req, arch);
        let ekey = eval_key(module, req, arch, &image, self.jobs(), &extras);
        let Some(CachedEval::Build(plan)) = self.cached_eval(&ekey).await else {
            return Ok(None);
        };
        if !plan.build_depends.is_empty() {
            return Ok(None);
        }
        let key = self.artifact_key(module, req, arch, &image, &plan, &extras);
        let Some(manifest) = self.store.records.get_artifact(&key).await? else {
            return Ok(None);
        };
        // A wanted check that has not passed (never ran, or failed) is a job's work.
        if self.wants_check(req) && !manifest.boot_check.as_ref().is_some_and(|c| c.passed) {
            return Ok(None);
        }
        let build = match self.store.records.get_build(&manifest.build_id).await? {
            // The build that made it failed its boot check: a request without a check
            // gets a succeeded record of its own from a (container-less) job.
            Some(b) if b.state != BuildState::Succeeded => return Ok(None),
            Some(b) => b,
            None => return Ok(None),
        };
        Ok(Some(BuildResponse {
            build,
            cached: true,
            artifact: Some(manifest),
        }))
    }

    pub(super) fn jobs(&self) -> u32 {
        self.sandbox.limits().jobs
    }

    fn artifact_key(
        &self,
        module: &ModuleSource,
        req: &BuildRequest,
        arch: &Arch,
        image: &KernelInfo,
        plan: &BuildPlan,
        extras: &Extras,
    ) -> ArtifactKey {
        let options = serde_json::json!({
            "jobs": self.jobs(), "options": req.options, "settings": extras.identity(),
        });
        cache_key(&CacheKeyParts {
            source_digest: &module.digest,
            kernel: &req.kernel,
            arch,
            builder_image_id: &image.image.id,
            plan,
            options: &options,
            signing_certificate: self.signing_identity(req),
        })
    }

    /// Runs a job to its end and records the outcome.
    ///
    /// Boxed with an explicit `Send`: a job submits its BUILD_DEPENDS as jobs of
    /// their own, and the named type breaks that recursion for the compiler.
    pub(super) fn run_job(
        self: Arc<Self>,
        job: Arc<Job>,
        module: ModuleSource,
        req: BuildRequest,
        settings: ModuleSettings,
        request_key: String,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.attempts(&job, &module, &req, &settings).await;
            let clustered = self.cluster();
            if clustered.is_some() && self.sandbox.is_closed() {
                // Stopping: the job goes back to the queue (`release_jobs`), unfinished,
                // for another builder; this replica writes no final state for it.
                job.log
                    .note("this replica is stopping: the build goes back to the queue");
                job.log.finish();
            } else {
                self.finish(&job, outcome, started.elapsed().as_secs_f64())
                    .await;
                if let Some((_, queue)) = clustered {
                    if let Err(e) = queue.complete(&request_key, &job.id).await {
                        tracing::warn!(build = %job.id, error = %e, "cannot remove the finished job from the queue");
                    }
                }
            }
            if job.is_runner() {
                self.runners
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
            self.unregister(&request_key, &job);
        })
    }

    async fn persist(&self, job: &Job) {
        let build = job.snapshot().build;
        if let Err(e) = self.store.records.put_build(&build).await {
            tracing::error!(build = %job.id, error = %e, "cannot persist build record");
            if build.state.is_final() {
                self.keep_unsaved(build);
            }
        }
    }

    async fn finish(&self, job: &Job, outcome: Outcome, seconds: f64) {
        let (state, failure, manifest, cached) = match outcome {
            Outcome::Built(m) => (BuildState::Succeeded, None, Some(m), false),
            Outcome::Cached(m) => (BuildState::Succeeded, None, Some(m), true),
            Outcome::Failed(f) => (BuildState::Failed, Some(f), None, false),
            Outcome::NotApplicable(f) => (BuildState::NotApplicable, Some(f), None, false),
            Outcome::CheckFailed {
                manifest,
                failure,
                cached,
            } => (BuildState::Failed, Some(failure), Some(manifest), cached),
        };
        let kind = failure.as_ref().map(|f| f.kind.as_str());
        self.metrics.build_finished(state.as_str(), kind, seconds);
        match &failure {
            Some(f) => job
                .log
                .note(&format!("build {}: {}", state.as_str(), f.message)),
            None => job.log.note("build succeeded"),
        }
        if let Err(e) = self
            .store
            .objects
            .put_log(&job.id, job.log.contents().into())
            .await
        {
            tracing::error!(build = %job.id, error = %e, "cannot store build log");
        }
        job.update(|r| {
            r.build.state = state;
            r.build.failure = failure;
            r.build.finished_at = Some(now_rfc3339());
            r.build.seconds = Some(seconds);
            if let Some(m) = &manifest {
                r.build.artifact_key = Some(m.key.clone());
            }
            r.artifact = manifest;
            r.cached = cached;
        });
        self.persist(job).await;
        // Only now end the live log: a follower that sees the stream end and then asks
        // for the build must find it final (else it polls once more for nothing).
        job.log.finish();
        let s = job.snapshot();
        tracing::info!(build = %job.id, state = s.build.state.as_str(), seconds, "build finished");
    }

    /// A build slot (at most `max_builds` containers at a time). The job is
    /// `running` from its first slot on.
    pub(super) async fn slot(&self, job: &Job) -> Result<SemaphorePermit<'_>, Outcome> {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let background = job.is_background();
            if !background {
                self.waiting_foreground.fetch_add(1, SeqCst);
            }
            let permit = self.permits.acquire().await;
            if !background {
                self.waiting_foreground.fetch_sub(1, SeqCst);
            }
            match permit {
                // A prebuild gives the slot back while a client's build waits for one.
                Ok(p) if background && self.waiting_foreground.load(SeqCst) > 0 => {
                    drop(p);
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Ok(permit) => {
                    if job.snapshot().build.state == BuildState::Queued {
                        job.update(|r| r.build.state = BuildState::Running);
                        self.persist(job).await;
                    }
                    return Ok(permit);
                }
                Err(_) => {
                    return Err(Outcome::Failed(failure(
                        FailureKind::Infrastructure,
                        "the server is shutting down".into(),
                        &job.log,
                    )))
                }
            }
        }
    }

    pub(super) async fn pipeline(
        self: &Arc<Self>,
        job: &Job,
        module: &ModuleSource,
        req: &BuildRequest,
        settings: &ModuleSettings,
    ) -> Outcome {
        let arch = job.snapshot().build.arch;
        job.log.note(&format!(
            "{}/{} for kernel {} ({arch})",
            req.name, req.version, req.kernel
        ));
        let image = match self.images.ensure(&req.kernel).await {
            Ok(i) => i,
            Err(e) => return Outcome::Failed(image_failure(e, job)),
        };
        let image = match self.images.with_packages(&image, &settings.packages).await {
            Ok(i) => i,
            Err(e) => return Outcome::Failed(image_failure(e, job)),
        };
        job.update(|r| r.build.image_id = Some(image.image.id.clone()));
        job.log.note(&format!(
            "builder image {} ({})",
            image.image.tag, image.image.id
        ));
        let mut extras = Extras::new(settings, req, &arch);
        for (file, _) in &extras.overrides {
            job.log
                .note(&format!("override /etc/dkms/{file} (module settings)"));
        }
        // Evaluate with the dependencies known so far; dkms.conf may name more.
        let mut wanted: Vec<ModuleName> = settings.build_depends.clone();
        let mut container: Option<(JobContainer, SemaphorePermit<'_>)> = None;
        let mut round = 0;
        let plan = loop {
            round += 1;
            if extras.deps.len() < wanted.len() {
                if let Some((c, permit)) = container.take() {
                    c.remove().await;
                    drop(permit);
                }
                let new = &wanted[extras.deps.len()..];
                match self.resolve_deps(job, new, req, &arch).await {
                    Ok(deps) => extras.deps.extend(deps),
                    Err(f) => return Outcome::Failed(f),
                }
            }
            let ekey = eval_key(module, req, &arch, &image, self.jobs(), &extras);
            let eval = match self.cached_eval(&ekey).await {
                Some(e) => e,
                None => {
                    let permit = match self.slot(job).await {
                        Ok(p) => p,
                        Err(o) => return o,
                    };
                    let (c, dump) = match self
                        .start_container(job, module, req, &image, &extras, true)
                        .await
                    {
                        Ok(c) => c,
                        Err(f) => return Outcome::Failed(f),
                    };
                    let e = self.interpret_eval(job, dump, req, &arch, &ekey).await;
                    container = Some((c, permit));
                    match e {
                        Ok(e) => e,
                        Err(f) => return self.cleanup(container, Outcome::Failed(f)).await,
                    }
                }
            };
            let plan = match eval {
                CachedEval::Build(plan) => plan,
                CachedEval::NotApplicable(reason) => {
                    let f = failure(FailureKind::NotApplicable, reason, &job.log);
                    return self.cleanup(container, Outcome::NotApplicable(f)).await;
                }
            };
            let mut missing = Vec::new();
            for d in &plan.build_depends {
                match ModuleName::parse(d) {
                    Ok(n) if n == req.name => {}
                    Ok(n) if !wanted.contains(&n) && !missing.contains(&n) => missing.push(n),
                    Ok(_) => {}
                    Err(e) => {
                        let msg = format!(
                            "{}/{} for {}: dkms.conf: BUILD_DEPENDS: {e}",
                            req.name, req.version, req.kernel
                        );
                        let f = failure(FailureKind::InvalidConf, msg, &job.log);
                        return self.cleanup(container, Outcome::Failed(f)).await;
                    }
                }
            }
            if missing.is_empty() {
                break plan;
            }
            if round >= MAX_DEPENDENCY_ROUNDS {
                let msg = format!(
                    "{}/{} for {}: BUILD_DEPENDS keeps changing with its dependencies",
                    req.name, req.version, req.kernel
                );
                let f = failure(FailureKind::InvalidConf, msg, &job.log);
                return self.cleanup(container, Outcome::Failed(f)).await;
            }
            let names: Vec<String> = missing.iter().map(|n| n.to_string()).collect();
            job.log.note(&format!(
                "dkms.conf BUILD_DEPENDS: {}; evaluating again with them in place",
                names.join(" ")
            ));
            wanted.extend(missing);
        };
        let key = self.artifact_key(module, req, &arch, &image, &plan, &extras);
        job.update(|r| {
            r.build.artifact_key = Some(key.clone());
            r.build.warnings = plan.warnings.clone();
        });
        for w in &plan.warnings {
            job.log.note(&format!("warning: {w}"));
        }
        if let Some(outcome) = self.reuse(job, &key, &mut container).await {
            return self.cleanup(container, outcome).await;
        }
        self.metrics.cache_miss();
        let (container, permit) = match container {
            Some(c) => c,
            None => {
                let permit = match self.slot(job).await {
                    Ok(p) => p,
                    Err(o) => return o,
                };
                match self
                    .start_container(job, module, req, &image, &extras, false)
                    .await
                {
                    Ok((c, _)) => (c, permit),
                    Err(f) => return Outcome::Failed(f),
                }
            }
        };
        let ctx = BuildCtx {
            job,
            module,
            req,
            arch: &arch,
            image: &image,
            plan: &plan,
            key: &key,
            extras: &extras,
        };
        let outcome = self.build(&container, &ctx).await;
        self.cleanup(Some((container, permit)), outcome).await
    }

    /// A finished artifact with this key, or the result of a job building it now.
    /// The job's container and slot are given back before waiting for another
    /// job: that one may need a slot to finish.
    async fn reuse<'s>(
        &'s self,
        job: &Job,
        key: &ArtifactKey,
        container: &mut Option<(JobContainer, SemaphorePermit<'s>)>,
    ) -> Option<Outcome> {
        if let Ok(Some(m)) = self.store.records.get_artifact(key).await {
            self.metrics.cache_hit();
            job.log.note("artifact cache hit: nothing to build");
            return Some(Outcome::Cached(m));
        }
        let other = {
            let mut inflight = self.inflight();
            match inflight.by_cache_key.get(key) {
                Some(other) => other.clone(),
                None => {
                    if let Some(me) = inflight.by_id.get(&job.id).cloned() {
                        inflight.by_cache_key.insert(key.clone(), me);
                    }
                    return None;
                }
            }
        };
        job.log.note(&format!(
            "joining build {} with the same cache key",
            other.id
        ));
        if let Some((c, permit)) = container.take() {
            c.remove().await;
            drop(permit);
        }
        let done = other.wait().await;
        Some(
            match (done.build.state, done.artifact, done.build.failure) {
                (BuildState::Succeeded, Some(m), _) => Outcome::Cached(m),
                // Its modules exist; whether this job checks them is its own request's choice.
                (_, Some(m), Some(f)) if f.kind.keeps_artifact() => Outcome::Cached(m),
                (_, _, Some(f)) => Outcome::Failed(f),
                _ => Outcome::Failed(failure(
                    FailureKind::Infrastructure,
                    format!("joined build {} ended without a result", other.id),
                    &job.log,
                )),
            },
        )
    }

    /// Removes the job's container (if any), then frees its build slot.
    async fn cleanup(
        &self,
        container: Option<(JobContainer, SemaphorePermit<'_>)>,
        outcome: Outcome,
    ) -> Outcome {
        if let Some((c, permit)) = container {
            c.remove().await;
            drop(permit);
        }
        outcome
    }

    async fn start_container(
        &self,
        job: &Job,
        module: &ModuleSource,
        req: &BuildRequest,
        image: &KernelInfo,
        extras: &Extras,
        with_eval: bool,
    ) -> Result<(JobContainer, Option<ExecOutcome>), Failure> {
        let infra = |msg: String| failure(FailureKind::Infrastructure, msg, &job.log);
        let source = self
            .store
            .objects
            .get_source(&module.digest)
            .await
            .map_err(|e| infra(format!("source of {}/{}: {e}", req.name, req.version)))?;
        let source_dirs = extras.source_dirs(req);
        let volumes = self.usr_volumes.for_image(image).await;
        let spec = ContainerSpec {
            job_id: &job.id,
            role: "job",
            image_id: &image.image.id,
            source_dirs: &source_dirs,
            ro_volumes: &volumes,
        };
        let t0 = Instant::now();
        let container = self
            .sandbox
            .create(&spec)
            .await
            .map_err(|e| infra(e.to_string()))?;
        let created = t0.elapsed().as_secs_f64();
        if let Err(e) = self.place_deps(&container, job, req, extras).await {
            container.remove().await;
            return Err(infra(e.to_string()));
        }
        let mut env = base_env(req, self.jobs());
        env.extend(extras.env());
        // `prepare` = unpack + evaluate dkms.conf in one exec (stdout: the dump).
        let unpack = container
            .exec(Exec {
                cmd: kmf(if with_eval { "prepare" } else { "unpack" }),
                env,
                stdin: Some(source),
                collect_stdout: with_eval.then_some(MAX_DUMP),
                log: &job.log,
                timeouts: Some((EVAL_TIMEOUT, EVAL_TIMEOUT)),
                output_cap: Some(self.sandbox.limits().output_cap_bytes),
            })
            .await;
        match unpack {
            Ok(o) if with_eval => {
                let secs = o.elapsed.as_secs_f64();
                job.log.note(&format!(
                    "sandbox started in {created:.2} s, source unpacked and dkms.conf evaluated in {secs:.2} s"
                ));
                Ok((container, Some(o)))
            }
            Ok(o) if o.exit_code == Some(0) => {
                let secs = o.elapsed.as_secs_f64();
                job.log.note(&format!(
                    "sandbox started in {created:.2} s, source unpacked in {secs:.2} s"
                ));
                Ok((container, None))
            }
            Ok(o) => {
                container.remove().await;
                let limits = self.sandbox.limits();
                Err(match stopped_failure(&o, limits, "unpacking the source") {
                    Some((kind, msg)) => failure(kind, msg, &job.log),
                    None => infra(format!(
                        "unpacking the source failed (exit {:?})",
                        o.exit_code
                    )),
                })
            }
            // dkms.conf's directives make the dump: one too large is the module's.
            Err(SandboxError::OutputTooLarge { limit, .. }) => {
                container.remove().await;
                let msg = format!(
                    "{}/{}: dkms.conf's evaluation printed more than {} MiB of directives",
                    req.name,
                    req.version,
                    limit >> 20
                );
                Err(failure(FailureKind::OutputLimit, msg, &job.log))
            }
            Err(e) => {
                container.remove().await;
                Err(infra(e.to_string()))
            }
        }
    }
}

pub(super) fn kmf(sub: &str) -> Vec<String> {
    vec!["/usr/local/lib/kmodforge/kmf".into(), sub.into()]
}

/// Variables every `kmf` step gets (the DKMS `-m`, `-v`, `-k`, `--arch` equivalents).
pub(super) fn base_env(req: &BuildRequest, jobs: u32) -> Vec<String> {
    vec![
        format!("KMF_MODULE={}", req.name),
        format!("KMF_VERSION={}", req.version),
        format!("KMF_KREL={}", req.kernel),
        format!(
            "KMF_ARCH={}",
            req.arch.as_ref().map(|a| a.as_str()).unwrap_or("x86_64")
        ),
        format!("KMF_JOBS={jobs}"),
    ]
}

fn image_failure(e: ImageError, job: &Job) -> Failure {
    let kind = match e {
        ImageError::UnknownKernel { .. } | ImageError::UnsupportedKernel(_) => {
            FailureKind::UnknownKernel
        }
        ImageError::Packages { .. } => FailureKind::DependencyFailed,
        _ => FailureKind::Infrastructure,
    };
    if let ImageError::Build { log_tail, .. } | ImageError::Packages { log_tail, .. } = &e {
        job.log.note("builder image build output (tail):");
        crate::sandbox::OutputSink::append(&job.log, log_tail.as_bytes());
    }
    failure(kind, e.to_string(), &job.log)
}
