//! The apt repository over HTTP (see `crate::apt`): the signed indexes and the
//! packages under `/apt` (scope `read`; apt sends the token as HTTP Basic's
//! password from `/etc/apt/auth.conf.d`), the public key for `signed-by`, and
//! the administration of uploaded packages under `/v1/apt`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kmodforge_api::auth::AuditAction;
use kmodforge_api::wire::AptPackage;

use super::{AppError, AppState};
use crate::apt::{AptError, COMPONENT, SUITE};
use crate::auth::Caller;

impl From<AptError> for AppError {
    fn from(e: AptError) -> Self {
        match e {
            AptError::Records(e) => AppError::from(e),
            AptError::Blob(e) => AppError::from(e),
            AptError::BadUpload(m) => AppError::InvalidPackage(m),
            e @ (AptError::Deb { .. } | AptError::Sign(_) | AptError::MissingBlob { .. }) => {
                AppError::Internal(e.to_string())
            }
        }
    }
}

fn text(content_type: &'static str, body: impl Into<Bytes>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body.into(),
    )
        .into_response()
}

fn no_suite(suite: &str) -> AppError {
    AppError::NotFound(format!(
        "no suite {suite:?}: this repository has one, {SUITE} (deb ... /apt {SUITE} {COMPONENT})"
    ))
}

/// `InRelease`, `Release` or `Release.gpg` of the suite.
#[utoipa::path(get, path = "/apt/dists/{suite}/{file}", tag = "apt",
    params(("suite" = String, Path, description = "The suite", example = "kmodforge"),
           ("file" = String, Path, description = "`InRelease`, `Release` or `Release.gpg`", example = "InRelease")),
    responses((status = 200, description = "The signed index (InRelease: cleartext-signed; Release.gpg: the detached signature)",
        content((String = "text/plain"), (String = "application/pgp-signature")))))]
pub(super) async fn release(
    State(s): State<AppState>,
    Path((suite, file)): Path<(String, String)>,
) -> Result<Response, AppError> {
    if suite != SUITE {
        return Err(no_suite(&suite));
    }
    let snap = s.apt.snapshot().await?;
    Ok(match file.as_str() {
        "InRelease" => text("text/plain; charset=utf-8", snap.inrelease.clone()),
        "Release" => text("text/plain; charset=utf-8", snap.release.clone()),
        "Release.gpg" => text("application/pgp-signature", snap.release_gpg.clone()),
        _ => {
            return Err(AppError::NotFound(format!(
                "no file {file:?} in dists/{SUITE}: InRelease, Release, Release.gpg"
            )))
        }
    })
}

/// `Packages` or `Packages.gz` of an architecture.
#[utoipa::path(get, path = "/apt/dists/{suite}/{component}/{dir}/{file}", tag = "apt",
    params(("suite" = String, Path, description = "The suite", example = "kmodforge"),
           ("component" = String, Path, description = "The component", example = "main"),
           ("dir" = String, Path, description = "`binary-<Debian arch>`", example = "binary-amd64"),
           ("file" = String, Path, description = "`Packages` or `Packages.gz`", example = "Packages")),
    responses((status = 200, description = "The package index (Packages, or gzip-compressed Packages.gz)",
        content((String = "text/plain"), (Vec<u8> = "application/gzip")))))]
pub(super) async fn packages_index(
    State(s): State<AppState>,
    Path((suite, component, dir, file)): Path<(String, String, String, String)>,
) -> Result<Response, AppError> {
    if suite != SUITE {
        return Err(no_suite(&suite));
    }
    let snap = s.apt.snapshot().await?;
    let found = (component == COMPONENT)
        .then(|| snap.indexes.get(&dir))
        .flatten();
    let Some((plain, gz)) = found else {
        let have: Vec<&str> = snap.indexes.keys().map(|k| k.as_str()).collect();
        return Err(AppError::NotFound(format!(
            "no index {component}/{dir}: the repository has {COMPONENT}/{{{}}}",
            have.join(",")
        )));
    };
    Ok(match file.as_str() {
        "Packages" => text("text/plain; charset=utf-8", plain.clone()),
        "Packages.gz" => text("application/gzip", gz.clone()),
        _ => {
            return Err(AppError::NotFound(format!(
                "no file {file:?} in {component}/{dir}: Packages, Packages.gz"
            )))
        }
    })
}

/// A package file of the pool.
#[utoipa::path(get, path = "/apt/pool/{component}/{letter}/{package}/{file}", tag = "apt",
    params(("component" = String, Path, description = "The component", example = "main"),
           ("letter" = String, Path, description = "The package name's first letter", example = "r"),
           ("package" = String, Path, description = "The package name", example = "r8152-modules-6.1.0-47-amd64"),
           ("file" = String, Path, description = "`<package>_<version>_<arch>.deb`")),
    responses((status = 200, description = "The package", body = Vec<u8>, content_type = "application/vnd.debian.binary-package")))]
