//! The route table and its guard: every route is registered with the access it
//! needs, in one place, and the guard checks the bearer token before the handler
//! (and so before any body is read).
//!
//! [`route_table`](super::route_table) is built by the same code as the router,
//! so the authorisation tests walk every route there is.

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::handler::Handler;
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use kmodforge_api::auth::{AuditAction, AuditOutcome, Scope};
use kmodforge_api::names::{ModuleName, ModuleVersion};

use super::{AppError, AppState};
use crate::auth::audit::ModuleChange;
use crate::auth::{AuthError, Caller, Denied};

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token: liveness and public keys.
    Public,
    /// A token with this scope.
    Scope(Scope),
    /// A token with this scope that may act on the module named by the route's
    /// `{name}`: checked before the body is read.
    Module(Scope),
    /// A token with this scope; the handler checks the module named in the body
    /// (or query) before acting.
    ModuleInRequest(Scope),
}

impl Access {
    /// The scope it needs, `None` for public routes.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Access::Public => None,
            Access::Scope(s) | Access::Module(s) | Access::ModuleInRequest(s) => Some(s),
        }
    }
}

/// One route of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    /// The path template, e.g. `/v1/modules/{name}/{version}`.
    pub path: &'static str,
    pub access: Access,
    /// The change a refused request attempted (recorded in the audit log).
    pub audit: Option<AuditAction>,
}

/// The router and its table, built together.
pub(super) struct Routes {
    pub router: Router<AppState>,
    pub table: Vec<RouteSpec>,
}

impl Routes {
    pub fn new() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    /// Registers `handler` for `method path`, behind the guard for `access`.
    pub fn add<H, T>(self, method: Method, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add_audited(method, path, access, None, handler)
    }

    /// [`Routes::add`] for a route that changes something: a refusal is audited.
    pub fn add_audited<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        audit: Option<AuditAction>,
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("route {method} {path}: unsupported method"));
        let spec = RouteSpec {
            method,
            path,
            access,
            audit,
        };
        let guarded = on(filter, handler).layer(middleware::from_fn({
            let spec = spec.clone();
            move |req: Request, next: Next| guard(spec.clone(), req, next)
        }));
        self.router = self.router.route(path, guarded);
        self.table.push(spec);
        self
    }
}

/// Query parameter names that people use for tokens; refused outright so that a
/// token never travels (and gets logged) in a URL.
const TOKEN_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "bearer",
    "bearer_token",
    "auth",
    "auth_token",
    "authorization",
    "api_key",
    "apikey",
];

fn token_in_query(query: Option<&str>) -> bool {
    let Some(q) = query else { return false };
    q.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        TOKEN_PARAMS.contains(&name.to_ascii_lowercase().as_str())
            || crate::auth::token::looks_like_token(value)
    })
}

/// What the guard needs of the server: a cheap handle, put into every request's
/// extensions by `app()`.
#[derive(Clone)]
pub(super) struct GuardState {
    pub auth: crate::auth::Auth,
    pub audit: crate::auth::Audit,
}

async fn guard(spec: RouteSpec, mut req: Request, next: Next) -> Response {
    let Some(needed) = spec.access.scope() else {
        return next.run(req).await;
    };
    let Some(state) = req
        .extensions()
        .get::<std::sync::Arc<GuardState>>()
        .cloned()
    else {
        return AppError::Internal("the guard has no state".into()).into_response();
    };
    // The module the route names: for its limit, or for the audit of a refusal.
    let target = if matches!(spec.access, Access::Module(_)) || spec.audit.is_some() {
        path_module(&mut req).await
    } else {
        (None, None)
    };
    if token_in_query(req.uri().query()) {
        return refuse(&state, &spec, Denied::TokenInQuery, None, target).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let caller = match state.auth.authenticate(header, needed).await {
        Ok(c) => c,
        Err(AuthError::Denied(d)) => {
            let who = match &d {
                Denied::Scope { actor, .. } => Some(actor.clone()),
                _ => None,
            };
            return refuse(&state, &spec, d, who, target).await;
        }
        Err(AuthError::Store(e)) => return AppError::from(e).into_response(),
    };
    if let (Access::Module(scope), Some(module)) = (spec.access, &target.0) {
        // An invalid name is left to the handler's 400 (it decodes the same value).
        if let Err(d) = caller.require_module(scope, module) {
            return refuse(&state, &spec, d, Some(caller.actor.clone()), target).await;
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The `{name}` and `{version}` path parameters (percent-decoded, as the handler
/// sees them), where valid.
async fn path_module(req: &mut Request) -> (Option<ModuleName>, Option<ModuleVersion>) {
    let (mut parts, body) = std::mem::take(req).into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &()).await;
    *req = Request::from_parts(parts, body);
    let mut found = (None, None);
    for (key, value) in params.iter().flat_map(|p| p.iter()) {
        match key {
            "name" => found.0 = ModuleName::parse(value).ok(),
            "version" => found.1 = ModuleVersion::parse(value).ok(),
            _ => {}
        }
    }
    found
}

/// Answers a refusal; a token refused a change is recorded in the audit log (an
/// unauthenticated request is only logged: anyone can send those).
async fn refuse(
    state: &GuardState,
    spec: &RouteSpec,
    d: Denied,
    actor: Option<String>,
    (module, version): (Option<ModuleName>, Option<ModuleVersion>),
) -> Response {
    tracing::info!(
        method = %spec.method,
        route = spec.path,
        actor = actor.as_deref().unwrap_or("-"),
        reason = %d,
        "request refused"
    );
    if let (Some(action), Some(actor)) = (spec.audit, actor) {
        let by = Caller {
            actor,
            scope: Scope::Read,
            modules: Vec::new(),
        };
        let result = match &module {
            Some(m) => {
                state
                    .audit
                    .module(
                        &by,
                        ModuleChange {
                            action,
                            outcome: AuditOutcome::Refused,
                            module: m,
                            version: version.as_ref(),
                            digest: None,
                            detail: d.to_string(),
                        },
                    )
                    .await
            }
            None => state.audit.refused(&by, action, d.to_string()).await,
        };
        if let Err(e) = result {
            return AppError::from(e).into_response();
        }
    }
    AppError::Denied(d).into_response()
}
