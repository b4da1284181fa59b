//! Phase 3 of a job: PATCH, PRE_BUILD, MAKE and POST_BUILD in one `kmf build`
//! exec, whose output is the log (capped, scanned for the first compiler error);
//! then the modules collected by a separate `kmf collect` exec, so the build never
//! holds the channel that carries them. The outcome is read from the sandbox's
//! limits first (processes, memory, time, output), then from kmf's exit code.

use std::time::Instant;

use kmodforge_api::dkms::BuildPlan;
use kmodforge_api::names::{Arch, ArtifactKey};
use kmodforge_api::wire::{BuildRequest, FailureKind, KernelInfo, ModuleSource};

use super::collect::{collect_artifact, CollectInput};
use super::deps::Extras;
use super::first_error::Scanned;
use super::log::LogBuffer;
use super::run::{base_env, kmf, Outcome, EVAL_TIMEOUT};
use super::{failure, Builds, Job};
use crate::sandbox::{Exec, ExecOutcome, JobContainer, SandboxError, SandboxLimits, Stopped};

/// Output `kmf collect` may log (it prints only its own errors), in bytes.
const COLLECT_LOG_CAP: u64 = 1 << 20;

pub(super) struct BuildCtx<'a> {
    pub(super) job: &'a Job,
    pub(super) module: &'a ModuleSource,
    pub(super) req: &'a BuildRequest,
    pub(super) arch: &'a Arch,
    pub(super) image: &'a KernelInfo,
    pub(super) plan: &'a BuildPlan,
    pub(super) key: &'a ArtifactKey,
    pub(super) extras: &'a Extras,
}

impl Builds {
    pub(super) async fn build(&self, container: &JobContainer, ctx: &BuildCtx<'_>) -> Outcome {
        let job = ctx.job;
        let limits = self.sandbox.limits();
        let mut env = base_env(ctx.req, self.jobs());
        env.extend(plan_env(ctx.plan));
        env.extend(ctx.extras.env());
        env.extend(self.sandbox.experiments().build_env());
        job.log.note(&format!("make command: {}", ctx.plan.make));
        let started = Instant::now();
        let output = Scanned::new(&job.log);
        // `kmf build` alone, its stdout and stderr both the log: the modules come out
        // in an exec of their own afterwards, so nothing the build runs ever holds the
        // channel that carries them to the server.
        let run = container
            .exec(Exec {
                cmd: kmf("build"),
                env,
                stdin: None,
                collect_stdout: None,
                log: &output,
                timeouts: Some((limits.wall_clock, limits.idle)),
                output_cap: Some(limits.output_cap_bytes),
            })
            .await;
        let out = match run {
            Ok(o) => o,
            Err(e) => return self.exec_failed(container, ctx, e).await,
        };
        if let Some((kind, msg)) = stopped_failure(&out, limits, "build") {
            return fail(ctx, kind, msg);
        }
        if out.exit_code != Some(0) {
            let (kind, msg) = self
                .build_failed(container, ctx, out.exit_code, &output)
                .await;
            return fail(ctx, kind, msg);
        }
        let build_seconds = started.elapsed().as_secs_f64();
        job.log
            .note(&format!("build step took {build_seconds:.2} s"));
        match self.collect_tar(container, ctx).await {
            Ok(tar) => self.collect(ctx, &tar, build_seconds).await,
            Err(outcome) => outcome,
        }
    }

