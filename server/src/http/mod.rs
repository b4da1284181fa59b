//! The HTTP API (axum). Handlers parse and validate, call the domain services,
//! and map their errors through [`AppError`].

mod access;
mod apt;
mod artifacts;
mod dkms_bundle;
mod error;
mod gc;
mod guard;
mod keys;
mod oneshot;
mod openapi;
mod readiness;
mod reject;
mod settings;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use futures_util::stream;
use kmodforge_api::auth::{AuditAction, Scope};
use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::{
    AddModuleResponse, BuildRecord, BuildRequest, BuildResponse, KernelInfo, ModuleSource,
};
use serde::Deserialize;

use crate::auth::{Audit, Auth, Caller, Tokens};
use crate::builds::Builds;
use crate::images::BuilderImages;
use crate::sources::{AddSource, Sources};
use crate::store::Store;
pub use error::AppError;
use guard::Routes;
pub use guard::{Access, RouteSpec};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub sources: Sources,
    pub builds: Arc<Builds>,
    pub images: Arc<BuilderImages>,
    /// How long the one-shot endpoint waits for a build.
    pub oneshot_wait: std::time::Duration,
    pub auth: Auth,
    pub tokens: Tokens,
    pub audit: Audit,
    pub keys: Arc<crate::keys::Keys>,
    pub prebuilder: Arc<crate::prebuild::Prebuilder>,
    pub watcher: Arc<crate::archive::Watcher>,
    /// Retention (`POST /v1/gc`); its totals are exported as metrics.
    pub gc: Arc<crate::gc::Gc>,
    /// Blob downloads redirect to presigned object-store URLs valid this long.
    pub presign: Option<std::time::Duration>,
    /// This process's metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The apt repository (`/apt`).
    pub apt: Arc<crate::apt::AptRepo>,
}

