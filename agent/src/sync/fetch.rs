//! Phase 1 of a sync, without the host lock: ask the server for the artifact
//! (building it, waiting for it, having it boot-checked), check its manifest and
//! its signatures, download and verify every file into memory. Nothing on the host
//! changes here, so a sync killed during a long build wait leaves nothing behind,
//! and a kernel hook never waits for another run's build.

use kmodforge_agent::host::{Host, HostError, VerifiedArtifact};
use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::{BuildRequest, BuildState, Manifest};
use sha2::{Digest, Sha256};

use super::checks::{loadable_here, trusted};
use super::{Ctx, Prepared, SyncError};
use crate::boot::{self, Refusal, Verdict};
use crate::config::WantedModule;
use crate::outcome::BuildFailed;
use crate::wait::{self, Follow};

/// An artifact from the server, or why it is not one to install.
enum Fetched {
    Artifact(Box<Manifest>),
    NotApplicable(String),
    /// Its boot check failed (or none passed while one is required); the manifest,
    /// when there is one, so that an installed copy gets the failure recorded.
    Refused(Option<Box<Manifest>>, Box<Refusal>),
}

/// Everything up to the install of one (module, kernel).
pub(super) fn prepare(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
) -> Result<Prepared, SyncError> {
    if !ctx.host.has_kernel_tree(k) {
        // Picked from the installed kernels when the run started: removed since.
        if ctx.args.kernels.is_empty() {
            return Ok(Prepared::KernelGone);
        }
        return Err(HostError::NoKernelTree {
            kernel: k.clone(),
            path: ctx.host.paths.kernel_tree(k),
        }
        .into());
    }
    let required = ctx.cfg.require_boot_check;
    let (manifest, asked) = match ctx.client.manifest(&m.name, &m.version, k)? {
        Some(man) => (man, false),
        None => match build(ctx, m, k, boot::request_flag(required))? {
            Fetched::Artifact(man) => (*man, required),
            other => return Ok(settled(other)),
        },
    };
    // DKMS's autoinstall (its kernel hook and boot service) installs only
    // AUTOINSTALL=yes modules.
    if ctx.args.autoinstall && !manifest.plan.autoinstall {
        return Ok(Prepared::NotAutoinstall);
    }
    let manifest = match boot_checked(ctx, m, k, manifest, asked)? {
        Fetched::Artifact(man) => *man,
        other => return Ok(settled(other)),
    };
    let manifest_key = trusted(ctx, m, k, &manifest)?;
    loadable_here(ctx, &manifest)?;
    if !ctx.args.force && already_installed(ctx.host, m, k, &manifest)? {
        return Ok(Prepared::Unchanged(Box::new(manifest)));
    }
    let mut files = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let bytes = ctx
            .client
            .file(&m.name, &m.version, k, &f.file)
            .map_err(|source| SyncError::Download {
                file: f.file.clone(),
                source,
            })?;
        files.push((f.file.clone(), bytes));
    }
    let note = boot::note(manifest.boot_check.as_ref());
    let mut verified = VerifiedArtifact::verify(manifest, files, k).map_err(|e| match e {
        // Against a verified statement a changed file is a trust failure, not a bad download.
        HostError::Sha256Mismatch { .. } if manifest_key.is_some() => {
            SyncError::Untrusted(format!("a file does not match the signed manifest: {e}"))
        }
        other => other.into(),
    })?;
    verified.manifest_key = manifest_key;
    Ok(Prepared::Install(Box::new(verified), note))
}

/// A fetch that ended without an artifact to install.
fn settled(f: Fetched) -> Prepared {
    match f {
        Fetched::NotApplicable(why) => Prepared::NotApplicable(why),
        Fetched::Refused(manifest, refusal) => Prepared::Refused(manifest, refusal),
        Fetched::Artifact(_) => unreachable!("an artifact is not settled"),
    }
}

/// The artifact once its boot check is settled: accepted as is, or after asking the
/// server for a check (`require_boot_check`), or refused. `asked`: the manifest
/// came from a request with `boot_check: true` already.
fn boot_checked(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
    manifest: Manifest,
    asked: bool,
) -> Result<Fetched, SyncError> {
    let required = ctx.cfg.require_boot_check;
    match boot::verdict(manifest.boot_check.as_ref(), required, asked) {
        Verdict::Accept => Ok(Fetched::Artifact(Box::new(manifest))),
        Verdict::Refuse(r) => Ok(Fetched::Refused(Some(Box::new(manifest)), Box::new(r))),
        Verdict::Check => match build(ctx, m, k, Some(true))? {
            Fetched::Artifact(man) => boot_checked(ctx, m, k, *man, true),
            other => Ok(other),
        },
    }
}

/// Builds on the server (or has the boot check run, with `boot_check: Some(true)` on
/// a cached artifact): the manifest, or why there is none to install.
fn build(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
    boot_check: Option<bool>,
) -> Result<Fetched, SyncError> {
    let req = BuildRequest {
        name: m.name.clone(),
        version: m.version.clone(),
        kernel: k.clone(),
        arch: None,
        options: Default::default(),
        boot_check,
        // A host that enforces signatures needs signed modules, whatever the server's default.
        sign: ctx.sig.as_ref().filter(|s| s.enforces()).map(|_| true),
    };
    let mut label = format!("{}/{} on {k}", m.name, m.version);
    if boot_check == Some(true) {
        label.push_str(" (boot check)");
    }
    let done = wait::build_and_wait(ctx.client, &req, &label, Follow::for_sync(ctx.args.verbose))?;
    if let Some(r) = boot::failed_build(&done) {
        return Ok(Fetched::Refused(done.artifact.map(Box::new), Box::new(r)));
    }
    let b = done.build;
    match (b.state, done.artifact) {
        (BuildState::Succeeded, Some(man)) => Ok(Fetched::Artifact(Box::new(man))),
        (BuildState::NotApplicable, _) => Ok(Fetched::NotApplicable(
            b.failure.map(|f| f.message).unwrap_or_default(),
        )),
        _ => Err(SyncError::Build(Box::new(BuildFailed::from_record(b)))),
    }
}

/// True when the state records this very artifact and every file is on disk with
/// its recorded sha256 (nothing to download). The state file is only ever
/// replaced whole, so reading it without the lock sees one state or the next.
fn already_installed(
    host: &Host,
    m: &WantedModule,
    k: &KernelRelease,
    manifest: &Manifest,
) -> Result<bool, SyncError> {
    let Some(rec) = host.installed(&m.name, &m.version, k)? else {
        return Ok(false);
    };
    if rec.artifact_key != manifest.key.as_str() {
        return Ok(false);
    }
    Ok(rec.files.iter().all(|(_, sha, path)| {
        std::fs::read(path).is_ok_and(|bytes| hex::encode(Sha256::digest(&bytes)) == *sha)
    }))
}