    /// Why `kmf build` exited non-zero: the service (the container went away), a
    /// limit the cgroup recorded, or the module (kmf's exit code).
    async fn build_failed(
        &self,
        container: &JobContainer,
        ctx: &BuildCtx<'_>,
        code: Option<i64>,
        output: &Scanned<'_, LogBuffer>,
    ) -> (FailureKind, String) {
        let limits = self.sandbox.limits();
        if !container.is_running().await {
            return (
                FailureKind::Infrastructure,
                "the build container was stopped from outside the build".into(),
            );
        }
        let hit = container.limits_hit().await;
        if hit.oom_kills > 0 {
            return (
                FailureKind::OutOfMemory,
                format!(
                    "build ran out of memory (limit {} MiB)",
                    limits.memory_bytes >> 20
                ),
            );
        }
        // A fork bomb left running holds every pid: then not even the exec that
        // reads the counters starts, but the engine still tells the count.
        let pids_full = || async { container.pids_usage().await.is_some_and(|p| p.at_limit()) };
        if hit.pids_refused > 0 || pids_full().await {
            return pids_failure(limits);
        }
        let build_dir = format!("/var/lib/dkms/{}/{}/build", ctx.req.name, ctx.req.version);
        match code {
            Some(5) | Some(6) => (
                FailureKind::PatchFailed,
                format!("applying a patch failed (exit {})", code.unwrap_or(-1)),
            ),
            Some(7) => (
                FailureKind::MissingModule,
                self.missing_modules(container, ctx).await,
            ),
            Some(10) => (
                FailureKind::CompileError,
                match output.quote(&build_dir) {
                    Some(error) => format!("make failed: {error}"),
                    None => "make failed (DKMS: Bad return status for module build)".into(),
                },
            ),
            Some(30) => (
                FailureKind::CompileError,
                "the PRE_BUILD script failed (its exit status is in the log)".into(),
            ),
            Some(31) => (
                FailureKind::CompileError,
                "the POST_BUILD script failed (its exit status is in the log)".into(),
            ),
            Some(21) => (
                FailureKind::Infrastructure,
                "the builder image has no kernel headers for this kernel".into(),
            ),
            other => (
                FailureKind::Infrastructure,
                format!(
                    "kmf build failed with exit {} (see the log)",
                    other.map_or("none".to_string(), |c| c.to_string())
                ),
            ),
        }
    }

    /// An exec of the build that could not run or broke off: the build's own doing
    /// when its processes fill the pids limit (the engine cannot start a process
    /// then), else the service's.
    async fn exec_failed(
        &self,
        container: &JobContainer,
        ctx: &BuildCtx<'_>,
        e: SandboxError,
    ) -> Outcome {
        if container.pids_usage().await.is_some_and(|p| p.at_limit()) {
            let (kind, msg) = pids_failure(self.sandbox.limits());
            return fail(ctx, kind, msg);
        }
        Outcome::Failed(failure(
            FailureKind::Infrastructure,
            e.to_string(),
            &ctx.job.log,
        ))
    }

    /// The module tar, from `kmf collect` run after the build (see [`Self::build`]).
    /// Whatever the build left running is killed first (`kill -1` spares only the
    /// caller and the container's init), so nothing of the build runs beside the
    /// exec whose stdout carries the modules.
    async fn collect_tar(
        &self,
        container: &JobContainer,
        ctx: &BuildCtx<'_>,
    ) -> Result<Vec<u8>, Outcome> {
        let limits = self.sandbox.limits();
        let cap = limits.artifact_cap_bytes;
        let mut cmd = vec![
            "sh".to_string(),
            "-c".into(),
            r#"kill -KILL -1 2>/dev/null; exec "$0" collect"#.into(),
        ];
        cmd.extend(kmf("collect").into_iter().take(1));
        let run = container
            .exec(Exec {
                cmd,
                env: base_env(ctx.req, self.jobs()),
                stdin: None,
                collect_stdout: Some(cap),
                log: &ctx.job.log,
                timeouts: Some((EVAL_TIMEOUT, EVAL_TIMEOUT)),
                output_cap: Some(COLLECT_LOG_CAP),
            })
            .await;
        let out = match run {
            Ok(o) => o,
            Err(SandboxError::OutputTooLarge { .. }) => {
                return Err(fail(
                    ctx,
                    FailureKind::OutputLimit,
                    format!(
                        "the built modules exceed the {} MiB artifact cap",
                        cap >> 20
                    ),
                ))
            }
            Err(e) => return Err(self.exec_failed(container, ctx, e).await),
        };
        if let Some((kind, msg)) = stopped_failure(&out, limits, "collecting the modules") {
            return Err(fail(ctx, kind, msg));
        }
        match out.exit_code {
            Some(0) => Ok(out.stdout),
            Some(7) => Err(fail(
                ctx,
                FailureKind::MissingModule,
                "make built no module (nothing to collect)".into(),
            )),
            code => Err(fail(
                ctx,
                FailureKind::Infrastructure,
                format!("kmf collect failed with exit {code:?} (see the log)"),
            )),
        }
    }

