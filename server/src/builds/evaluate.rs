//! Phase 2 of a job: dkms.conf, evaluated in the sandbox by `kmf prepare` and
//! validated in Rust; the result is cached per (source, kernel, arch, image, jobs,
//! override files, dependencies in place).

use kmodforge_api::dkms::{evaluate, BuildPlan, Dump, EvalContext, Evaluation};
use kmodforge_api::names::Arch;
use kmodforge_api::wire::{BuildRequest, Failure, FailureKind, KernelInfo, ModuleSource};
use serde::{Deserialize, Serialize};

use super::deps::Extras;
use super::execute::stopped_failure;
use super::{failure, Builds, Job};
use crate::sandbox::ExecOutcome;

/// The evaluation of dkms.conf for one (source, kernel, arch, image), cached.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // short-lived; boxing would only add noise
pub(super) enum CachedEval {
    Build(BuildPlan),
    NotApplicable(String),
}

/// Largest eval dump accepted, in bytes.
pub(super) const MAX_DUMP: usize = 4 << 20;

impl Builds {
    pub(super) async fn cached_eval(&self, ekey: &str) -> Option<CachedEval> {
        let text = self.store.records.get_eval(ekey).await.ok()??;
        serde_json::from_str(&text).ok()
    }

    /// Validates the dump of `kmf prepare` in Rust and caches the result.
    pub(super) async fn interpret_eval(
        &self,
        job: &Job,
        out: Option<ExecOutcome>,
        req: &BuildRequest,
        arch: &Arch,
        ekey: &str,
    ) -> Result<CachedEval, Failure> {
        let out = out.ok_or_else(|| {
            failure(
                FailureKind::Infrastructure,
                "no dkms.conf evaluation".into(),
                &job.log,
            )
        })?;
        let what = format!("{}/{} for {}", req.name, req.version, req.kernel);
        let limits = self.sandbox.limits();
        if let Some((kind, msg)) = stopped_failure(&out, limits, "evaluating dkms.conf") {
            return Err(failure(kind, format!("{what}: {msg}"), &job.log));
        }
        if out.exit_code != Some(0) {
            let msg = format!(
                "{what}: preparing the source or evaluating dkms.conf failed (exit {:?}; see the log)",
                out.exit_code
            );
            return Err(failure(FailureKind::InvalidConf, msg, &job.log));
        }
        let conf_err = |e: kmodforge_api::dkms::ConfError| {
            failure(
                FailureKind::InvalidConf,
                format!("{what}: dkms.conf: {e}"),
                &job.log,
            )
        };
        let dump = Dump::parse(&out.stdout).map_err(conf_err)?;
        let ctx = EvalContext::new(
            req.kernel.clone(),
            arch.clone(),
            req.name.clone(),
            req.version.clone(),
            self.jobs(),
        );
        let eval = match evaluate(&dump, &ctx).map_err(conf_err)? {
            Evaluation::Build(plan) => CachedEval::Build(plan),
            Evaluation::NotApplicable { reason } => {
                CachedEval::NotApplicable(format!("{what}: not applicable: {reason}"))
            }
        };
        if let Ok(text) = serde_json::to_string(&eval) {
            if let Err(e) = self.store.records.put_eval(ekey, &text).await {
                tracing::warn!(error = %e, "cannot cache dkms.conf evaluation");
            }
        }
        Ok(eval)
    }
}

/// Identity of a dkms.conf evaluation: everything its result can depend on.
pub(super) fn eval_key(
    module: &ModuleSource,
    req: &BuildRequest,
    arch: &Arch,
    image: &KernelInfo,
    jobs: u32,
    extras: &Extras,
) -> String {
    // v2: source tree at /usr/src/<m>-<v>, override files, dependencies in place.
    // v3: the canonical encoding shared by every hashed key.
    let inputs = serde_json::json!({
        "name": module.name, "version": module.version, "digest": module.digest,
        "kernel": req.kernel, "arch": arch, "image": image.image.id, "jobs": jobs,
        "extras": extras.identity(),
    });
    kmodforge_api::canonical::hex_digest("kmodforge-eval-key-v3\n", &inputs)
}
