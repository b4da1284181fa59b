//! Readiness at a glance: `GET /v1/matrix` (JSON), `GET /` (the same as a page for
//! people: plain HTML and CSS, refreshed by the browser every 15 s, no scripts),
//! `POST /v1/kernels/{krel}/prebuild` and `POST /v1/archive/scan`.

use std::fmt::Write;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kmodforge_api::wire::{CellState, Matrix, MatrixCell};

use super::{kernel, AppError, AppState};
use crate::matrix::matrix;

/// Readiness of every module version on every known kernel.
#[utoipa::path(get, path = "/v1/matrix", tag = "readiness",
    responses((status = 200, description = "The matrix", body = Matrix)))]
pub(super) async fn matrix_json(State(s): State<AppState>) -> Result<Response, AppError> {
    let m = matrix(&s.store).await.map_err(AppError::from)?;
    Ok(Json(m).into_response())
}

/// The matrix as a page for people (HTML, no scripts).
#[utoipa::path(get, path = "/", tag = "readiness",
    responses((status = 200, description = "The readiness page", body = String, content_type = "text/html")))]
pub(super) async fn page(State(s): State<AppState>) -> Result<Response, AppError> {
    let m = matrix(&s.store).await.map_err(AppError::from)?;
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render(&m),
    )
        .into_response())
}

/// `POST /v1/kernels/{krel}/prebuild`: the prebuild of every AUTOINSTALL module
/// (or the configured set), now, at background priority.
#[utoipa::path(post, path = "/v1/kernels/{krel}/prebuild", tag = "readiness",
    params(("krel" = kmodforge_api::names::KernelRelease, Path, description = "Kernel release (`uname -r`)", example = "6.1.0-47-amd64")),
    responses((status = 202, description = "The prebuild started", body = kmodforge_api::wire::Prebuild)))]
pub(super) async fn prebuild(
    State(s): State<AppState>,
    Path(krel): Path<String>,
) -> Result<Response, AppError> {
    let k = kernel(&krel)?;
    if k.debian_suite().is_none() {
        return Err(AppError::Image(
            crate::images::ImageError::UnsupportedKernel(k.to_string()),
        ));
    }
    let p = s
        .prebuilder
        .prebuild(&k, "requested")
        .await
        .map_err(AppError::from)?;
    Ok((StatusCode::ACCEPTED, Json(p)).into_response())
}

/// What a scan found.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Scanned {
    /// Kernels newly published, whose prebuilds started.
    prebuilding: Vec<kmodforge_api::names::KernelRelease>,
}

/// `POST /v1/archive/scan`: scan the watched archives now.
#[utoipa::path(post, path = "/v1/archive/scan", tag = "readiness",
    responses(
        (status = 200, description = "Scanned", body = Scanned),
        (status = 502, description = "An archive could not be read (`upstream`)", body = kmodforge_api::wire::ErrorBody),
    ))]
pub(super) async fn scan(State(s): State<AppState>) -> Result<Response, AppError> {
    let new = s
        .watcher
        .scan()
        .await
        .map_err(|e| AppError::BadGateway(e.to_string()))?;
    Ok(Json(Scanned { prebuilding: new }).into_response())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.35em .6em;vertical-align:top}\
th{background:#f3f3f3;text-align:left}td.ready{background:#e3f6e3}td.failed{background:#fbe2e2}\
td.building{background:#fff4cc}td.not_applicable{background:#eee;color:#666}td.missing{color:#999}\
.s{font-weight:600}.why{font-size:12px;max-width:28em}a{color:#0645ad}small{color:#666}";

/// The matrix as a page: kernels down, module versions across.
fn render(m: &Matrix) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"15\"><title>kmodforge: readiness</title>\
         <style>{STYLE}</style></head><body><h1>Module readiness</h1>\
         <p><small>Generated {} · refreshes every 15 s · <a href=\"/v1/matrix\">JSON</a></small></p>\
         <table id=\"matrix\"><thead><tr><th>kernel</th>",
        esc(&m.generated_at)
    );
    for md in &m.modules {
        let _ = write!(
            h,
            "<th>{} {}</th>",
            esc(md.name.as_str()),
            esc(md.version.as_str())
        );
    }
    h.push_str("</tr></thead><tbody>");
    let per_row = m.modules.len().max(1);
    for (i, k) in m.kernels.iter().enumerate() {
        let mut tags = Vec::new();
        if k.published {
            tags.push(format!(
                "published in {}",
                k.suite.as_deref().unwrap_or("?")
            ));
        }
        if k.requested {
            tags.push("requested".to_string());
        }
        if k.prebuild.as_ref().is_some_and(|p| !p.builds.is_empty()) {
            tags.push("prebuilt".to_string());
        }
        let _ = write!(
            h,
            "<tr><th data-kernel=\"{0}\">{0}<br><small>{1}</small></th>",
            esc(k.kernel.as_str()),
            esc(&tags.join(", "))
        );
        for c in m.cells.iter().skip(i * per_row).take(m.modules.len()) {
            h.push_str(&cell(c));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></body></html>\n");
    h
}

fn cell(c: &MatrixCell) -> String {
    let state = c.state.as_str();
    let mut body = format!("<span class=\"s\">{}</span>", state.replace('_', " "));
    if c.state == CellState::Ready {
        match &c.boot_check {
            Some(b) if b.passed && b.signature_enforced => {
                body.push_str(" · booted, signature enforced")
            }
            Some(b) if b.passed => body.push_str(" · booted"),
            Some(_) => body.push_str(" · boot check failed"),
            None => body.push_str(" · not booted"),
        }
    }
    if let Some(f) = &c.failure {
        let _ = write!(
            body,
            "<div class=\"why\">{}: {}</div>",
            f.kind.as_str(),
            esc(&f.message)
        );
    }
    if let Some(id) = &c.build_id {
        let _ = write!(
            body,
            "<div><a href=\"/v1/builds/{0}/log\">log</a> · <a href=\"/v1/builds/{0}\">build and boot check</a></div>",
            esc(id)
        );
    }
    format!(
        "<td class=\"{state}\" data-kernel=\"{}\" data-module=\"{}\" data-version=\"{}\" data-state=\"{state}\">{body}</td>",
        esc(c.kernel.as_str()),
        esc(c.name.as_str()),
        esc(c.version.as_str())
    )
}
