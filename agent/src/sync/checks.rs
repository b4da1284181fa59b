//! What an artifact must pass before it is downloaded: the signed manifest
//! (`trusted_keys`) and, on a host that enforces module signatures, a signing key
//! that this host has enrolled.

use kmodforge_agent::host::secureboot::{self, Enrolled, SigState};
use kmodforge_agent::host::HostError;
use kmodforge_api::names::{Arch, KernelRelease};
use kmodforge_api::wire::{Manifest, ModuleSigning};
use sha2::{Digest, Sha256};

use super::{Ctx, SyncError};
use crate::config::WantedModule;

/// With `trusted_keys`: the manifest is signed by one of them and is about this
/// module, version, kernel and arch; returns the key. `None` when no key is pinned.
pub(super) fn trusted(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
    manifest: &Manifest,
) -> Result<Option<String>, SyncError> {
    let keys = &ctx.cfg.trusted_keys;
    if keys.is_empty() {
        return Ok(None);
    }
    keys.verify(manifest, &m.name, &m.version, k, &Arch::host_default())
        .map(|(key, _)| Some(key))
        .map_err(|e| SyncError::Untrusted(e.to_string()))
}

/// On a host that enforces module signatures: the modules must be signed by a key
/// this host has enrolled, else they would not load after the next reboot.
pub(super) fn loadable_here(ctx: &Ctx, manifest: &Manifest) -> Result<(), SyncError> {
    let Some(state) = ctx.sig.as_ref().filter(|s| s.enforces()) else {
        return Ok(());
    };
    let signing = manifest.module_signing.clone().unwrap_or_default();
    let (true, Some(sha)) = (signing.signed, signing.certificate_sha256.clone()) else {
        return Err(SyncError::NotEnrolled(format!(
            "this host enforces module signatures ({}) and the artifact is unsigned: it would not load \
             (Key was rejected by service); have the server sign it (its default, or \"sign\": true)",
            state.why()
        )));
    };
    if let Some(verdict) = ctx.enrolment.borrow().get(&sha) {
        return verdict.clone().map_err(SyncError::NotEnrolled);
    }
    let verdict = enrolment(ctx, state, &signing, &sha)?;
    ctx.enrolment.borrow_mut().insert(sha, verdict.clone());
    verdict.map_err(SyncError::NotEnrolled)
}

/// Whether the certificate `sha` is enrolled (mokutil), as a verdict for every
/// artifact signed with it.
fn enrolment(
    ctx: &Ctx,
    state: &SigState,
    signing: &ModuleSigning,
    sha: &str,
) -> Result<Result<(), String>, SyncError> {
    let der = ctx.client.module_certificate(sha)?;
    if hex::encode(Sha256::digest(&der)) != sha {
        return Err(SyncError::Untrusted(format!(
            "the server's module-signing certificate {sha} does not have that sha256"
        )));
    }
    let path = secureboot::cert_path(&ctx.cfg.paths, sha);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| HostError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    std::fs::write(&path, &der).map_err(|e| HostError::Io {
        path: path.clone(),
        source: e,
    })?;
    let who = format!(
        "the server's module-signing key ({}, serial {}, certificate sha256 {sha})",
        signing.signer.as_deref().unwrap_or("?"),
        signing.key_id.as_deref().unwrap_or("?")
    );
    Ok(match secureboot::test_key(&ctx.cfg.paths.mokutil, &path) {
        Enrolled::Yes => Ok(()),
        Enrolled::No => Err(format!(
            "this host enforces module signatures ({}) and {who} is not enrolled: its modules would \
             not load (Key was rejected by service). Enrol it with `kmodforge-agent mok enroll`, then \
             reboot and confirm the enrolment in the MOK manager",
            state.why()
        )),
        Enrolled::Unknown(why) => Err(format!(
            "this host enforces module signatures ({}) and cannot tell whether {who} is enrolled ({why}); \
             enrol it with `kmodforge-agent mok enroll`, or set secure_boot_check = false if this kernel \
             trusts the key by other means",
            state.why()
        )),
    })
}
