//! The server's public keys, served without a token: the module-signing
//! certificate (what hosts enrol or trust) and the manifest key (what agents pin).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{AppError, AppState};
use crate::keys::CertificateError;

/// Every key the server signs or signed with, the current one of each purpose marked.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "Public keys", body = Vec<kmodforge_api::wire::PublicKey>)))]
pub(super) async fn list(State(s): State<AppState>) -> Result<Response, AppError> {
    let keys = s
        .store
        .records
        .list_public_keys()
        .await
        .map_err(AppError::from)?;
    Ok(Json(keys).into_response())
}

/// The current module-signing certificate, DER (`mokutil --import` takes it as is).
#[utoipa::path(get, path = "/v1/keys/module-signing.der", tag = "keys",
    responses((status = 200, description = "The module-signing certificate (DER)", body = Vec<u8>, content_type = "application/pkix-cert")))]
pub(super) async fn module_der(State(s): State<AppState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/pkix-cert"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"kmodforge-module-signing.der\"",
            ),
        ],
        s.keys.module_cert_der().to_vec(),
    )
        .into_response()
}

/// The current module-signing certificate, PEM.
#[utoipa::path(get, path = "/v1/keys/module-signing.pem", tag = "keys",
    responses((status = 200, description = "The module-signing certificate (PEM)", body = String, content_type = "application/x-pem-file")))]
pub(super) async fn module_pem(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        s.keys.module_cert_pem().to_vec(),
    )
        .into_response()
}

/// The current manifest key, `ed25519:<hex>` and a newline (an agent's `trusted_keys` entry).
#[utoipa::path(get, path = "/v1/keys/manifest.pub", tag = "keys",
    responses((status = 200, description = "The manifest key, `ed25519:<hex>`", body = String, content_type = "text/plain")))]
pub(super) async fn manifest_pub(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", s.keys.manifest_public()),
    )
        .into_response()
}

/// A module-signing certificate by its sha256 (DER): the current one or an
/// earlier one, for artifacts signed before a key change.
#[utoipa::path(get, path = "/v1/keys/module-signing/{sha256}", tag = "keys",
    params(("sha256" = String, Path, description = "The certificate's sha256, lowercase hex", pattern = "^[0-9a-f]{64}$")),
    responses((status = 200, description = "That certificate (DER)", body = Vec<u8>, content_type = "application/pkix-cert")))]
pub(super) async fn module_by_sha(
    State(s): State<AppState>,
    axum::extract::Path(sha256): axum::extract::Path<String>,
) -> Result<Response, AppError> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(AppError::BadRequest(format!("invalid sha256 {sha256:?}")));
    }
    let (der, _) = s
        .keys
        .certificate(&sha256, &*s.store.records)
        .await
        .map_err(|e| match e {
            CertificateError::Unknown(_) => AppError::NotFound(e.to_string()),
            CertificateError::Records(r) => AppError::from(r),
            CertificateError::Unreadable { .. } => AppError::Internal(e.to_string()),
        })?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response())
}
