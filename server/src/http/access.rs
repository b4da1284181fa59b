//! `/v1/tokens` and `/v1/audit` (admin): create, list and revoke tokens; read the
//! audit log.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kmodforge_api::auth::CreateTokenRequest;
use kmodforge_api::names::{ModuleName, TokenName};
use serde::Deserialize;

use super::{json_body, AppError, AppState};
use crate::auth::Caller;
use crate::store::AuditQuery;

/// `POST /v1/tokens` `{name, scope, modules?}`: 201 with the token, shown once.
#[utoipa::path(post, path = "/v1/tokens", tag = "access",
    request_body(content = CreateTokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The token, its secret shown this once", body = kmodforge_api::auth::CreatedToken),
        (status = 409, description = "A token of that name exists (`conflict`)", body = kmodforge_api::wire::ErrorBody),
    ))]
pub(super) async fn create_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, AppError> {
    let req: CreateTokenRequest = json_body(&body)?;
    let created = s.tokens.create(req, &caller).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(get, path = "/v1/tokens", tag = "access",
    responses((status = 200, description = "Every token (never a secret)", body = Vec<kmodforge_api::auth::TokenInfo>)))]
pub(super) async fn list_tokens(State(s): State<AppState>) -> Result<Response, AppError> {
    Ok(Json(s.tokens.list().await?).into_response())
}

/// `DELETE /v1/tokens/{token}`: revoked from the next request on; answers the
/// token's record.
#[utoipa::path(delete, path = "/v1/tokens/{token}", tag = "access",
    params(("token" = kmodforge_api::names::TokenName, Path, description = "The token's name", example = "ci-realtek")),
    responses((status = 200, description = "The revoked token", body = kmodforge_api::auth::TokenInfo)))]
pub(super) async fn revoke_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let name = TokenName::parse(&name).map_err(|e| AppError::InvalidName {
        what: "token name",
        reason: e.to_string(),
    })?;
    Ok(Json(s.tokens.revoke(&name, &caller).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditParams {
    /// Most entries to answer (default 100, at most 1000).
    limit: Option<u32>,
    /// Only entries about this module.
    #[param(value_type = Option<kmodforge_api::names::ModuleName>)]
    module: Option<String>,
    /// Only entries older than this `seq` (the next page).
    before: Option<u64>,
}

/// `GET /v1/audit`: newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "access", params(AuditParams),
    responses((status = 200, description = "Audit entries, newest first", body = Vec<kmodforge_api::auth::AuditEntry>)))]
pub(super) async fn audit_log(
    State(s): State<AppState>,
    Query(p): Query<AuditParams>,
) -> Result<Response, AppError> {
    let module = match p.module.as_deref() {
        None => None,
        Some(m) => Some(ModuleName::parse(m).map_err(|e| AppError::InvalidName {
            what: "module name",
            reason: e.to_string(),
        })?),
    };
    let q = AuditQuery {
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
        module,
        before: p.before,
    };
    let entries = s.audit.list(&q).await.map_err(AppError::from)?;
    Ok(Json(entries).into_response())
}
