//! HTTP API tests through `app(state)` with `oneshot` (no socket): input
//! validation, error bodies, module registration semantics. They use the real
//! Docker engine only to construct the state (no container is started); builds
//! themselves are covered by the end-to-end tests in `tests/`.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kmodforge_server::{app, init, AppState, Config};

#[path = "api/authz.rs"]
mod authz;
#[path = "api/metrics.rs"]
mod metrics;
#[path = "api/rejections.rs"]
mod rejections;
use tower::ServiceExt;

/// The handlers' state and the admin token the first start wrote.
#[derive(Clone)]
struct Harness {
    state: AppState,
    admin: String,
}

async fn state(dir: &tempfile::TempDir) -> Harness {
    state_with(dir, &[]).await
}

/// [`state`] with more server flags.
async fn state_with(dir: &tempfile::TempDir, flags: &[&str]) -> Harness {
    let mut args = vec![
        "kmodforge-server",
        "--archive-interval-secs",
        "0",
        // A scan asked for (POST /v1/archive/scan) fails at once: no network in these tests.
        "--archive",
        "http://127.0.0.1:1 bookworm",
        "--data-dir",
        dir.path().to_str().expect("utf-8 temp path"),
    ];
    args.extend_from_slice(flags);
    let config = <Config as clap::Parser>::parse_from(args);
    let state = init(&config)
        .await
        .expect("server state (is the Docker engine running? these tests need it)");
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin.token");
    Harness {
        state,
        admin: admin.trim().to_string(),
    }
}

/// A request with the admin token.
async fn call(
    h: &Harness,
    method: Method,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    call_as(h, Some(&h.admin), method, uri, body).await
}

/// A request with `token` (none: no Authorization header).
async fn call_as(
    h: &Harness,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Body::from(body)).expect("request");
    let resp = app(h.state.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn kind(v: &serde_json::Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or("<no error kind>")
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, content.as_bytes())
            .expect("append");
    }
    b.into_inner().expect("tar")
}

/// A tar whose single entry is literally named `../evil` (tar::Builder refuses to write it).
fn tar_with_parent_dir() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    let name = b"../evil";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"hi"[..]).expect("append");
    b.into_inner().expect("tar")
}

const CONF: &str = "PACKAGE_NAME=demo\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=demo\nDEST_MODULE_LOCATION[0]=/extra\n";

#[tokio::test]
async fn bad_archives_are_400_with_a_kind_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = state(&dir).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "random bytes",
            b"this is not a tar at all, not even close".repeat(20),
            "not_a_tar",
        ),
        ("parent dir", tar_with_parent_dir(), "parent_dir"),
        (
            "no dkms.conf",
            tar_of(&[("Makefile", "obj-m := x.o\n")]),
            "no_dkms_conf",
        ),
    ];
    for (what, body, want) in cases {
        let (status, json) = call(&s, Method::PUT, "/v1/modules/demo/1.0", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {json}");
        assert_eq!(kind(&json), want, "{what}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.contains('\n')),
            "{what}: one line"
        );
    }
    let (status, json) = call(&s, Method::PUT, "/v1/modules/demo/1.0", Vec::new()).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (_, list) = call(&s, Method::GET, "/v1/modules", Vec::new()).await;
    assert_eq!(list, serde_json::json!([]), "nothing stored");
    let (status, _) = call(&s, Method::GET, "/healthz", Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "still serving");
}

#[tokio::test]
async fn module_registration_is_idempotent_and_conflicts_are_409() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = state(&dir).await;
    let tree = tar_of(&[
        ("demo-1.0/dkms.conf", CONF),
        ("demo-1.0/demo.c", "int x;\n"),
    ]);
    let (status, first) = call(&s, Method::PUT, "/v1/modules/demo/1.0", tree.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["declared"]["modules"], serde_json::json!(["demo"]));
    assert_eq!(first["digest"].as_str().map(str::len), Some(64));

    let (status, again) = call(&s, Method::PUT, "/v1/modules/demo/1.0", tree).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (again["digest"].clone(), again["created"].clone()),
        (first["digest"].clone(), false.into())
    );

    let other = tar_of(&[("dkms.conf", CONF), ("demo.c", "int y;\n")]);
    let (status, json) = call(&s, Method::PUT, "/v1/modules/demo/1.0", other).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::CONFLICT, "conflict"),
        "{json}"
    );
    let (_, shown) = call(&s, Method::GET, "/v1/modules/demo/1.0", Vec::new()).await;
    assert_eq!(
        shown["digest"], first["digest"],
        "the conflict changed nothing"
    );

    let (status, _) = call(&s, Method::DELETE, "/v1/modules/demo/1.0", Vec::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, json) = call(&s, Method::GET, "/v1/modules/demo/1.0", Vec::new()).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::NOT_FOUND, "unknown_module")
    );
}

