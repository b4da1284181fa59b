//! The boot check step of a job: after the modules exist (built now or found in
//! the cache), boot their kernel and load them when the request asks for it.
//!
//! The check is recorded in the artifact's manifest, once per artifact: a cached
//! artifact that was never checked is checked when a request asks for it, one
//! that was checked is not booted again. Checks of one artifact are
//! single-flight; each takes a build slot (qemu's TCG is one busy CPU).

use std::sync::Arc;

use kmodforge_api::names::ArtifactKey;
use kmodforge_api::wire::{BootCheck, BuildRequest, Failure, FailureKind, Manifest};

use super::run::Outcome;
use super::{failure, Builds, Job};
use crate::bootcheck::{summary, Enforcement, Probe};
use crate::keys::split_signature;

/// Kernel messages of a failed module copied into the build log (the manifest
/// keeps them all).
const LOG_MESSAGES: usize = 30;

impl Builds {
    /// Whether `req` wants a boot check (its own choice, else the server's default).
    pub(super) fn wants_check(&self, req: &BuildRequest) -> bool {
        req.boot_check.unwrap_or_else(|| self.checker.default_on())
    }

    /// Applies the boot check `req` asks for to a job's outcome.
    pub(super) async fn with_boot_check(
        &self,
        job: &Job,
        req: &BuildRequest,
        outcome: Outcome,
    ) -> Outcome {
        let (manifest, cached) = match outcome {
            Outcome::Built(m) => (m, false),
            Outcome::Cached(m) => (m, true),
            other => return other,
        };
        let rewrap = |m| {
            if cached {
                Outcome::Cached(m)
            } else {
                Outcome::Built(m)
            }
        };
        if !self.wants_check(req) {
            return rewrap(manifest);
        }
        let manifest = match self.checked(job, &manifest).await {
            Ok(m) => m,
            // The check could not run: the modules stand, unchecked.
            Err(failure) if failure.kind.keeps_artifact() => {
                return Outcome::CheckFailed {
                    manifest,
                    failure,
                    cached,
                }
            }
            Err(f) => return Outcome::Failed(f),
        };
        let reason = match &manifest.boot_check {
            Some(BootCheck { passed: true, .. }) => return rewrap(manifest),
            Some(c) => c.reason.clone().unwrap_or_else(|| "no reason given".into()),
            None => "no boot check was recorded".into(),
        };
        let message = format!(
            "{}/{} on {}: boot check failed: {reason}",
            manifest.name, manifest.version, manifest.kernel
        );
        let f = failure(FailureKind::BootCheckFailed, message, &job.log);
        Outcome::CheckFailed {
            manifest,
            failure: f,
            cached,
        }
    }

    /// The manifest with its boot check: recorded already, or run now. A check
    /// that could not run is a `boot_check_not_run` failure when the check itself
    /// is to blame, `infrastructure` when the service is.
    async fn checked(&self, job: &Job, manifest: &Manifest) -> Result<Manifest, Failure> {
        if let Some(c) = &manifest.boot_check {
            job.log.note(&format!(
                "boot check recorded at {}: {}",
                c.checked_at,
                if c.passed { "passed" } else { "failed" }
            ));
            return Ok(manifest.clone());
        }
        let lock = self.check_lock(&manifest.key);
        let _guard = lock.lock().await;
        let what = format!(
            "{}/{} on {}: the modules were built (artifact {})",
            manifest.name, manifest.version, manifest.kernel, manifest.key
        );
        let infra = |msg: String| {
            failure(
                FailureKind::Infrastructure,
                format!("{what}, but the boot check could not run: {msg}"),
                &job.log,
            )
        };
        // Another job may have checked it while this one waited.
        match self.store.records.get_artifact(&manifest.key).await {
            Ok(Some(current)) if current.boot_check.is_some() => {
                job.log
                    .note("boot check recorded meanwhile by another build");
                return Ok(current);
            }
            Ok(_) => {}
            Err(e) => return Err(infra(e.to_string())),
        }
        let modules = self
            .modules_to_load(manifest)
            .await
            .map_err(|e| infra(e.to_string()))?;
        let enforce = self
            .enforcement(manifest, &modules)
            .await
            .map_err(|e| infra(e.to_string()))?;
        let permit = match self.slot(job).await {
            Ok(p) => p,
            Err(Outcome::Failed(f)) => return Err(f),
            Err(_) => return Err(infra("no build slot".into())),
        };
        job.log.note(&format!(
            "boot check: booting {} under qemu with {} module(s)",
            manifest.kernel,
            modules.len()
        ));
        let started = std::time::Instant::now();
        let check = self
            .checker
            .check(
                &job.id,
                &manifest.kernel,
                &modules,
                enforce.as_ref(),
                &job.log,
            )
            .await;
        drop(permit);
        self.metrics
            .boot_check_finished(check_result(&check), started.elapsed());
        let check = check.map_err(|e| {
            let kind = match e.is_service_fault() {
                true => FailureKind::Infrastructure,
                false => FailureKind::BootCheckNotRun,
            };
            let message = format!("{what}, but the boot check could not run: {e}");
            failure(kind, message, &job.log)
        })?;
        job.log.note(&summary(&check));
        if !check.passed {
            log_failed_modules(job, &check);
        }
        let mut manifest = manifest.clone();
        manifest.boot_check = Some(check);
        // The check is part of what the manifest states: sign it again.
        self.keys
            .attest(&mut manifest)
            .map_err(|e| infra(format!("signing the manifest: {e}")))?;
        match self.store.records.update_manifest(&manifest).await {
            Ok(true) => Ok(manifest),
            Ok(false) => Err(infra("the artifact was deleted during the check".into())),
            Err(e) => Err(infra(e.to_string())),
        }
    }

