//! `PUT`/`GET`/`DELETE /v1/modules/{name}/settings`: a module's DKMS override
//! files, Debian build packages and BUILD_DEPENDS (see `kmodforge_api::settings`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kmodforge_api::auth::{AuditAction, AuditOutcome};
use kmodforge_api::names::ModuleName;
use kmodforge_api::settings::{ModuleSettings, SettingsRecord};

use super::{json_body, AppError, AppState};
use crate::auth::audit::ModuleChange;
use crate::auth::Caller;
use crate::builds::now_rfc3339;

fn module_name(name: &str) -> Result<ModuleName, AppError> {
    ModuleName::parse(name).map_err(|e| AppError::InvalidName {
        what: "module name",
        reason: e.to_string(),
    })
}

async fn audit(
    s: &AppState,
    by: &Caller,
    action: AuditAction,
    module: &ModuleName,
    detail: String,
) -> Result<(), AppError> {
    let change = ModuleChange {
        action,
        outcome: AuditOutcome::Done,
        module,
        version: None,
        digest: None,
        detail,
    };
    s.audit
        .module(by, change)
        .await
        .map(drop)
        .map_err(AppError::from)
}

/// Replaces the module's settings; answers them in canonical form.
#[utoipa::path(put, path = "/v1/modules/{name}/settings", tag = "modules",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name", example = "v4l2loopback")),
    request_body(content = ModuleSettings, content_type = "application/json"),
    responses((status = 200, description = "The settings as stored", body = SettingsRecord)))]
pub(super) async fn put(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let name = module_name(&name)?;
    let settings: ModuleSettings = json_body(&body)?;
    let settings = settings
        .validated(&name)
        .map_err(|e| AppError::InvalidSettings(e.to_string()))?;
    let record = SettingsRecord {
        name,
        settings,
        updated_at: Some(now_rfc3339()),
    };
    s.store
        .records
        .put_settings(&record)
        .await
        .map_err(AppError::from)?;
    let detail = serde_json::to_string(&record.settings).unwrap_or_default();
    let detail = format!(
        "settings set to {}",
        detail.chars().take(400).collect::<String>()
    );
    audit(&s, &caller, AuditAction::SettingsPut, &record.name, detail).await?;
    Ok(Json(record).into_response())
}

/// The module's settings; empty ones when none were set.
#[utoipa::path(get, path = "/v1/modules/{name}/settings", tag = "modules",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name", example = "v4l2loopback")),
    responses((status = 200, description = "The settings", body = SettingsRecord)))]
pub(super) async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let name = module_name(&name)?;
    let record = s
        .store
        .records
        .get_settings(&name)
        .await
        .map_err(AppError::from)?;
    Ok(Json(record.unwrap_or(SettingsRecord {
        name,
        settings: ModuleSettings::default(),
        updated_at: None,
    }))
    .into_response())
}

/// Deletes the module's settings (204 also when there were none).
#[utoipa::path(delete, path = "/v1/modules/{name}/settings", tag = "modules",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name", example = "v4l2loopback")),
    responses((status = 204, description = "Deleted")))]
pub(super) async fn delete(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let name = module_name(&name)?;
    if s.store
        .records
        .delete_settings(&name)
        .await
        .map_err(AppError::from)?
    {
        audit(
            &s,
            &caller,
            AuditAction::SettingsDelete,
            &name,
            "settings deleted".into(),
        )
        .await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
