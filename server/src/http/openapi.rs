//! The OpenAPI 3.1 contract, `GET /openapi.json`, generated from the code: each
//! handler's `#[utoipa::path]` gives its parameters, bodies and answers, and the
//! route table ([`super::route_table`]) gives each route's required scope and the
//! error answers every route can give. A test fails when a route of the table has
//! no operation in the document, or the other way round.

use std::sync::OnceLock;

use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use kmodforge_api::wire::{ErrorBody, ErrorKind};
use serde_json::Value;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::OpenApi;

use super::{Access, RouteSpec};

/// The document, as the handlers and the route table describe it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kmodforge",
        description = "DKMS as a service: builds DKMS module sources for Debian kernels in \
            sandboxed containers, caches the `.ko` files and serves them to hosts.\n\n\
            Every 4xx/5xx answer is an `ErrorBody` whose `kind` is an `ErrorKind`. \
            With auth on, each operation needs a token of the scope its description names, \
            sent as `Authorization: Bearer TOKEN` (or HTTP Basic with the token as the password)."
    ),
    paths(
        super::healthz,
        super::metrics,
        openapi_json,
        super::readiness::page,
        super::readiness::matrix_json,
        super::readiness::prebuild,
        super::readiness::scan,
        super::keys::list,
        super::keys::module_der,
        super::keys::module_pem,
        super::keys::module_by_sha,
        super::keys::manifest_pub,
        super::list_kernels,
        super::prepare_kernel,
        super::list_modules,
        super::settings::put,
        super::settings::get,
        super::settings::delete,
        super::add_module,
        super::get_module,
        super::delete_module,
        super::submit_build,
        super::list_builds,
        super::get_build,
        super::build_log,
        super::artifacts::manifest,
        super::artifacts::tarball,
        super::artifacts::file,
        super::artifacts::blob,
        super::dkms_bundle::bundle,
        super::oneshot::build,
        super::access::create_token,
        super::access::list_tokens,
        super::access::revoke_token,
        super::access::audit_log,
        super::gc::collect,
        super::apt::release,
        super::apt::packages_index,
        super::apt::pool,
        super::apt::keyring,
        super::apt::keyring_asc,
        super::apt::list,
        super::apt::upload,
        super::apt::delete,
    ),
    components(schemas(ErrorBody, ErrorKind)),
    modifiers(&FromRouteTable)
)]
struct ApiDoc;

/// The document as JSON (made once).
pub(super) fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi())
            .unwrap_or_else(|e| panic!("the OpenAPI document does not serialise: {e}"));
        merge_flattened(&mut doc);
        binary_bodies(&mut doc);
        serde_json::to_string_pretty(&doc)
            .unwrap_or_else(|e| panic!("the OpenAPI document does not serialise: {e}"))
    })
}

/// A `#[serde(flatten)]` field is an `allOf` of its type and the other fields; when
/// its type refuses unknown fields (`ModuleSettings` in `SettingsRecord`) that
/// `allOf` would refuse every answer. Such schemas become one object with the
/// properties of both, as serde writes them.
fn merge_flattened(doc: &mut Value) {
    let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .cloned()
    else {
        return;
    };
    for (name, schema) in &schemas {
        let Some(parts) = schema.get("allOf").and_then(Value::as_array) else {
            continue;
        };
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for part in parts {
            let part = match part.get("$ref").and_then(Value::as_str) {
                Some(r) => r
                    .strip_prefix("#/components/schemas/")
                    .and_then(|n| schemas.get(n))
                    .unwrap_or(part),
                None => part,
            };
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                properties.extend(p.clone());
            }
            if let Some(r) = part.get("required").and_then(Value::as_array) {
                required.extend(r.iter().cloned());
            }
        }
        let mut merged = serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": required,
        });
        if let Some(d) = schema.get("description") {
            merged["description"] = d.clone();
        }
        doc["components"]["schemas"][name] = merged;
    }
}

/// A byte body (`Vec<u8>` in the annotations: a tar, a `.ko`, a certificate) is
/// a binary string, not an array of integers.
fn binary_bodies(doc: &mut Value) {
    if let Some(paths) = doc.get_mut("paths") {
        binary_contents(paths);
    }
}

