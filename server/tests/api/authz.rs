//! Authorisation of every route in the router's own table: no token, a token of
//! each scope, and a token limited to another module, each answered 401 / 403 /
//! allowed as the scope table says. Requests are shaped so that an allowed one
//! fails validation afterwards (nothing is built or stored).

use super::*;
use kmodforge_api::auth::Scope;
use kmodforge_server::http::{Access, RouteSpec};
use kmodforge_server::route_table;

const MODULE: &str = "kmfhello";
/// A kernel no image can be made for: an allowed request stops at validation.
const KERNEL: &str = "5.99.0-1-amd64";

/// A concrete request for a route: its URI and a body that is refused after auth.
fn request_for(spec: &RouteSpec) -> (String, Vec<u8>) {
    let mut uri = spec
        .path
        .replace("{name}", MODULE)
        .replace("{version}", "1.0")
        .replace("{krel}", KERNEL)
        .replace("{id}", "0123456789abcdef")
        .replace("{file}", "x.ko")
        .replace("{sha256}", &"0".repeat(64))
        .replace("{token}", "nobody")
        .replace("{suite}", "kmodforge")
        .replace("{component}", "main")
        .replace("{dir}", "binary-amd64")
        .replace("{letter}", "k")
        .replace("{package}", "kmodforge-nothing")
        .replace("{arch}", "amd64");
    assert!(
        !uri.contains('{'),
        "route {} has a parameter this test does not know",
        spec.path
    );
    let body = match (spec.method.as_str(), spec.path) {
        ("POST", "/v1/builds") => {
            format!(r#"{{"name":"{MODULE}","version":"1.0","kernel":"{KERNEL}"}}"#).into_bytes()
        }
        ("POST", "/v1/build") => {
            uri.push_str(&format!("?kernel={KERNEL}&name={MODULE}&version=1.0"));
            b"not a tar".to_vec()
        }
        ("PUT", "/v1/modules/{name}/settings") => br#"{"bogus": 1}"#.to_vec(),
        ("PUT", _) | ("POST", _) => b"not what this route takes".to_vec(),
        _ => Vec::new(),
    };
    (uri, body)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Unauthorized,
    Forbidden,
    Allowed,
}

/// What the scope table says for a caller (`None`: no token; else its scope and
/// whether it is limited to another module).
fn expected(spec: &RouteSpec, who: Option<(Scope, bool)>) -> Expect {
    let Some(needed) = spec.access.scope() else {
        return Expect::Allowed;
    };
    let Some((scope, limited_elsewhere)) = who else {
        return Expect::Unauthorized;
    };
    let module_route = matches!(spec.access, Access::Module(_) | Access::ModuleInRequest(_));
    if !scope.includes(needed) || (limited_elsewhere && module_route) {
        return Expect::Forbidden;
    }
    Expect::Allowed
}

/// One caller of the matrix: a label, its token, and its scope and limit.
struct Who {
    label: String,
    token: Option<String>,
    grant: Option<(Scope, bool)>,
}

async fn token(h: &Harness, name: &str, scope: Scope, modules: &[&str]) -> String {
    let body = serde_json::json!({"name": name, "scope": scope, "modules": modules});
    let (status, json) = call(h, Method::POST, "/v1/tokens", body.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    json["token"].as_str().expect("token").to_string()
}

#[tokio::test]
async fn every_route_answers_as_the_scope_table_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = state(&dir).await;
    let mut callers = vec![Who {
        label: "no token".into(),
        token: None,
        grant: None,
    }];
    for scope in Scope::ALL {
        callers.push(Who {
            label: format!("{scope} token"),
            token: Some(token(&h, &format!("t-{scope}"), scope, &[]).await),
            grant: Some((scope, false)),
        });
    }
    for scope in [Scope::Build, Scope::Publish] {
        callers.push(Who {
            label: format!("{scope} token for other-*"),
            token: Some(token(&h, &format!("other-{scope}"), scope, &["other-*"]).await),
            grant: Some((scope, true)),
        });
    }
    let table = route_table();
    assert!(table.len() >= 20, "the table lists every route: {table:?}");
    let mut checked = 0;
    for spec in &table {
        for who in &callers {
            let (uri, body) = request_for(spec);
            let (status, json) =
                call_as(&h, who.token.as_deref(), spec.method.clone(), &uri, body).await;
            let want = expected(spec, who.grant);
            let what = format!(
                "{} {} with {}: {status} {json}",
                spec.method, spec.path, who.label
            );
            match want {
                Expect::Unauthorized => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
                    assert_eq!(kind(&json), "unauthorized", "{what}");
                }
                Expect::Forbidden => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                    assert_eq!(kind(&json), "forbidden", "{what}");
                }
                Expect::Allowed => {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{what}"
                    );
                    // 502: the archive scan's upstream is unreachable here, by design.
                    assert!(
                        status.as_u16() < 500 || status == StatusCode::BAD_GATEWAY,
                        "{what}"
                    );
                }
            }
            if want != Expect::Allowed {
                let needed = spec.access.scope().map(|s| s.as_str());
                assert_eq!(
                    json["error"]["scope"].as_str(),
                    needed,
                    "names the scope: {what}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, table.len() * callers.len());
    let (_, modules) = call(&h, Method::GET, "/v1/modules", Vec::new()).await;
    assert_eq!(modules, serde_json::json!([]), "nothing was stored");
}

#[tokio::test]
async fn refusals_name_the_scope_and_the_module_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = state(&dir).await;
    let hello = token(&h, "hello-ci", Scope::Publish, &["kmfhello*"]).await;
    let tree = tar_of(&[("dkms.conf", CONF), ("demo.c", "int x;\n")]);
    let (status, json) = call_as(
        &h,
        Some(&hello),
        Method::PUT,
        "/v1/modules/r8152/1.0",
        tree.clone(),
    )
    .await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{json}"
    );
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("kmfhello*") && message.contains("r8152"),
        "{message}"
    );
    let (status, json) = call_as(
        &h,
        Some(&hello),
        Method::PUT,
        "/v1/modules/kmfhello/1.0",
        tree,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");

    // The refused attempt is in the audit log under the token's name.
    let (_, log) = call(&h, Method::GET, "/v1/audit?module=r8152", Vec::new()).await;
    let entry = &log[0];
    assert_eq!(
        (
            entry["actor"].as_str(),
            entry["action"].as_str(),
            entry["outcome"].as_str()
        ),
        (Some("hello-ci"), Some("module_add"), Some("refused")),
        "{log}"
    );

    // A token in the query string is refused even with a valid header.
    let uri = format!("/v1/modules?token={hello}");
    let (status, json) = call_as(&h, Some(&hello), Method::GET, &uri, Vec::new()).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "{json}"
    );
    let uri = format!("/v1/modules?x={hello}");
    let (status, _) = call_as(&h, None, Method::GET, &uri, Vec::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Unknown routes and wrong methods are JSON too.
    let (status, json) = call(&h, Method::GET, "/v2/nothing", Vec::new()).await;
    assert_eq!((status, kind(&json)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, json) = call(&h, Method::PATCH, "/v1/modules", Vec::new()).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn anonymous_reads_are_an_explicit_opt_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = <Config as clap::Parser>::parse_from([
        "kmodforge-server",
        "--archive-interval-secs",
        "0",
        "--anonymous-read",
        "--data-dir",
        dir.path().to_str().expect("utf-8 temp path"),
    ]);
    let state = init(&config).await.expect("server state");
    let h = Harness {
        state,
        admin: String::new(),
    };
    let (status, _) = call_as(&h, None, Method::GET, "/v1/modules", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, json) =
        call_as(&h, None, Method::PUT, "/v1/modules/demo/1.0", b"x".to_vec()).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(json["error"]["scope"], "publish");
    let (status, _) = call_as(
        &h,
        Some("kmf_wrong"),
        Method::GET,
        "/v1/modules",
        Vec::new(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a wrong token is not anonymous"
    );
}

/// The policy itself, written out: a change to the router's table must change
/// this list too (and the README's endpoint table with it).
#[test]
fn the_scope_table_is_the_documented_one() {
    use Access::{Module, ModuleInRequest, Public, Scope as S};
    use Scope::{Admin, Build, Publish, Read};
    let want: Vec<(&str, &str, Access)> = vec![
        ("GET", "/healthz", Public),
        ("GET", "/metrics", S(Read)),
        ("GET", "/openapi.json", Public),
        ("GET", "/", S(Read)),
        ("GET", "/v1/matrix", S(Read)),
        ("POST", "/v1/kernels/{krel}/prebuild", S(Admin)),
        ("POST", "/v1/archive/scan", S(Admin)),
        ("POST", "/v1/gc", S(Admin)),
        ("GET", "/apt/kmodforge.gpg", Public),
        ("GET", "/apt/kmodforge.asc", Public),
        ("GET", "/apt/dists/{suite}/{file}", S(Read)),
        (
            "GET",
            "/apt/dists/{suite}/{component}/{dir}/{file}",
            S(Read),
        ),
        (
            "GET",
            "/apt/pool/{component}/{letter}/{package}/{file}",
            S(Read),
        ),
        ("GET", "/v1/apt/packages", S(Read)),
        ("PUT", "/v1/apt/packages", S(Admin)),
        (
            "DELETE",
            "/v1/apt/packages/{package}/{version}/{arch}",
            S(Admin),
        ),
        ("GET", "/v1/keys", Public),
        ("GET", "/v1/keys/module-signing.der", Public),
        ("GET", "/v1/keys/module-signing.pem", Public),
        ("GET", "/v1/keys/module-signing/{sha256}", Public),
        ("GET", "/v1/keys/manifest.pub", Public),
        ("GET", "/v1/kernels", S(Read)),
        ("PUT", "/v1/kernels/{krel}", S(Admin)),
        ("GET", "/v1/modules", S(Read)),
        ("PUT", "/v1/modules/{name}/settings", Module(Publish)),
        ("GET", "/v1/modules/{name}/settings", S(Read)),
        ("DELETE", "/v1/modules/{name}/settings", Module(Publish)),
        ("PUT", "/v1/modules/{name}/{version}", Module(Publish)),
        ("GET", "/v1/modules/{name}/{version}", S(Read)),
        ("DELETE", "/v1/modules/{name}/{version}", S(Admin)),
        ("POST", "/v1/builds", ModuleInRequest(Build)),
        ("GET", "/v1/builds", S(Read)),
        ("GET", "/v1/builds/{id}", S(Read)),
        ("GET", "/v1/builds/{id}/log", S(Read)),
        ("GET", "/v1/artifacts/{name}/{version}/{krel}", S(Read)),
        (
            "GET",
            "/v1/artifacts/{name}/{version}/{krel}/modules.tar",
            S(Read),
        ),
        (
            "GET",
            "/v1/artifacts/{name}/{version}/{krel}/files/{file}",
            S(Read),
        ),
        (
            "GET",
            "/v1/artifacts/{name}/{version}/dkms-binaries.tar.gz",
            S(Read),
        ),
        ("GET", "/v1/blobs/{sha256}", S(Read)),
        ("POST", "/v1/build", ModuleInRequest(Publish)),
        ("POST", "/v1/tokens", S(Admin)),
        ("GET", "/v1/tokens", S(Admin)),
        ("DELETE", "/v1/tokens/{token}", S(Admin)),
        ("GET", "/v1/audit", S(Admin)),
    ];
    let table = route_table();
    let got: Vec<(&str, &str, Access)> = table
        .iter()
        .map(|r| (r.method.as_str(), r.path, r.access))
        .collect();
    assert_eq!(got, want);
}