#[tokio::test]
async fn bad_requests_name_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = state(&dir).await;
    let cases: Vec<(Method, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            Method::PUT,
            "/v1/modules/..%2Fx/1.0",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            Method::POST,
            "/v1/builds",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/builds",
            br#"{"name":"nope","version":"1","kernel":"6.1.0-47-amd64"}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "unknown_module",
        ),
        (
            Method::POST,
            "/v1/builds",
            br#"{"name":"nope","version":"1","kernel":"../../etc"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/builds/0123456789abcdef",
            vec![],
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/artifacts/nope/1/6.1.0-47-amd64",
            vec![],
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/artifacts/nope/1/bad%20krel",
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            Method::GET,
            "/v1/blobs/zz",
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/build",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/kernels/not-a-kernel",
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            Method::PUT,
            "/v1/kernels/5.99.0-1-amd64",
            vec![],
            StatusCode::BAD_REQUEST,
            "unsupported_kernel",
        ),
    ];
    for (method, uri, body, want_status, want_kind) in cases {
        let (status, json) = call(&s, method.clone(), uri, body).await;
        assert_eq!(
            (status, kind(&json)),
            (want_status, want_kind),
            "{method} {uri}: {json}"
        );
    }
}

#[tokio::test]
async fn unsupported_arch_is_rejected_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = state(&dir).await;
    let tree = tar_of(&[("dkms.conf", CONF), ("demo.c", "int x;\n")]);
    let (status, _) = call(&s, Method::PUT, "/v1/modules/demo/1.0", tree).await;
    assert_eq!(status, StatusCode::CREATED);
    let body = br#"{"name":"demo","version":"1.0","kernel":"6.1.0-47-amd64","arch":"aarch64"}"#;
    let (status, json) = call(&s, Method::POST, "/v1/builds", body.to_vec()).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::BAD_REQUEST, "unsupported_arch"),
        "{json}"
    );
}

#[tokio::test]
async fn a_built_version_keeps_its_source_after_a_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = state(&dir).await;
    let tree = tar_of(&[("dkms.conf", CONF), ("demo.c", "int x;\n")]);
    let (status, added) = call(&h, Method::PUT, "/v1/modules/demo/1.0", tree.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let digest = added["digest"].as_str().expect("digest").to_string();
    // What storing the first artifact does (the end-to-end tests build for real).
    let (name, version) = (
        kmodforge_api::names::ModuleName::parse("demo").expect("name"),
        kmodforge_api::names::ModuleVersion::parse("1.0").expect("version"),
    );
    h.state
        .store
        .records
        .pin_digest(&name, &version, &digest, "2026-01-01T00:00:00Z")
        .await
        .expect("pin");
    let (status, _) = call(&h, Method::DELETE, "/v1/modules/demo/1.0", Vec::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let other = tar_of(&[("dkms.conf", CONF), ("demo.c", "int evil;\n")]);
    let (status, json) = call(&h, Method::PUT, "/v1/modules/demo/1.0", other.clone()).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::CONFLICT, "immutable_version"),
        "{json}"
    );
    assert!(json["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains(&digest));
    let (status, json) = call(&h, Method::GET, "/v1/modules/demo/1.0", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing registered: {json}");

    // A publish token cannot override; an admin can, explicitly.
    let body = serde_json::json!({"name": "pub", "scope": "publish"}).to_string();
    let (_, created) = call(&h, Method::POST, "/v1/tokens", body.into_bytes()).await;
    let publisher = created["token"].as_str().expect("token").to_string();
    let uri = "/v1/modules/demo/1.0?replace=true";
    let (status, json) = call_as(&h, Some(&publisher), Method::PUT, uri, other.clone()).await;
    assert_eq!(
        (status, kind(&json)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{json}"
    );
    assert_eq!(json["error"]["scope"], "admin");
    let (status, json) = call(&h, Method::PUT, uri, other).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");

    let (_, log) = call(&h, Method::GET, "/v1/audit?module=demo", Vec::new()).await;
    let rows: Vec<(String, String, String)> = log
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("actor"), s("action"), s("outcome"))
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("admin", "module_add", "done"),
        ("pub", "module_add", "refused"),
        ("admin", "module_add", "refused"),
        ("admin", "module_delete", "done"),
        ("admin", "module_add", "done"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(rows, want, "{log}");
}