/// Every route with the access it needs; the router and [`route_table`] are both
/// made from this list.
fn routes() -> Routes {
    use Access::{Module, ModuleInRequest, Public, Scope as S};
    use AuditAction as A;
    use Scope::{Admin, Build, Publish, Read};
    Routes::new()
        .add(Method::GET, "/healthz", Public, healthz)
        .add(Method::GET, "/metrics", S(Read), metrics)
        .add(Method::GET, "/openapi.json", Public, openapi::openapi_json)
        .add(Method::GET, "/", S(Read), readiness::page)
        .add(Method::GET, "/v1/matrix", S(Read), readiness::matrix_json)
        .add(
            Method::POST,
            "/v1/kernels/{krel}/prebuild",
            S(Admin),
            readiness::prebuild,
        )
        .add(Method::POST, "/v1/archive/scan", S(Admin), readiness::scan)
        .add(Method::POST, "/v1/gc", S(Admin), gc::collect)
        .add(Method::GET, "/apt/kmodforge.gpg", Public, apt::keyring)
        .add(Method::GET, "/apt/kmodforge.asc", Public, apt::keyring_asc)
        .add(
            Method::GET,
            "/apt/dists/{suite}/{file}",
            S(Read),
            apt::release,
        )
        .add(
            Method::GET,
            "/apt/dists/{suite}/{component}/{dir}/{file}",
            S(Read),
            apt::packages_index,
        )
        .add(
            Method::GET,
            "/apt/pool/{component}/{letter}/{package}/{file}",
            S(Read),
            apt::pool,
        )
        .add(Method::GET, "/v1/apt/packages", S(Read), apt::list)
        .add_audited(
            Method::PUT,
            "/v1/apt/packages",
            S(Admin),
            Some(A::AptUpload),
            apt::upload,
        )
        .add_audited(
            Method::DELETE,
            "/v1/apt/packages/{package}/{version}/{arch}",
            S(Admin),
            Some(A::AptDelete),
            apt::delete,
        )
        .add(Method::GET, "/v1/keys", Public, keys::list)
        .add(
            Method::GET,
            "/v1/keys/module-signing.der",
            Public,
            keys::module_der,
        )
        .add(
            Method::GET,
            "/v1/keys/module-signing.pem",
            Public,
            keys::module_pem,
        )
        .add(
            Method::GET,
            "/v1/keys/module-signing/{sha256}",
            Public,
            keys::module_by_sha,
        )
        .add(
            Method::GET,
            "/v1/keys/manifest.pub",
            Public,
            keys::manifest_pub,
        )
        .add(Method::GET, "/v1/kernels", S(Read), list_kernels)
        .add(Method::PUT, "/v1/kernels/{krel}", S(Admin), prepare_kernel)
        .add(Method::GET, "/v1/modules", S(Read), list_modules)
        .add_audited(
            Method::PUT,
            "/v1/modules/{name}/settings",
            Module(Publish),
            Some(A::SettingsPut),
            settings::put,
        )
        .add(
            Method::GET,
            "/v1/modules/{name}/settings",
            S(Read),
            settings::get,
        )
        .add_audited(
            Method::DELETE,
            "/v1/modules/{name}/settings",
            Module(Publish),
            Some(A::SettingsDelete),
            settings::delete,
        )
        .add_audited(
            Method::PUT,
            "/v1/modules/{name}/{version}",
            Module(Publish),
            Some(A::ModuleAdd),
            add_module,
        )
        .add(
            Method::GET,
            "/v1/modules/{name}/{version}",
            S(Read),
            get_module,
        )
        .add_audited(
            Method::DELETE,
            "/v1/modules/{name}/{version}",
            S(Admin),
            Some(A::ModuleDelete),
            delete_module,
        )
        .add(
            Method::POST,
            "/v1/builds",
            ModuleInRequest(Build),
            submit_build,
        )
        .add(Method::GET, "/v1/builds", S(Read), list_builds)
        .add(Method::GET, "/v1/builds/{id}", S(Read), get_build)
        .add(Method::GET, "/v1/builds/{id}/log", S(Read), build_log)
        .add(
            Method::GET,
            "/v1/artifacts/{name}/{version}/{krel}",
            S(Read),
            artifacts::manifest,
        )
        .add(
            Method::GET,
            "/v1/artifacts/{name}/{version}/{krel}/modules.tar",
            S(Read),
            artifacts::tarball,
        )
        .add(
            Method::GET,
            "/v1/artifacts/{name}/{version}/{krel}/files/{file}",
            S(Read),
            artifacts::file,
        )
        .add(
            Method::GET,
            "/v1/artifacts/{name}/{version}/dkms-binaries.tar.gz",
            S(Read),
            dkms_bundle::bundle,
        )
        .add(Method::GET, "/v1/blobs/{sha256}", S(Read), artifacts::blob)
        .add_audited(
            Method::POST,
            "/v1/build",
            ModuleInRequest(Publish),
            Some(A::ModuleAdd),
            oneshot::build,
        )
        .add_audited(
            Method::POST,
            "/v1/tokens",
            S(Admin),
            Some(A::TokenCreate),
            access::create_token,
        )
        .add(Method::GET, "/v1/tokens", S(Admin), access::list_tokens)
        .add_audited(
            Method::DELETE,
            "/v1/tokens/{token}",
            S(Admin),
            Some(A::TokenRevoke),
            access::revoke_token,
        )
        .add(Method::GET, "/v1/audit", S(Admin), access::audit_log)
}

/// Every route of the API with the access it needs (the authorisation tests walk it).
pub fn route_table() -> Vec<RouteSpec> {
    routes().table
}

/// The router; tests drive it with `oneshot` or on a real port.
pub fn app(state: AppState) -> Router {
    let upload_limit = state.sources.limits().max_input_bytes as usize;
    routes()
        .router
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(upload_limit))
        // axum's own refusals (extractors, body limit) become our JSON errors.
        .layer(axum::middleware::from_fn(reject::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            access_log,
        ))
        // The guard of each route finds what it needs here.
        .layer(Extension(Arc::new(guard::GuardState {
            auth: state.auth.clone(),
            audit: state.audit.clone(),
        })))
        .with_state(state)
}