    /// Signature enforcement for a signed artifact (unless turned off): its
    /// certificate, and an unsigned and a foreign-signed copy of its first module.
    async fn enforcement(
        &self,
        manifest: &Manifest,
        modules: &[(String, Vec<u8>)],
    ) -> Result<Option<Enforcement>, CheckInputError> {
        let Some(sha) = manifest
            .module_signing
            .as_ref()
            .filter(|s| s.signed)
            .and_then(|s| s.certificate_sha256.as_deref())
        else {
            return Ok(None);
        };
        if !self.checker.enforce_signed() {
            return Ok(None);
        }
        let (cert_der, cert_cn) = self.keys.certificate(sha, &*self.store.records).await?;
        let Some((file, signed)) = modules.first() else {
            return Ok(None);
        };
        let (unsigned, _) =
            split_signature(signed).ok_or_else(|| CheckInputError::NoSignature(file.clone()))?;
        let foreign = self
            .keys
            .foreign()
            .and_then(|k| k.sign(unsigned))
            .map_err(CheckInputError::Probe)?;
        Ok(Some(Enforcement {
            cert_der,
            cert_cn,
            probes: vec![
                Probe {
                    kind: "unsigned",
                    file: file.clone(),
                    bytes: unsigned.to_vec(),
                },
                Probe {
                    kind: "foreign",
                    file: file.clone(),
                    bytes: foreign,
                },
            ],
        }))
    }

    /// The artifact's `.ko` files and those of its BUILD_DEPENDS artifacts (all
    /// the way down), which a host would have installed before it.
    async fn modules_to_load(
        &self,
        manifest: &Manifest,
    ) -> Result<Vec<(String, Vec<u8>)>, CheckInputError> {
        let mut modules = Vec::new();
        let mut seen = vec![manifest.key.clone()];
        let mut todo = vec![manifest.clone()];
        while let Some(m) = todo.pop() {
            for f in &m.files {
                match self.store.objects.get_blob(&f.sha256).await {
                    Ok(Some(bytes)) => modules.push((f.file.clone(), bytes.to_vec())),
                    Ok(None) => {
                        return Err(CheckInputError::MissingBlob {
                            sha256: f.sha256.clone(),
                            file: f.file.clone(),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            for d in &m.dependencies {
                if seen.contains(&d.key) {
                    continue;
                }
                seen.push(d.key.clone());
                match self.store.records.get_artifact(&d.key).await {
                    Ok(Some(dm)) => todo.push(dm),
                    Ok(None) => {
                        return Err(CheckInputError::DependencyGone(format!(
                            "{}/{} (artifact {})",
                            d.name, d.version, d.key
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(modules)
    }

    fn check_lock(&self, key: &ArtifactKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.check_locks.lock().unwrap_or_else(|p| p.into_inner());
        // Locks of finished checks are dropped here: only in-use ones are shared.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.clone()).or_default().clone()
    }
}

/// Why the inputs of a boot check could not be gathered (the service's trouble).
#[derive(Debug, thiserror::Error)]
enum CheckInputError {
    #[error("blob {sha256} of {file} is missing")]
    MissingBlob { sha256: String, file: String },
    #[error("dependency {0} is gone")]
    DependencyGone(String),
    #[error(transparent)]
    Blob(#[from] crate::store::BlobError),
    #[error(transparent)]
    Records(#[from] crate::store::RecordsError),
    #[error(transparent)]
    Certificate(#[from] crate::keys::CertificateError),
    #[error("{0} is recorded as signed but carries no signature")]
    NoSignature(String),
    #[error("signing the foreign probe: {0}")]
    Probe(crate::keys::SignError),
}

/// The kernel's own lines about the modules that did not load, for the log tail.
fn log_failed_modules(job: &Job, check: &BootCheck) {
    for m in check
        .modules
        .iter()
        .filter(|m| !m.loaded && (m.new || m.rc.is_some()))
    {
        job.log.note(&format!(
            "boot check: {} ({}) rc {:?}, initstate {:?}",
            m.name, m.file, m.rc, m.initstate
        ));
        for line in m.messages.iter().take(LOG_MESSAGES) {
            job.log.note(&format!("  {line}"));
        }
    }
    if !check.completed {
        job.log.note("boot check: console tail:");
        for line in check.console_tail.lines() {
            job.log.note(&format!("  {line}"));
        }
    }
}

/// How a boot check ended, for the metrics.
fn check_result<E>(check: &Result<BootCheck, E>) -> crate::metrics::CheckResult {
    use crate::metrics::CheckResult;
    match check {
        Ok(c) if c.passed => CheckResult::Passed,
        Ok(_) => CheckResult::Failed,
        Err(_) => CheckResult::Error,
    }
}