fn binary_contents(v: &mut Value) {
    let Some(object) = v.as_object_mut() else {
        return;
    };
    if let Some(content) = object.get_mut("content").and_then(Value::as_object_mut) {
        for (media_type, media) in content.iter_mut() {
            let schema = media.get("schema");
            let is_bytes = schema.and_then(|s| s.pointer("/items/type")) == Some(&"integer".into())
                && schema.and_then(|s| s.get("type")) == Some(&"array".into());
            if is_bytes && !media_type.contains("json") {
                media["schema"] = serde_json::json!({"type": "string", "format": "binary"});
            }
        }
    }
    for child in object.values_mut() {
        binary_contents(child);
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
pub(super) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// Adds what the route table knows to each operation: the security requirement and
/// the scope it needs, and the error answers every route can give.
struct FromRouteTable;

impl utoipa::Modify for FromRouteTable {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        for spec in super::route_table() {
            let op = doc
                .paths
                .paths
                .get_mut(spec.path)
                .and_then(|item| operation(item, &spec.method));
            if let Some(op) = op {
                describe_access(op, &spec);
                add_errors(op, &spec);
            }
        }
    }
}

/// The operation of `method` in `item`.
fn operation<'a>(item: &'a mut PathItem, method: &Method) -> Option<&'a mut Operation> {
    match *method {
        Method::GET => item.get.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        _ => None,
    }
}

fn describe_access(op: &mut Operation, spec: &RouteSpec) {
    let Some(scope) = spec.access.scope() else {
        op.security = Some(vec![SecurityRequirement::default()]);
        append(op, "Public: no token needed.".to_string());
        return;
    };
    op.security = Some(vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::new("basic", Vec::<String>::new()),
    ]);
    let limit = match spec.access {
        Access::Module(_) => " that may act on the module `{name}` (its module patterns)",
        Access::ModuleInRequest(_) => " that may act on the module the request names",
        _ => "",
    };
    let scope = scope.to_string();
    append(
        op,
        format!("Requires a token with scope `{scope}` (or a wider one){limit}."),
    );
    op.extensions
        .get_or_insert_with(Default::default)
        .merge(extension("x-required-scope", &scope));
}

fn extension(key: &str, value: &str) -> utoipa::openapi::extensions::Extensions {
    utoipa::openapi::extensions::ExtensionsBuilder::new()
        .add(key, serde_json::Value::String(value.to_string()))
        .build()
}

fn append(op: &mut Operation, line: String) {
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{line}"),
        _ => line,
    });
}

/// The error answers a route can give whatever it does: a request its extractors
/// refuse, a missing or weak token, a store that cannot be reached, a fault.
fn add_errors(op: &mut Operation, spec: &RouteSpec) {
    let has_input = spec.path.contains('{')
        || op.parameters.as_ref().is_some_and(|p| !p.is_empty())
        || op.request_body.is_some();
    let mut errors = vec![
        ("500", "A fault of the server (`internal`)"),
        (
            "503",
            "The database or the object store cannot be reached (`store_unavailable`)",
        ),
    ];
    if has_input {
        errors.push(("400", "Invalid input: the message names it"));
    }
    if spec.path.contains('{') {
        errors.push(("404", "Nothing of that name"));
    }
    if op.request_body.is_some() {
        errors.push(("413", "The body is over the server's limit (`too_large`)"));
    }
    if spec.access.scope().is_some() {
        errors.push(("401", "No valid token (`unauthorized`)"));
        errors.push((
            "403",
            "The token lacks the scope or the module (`forbidden`; `scope` names what was needed)",
        ));
    }
    for (status, description) in errors {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error_response(description));
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", content)
            .build(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::from_str(document()).unwrap()
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = doc();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "put", "post", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let routes: BTreeSet<(String, String)> = crate::http::route_table()
            .into_iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let missing: Vec<_> = routes.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(
            missing.is_empty(),
            "routes without an operation (add #[utoipa::path] and list it in ApiDoc): {missing:?}"
        );
        assert!(extra.is_empty(), "operations of no route: {extra:?}");
    }

    #[test]
    fn scoped_routes_need_a_token_and_name_the_scope() {
        let doc = doc();
        for r in crate::http::route_table() {
            let op = &doc["paths"][r.path][r.method.as_str().to_lowercase()];
            let security = op["security"].as_array().unwrap();
            match r.access.scope() {
                None => assert_eq!(
                    security,
                    &[serde_json::json!({})],
                    "{} {}",
                    r.method,
                    r.path
                ),
                Some(s) => {
                    assert_eq!(security.len(), 2, "{} {}", r.method, r.path);
                    assert_eq!(op["x-required-scope"], serde_json::to_value(s).unwrap());
                    assert!(
                        op["responses"]["401"].is_object(),
                        "{} {}",
                        r.method,
                        r.path
                    );
                }
            }
            assert!(op["responses"]["500"].is_object());
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["basic"]["scheme"], "basic");
    }

    #[test]
    fn the_error_kinds_are_the_enum() {
        let doc = doc();
        let kinds: BTreeSet<&str> = doc["components"]["schemas"]["ErrorKind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let want: BTreeSet<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, want);
    }
}
