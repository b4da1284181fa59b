//! Every refusal is the documented JSON. axum's extractors answer their own
//! rejections (a query string or path parameter that does not parse, a body over
//! [`DefaultBodyLimit`](axum::extract::DefaultBodyLimit)) in plain text; this layer,
//! around the whole router, turns any error answer that is not JSON into an
//! [`ErrorBody`](kmodforge_api::wire::ErrorBody) keeping axum's status and its
//! one-line reason. No handler can leak a plain-text refusal, whatever extractor
//! it uses.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kmodforge_api::wire::ErrorKind;

use super::error::Rejection;
use super::AppError;

/// The most of a plain-text rejection's body read for its message, in bytes
/// (axum's are one short line).
const MAX_REASON_BYTES: usize = 1024;

pub(super) async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let reason = axum::body::to_bytes(resp.into_body(), MAX_REASON_BYTES)
        .await
        .unwrap_or_default();
    let reason = String::from_utf8_lossy(&reason);
    let message = match reason.lines().next().map(str::trim) {
        Some(line) if !line.is_empty() => line.to_string(),
        _ => status.canonical_reason().unwrap_or("refused").to_string(),
    };
    AppError::Rejected(Rejection {
        status,
        kind: kind_of(status),
        message,
    })
    .into_response()
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The kind of a refusal by its status.
fn kind_of(status: StatusCode) -> ErrorKind {
    match status {
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorKind::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
        StatusCode::FORBIDDEN => ErrorKind::Forbidden,
        s if s.is_server_error() => ErrorKind::Internal,
        _ => ErrorKind::InvalidRequest,
    }
}
