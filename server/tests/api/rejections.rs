//! Every class of refusal answers the documented JSON error body (status,
//! `Content-Type: application/json`, `kind`), including the ones axum's own
//! extractors make (a query string, path or body they refuse, a body over the
//! upload limit), and `/openapi.json` is served without a token.

use super::*;

/// The status, content type and JSON body of a request sent as is.
async fn raw(
    h: &Harness,
    req: axum::http::request::Builder,
    body: Vec<u8>,
) -> (StatusCode, String, serde_json::Value) {
    let req = req.body(Body::from(body)).expect("request");
    let resp = app(h.state.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_string();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, content_type, json)
}

fn admin(h: &Harness, method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {}", h.admin))
}

#[tokio::test]
async fn every_rejection_class_is_a_json_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A 1 MiB upload limit, so that a body over it is cheap to send.
    let h = state_with(&dir, &["--max-upload-mib", "1"]).await;
    let over_limit = vec![b'x'; 1024 * 1024 + 1];
    let no_token = |m: Method, uri: &str| Request::builder().method(m).uri(uri);
    let cases: Vec<(
        &str,
        axum::http::request::Builder,
        Vec<u8>,
        StatusCode,
        &str,
    )> = vec![
        (
            "unknown route",
            admin(&h, Method::GET, "/v1/nothing-here"),
            vec![],
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "wrong method",
            admin(&h, Method::PATCH, "/v1/modules"),
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "body over the upload limit (a JSON route)",
            admin(&h, Method::POST, "/v1/builds"),
            over_limit.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "body over the upload limit (an upload)",
            admin(&h, Method::PUT, "/v1/modules/demo/1.0"),
            over_limit,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "malformed query string",
            admin(&h, Method::GET, "/v1/builds?limit=many"),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "query value out of its type's range",
            admin(&h, Method::GET, "/v1/audit?before=-1"),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "path parameter that is not UTF-8",
            admin(&h, Method::GET, "/v1/builds/%FF%FE"),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "invalid path parameter",
            admin(&h, Method::GET, "/v1/modules/..%2Fx/1.0"),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "malformed JSON",
            admin(&h, Method::POST, "/v1/builds").header("content-type", "application/json"),
            b"{\"name\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "missing JSON body",
            admin(&h, Method::POST, "/v1/tokens"),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "JSON of the wrong shape",
            admin(&h, Method::PUT, "/v1/modules/demo/settings"),
            br#"{"packages": "not a list"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "another content type",
            admin(&h, Method::POST, "/v1/builds").header("content-type", "application/xml"),
            b"<build/>".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "no token",
            no_token(Method::GET, "/v1/builds"),
            vec![],
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "a token that is not one",
            no_token(Method::GET, "/v1/builds").header("authorization", "Bearer kmf_nope"),
            vec![],
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "an authorization scheme the server does not take",
            no_token(Method::GET, "/v1/builds").header("authorization", "Digest x"),
            vec![],
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ];
    for (what, req, body, want_status, want_kind) in cases {
        let (status, content_type, json) = raw(&h, req, body).await;
        assert_eq!(
            (status, content_type.as_str(), kind(&json)),
            (want_status, "application/json", want_kind),
            "{what}: {json}"
        );
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "{what}: a one-line message: {json}"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_is_public_and_lists_the_error_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = state(&dir).await;
    let req = Request::builder().uri("/openapi.json");
    let (status, content_type, doc) = raw(&h, req, vec![]).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, "application/json")
    );
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let kinds = doc["components"]["schemas"]["ErrorKind"]["enum"]
        .as_array()
        .expect("the ErrorKind enum");
    for k in ["not_found", "too_large", "compile_error", "no_dkms_conf"] {
        assert!(kinds.iter().any(|v| v == k), "{k} in {kinds:?}");
    }
    assert!(doc["paths"]["/v1/builds"]["post"]["requestBody"].is_object());
}
