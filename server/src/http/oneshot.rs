//! `POST /v1/build?kernel=KREL`: the curl one-shot. Adds the source, builds it,
//! waits, and answers with the modules as a tar (or a JSON error with the log tail).

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use kmodforge_api::archive::ingest;
use kmodforge_api::auth::Scope;
use kmodforge_api::dkms::{is_placeholder, scan_declared};
use kmodforge_api::wire::{BuildRequest, BuildState, FailureKind};
use serde::Deserialize;

use super::artifacts::{modules_tar, tar_response};
use super::{kernel, module_id, AppError, AppState};
use crate::auth::Caller;
use crate::sources::{AddSource, SourceError};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct OneShot {
    /// The kernel release to build for (required).
    #[param(value_type = kmodforge_api::names::KernelRelease, required = true)]
    kernel: Option<String>,
    /// Module name and version; default: dkms.conf's PACKAGE_NAME/PACKAGE_VERSION.
    #[param(value_type = Option<kmodforge_api::names::ModuleName>)]
    name: Option<String>,
    #[param(value_type = Option<kmodforge_api::names::ModuleVersion>)]
    version: Option<String>,
    /// Boot-check the modules before answering (default: the server's).
    boot_check: Option<bool>,
    /// Sign the modules (default: the server's).
    sign: Option<bool>,
}

/// Adds, builds and answers the modules. The token must be allowed to publish the
/// module: checked before the body is read when the query names it, else once
/// dkms.conf has.
#[utoipa::path(post, path = "/v1/build", tag = "builds", params(OneShot),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "tar or tar.gz of the source tree"),
    responses(
        (status = 200, description = "The modules and `manifest.json` as a tar", body = Vec<u8>, content_type = "application/x-tar"),
        (status = 404, description = "No headers exist for the kernel (`unknown_kernel`)", body = kmodforge_api::wire::ErrorBody),
        (status = 409, description = "Other content under this name and version", body = kmodforge_api::wire::ErrorBody),
        (status = 422, description = "The build failed: `kind` is its failure kind, with `log_tail` and `build_id`", body = kmodforge_api::wire::ErrorBody),
        (status = 502, description = "The service failed (`infrastructure`)", body = kmodforge_api::wire::ErrorBody),
        (status = 504, description = "Still building after the server's wait (`wait_timeout`, `build_id`)", body = kmodforge_api::wire::ErrorBody),
    ))]
pub(super) async fn build(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<OneShot>,
    body: Body,
) -> Result<Response, AppError> {
    let krel = q
        .kernel
        .as_deref()
        .ok_or_else(|| AppError::BadRequest("missing query parameter kernel=KREL".into()))?;
    let kernel = kernel(krel)?;
    if let Some(n) = &q.name {
        let (name, _) = module_id(n, q.version.as_deref().unwrap_or("0"))?;
        may_publish(&s, &caller, &name, None).await?;
    }
    let body = read_body(&s, body).await?;
    let (name, version) = name_and_version(&s, &q, &body).await?;
    may_publish(&s, &caller, &name, Some(&version)).await?;
    let add = AddSource {
        name: name.clone(),
        version: version.clone(),
        body,
        replace: false,
    };
    s.sources.add(add, &caller).await?;
    let req = BuildRequest {
        name,
        version,
        kernel,
        arch: None,
        options: Default::default(),
        boot_check: q.boot_check,
        sign: q.sign,
    };
    let submitted = s.builds.submit(req).await?;
    let done = match submitted.job {
        None => submitted.response,
        Some(job) => tokio::time::timeout(s.oneshot_wait, job.wait())
            .await
            .map_err(|_| AppError::WaitTimeout(job.id.clone()))?,
    };
    match (done.build.state, done.artifact, done.build.failure) {
        (BuildState::Succeeded, Some(m), _) => {
            let tar = modules_tar(&s.store, &m).await?;
            s.metrics
                .artifact_served(crate::metrics::Served::Tar, tar.len());
            Ok(tar_response(
                tar,
                &format!("{}-{}-{}.tar", m.name, m.version, m.kernel),
            ))
        }
        (_, _, Some(failure)) => Err(AppError::BuildFailed {
            failure,
            build_id: done.build.id,
        }),
        (state, _, None) => Err(AppError::BuildFailed {
            failure: kmodforge_api::wire::Failure {
                kind: FailureKind::Infrastructure,
                message: format!("build {} ended in state {}", done.build.id, state.as_str()),
                log_tail: String::new(),
            },
            build_id: done.build.id,
        }),
    }
}

/// Refuses (and audits) a one-shot for a module the token may not publish.
async fn may_publish(
    s: &AppState,
    caller: &Caller,
    name: &kmodforge_api::names::ModuleName,
    version: Option<&kmodforge_api::names::ModuleVersion>,
) -> Result<(), AppError> {
    let Err(denied) = caller.require_module(Scope::Publish, name) else {
        return Ok(());
    };
    let change = crate::auth::audit::ModuleChange {
        action: kmodforge_api::auth::AuditAction::ModuleAdd,
        outcome: kmodforge_api::auth::AuditOutcome::Refused,
        module: name,
        version,
        digest: None,
        detail: format!("one-shot build: {denied}"),
    };
    s.audit
        .module(caller, change)
        .await
        .map_err(AppError::from)?;
    Err(denied.into())
}

/// The upload, at most the archive size limit (413 beyond it).
async fn read_body(s: &AppState, body: Body) -> Result<Bytes, AppError> {
    let limit = s.sources.limits().max_input_bytes;
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, limit_usize)
        .await
        .map_err(|e| match std::error::Error::source(&e) {
            Some(inner) if inner.is::<http_body_util::LengthLimitError>() => {
                AppError::TooLarge(limit)
            }
            _ => AppError::BadRequest(format!("reading the upload: {e}")),
        })
}

/// Name and version from the query, else from dkms.conf's plain assignments.
async fn name_and_version(
    s: &AppState,
    q: &OneShot,
    body: &Bytes,
) -> Result<
    (
        kmodforge_api::names::ModuleName,
        kmodforge_api::names::ModuleVersion,
    ),
    AppError,
> {
    if let (Some(n), Some(v)) = (&q.name, &q.version) {
        return module_id(n, v);
    }
    let limits = *s.sources.limits();
    let body = body.clone();
    let tree = tokio::task::spawn_blocking(move || ingest(&body, &limits))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(SourceError::from)?;
    let declared = scan_declared(&tree.dkms_conf);
    let placeholder = |directive, value: &Option<String>, param| match value {
        Some(v) if is_placeholder(v) => Err(AppError::Placeholder {
            directive,
            value: v.clone(),
            param,
        }),
        _ => Ok(()),
    };
    if q.name.is_none() {
        placeholder("PACKAGE_NAME", &declared.package_name, "name")?;
    }
    if q.version.is_none() {
        placeholder("PACKAGE_VERSION", &declared.package_version, "version")?;
    }
    let name = q.name.clone().or(declared.package_name);
    let version = q.version.clone().or(declared.package_version);
    match (name, version) {
        (Some(n), Some(v)) => module_id(&n, &v),
        _ => Err(AppError::BadRequest(
            "dkms.conf has no plain PACKAGE_NAME/PACKAGE_VERSION assignment: pass name= and version= in the query".into(),
        )),
    }
}
