//! One error type for every handler, mapped to a status code and a JSON body in
//! one place. 5xx bodies stay generic where the cause is internal; the cause is
//! logged.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kmodforge_api::wire::{ErrorBody, ErrorDetail, ErrorKind, Failure, FailureKind};

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
    /// dkms.conf names its package or version by a placeholder an install script
    /// fills in (`#MODULE_VERSION#`), and the request did not say the real one.
    #[error("dkms.conf's {directive} is the placeholder {value}: pass the {param} with ?{param}=X or replace it in dkms.conf")]
    Placeholder {
        directive: &'static str,
        value: String,
        /// The query parameter that says the real value.
        param: &'static str,
    },
    /// The data directory's disk is full: nothing was stored; retry once space is
    /// freed (507). The message names the store.
    #[error("{0}")]
    InsufficientStorage(String),
    /// An uploaded package the apt repository cannot take (422).
    #[error("{0}")]
    InvalidPackage(String),
    /// A request axum's extractors refused (a query string, path or body that does
    /// not parse, a body over the limit), mapped by [`super::reject`].
    #[error("{}", .0.message)]
    Rejected(Rejection),
}

/// A refused request's status, kind and axum's one-line reason.
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
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
        AppError::Build(BuildError::Records(r) | BuildError::Settings { source: r, .. }) => {
            records(r)
        }
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
    fn status_and_kind(&self) -> (StatusCode, ErrorKind) {
        use AppError as E;
        use ErrorKind as K;
        if full(self).is_some() {
            return (StatusCode::INSUFFICIENT_STORAGE, K::InsufficientStorage);
        }
        if unavailable(self).is_some() {
            return (StatusCode::SERVICE_UNAVAILABLE, K::StoreUnavailable);
        }
        match self {
            E::BadRequest(_) => (StatusCode::BAD_REQUEST, K::InvalidRequest),
            E::InvalidName { .. } => (StatusCode::BAD_REQUEST, K::InvalidName),
            E::InvalidSettings(_) => (StatusCode::BAD_REQUEST, K::InvalidSettings),
            E::NotFound(_) => (StatusCode::NOT_FOUND, K::NotFound),
            E::Source(e) => source_status(e),
            E::Build(e) => match e {
                BuildError::UnknownModule { .. } => (StatusCode::NOT_FOUND, K::UnknownModule),
                BuildError::UnsupportedArch { .. } => (StatusCode::BAD_REQUEST, K::UnsupportedArch),
                BuildError::NotFound(_) => (StatusCode::NOT_FOUND, K::NotFound),
                BuildError::Records(_)
                | BuildError::Settings { .. }
                | BuildError::NotClustered
                | BuildError::Encode(_) => (StatusCode::INTERNAL_SERVER_ERROR, K::Internal),
            },
            E::Image(e) => match e {
                ImageError::UnknownKernel { .. } => (StatusCode::NOT_FOUND, e.kind()),
                ImageError::UnsupportedKernel(_) => (StatusCode::BAD_REQUEST, e.kind()),
                _ => (StatusCode::BAD_GATEWAY, e.kind()),
            },
            E::BuildFailed { failure, .. } => {
                let code = match failure.kind {
                    FailureKind::Infrastructure => StatusCode::BAD_GATEWAY,
                    FailureKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
                    FailureKind::UnknownKernel => StatusCode::NOT_FOUND,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                (code, failure.kind.into())
            }
            E::WaitTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, K::WaitTimeout),
            E::Denied(d) if d.is_unauthenticated() => (StatusCode::UNAUTHORIZED, K::Unauthorized),
            E::Denied(_) => (StatusCode::FORBIDDEN, K::Forbidden),
            E::Token(t) => match t {
                TokenError::Invalid(_) => (StatusCode::BAD_REQUEST, K::InvalidRequest),
                TokenError::Exists(_) => (StatusCode::CONFLICT, K::Conflict),
                TokenError::Unknown(_) => (StatusCode::NOT_FOUND, K::NotFound),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, K::Internal),
            },
            E::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, K::TooLarge),
            E::BadGateway(_) => (StatusCode::BAD_GATEWAY, K::Upstream),
            E::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, K::MethodNotAllowed),
            E::Rejected(r) => (r.status, r.kind),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, K::Internal),
            E::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, K::StoreUnavailable),
            E::Placeholder { .. } => (StatusCode::UNPROCESSABLE_ENTITY, K::Placeholder),
            E::InvalidPackage(_) => (StatusCode::UNPROCESSABLE_ENTITY, K::InvalidPackage),
            E::InsufficientStorage(_) => (StatusCode::INSUFFICIENT_STORAGE, K::InsufficientStorage),
        }
    }
}

fn source_status(e: &SourceError) -> (StatusCode, ErrorKind) {
    use ErrorKind as K;
    match e {
        SourceError::Archive(a) => {
            let kind = ErrorKind::from(a);
            let code = if kind == K::TooLarge {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            (code, kind)
        }
        SourceError::Conflict { .. } => (StatusCode::CONFLICT, K::Conflict),
        SourceError::Immutable { .. } => (StatusCode::CONFLICT, K::ImmutableVersion),
        SourceError::Denied(d) if d.is_unauthenticated() => {
            (StatusCode::UNAUTHORIZED, K::Unauthorized)
        }
        SourceError::Denied(_) => (StatusCode::FORBIDDEN, K::Forbidden),
        SourceError::Busy { .. } => (StatusCode::CONFLICT, K::Busy),
        SourceError::NotFound { .. } => (StatusCode::NOT_FOUND, K::UnknownModule),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, K::Internal),
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
