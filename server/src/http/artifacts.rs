//! Artifact downloads: manifest, single `.ko` files, a tar of all of them, blobs.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kmodforge_api::names::Arch;
use kmodforge_api::wire::Manifest;
use serde::Deserialize;

use super::{kernel, module_id, AppError, AppState};
use crate::flat_tar::flat_tar;
use crate::metrics::Served;
use crate::store::Store;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ArchQuery {
    /// The architecture (default: the server's, `x86_64`).
    #[param(value_type = Option<kmodforge_api::names::Arch>)]
    arch: Option<String>,
}

fn arch(q: &ArchQuery) -> Result<Arch, AppError> {
    match &q.arch {
        None => Ok(Arch::host_default()),
        Some(a) => Arch::parse(a).map_err(|e| AppError::InvalidName {
            what: "arch",
            reason: e.to_string(),
        }),
    }
}

/// The newest manifest for (name, version, kernel, arch).
async fn find(
    s: &AppState,
    name: &str,
    version: &str,
    krel: &str,
    q: &ArchQuery,
) -> Result<Manifest, AppError> {
    let (name, version) = module_id(name, version)?;
    let kernel = kernel(krel)?;
    let arch = arch(q)?;
    let found = s
        .store
        .records
        .latest_artifact(&name, &version, &kernel, &arch)
        .await
        .map_err(AppError::from)?;
    found.ok_or_else(|| {
        AppError::NotFound(format!(
            "no artifact for {name}/{version} on kernel {kernel} ({arch}); POST /v1/builds to build it"
        ))
    })
}

#[utoipa::path(get, path = "/v1/artifacts/{name}/{version}/{krel}", tag = "artifacts",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name", example = "v4l2loopback"), ("version" = kmodforge_api::names::ModuleVersion, Path, description = "Module version", example = "0.12.7"), ("krel" = kmodforge_api::names::KernelRelease, Path, description = "Kernel release (`uname -r`)", example = "6.1.0-47-amd64"), ArchQuery),
    responses((status = 200, description = "The newest artifact's manifest", body = Manifest)))]
pub(super) async fn manifest(
    State(s): State<AppState>,
    Path((name, version, krel)): Path<(String, String, String)>,
    Query(q): Query<ArchQuery>,
) -> Result<Response, AppError> {
    Ok(Json(find(&s, &name, &version, &krel, &q).await?).into_response())
}

async fn read_blob(store: &Store, sha256: &str) -> Result<bytes::Bytes, AppError> {
    store.objects.get_blob(sha256).await?.ok_or_else(|| {
        AppError::Internal(format!("blob {sha256} referenced by a manifest is missing"))
    })
}

#[utoipa::path(get, path = "/v1/artifacts/{name}/{version}/{krel}/files/{file}", tag = "artifacts",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name", example = "v4l2loopback"), ("version" = kmodforge_api::names::ModuleVersion, Path, description = "Module version", example = "0.12.7"), ("krel" = kmodforge_api::names::KernelRelease, Path, description = "Kernel release (`uname -r`)", example = "6.1.0-47-amd64"), ("file" = String, Path, description = "A `.ko` file name of the manifest"), ArchQuery),
    responses(
        (status = 200, description = "The module file", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 307, description = "Redirect to a presigned object-store URL (when the server presigns)"),
    ))]
pub(super) async fn file(
    State(s): State<AppState>,
    Path((name, version, krel, file)): Path<(String, String, String, String)>,
    Query(q): Query<ArchQuery>,
) -> Result<Response, AppError> {
    let m = find(&s, &name, &version, &krel, &q).await?;
    let f = m.files.iter().find(|f| f.file == file).ok_or_else(|| {
        AppError::NotFound(format!(
            "artifact {name}/{version}/{krel} has no file {file}"
        ))
    })?;
    if let Some(to) = presigned(&s, &f.sha256).await? {
        return Ok(to);
    }
    let bytes = read_blob(&s.store, &f.sha256).await?;
    s.metrics.artifact_served(Served::File, bytes.len());
    Ok(octets(bytes, &f.file).into_response())
}

/// With `--presign-downloads-secs`: a 307 to a short-lived URL of the object store,
/// so that a fleet's downloads go there, not through the server. The client still
/// checks the bytes against the signed manifest's sha256.
async fn presigned(s: &AppState, sha256: &str) -> Result<Option<Response>, AppError> {
    let Some(valid_for) = s.presign else {
        return Ok(None);
    };
    let Some(url) = s
        .store
        .objects
        .presigned_blob_url(sha256, valid_for)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(
        (
            axum::http::StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, url),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
        )
            .into_response(),
    ))
}

fn octets(bytes: bytes::Bytes, file: &str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        bytes,
    )
}

/// A tar of the manifest's `.ko` files (flat names) plus `manifest.json`.
pub(crate) async fn modules_tar(store: &Store, m: &Manifest) -> Result<Vec<u8>, AppError> {
    let mut files = Vec::with_capacity(m.files.len() + 1);
    for f in &m.files {
        files.push((f.file.as_str(), read_blob(store, &f.sha256).await?));
    }
    let json = serde_json::to_vec_pretty(m).map_err(|e| AppError::Internal(e.to_string()))?;
    files.push(("manifest.json", json.into()));
    flat_tar(files.iter().map(|(name, data)| (*name, 0o644, &data[..])))
        .map_err(|e| AppError::Internal(format!("building tar: {e}")))
}

#[utoipa::path(get, path = "/v1/artifacts/{name}/{version}/{krel}/modules.tar", tag = "artifacts",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name", example = "v4l2loopback"), ("version" = kmodforge_api::names::ModuleVersion, Path, description = "Module version", example = "0.12.7"), ("krel" = kmodforge_api::names::KernelRelease, Path, description = "Kernel release (`uname -r`)", example = "6.1.0-47-amd64"), ArchQuery),
    responses((status = 200, description = "The modules and `manifest.json` as a tar", body = Vec<u8>, content_type = "application/x-tar")))]
pub(super) async fn tarball(
    State(s): State<AppState>,
    Path((name, version, krel)): Path<(String, String, String)>,
    Query(q): Query<ArchQuery>,
) -> Result<Response, AppError> {
    let m = find(&s, &name, &version, &krel, &q).await?;
    let tar = modules_tar(&s.store, &m).await?;
    s.metrics.artifact_served(Served::Tar, tar.len());
    let file = format!("{}-{}-{}.tar", m.name, m.version, m.kernel);
    Ok(tar_response(tar, &file))
}

pub(crate) fn tar_response(tar: Vec<u8>, file: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        tar,
    )
        .into_response()
}

pub(super) async fn blob_by_hash(s: &AppState, sha256: &str) -> Result<Response, AppError> {
    if let Some(to) = presigned(s, sha256).await? {
        return Ok(to);
    }
    let bytes = s
        .store
        .objects
        .get_blob(sha256)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no blob {sha256}")))?;
    s.metrics.artifact_served(Served::Blob, bytes.len());
    Ok(octets(bytes, sha256).into_response())
}

#[utoipa::path(get, path = "/v1/blobs/{sha256}", tag = "artifacts",
    params(("sha256" = String, Path, description = "The blob's sha256, lowercase hex", pattern = "^[0-9a-f]{64}$")),
    responses(
        (status = 200, description = "The blob", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 307, description = "Redirect to a presigned object-store URL (when the server presigns)"),
    ))]
pub(super) async fn blob(
    State(s): State<AppState>,
    Path(sha256): Path<String>,
) -> Result<Response, AppError> {
    blob_by_hash(&s, &sha256).await
}
