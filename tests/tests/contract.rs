//! The API contract against the real server over loopback: every refusal is the
//! documented JSON error, and schemathesis, fuzzing the server from its own
//! `/openapi.json`, finds no 5xx and no answer the document does not describe.
//!
//! schemathesis comes from PyPI into `~/.cache/kmodforge/tools/schemathesis`
//! (`scripts/install-deps.sh`); `KMODFORGE_SCHEMATHESIS` names another `st`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kmodforge_api::wire::ErrorKind;
use kmodforge_e2e::{error_body, fixture, Env, ServerOpts};
use reqwest::{Method, StatusCode};

/// The `st` executable: `KMODFORGE_SCHEMATHESIS`, else the tools cache's.
fn schemathesis() -> Result<PathBuf> {
    let st = match std::env::var_os("KMODFORGE_SCHEMATHESIS") {
        Some(p) => PathBuf::from(p),
        None => {
            let tools = match std::env::var_os("KMODFORGE_TOOLS") {
                Some(t) => PathBuf::from(t),
                None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                    .join(".cache/kmodforge/tools"),
            };
            tools.join("schemathesis/bin/st")
        }
    };
    ensure!(
        st.is_file(),
        "schemathesis is not installed at {} (run scripts/install-deps.sh)",
        st.display()
    );
    Ok(st)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_over_a_real_port_is_a_json_error() -> Result<()> {
    // A 1 MiB upload limit, so that a body over it is cheap to send.
    let env = Env::start(ServerOpts::default().env("KMODFORGE_MAX_UPLOAD_MIB", 1)).await?;
    let http = env.client.http();
    let token = env.server.admin_token()?;
    let url = |path: &str| env.client.url(path);
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, ErrorKind)> = vec![
        (
            "unknown route",
            http.get(url("/v1/nothing-here")),
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
        ),
        (
            "wrong method",
            http.request(Method::PATCH, url("/v1/builds")),
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::MethodNotAllowed,
        ),
        (
            "malformed query string",
            http.get(url("/v1/builds?limit=-3")),
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
        ),
        (
            "path parameter that is not UTF-8",
            http.get(url("/v1/builds/%C3%28/log")),
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
        ),
        (
            "body over the upload limit",
            http.post(url("/v1/builds"))
                .header("content-type", "application/json")
                .body(vec![b' '; 1024 * 1024 + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
        ),
        (
            "malformed JSON",
            http.post(url("/v1/tokens"))
                .header("content-type", "application/json")
                .body("{\"name\":"),
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
        ),
    ];
    for (what, req, want_status, want_kind) in cases {
        // The admin token on each, so that only the fault under test is refused.
        let resp = req
            .bearer_auth(&token)
            .send()
            .await
            .with_context(|| what.to_string())?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_string();
        let (status, body) = error_body(resp).await.with_context(|| what.to_string())?;
        ensure!(
            status == want_status
                && content_type == "application/json"
                && body.error.kind == want_kind,
            "{what}: expected {want_status} {want_kind} as JSON, got {status} {content_type} {:?}",
            body.error
        );
    }
    let resp = env
        .server
        .client_with(None)?
        .get("/v1/builds")
        .await
        .context("no token")?;
    let (status, body) = error_body(resp).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED && body.error.kind == ErrorKind::Unauthorized,
        "no token: {status} {:?}",
        body.error
    );
    Ok(())
}

/// Operations left out of the fuzzing, and why: each would start real work that
/// has nothing to do with the contract and takes minutes (a Docker image build for
/// a kernel, a prebuild of every module, a download of Debian's archive indexes).
const EXCLUDED_OPERATIONS: &[&str] = &[
    // PUT /v1/kernels/{krel}: prepares the kernel's builder (and verifier) image.
    "prepare_kernel",
    // POST /v1/kernels/{krel}/prebuild: builds every AUTOINSTALL module for the kernel.
    "prebuild",
    // POST /v1/archive/scan: fetches the watched Debian archives' indexes.
    "scan",
];

/// Test cases per operation and phase: enough to reach every status an operation
/// documents, few enough that the run stays within a minute or two on two CPUs.
const MAX_EXAMPLES: u32 = 60;

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_nothing_off_the_contract() -> Result<()> {
    let st = schemathesis()?;
    let env = Env::start(ServerOpts::default()).await?;
    // Something to list, so that list answers are checked against their schemas with
    // real entries: a registered module, its settings, a second token (and the audit
    // entries of all of them). The same source also under the name and version the
    // document's examples use, so that the examples reach a real record (the DELETE
    // example removes that one; kmf-hello stays for the lists).
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    env.client
        .set_settings("kmf-hello", &serde_json::json!({"packages": ["bc"]}))
        .await?;
    env.client
        .add_module("v4l2loopback", "0.12.7", &fixture("hello"))
        .await?;
    env.server.token("reader", "read", &[]).await?;
    let token = env.server.admin_token()?;
    let report = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(&st);
    cmd.arg("run")
        .arg(env.client.url("/openapi.json"))
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--checks")
        .arg(
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        )
        .arg("--phases")
        .arg("examples,coverage,fuzzing,stateful")
        .arg("--max-examples")
        .arg(MAX_EXAMPLES.to_string())
        // One worker: with two, hypothesis's ast.parse calls race in CPython 3.11
        // before 3.11.8 ("AST constructor recursion depth mismatch", a SystemError that
        // schemathesis reports as a runtime error of the run).
        .arg("--workers")
        .arg("1")
        .arg("--request-timeout")
        .arg("30")
        .arg("--generation-database")
        .arg("none")
        .arg("--no-color")
        .arg("--report-dir")
        .arg(report.path());
    for op in EXCLUDED_OPERATIONS {
        cmd.arg("--exclude-operation-id").arg(op);
    }
    // schemathesis keeps a cache (`.schemathesis/`) in its working directory: a
    // temporary one, not the source tree.
    cmd.current_dir(report.path()).kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(10 * 60), cmd.output())
        .await
        .context("schemathesis ran for more than 10 minutes")?
        .with_context(|| format!("running {}", st.display()))?;
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    eprintln!("{out}{err}");
    if !run.status.success() {
        bail!(
            "schemathesis failed ({}); the server's log:\n{}",
            run.status,
            tail(&env.server.log_text(), 60)
        );
    }
    // A run that tested nothing must not pass: its summary counts the operations.
    let tested =
        summary_number(&out, "Tested:").context("no `Tested: N` line in schemathesis's summary")?;
    ensure!(
        tested >= 25,
        "schemathesis tested only {tested} operations:\n{out}"
    );
    Ok(())
}

/// The number after `label` on a line of the summary (`Tested: 29`).
fn summary_number(out: &str, label: &str) -> Option<u32> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.trim().parse().ok())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