    /// Names the `BUILT_MODULE_NAME` files that make did not produce.
    async fn missing_modules(&self, container: &JobContainer, ctx: &BuildCtx<'_>) -> String {
        let build_dir = format!("/var/lib/dkms/{}/{}/build", ctx.req.name, ctx.req.version);
        let paths: Vec<String> = ctx
            .plan
            .modules
            .iter()
            .map(|m| format!("{build_dir}/{}{}.ko", m.built_location, m.built_name))
            .collect();
        let mut cmd = vec![
            "sh",
            "-c",
            r#"for f; do [ -f "$f" ] || echo "$f"; done"#,
            "sh",
        ];
        cmd.extend(paths.iter().map(String::as_str));
        let missing = match container.read(&cmd, 64 * 1024).await {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', ", "),
            Err(_) => String::new(),
        };
        if missing.is_empty() {
            "a built module is missing".into()
        } else {
            format!("built module missing: {missing}")
        }
    }

    /// Verifies and stores the module tar that `kmf collect` wrote to stdout.
    async fn collect(&self, ctx: &BuildCtx<'_>, tar: &[u8], build_seconds: f64) -> Outcome {
        let job = ctx.job;
        let input = CollectInput {
            build_id: &job.id,
            name: &ctx.req.name,
            version: &ctx.req.version,
            kernel: &ctx.req.kernel,
            arch: ctx.arch,
            source_digest: &ctx.module.digest,
            image: &ctx.image.image,
            plan: ctx.plan,
            key: ctx.key,
            build_seconds,
            packages: &ctx.extras.packages,
            dependencies: ctx.extras.dependency_refs(),
            overrides: ctx.extras.override_names(),
            signer: self.keys.module_signer(ctx.req.sign),
            keys: &self.keys,
        };
        match collect_artifact(&self.store, &input, tar).await {
            Ok(manifest) => {
                for f in &manifest.files {
                    job.log
                        .note(&format!("{} {} bytes sha256 {}", f.file, f.size, f.sha256));
                }
                Outcome::Built(manifest)
            }
            Err(e) => Outcome::Failed(failure(e.kind(), e.to_string(), &job.log)),
        }
    }
}

/// A failure of the build `ctx` describes, its message prefixed with the module and kernel.
fn fail(ctx: &BuildCtx<'_>, kind: FailureKind, msg: String) -> Outcome {
    let what = format!(
        "{}/{} for {}",
        ctx.req.name, ctx.req.version, ctx.req.kernel
    );
    Outcome::Failed(failure(kind, format!("{what}: {msg}"), &ctx.job.log))
}

fn pids_failure(limits: &SandboxLimits) -> (FailureKind, String) {
    (
        FailureKind::PidsLimit,
        format!(
            "build hit its limit of {} processes (a fork bomb, or far too many parallel jobs)",
            limits.pids
        ),
    )
}

