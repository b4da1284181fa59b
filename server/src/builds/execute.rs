//! Phase 3 of a job: PATCH, PRE_BUILD, MAKE, POST_BUILD and module collection in
//! one `kmf build-collect` exec, then the outcome read from exit codes and state.

use std::time::Instant;

use kmodforge_api::dkms::BuildPlan;
use kmodforge_api::names::{Arch, ArtifactKey};
use kmodforge_api::wire::{BuildRequest, FailureKind, KernelInfo, ModuleSource};

use super::collect::{collect_artifact, CollectInput};
use super::deps::Extras;
use super::run::{base_env, kmf, Outcome};
use super::{failure, Builds, Job};
use crate::sandbox::{Exec, JobContainer, Stopped};

/// Largest module tar accepted from a build, in bytes.
const MAX_MODULES_TAR: usize = 1 << 30;

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
        job.log.note(&format!("make command: {}", ctx.plan.make));
        let started = Instant::now();
        let run = container
            .exec(Exec {
                cmd: kmf("build-collect"),
                env,
                stdin: None,
                collect_stdout: Some(MAX_MODULES_TAR),
                log: &job.log,
                timeouts: Some((limits.wall_clock, limits.idle)),
            })
            .await;
        let what = format!(
            "{}/{} for {}",
            ctx.req.name, ctx.req.version, ctx.req.kernel
        );
        let out = match run {
            Ok(o) => o,
            Err(e) => {
                return Outcome::Failed(failure(
                    FailureKind::Infrastructure,
                    e.to_string(),
                    &job.log,
                ))
            }
        };
        let fail =
            |kind, msg: String| Outcome::Failed(failure(kind, format!("{what}: {msg}"), &job.log));
        match (out.stopped, out.exit_code) {
            (Some(Stopped::WallClock), _) => {
                return fail(
                    FailureKind::Timeout,
                    format!(
                        "build exceeded the {} s wall-clock limit",
                        limits.wall_clock.as_secs()
                    ),
                )
            }
            (Some(Stopped::Idle), _) => {
                return fail(
                    FailureKind::Timeout,
                    format!("build printed nothing for {} s", limits.idle.as_secs()),
                )
            }
            (None, Some(0)) => {}
            (None, code) => {
                if !container.is_running().await {
                    return fail(
                        FailureKind::Infrastructure,
                        "the build container was stopped from outside the build".into(),
                    );
                }
                if container.oom_killed().await {
                    return fail(
                        FailureKind::OutOfMemory,
                        format!(
                            "build ran out of memory (limit {} MiB)",
                            limits.memory_bytes >> 20
                        ),
                    );
                }
                return match code {
                    Some(5) | Some(6) => fail(
                        FailureKind::PatchFailed,
                        format!("applying a patch failed (exit {})", code.unwrap_or(-1)),
                    ),
                    Some(7) => fail(
                        FailureKind::MissingModule,
                        self.missing_modules(container, ctx).await,
                    ),
                    Some(10) => fail(
                        FailureKind::CompileError,
                        "make failed (DKMS: Bad return status for module build)".into(),
                    ),
                    Some(30) => fail(
                        FailureKind::CompileError,
                        "the PRE_BUILD script failed (its exit status is in the log)".into(),
                    ),
                    Some(31) => fail(
                        FailureKind::CompileError,
                        "the POST_BUILD script failed (its exit status is in the log)".into(),
                    ),
                    Some(21) => fail(
                        FailureKind::Infrastructure,
                        "the builder image has no kernel headers for this kernel".into(),
                    ),
                    other => fail(
                        FailureKind::Infrastructure,
                        format!(
                            "kmf build failed with exit {} (see the log)",
                            other.map_or("none".to_string(), |c| c.to_string())
                        ),
                    ),
                };
            }
        }
        let build_seconds = started.elapsed().as_secs_f64();
        job.log
            .note(&format!("build step took {build_seconds:.2} s"));
        self.collect(ctx, &out.stdout, build_seconds).await
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

    /// Verifies and stores the module tar that `kmf build-collect` wrote to stdout.
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
