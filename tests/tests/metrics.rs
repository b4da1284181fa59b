//! `GET /metrics` of the real server, parsed by the Prometheus project's own text
//! parser, before and after a real build, a cache hit, a failing build and a
//! download: every counter moved by exactly what happened.

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildResponse, BuildState, FailureKind, KernelInfo};
use kmodforge_e2e::promtext::{self, Scrape};
use kmodforge_e2e::{
    expect_failure, fixture, request, Client, Env, ServerOpts, BUILD_WAIT, KERNEL_A,
};
use reqwest::StatusCode;

use promtext::scrape;

/// Polls build `id` to its end; also returns how many `GET /v1/builds/{id}` it sent.
async fn wait_counting(client: &Client, id: &str) -> Result<(BuildResponse, f64)> {
    let started = std::time::Instant::now();
    let mut polls = 0.0;
    loop {
        let r = client.get_build(id).await?;
        polls += 1.0;
        if r.build.state.is_final() {
            return Ok((r, polls));
        }
        ensure!(started.elapsed() < BUILD_WAIT, "build {id} did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A series (name, labels) and how much it must have moved.
type Expected = (&'static str, Vec<(&'static str, &'static str)>, f64);

/// `after - before` of one series.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    Ok(after.value(name, labels)? - before.value(name, labels)?)
}

fn requests(
    route: &'static str,
    method: &'static str,
    status: &'static str,
) -> [(&'static str, &'static str); 3] {
    [("route", route), ("method", method), ("status", status)]
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_move_by_exactly_what_happened() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let c = &env.client;
    // Whether this engine has the builder image already decides whether one is prepared.
    let kernels: Vec<KernelInfo> = c.get("/v1/kernels").await?.json().await?;
    let builder_exists = kernels.iter().any(|k| k.kernel.as_str() == KERNEL_A);

    let before = scrape(c).await?;
    ensure!(before.kind_of("kmodforge_builds") == Some("counter"));
    ensure!(before.kind_of("kmodforge_builds_queued") == Some("gauge"));
    c.add_module("kmf-hello", "1.0", &fixture("hello")).await?;
    c.add_module("kmf-compile-error", "1.0", &fixture("compile-error"))
        .await?;

    // A real build: a cache miss.
    let req = request("kmf-hello", "1.0", KERNEL_A)?;
    let (status, first) = c.build(&req).await?;
    ensure!(status == StatusCode::ACCEPTED, "{status} {first:?}");
    let (built, polls_ok) = wait_counting(c, &first.build.id).await?;
    ensure!(
        built.build.state == BuildState::Succeeded,
        "{:?}",
        built.build
    );
    // The same request again: a cache hit, no job.
    let (status, hit) = c.build(&req).await?;
    ensure!(status == StatusCode::OK && hit.cached, "{status} {hit:?}");
    // A failing build: a cache miss too.
    let bad = request("kmf-compile-error", "1.0", KERNEL_A)?;
    let (status, second) = c.build(&bad).await?;
    ensure!(status == StatusCode::ACCEPTED, "{status} {second:?}");
    let (failed, polls_failed) = wait_counting(c, &second.build.id).await?;
    expect_failure(&failed, FailureKind::CompileError)?;
    let ko = c
        .download("kmf-hello", "1.0", KERNEL_A, "kmf_hello.ko")
        .await?;

    let after = scrape(c).await?;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let ko_bytes = ko.len() as f64;
    let want: Vec<Expected> = vec![
        (
            "kmodforge_builds_total",
            vec![("outcome", "succeeded")],
            1.0,
        ),
        ("kmodforge_builds_total", vec![("outcome", "failed")], 1.0),
        (
            "kmodforge_builds_total",
            vec![("outcome", "not_applicable")],
            0.0,
        ),
        (
            "kmodforge_build_failures_total",
            vec![("kind", "compile_error")],
            1.0,
        ),
        ("kmodforge_cache_hits_total", vec![], 1.0),
        ("kmodforge_cache_misses_total", vec![], 2.0),
        (
            "kmodforge_build_duration_seconds_count",
            vec![("outcome", "succeeded")],
            1.0,
        ),
        (
            "kmodforge_build_duration_seconds_count",
            vec![("outcome", "failed")],
            1.0,
        ),
        (
            "kmodforge_build_duration_seconds_bucket",
            vec![("outcome", "failed"), ("le", "+Inf")],
            1.0,
        ),
        (
            "kmodforge_http_requests_total",
            requests("/v1/builds", "POST", "202").to_vec(),
            2.0,
        ),
        (
            "kmodforge_http_requests_total",
            requests("/v1/builds", "POST", "200").to_vec(),
            1.0,
        ),
        (
            "kmodforge_http_requests_total",
            requests("/v1/builds/{id}", "GET", "200").to_vec(),
            polls_ok + polls_failed,
        ),
        (
            "kmodforge_http_requests_total",
            requests("/v1/modules/{name}/{version}", "PUT", "201").to_vec(),
            2.0,
        ),
        (
            "kmodforge_http_requests_total",
            requests(
                "/v1/artifacts/{name}/{version}/{krel}/files/{file}",
                "GET",
                "200",
            )
            .to_vec(),
            1.0,
        ),
        (
            "kmodforge_http_requests_total",
            requests("/metrics", "GET", "200").to_vec(),
            1.0,
        ),
        (
            "kmodforge_http_request_duration_seconds_count",
            vec![("route", "/v1/builds"), ("method", "POST")],
            3.0,
        ),
        (
            "kmodforge_artifact_bytes_served_total",
            vec![("kind", "file")],
            ko_bytes,
        ),
        (
            "kmodforge_image_preparations_total",
            vec![("kind", "builder"), ("outcome", "success")],
            if builder_exists { 0.0 } else { 1.0 },
        ),
        (
            "kmodforge_image_preparations_total",
            vec![("kind", "verifier"), ("outcome", "success")],
            0.0,
        ),
    ];
    for (name, labels, value) in &want {
        let got = d(name, labels)?;
        ensure!(
            got == *value,
            "{name}{labels:?} moved by {got}, expected {value}"
        );
    }
    // The histogram's sum is the record's own duration, to the bit.
    let seconds = built.build.seconds.context("the record's seconds")?;
    let sum = after.value(
        "kmodforge_build_duration_seconds_sum",
        &[("outcome", "succeeded")],
    )?;
    ensure!(sum == seconds, "sum {sum} vs the record's {seconds} s");
    for gauge in ["kmodforge_builds_queued", "kmodforge_builds_running"] {
        ensure!(
            after.get(gauge, &[])? == Some(0.0),
            "{gauge} after the builds"
        );
    }
    // Route templates only: no build id, module file or path in any label.
    for s in &after.samples {
        for v in s.labels.values() {
            ensure!(
                !v.contains(&first.build.id) && !v.contains("kmf_hello.ko"),
                "a raw path in {s:?}"
            );
        }
    }
    Ok(())
}