/// The failure of an exec the sandbox stopped: by the pids limit when the
/// container was full of processes as it stopped (a fork bomb runs into the time
/// or output limit), else by the limit that stopped it. `None`: not stopped.
pub(super) fn stopped_failure(
    out: &ExecOutcome,
    limits: &SandboxLimits,
    step: &str,
) -> Option<(FailureKind, String)> {
    let stopped = out.stopped?;
    if out.pids_at_stop.is_some_and(|p| p.at_limit()) {
        return Some(pids_failure(limits));
    }
    Some(match stopped {
        Stopped::WallClock => (
            FailureKind::Timeout,
            format!(
                "{step} exceeded the {} s wall-clock limit",
                limits.wall_clock.as_secs()
            ),
        ),
        Stopped::Idle => (
            FailureKind::Timeout,
            format!("{step} printed nothing for {} s", limits.idle.as_secs()),
        ),
        Stopped::OutputLimit => (
            FailureKind::OutputLimit,
            format!(
                "{step} printed more than the {} MiB output cap",
                limits.output_cap_bytes >> 20
            ),
        ),
    })
}

/// The validated plan, handed to `kmf build` as variables (no shell quoting involved).
fn plan_env(plan: &BuildPlan) -> Vec<String> {
    let modules: Vec<String> = plan
        .modules
        .iter()
        .map(|m| {
            let strip = if m.strip { "y" } else { "n" };
            format!(
                "{}\t{}\t{}\t{strip}",
                m.built_location, m.built_name, m.dest_name
            )
        })
        .collect();
    vec![
        format!("KMF_MAKE={}", plan.make),
        format!("KMF_PATCHES={}", plan.patches.join("\n")),
        format!(
            "KMF_PRE_BUILD={}",
            plan.pre_build.clone().unwrap_or_default()
        ),
        format!(
            "KMF_POST_BUILD={}",
            plan.post_build.clone().unwrap_or_default()
        ),
        format!("KMF_MODULES={}", modules.join("\n")),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::PidsUsage;

    fn limits() -> SandboxLimits {
        SandboxLimits {
            jobs: 2,
            memory_bytes: 1 << 30,
            tmpfs_bytes: 1 << 29,
            pids: 64,
            wall_clock: Duration::from_secs(40),
            idle: Duration::from_secs(30),
            log_cap_bytes: 1 << 20,
            output_cap_bytes: 64 << 20,
            artifact_cap_bytes: 1 << 28,
        }
    }

    fn stopped(stopped: Option<Stopped>, current: u64) -> ExecOutcome {
        ExecOutcome {
            exit_code: None,
            stdout: Vec::new(),
            stopped,
            pids_at_stop: Some(PidsUsage { current, limit: 64 }),
            elapsed: Duration::ZERO,
        }
    }

    /// A stopped build fails by the limit that stopped it, unless its container was
    /// full of processes: then by the pids limit, whatever stopped it.
    #[test]
    fn a_stopped_build_names_its_limit() {
        let cases = [
            (
                Some(Stopped::WallClock),
                3,
                FailureKind::Timeout,
                "40 s wall-clock",
            ),
            (
                Some(Stopped::Idle),
                3,
                FailureKind::Timeout,
                "nothing for 30 s",
            ),
            (
                Some(Stopped::OutputLimit),
                3,
                FailureKind::OutputLimit,
                "64 MiB output cap",
            ),
            (
                Some(Stopped::WallClock),
                62,
                FailureKind::PidsLimit,
                "limit of 64 processes",
            ),
            (
                Some(Stopped::OutputLimit),
                64,
                FailureKind::PidsLimit,
                "limit of 64 processes",
            ),
        ];
        for (stop, current, kind, text) in cases {
            let (got, msg) =
                stopped_failure(&stopped(stop, current), &limits(), "build").expect("stopped");
            assert_eq!(got, kind, "{stop:?} with {current} pids: {msg}");
            assert!(msg.contains(text), "{msg}");
        }
        assert_eq!(
            stopped_failure(&stopped(None, 64), &limits(), "build"),
            None
        );
    }

    #[test]
    fn pids_near_the_limit() {
        let at = |current, limit| PidsUsage { current, limit }.at_limit();
        assert!(at(64, 64) && at(62, 64) && at(1000, 1024) && at(973, 1024));
        assert!(!at(60, 64) && !at(900, 1024) && !at(5, 0));
    }
}
