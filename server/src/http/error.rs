//! One error type for every handler, mapped to a status code and a JSON body in
//! one place. 5xx bodies stay generic where the cause is internal; the cause is
//! logged.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kmodforge_api::wire::{ErrorBody, ErrorDetail, Failure, FailureKind};

use crate::auth::{Denied, TokenError};
use crate::builds::BuildError;
use crate::images::ImageError;
use crate::sources::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{what}: {reason}")]
    InvalidName { what: &'static str, reason: String },
    /// Module settings that do not validate; the message names the field.
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A build that ended without modules (one-shot endpoint).
    #[error("{}", .failure.message)]
    BuildFailed { failure: Failure, build_id: String },
    #[error("timed out waiting for build {0}")]
    WaitTimeout(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// No valid token (401) or a token without the right (403).
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// An upstream (the Debian archive) failed.
    #[error("{0}")]
    BadGateway(String),
    #[error("the upload is over the {0}-byte limit")]
    TooLarge(u64),
    #[error("method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    /// The database or the object store cannot be reached: retry later (503).
    #[error("{0}")]
    StoreUnavailable(String),
    /// The data directory's disk is full: nothing was stored; retry once space is
    /// freed (507). The message names the store.
    #[error("{0}")]
    InsufficientStorage(String),
}

impl From<crate::store::BlobError> for AppError {
    fn from(e: crate::store::BlobError) -> Self {
        match e {
            crate::store::BlobError::BadAddress(a) => {
                AppError::BadRequest(format!("invalid address {a:?}"))
            }
            e @ crate::store::BlobError::Unavailable { .. } => {
                AppError::StoreUnavailable(e.to_string())
            }
            e @ crate::store::BlobError::Full { .. } => {
                AppError::InsufficientStorage(e.to_string())
            }
        }
    }
}

impl From<crate::store::RecordsError> for AppError {
    fn from(e: crate::store::RecordsError) -> Self {
        if e.is_disk_full() {
            AppError::InsufficientStorage(format!("the records' disk is full: {e}"))
        } else if e.is_unavailable() {
            AppError::StoreUnavailable(e.to_string())
        } else {
            AppError::Internal(e.to_string())
        }
    }
}

/// The message of a store that cannot be reached, wherever it sits in `e`.
fn unavailable(e: &AppError) -> Option<String> {
    use crate::store::{BlobError, RecordsError};
    let records = |r: &RecordsError| r.is_unavailable().then(|| r.to_string());
    let blobs = |b: &BlobError| matches!(b, BlobError::Unavailable { .. }).then(|| b.to_string());
    match e {
        AppError::StoreUnavailable(m) => Some(m.clone()),
        AppError::Build(BuildError::Records(r)) => records(r),
        AppError::Source(SourceError::Records(r)) => records(r),
        AppError::Source(SourceError::Blob(b)) => blobs(b),
        AppError::Token(TokenError::Records(r)) => records(r),
        _ => None,
    }
}

/// The message of a store whose disk is full, wherever it sits in `e`.
fn full(e: &AppError) -> Option<String> {
    use crate::store::{BlobError, RecordsError};
    let records = |r: &RecordsError| {
        r.is_disk_full()
            .then(|| format!("the records' disk is full: {r}"))
    };
    let blobs = |b: &BlobError| matches!(b, BlobError::Full { .. }).then(|| b.to_string());
    match e {
        AppError::InsufficientStorage(m) => Some(m.clone()),
        AppError::Build(BuildError::Records(r)) => records(r),
        AppError::Source(SourceError::Records(r)) => records(r),
        AppError::Source(SourceError::Blob(b)) => blobs(b),
        AppError::Token(TokenError::Records(r)) => records(r),
        _ => None,
    }
}

impl AppError {
    fn status_and_kind(&self) -> (StatusCode, String) {
        use AppError as E;
        let s = |code, kind: &str| (code, kind.to_string());
        if full(self).is_some() {
            return s(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage");
        }
        if unavailable(self).is_some() {
            return s(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        }
        match self {
            E::BadRequest(_) => s(StatusCode::BAD_REQUEST, "invalid_request"),
            E::InvalidName { .. } => s(StatusCode::BAD_REQUEST, "invalid_name"),
            E::InvalidSettings(_) => s(StatusCode::BAD_REQUEST, "invalid_settings"),
            E::NotFound(_) => s(StatusCode::NOT_FOUND, "not_found"),
            E::Source(e) => source_status(e),
            E::Build(e) => match e {
                BuildError::UnknownModule { .. } => s(StatusCode::NOT_FOUND, "unknown_module"),
                BuildError::UnsupportedArch { .. } => {
                    s(StatusCode::BAD_REQUEST, "unsupported_arch")
                }
                BuildError::NotFound(_) => s(StatusCode::NOT_FOUND, "not_found"),
                BuildError::Records(_) | BuildError::Settings(_) => {
                    s(StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            E::Image(e) => match e {
                ImageError::UnknownKernel { .. } => s(StatusCode::NOT_FOUND, e.kind()),
                ImageError::UnsupportedKernel(_) => s(StatusCode::BAD_REQUEST, e.kind()),
                _ => s(StatusCode::BAD_GATEWAY, e.kind()),
            },
            E::BuildFailed { failure, .. } => {
                let code = match failure.kind {
                    FailureKind::Infrastructure => StatusCode::BAD_GATEWAY,
                    FailureKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
                    FailureKind::UnknownKernel => StatusCode::NOT_FOUND,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                (code, failure.kind.as_str().to_string())
            }
            E::WaitTimeout(_) => s(StatusCode::GATEWAY_TIMEOUT, "wait_timeout"),
            E::Denied(d) if d.is_unauthenticated() => s(StatusCode::UNAUTHORIZED, "unauthorized"),
            E::Denied(_) => s(StatusCode::FORBIDDEN, "forbidden"),
            E::Token(t) => match t {
                TokenError::Invalid(_) => s(StatusCode::BAD_REQUEST, "invalid_request"),
                TokenError::Exists(_) => s(StatusCode::CONFLICT, "conflict"),
                TokenError::Unknown(_) => s(StatusCode::NOT_FOUND, "not_found"),
                _ => s(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            E::TooLarge(_) => s(StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            E::BadGateway(_) => s(StatusCode::BAD_GATEWAY, "upstream"),
            E::MethodNotAllowed(_) => s(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            E::Internal(_) => s(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            E::StoreUnavailable(_) => s(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            E::InsufficientStorage(_) => {
                s(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
        }
    }
}

fn source_status(e: &SourceError) -> (StatusCode, String) {
    match e {
        SourceError::Archive(a) => {
            let code = if a.kind() == "too_large" {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            (code, a.kind().to_string())
        }
        SourceError::Conflict { .. } => (StatusCode::CONFLICT, "conflict".into()),
        SourceError::Immutable { .. } => (StatusCode::CONFLICT, "immutable_version".into()),
        SourceError::Denied(d) if d.is_unauthenticated() => {
            (StatusCode::UNAUTHORIZED, "unauthorized".into())
        }
        SourceError::Denied(_) => (StatusCode::FORBIDDEN, "forbidden".into()),
        SourceError::Busy { .. } => (StatusCode::CONFLICT, "busy".into()),
        SourceError::NotFound { .. } => (StatusCode::NOT_FOUND, "unknown_module".into()),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal".into()),
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        let internal = status == StatusCode::INTERNAL_SERVER_ERROR;
        if internal {
            tracing::error!(error = %self, "request failed");
        }
        let message = if internal {
            "internal server error (see the server log)".to_string()
        } else if let Some(m) = full(&self) {
            tracing::error!(error = %m, "request failed: store full");
            m
        } else if let Some(m) = unavailable(&self) {
            tracing::error!(error = %m, "request failed: store unavailable");
            m
        } else {
            self.to_string()
        };
        let scope = match &self {
            AppError::Denied(d) | AppError::Source(SourceError::Denied(d)) => d.needed(),
            _ => None,
        };
        let (log_tail, build_id) = match self {
            AppError::BuildFailed { failure, build_id } => (Some(failure.log_tail), Some(build_id)),
            AppError::Image(ImageError::Build { log_tail, .. }) => (Some(log_tail), None),
            _ => (None, None),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                kind,
                message,
                log_tail,
                build_id,
                scope,
            },
        };
        if status == StatusCode::UNAUTHORIZED {
            // Bearer for API clients; Basic so that a browser asks for the token (as the password).
            let mut resp = (status, Json(body)).into_response();
            let h = resp.headers_mut();
            h.append(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"kmodforge\""),
            );
            h.append(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"kmodforge\", charset=\"UTF-8\""),
            );
            return resp;
        }
        (status, Json(body)).into_response()
    }
}