/// The access log and the HTTP metrics: one line per request at `debug` on the
/// target `kmodforge_server::access` (`KMODFORGE_LOG=info,kmodforge_server::access=debug`):
/// method, route template (never the raw path or query; `unmatched` when no route
/// matched), status and the time to the response's head in microseconds (a streamed
/// body's transfer is not included). The metrics count the same.
async fn access_log(
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let start = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    metrics.http_request(&route, method.as_str(), status, start.elapsed());
    if !tracing::enabled!(target: "kmodforge_server::access", tracing::Level::DEBUG) {
        return resp;
    }
    tracing::debug!(
        target: "kmodforge_server::access",
        %method,
        route,
        status,
        micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    resp
}

async fn unknown_route() -> AppError {
    AppError::NotFound("no such route (see the README's endpoint table)".into())
}

async fn wrong_method(method: Method) -> AppError {
    AppError::MethodNotAllowed(method.to_string())
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

/// `GET /healthz`: the server answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
    /// The server's version.
    version: &'static str,
}

/// `GET /metrics`: this process's metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "This process's metrics in the Prometheus text exposition format (version 0.0.4)",
        body = String, content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> Response {
    let (queued, running) = s.builds.load();
    s.metrics.set_build_load(queued, running);
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.metrics.render(),
    )
        .into_response()
}

/// Liveness: the server answers (no store is asked).
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The server is up", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// The prepared builder images, with their compilers and verifier images.
#[utoipa::path(get, path = "/v1/kernels", tag = "kernels",
    responses((status = 200, description = "Prepared kernels", body = Vec<KernelInfo>)))]
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

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PrepareQuery {
    /// Also prepare the verifier image (default: the server's boot-check default).
    boot_check: Option<bool>,
}

/// Prepares a kernel ahead of its first build: the builder image, and the verifier
/// image when boot checks are wanted.
#[utoipa::path(put, path = "/v1/kernels/{krel}", tag = "kernels",
    params(("krel" = kmodforge_api::names::KernelRelease, Path, description = "Kernel release (`uname -r`)", example = "6.1.0-47-amd64"), PrepareQuery),
    responses(
        (status = 200, description = "The prepared kernel", body = KernelInfo),
        (status = 502, description = "The image build failed (`infrastructure`, with `log_tail`)", body = kmodforge_api::wire::ErrorBody),
    ))]
async fn prepare_kernel(
    State(s): State<AppState>,
    Path(krel): Path<String>,
    Query(q): Query<PrepareQuery>,
) -> Result<Response, AppError> {
    let kernel = kernel(&krel)?;
    s.builds.note_requested(&kernel).await;
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

/// Every registered module version.
#[utoipa::path(get, path = "/v1/modules", tag = "modules",
    responses((status = 200, description = "Registered module sources", body = Vec<ModuleSource>)))]
async fn list_modules(State(s): State<AppState>) -> Result<Response, AppError> {
    Ok(Json(s.sources.list().await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AddQuery {
    /// An admin's explicit consent to register other content under a name and
    /// version that had artifacts (deleted since).
    #[serde(default)]
    replace: bool,
}

/// Registers a module source (`dkms add`): the body is a tar or tar.gz of the
/// source tree with `dkms.conf` at its root (or in its only top-level folder).
#[utoipa::path(put, path = "/v1/modules/{name}/{version}", tag = "modules",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name (DKMS PACKAGE_NAME)", example = "v4l2loopback"), ("version" = kmodforge_api::names::ModuleVersion, Path, description = "Module version", example = "0.12.7"), AddQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "tar or tar.gz of the source tree"),
    responses(
        (status = 201, description = "Registered", body = AddModuleResponse),
        (status = 200, description = "The same content was registered already", body = AddModuleResponse),
        (status = 409, description = "Other content under this name and version (`conflict`, `immutable_version`, `busy`)", body = kmodforge_api::wire::ErrorBody),
    ))]
async fn add_module(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<AddQuery>,
    body: Bytes,
) -> Result<Response, AppError> {
    let (name, version) = module_id(&name, &version)?;
    if body.is_empty() {
        return Err(AppError::BadRequest(
            "empty body: send a tar or tar.gz of the source tree (dkms.conf at its root)".into(),
        ));
    }
    let req = AddSource {
        name,
        version,
        body,
        replace: q.replace,
    };
    let added = s.sources.add(req, &caller).await?;
    let status = if added.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(added)).into_response())
}