pub(super) async fn pool(
    State(s): State<AppState>,
    Path((component, letter, package, file)): Path<(String, String, String, String)>,
) -> Result<Response, AppError> {
    let filename = format!("pool/{component}/{letter}/{package}/{file}");
    let snap = s.apt.snapshot().await?;
    let p = snap.by_filename(&filename).ok_or_else(|| {
        AppError::NotFound(format!("no package file {filename} in the repository"))
    })?;
    let bytes = s.store.objects.get_blob(&p.sha256).await?.ok_or_else(|| {
        AppError::Internal(format!(
            "blob {} of package {filename} is missing",
            p.sha256
        ))
    })?;
    s.metrics
        .artifact_served(crate::metrics::Served::Blob, bytes.len());
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.debian.binary-package".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// The repository's OpenPGP public key, binary (a keyring file for `signed-by`).
#[utoipa::path(get, path = "/apt/kmodforge.gpg", tag = "apt",
    responses((status = 200, description = "The OpenPGP public key (binary); its fingerprint is listed by GET /v1/keys", body = Vec<u8>, content_type = "application/pgp-keys")))]
pub(super) async fn keyring(State(s): State<AppState>) -> Result<Response, AppError> {
    let ring = s
        .keys
        .apt()
        .public_keyring()
        .map_err(|e| AppError::Internal(format!("the apt repository key: {e}")))?;
    Ok(text("application/pgp-keys", ring))
}

/// The repository's OpenPGP public key, ASCII-armored.
#[utoipa::path(get, path = "/apt/kmodforge.asc", tag = "apt",
    responses((status = 200, description = "The OpenPGP public key (ASCII armor)", body = String, content_type = "application/pgp-keys")))]
pub(super) async fn keyring_asc(State(s): State<AppState>) -> Result<Response, AppError> {
    let asc = s
        .keys
        .apt()
        .public_armored()
        .map_err(|e| AppError::Internal(format!("the apt repository key: {e}")))?;
    Ok(text("application/pgp-keys", asc))
}

/// Every package of the repository.
#[utoipa::path(get, path = "/v1/apt/packages", tag = "apt",
    responses((status = 200, description = "The repository's packages", body = Vec<AptPackage>)))]
pub(super) async fn list(State(s): State<AppState>) -> Result<Response, AppError> {
    let snap = s.apt.snapshot().await?;
    Ok(Json(snap.packages.clone()).into_response())
}

/// Uploads a `.deb` of kmodforge's own (`kmodforge-*`, e.g. `kmodforge-agent`).
#[utoipa::path(put, path = "/v1/apt/packages", tag = "apt",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The .deb (any content type is accepted)"),
    responses(
        (status = 201, description = "Added (or replaced: the same name, version and architecture)", body = AptPackage),
        (status = 422, description = "Not a Debian package, or not one the repository takes (`invalid_package`)", body = kmodforge_api::wire::ErrorBody),
    ))]
pub(super) async fn upload(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, AppError> {
    if body.is_empty() {
        return Err(AppError::BadRequest(
            "empty body: send a .deb (curl -T kmodforge-agent_X_amd64.deb)".into(),
        ));
    }
    let p = s.apt.upload(body, &caller.actor).await?;
    let detail = format!(
        "{} {} {} ({} bytes, sha256 {})",
        p.package, p.version, p.architecture, p.size, p.sha256
    );
    s.audit
        .apt(&caller, AuditAction::AptUpload, &p.package, detail)
        .await?;
    Ok((StatusCode::CREATED, Json(p)).into_response())
}

/// Removes an uploaded package (a module's package goes with its artifact).
#[utoipa::path(delete, path = "/v1/apt/packages/{package}/{version}/{arch}", tag = "apt",
    params(("package" = String, Path, description = "The package name", example = "kmodforge-agent"),
           ("version" = String, Path, description = "The package version"),
           ("arch" = String, Path, description = "The Debian architecture", example = "amd64")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such package", body = kmodforge_api::wire::ErrorBody),
        (status = 422, description = "A module's package: it goes with its artifact (`invalid_package`)", body = kmodforge_api::wire::ErrorBody),
    ))]
pub(super) async fn delete(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((package, version, arch)): Path<(String, String, String)>,
) -> Result<Response, AppError> {
    let removed = s
        .apt
        .delete(&package, &version, &arch)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "no package {package} {version} {arch} in the repository"
            ))
        })?;
    let detail = format!(
        "{} {} {}",
        removed.package, removed.version, removed.architecture
    );
    s.audit
        .apt(&caller, AuditAction::AptDelete, &removed.package, detail)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
