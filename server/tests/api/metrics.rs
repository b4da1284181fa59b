//! `GET /metrics` through the router: the access it needs, its content type, and
//! HTTP requests counted by route template (never the raw path), method and status.

use super::*;

/// `GET uri` with `token`: status, content type and body text.
async fn get_text(h: &Harness, token: Option<&str>, uri: &str) -> (StatusCode, String, String) {
    let mut req = Request::builder().method(Method::GET).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Body::empty()).expect("request");
    let resp = app(h.state.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ctype, String::from_utf8_lossy(&bytes).into_owned())
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_need_a_read_token_and_count_requests_by_route_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = state(&dir).await;
    for _ in 0..2 {
        let (status, _) = call(&h, Method::GET, "/v1/modules", Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = call(&h, Method::GET, "/v1/builds/feedfacefeedface", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&h, Method::GET, "/no/such/route/secret-name", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, body) = get_text(&h, None, "/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, ctype, text) = get_text(&h, Some(&h.admin), "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    for (series, want) in [
        (
            r#"kmodforge_http_requests_total{route="/v1/modules",method="GET",status="200"}"#,
            2.0,
        ),
        (
            r#"kmodforge_http_requests_total{route="/v1/builds/{id}",method="GET",status="404"}"#,
            1.0,
        ),
        (
            r#"kmodforge_http_requests_total{route="unmatched",method="GET",status="404"}"#,
            1.0,
        ),
        (
            r#"kmodforge_http_requests_total{route="/metrics",method="GET",status="401"}"#,
            1.0,
        ),
        (
            r#"kmodforge_http_request_duration_seconds_count{route="/v1/modules",method="GET"}"#,
            2.0,
        ),
        ("kmodforge_builds_queued", 0.0),
        ("kmodforge_builds_running", 0.0),
        (r#"kmodforge_builds_total{outcome="succeeded"}"#, 0.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    for raw in ["feedfacefeedface", "secret-name"] {
        assert!(
            !text.contains(raw),
            "a raw path leaked into the metrics: {raw}\n{text}"
        );
    }
}
