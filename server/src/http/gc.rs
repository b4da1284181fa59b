//! `POST /v1/gc`: a garbage collection now (see `crate::gc`).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{AppError, AppState};
use crate::gc::GcError;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct GcQuery {
    /// Only report what would be removed.
    #[serde(default)]
    dry_run: bool,
}

/// Collects now and answers with what was freed (or, dry, what would be).
#[utoipa::path(post, path = "/v1/gc", tag = "retention", params(GcQuery),
    responses((status = 200, description = "What the collection removed (or, with dry_run, would remove)", body = crate::gc::GcReport)))]
pub(super) async fn collect(
    State(s): State<AppState>,
    Query(q): Query<GcQuery>,
) -> Result<Response, AppError> {
    let report = s.gc.run(q.dry_run).await.map_err(|e| match e {
        GcError::Records(e) => AppError::from(e),
        GcError::Objects(e) => AppError::from(e),
    })?;
    Ok(Json(report).into_response())
}
