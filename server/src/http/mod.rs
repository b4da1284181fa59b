//! The HTTP API (axum). Handlers parse and validate, call the domain services,
//! and map their errors through [`AppError`].

mod artifacts;
mod error;
mod oneshot;
mod settings;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::stream;
use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::BuildRequest;
use serde::Deserialize;

use crate::builds::Builds;
use crate::images::BuilderImages;
use crate::sources::Sources;
use crate::store::Store;
pub use error::AppError;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub sources: Sources,
    pub builds: Arc<Builds>,
    pub images: Arc<BuilderImages>,
    /// How long the one-shot endpoint waits for a build.
    pub oneshot_wait: std::time::Duration,
}

/// The router; tests drive it with `oneshot` or on a real port.
pub fn app(state: AppState) -> Router {
    let upload_limit = state.sources.limits().max_input_bytes as usize;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/kernels", get(list_kernels))
        .route("/v1/kernels/{krel}", put(prepare_kernel))
        .route("/v1/modules", get(list_modules))
        .route(
            "/v1/modules/{name}/settings",
            put(settings::put)
                .get(settings::get)
                .delete(settings::delete),
        )
        .route(
            "/v1/modules/{name}/{version}",
            put(add_module).get(get_module).delete(delete_module),
        )
        .route("/v1/builds", post(submit_build).get(list_builds))
        .route("/v1/builds/{id}", get(get_build))
        .route("/v1/builds/{id}/log", get(build_log))
        .route(
            "/v1/artifacts/{name}/{version}/{krel}",
            get(artifacts::manifest),
        )
        .route(
            "/v1/artifacts/{name}/{version}/{krel}/modules.tar",
            get(artifacts::tarball),
        )
        .route(
            "/v1/artifacts/{name}/{version}/{krel}/files/{file}",
            get(artifacts::file),
        )
        .route("/v1/blobs/{sha256}", get(artifacts::blob))
        .route("/v1/build", post(oneshot::build))
        .layer(DefaultBodyLimit::max(upload_limit))
        .with_state(state)
}

pub(crate) fn module_id(
    name: &str,
    version: &str,
) -> Result<(ModuleName, ModuleVersion), AppError> {
    let name = ModuleName::parse(name).map_err(|e| AppError::InvalidName {
        what: "module name",
        reason: e.to_string(),
    })?;
    let version = ModuleVersion::parse(version).map_err(|e| AppError::InvalidName {
        what: "module version",
        reason: e.to_string(),
    })?;
    Ok((name, version))
}

pub(crate) fn kernel(krel: &str) -> Result<KernelRelease, AppError> {
    KernelRelease::parse(krel).map_err(|e| AppError::InvalidName {
        what: "kernel release",
        reason: e.to_string(),
    })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn list_kernels(State(s): State<AppState>) -> Result<Response, AppError> {
    let mut kernels = s.images.list().await?;
    for k in &mut kernels {
        k.verifier = s
            .builds
            .checker()
            .existing(&k.kernel)
            .await
            .map(|v| v.image);
    }
    Ok(Json(kernels).into_response())
}

#[derive(serde::Deserialize)]
struct PrepareQuery {
    /// Also prepare the verifier image (default: the server's boot-check default).
    boot_check: Option<bool>,
}

/// Prepares a kernel ahead of its first build: the builder image, and the verifier
/// image when boot checks are wanted.
async fn prepare_kernel(
    State(s): State<AppState>,
    Path(krel): Path<String>,
    Query(q): Query<PrepareQuery>,
) -> Result<Response, AppError> {
    let kernel = kernel(&krel)?;
    let mut info = s.images.ensure(&kernel).await?;
    info.compiler = s.images.compiler_of(&info.image.id).await;
    let checker = s.builds.checker();
    info.verifier = if q.boot_check.unwrap_or_else(|| checker.default_on()) {
        Some(checker.image(&kernel).await?.image)
    } else {
        checker.existing(&kernel).await.map(|v| v.image)
    };
    Ok(Json(info).into_response())
}

async fn list_modules(State(s): State<AppState>) -> Result<Response, AppError> {
    Ok(Json(s.sources.list()?).into_response())
}

async fn add_module(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, AppError> {
    let (name, version) = module_id(&name, &version)?;
    if body.is_empty() {
        return Err(AppError::BadRequest(
            "empty body: send a tar or tar.gz of the source tree (dkms.conf at its root)".into(),
        ));
    }
    let added = s.sources.add(name, version, body).await?;
    let status = if added.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(added)).into_response())
}

async fn get_module(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (name, version) = module_id(&name, &version)?;
    Ok(Json(s.sources.get(&name, &version)?).into_response())
}

async fn delete_module(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (name, version) = module_id(&name, &version)?;
    s.sources.delete(&name, &version, &s.builds)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Parses a JSON body ourselves so a bad body gets our JSON error, not axum's text.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn submit_build(State(s): State<AppState>, body: Bytes) -> Result<Response, AppError> {
    let req: BuildRequest = json_body(&body)?;
    let submitted = s.builds.submit(req).await?;
    let status = if submitted.response.build.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/builds/{}", submitted.response.build.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(submitted.response),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u32>,
}

async fn list_builds(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, AppError> {
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(Json(s.builds.list(limit)?).into_response())
}

async fn get_build(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    Ok(Json(s.builds.get(&id)?).into_response())
}

/// The build log: streamed live while the build runs (`curl -N` follows it).
async fn build_log(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let Some(job) = s.builds.live(&id) else {
        s.builds.get(&id)?;
        let log = s.store.get_log(&id).unwrap_or_default();
        return Ok((text_plain, log).into_response());
    };
    let chunks = stream::unfold((job, 0usize, false), |(job, offset, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let seen = job.log.version();
            let chunk = job.log.read_from(offset);
            if !chunk.bytes.is_empty() || chunk.done {
                let next = (job.clone(), chunk.next, chunk.done);
                return Some((Ok::<_, std::io::Error>(Bytes::from(chunk.bytes)), next));
            }
            job.log.changed(seen).await;
        }
    });
    Ok((text_plain, Body::from_stream(chunks)).into_response())
}