/// A registered module version.
#[utoipa::path(get, path = "/v1/modules/{name}/{version}", tag = "modules",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name (DKMS PACKAGE_NAME)", example = "v4l2loopback"), ("version" = kmodforge_api::names::ModuleVersion, Path, description = "Module version", example = "0.12.7")),
    responses((status = 200, description = "The module source", body = ModuleSource)))]
async fn get_module(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (name, version) = module_id(&name, &version)?;
    Ok(Json(s.sources.get(&name, &version).await?).into_response())
}

/// Deletes a module version's source (its artifacts stay).
#[utoipa::path(delete, path = "/v1/modules/{name}/{version}", tag = "modules",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name (DKMS PACKAGE_NAME)", example = "v4l2loopback"), ("version" = kmodforge_api::names::ModuleVersion, Path, description = "Module version", example = "0.12.7")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "A build of it is in progress (`busy`)", body = kmodforge_api::wire::ErrorBody),
    ))]
async fn delete_module(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (name, version) = module_id(&name, &version)?;
    s.sources
        .delete(&name, &version, &s.builds, &caller)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Parses a JSON body ourselves so a bad body gets our JSON error, not axum's text.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Asks for a build: a cache hit answers at once (200), a new or joined build is 202
/// (`Location` names it).
#[utoipa::path(post, path = "/v1/builds", tag = "builds",
    request_body(content = BuildRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Finished: a cache hit or a final state", body = BuildResponse),
        (status = 202, description = "Queued or running", body = BuildResponse,
            headers(("Location" = String, description = "The build, `/v1/builds/{id}`"))),
        (status = 404, description = "The module version is not registered (`unknown_module`), or no headers exist for the kernel (`unknown_kernel`)", body = kmodforge_api::wire::ErrorBody),
        (status = 502, description = "The builder image could not be prepared", body = kmodforge_api::wire::ErrorBody),
    ))]
async fn submit_build(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, AppError> {
    let req: BuildRequest = json_body(&body)?;
    caller.require_module(Scope::Build, &req.name)?;
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Most builds to answer (default 100, at most 1000).
    limit: Option<u32>,
}

/// The newest builds first.
#[utoipa::path(get, path = "/v1/builds", tag = "builds", params(ListQuery),
    responses((status = 200, description = "Build records", body = Vec<BuildRecord>)))]
async fn list_builds(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, AppError> {
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(Json(s.builds.list(limit).await?).into_response())
}

/// A build, its failure or its artifact.
#[utoipa::path(get, path = "/v1/builds/{id}", tag = "builds",
    params(("id" = String, Path, description = "Build id")),
    responses((status = 200, description = "The build", body = BuildResponse)))]
async fn get_build(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    Ok(Json(s.builds.get(&id).await?).into_response())
}

/// The build log: streamed live while the build runs (`curl -N` follows it).
#[utoipa::path(get, path = "/v1/builds/{id}/log", tag = "builds",
    params(("id" = String, Path, description = "Build id")),
    responses((status = 200, description = "The log (live while the build runs)", body = String, content_type = "text/plain")))]
async fn build_log(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let Some(job) = s.builds.live(&id) else {
        s.builds.get(&id).await?;
        let log = s.store.objects.get_log(&id).await?.unwrap_or_default();
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
