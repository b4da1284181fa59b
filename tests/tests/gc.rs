//! Retention over HTTP on a real server: `POST /v1/gc` removes expired build
//! records and their logs, keeps what an artifact or a running build uses, and
//! removes the images and `/usr` volumes of kernels unused for long.
//!
//! The Docker engine is shared: these tests never remove an image they did not
//! make. A server only touches kernels it has records of, so the second test's
//! server (which knows one made-up kernel) can only ever remove that kernel's
//! test-made image; the first test's server runs its collection while a build of
//! KERNEL_A is in flight, which protects KERNEL_A's images.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kmodforge_api::wire::{BuildState, FailureKind};
use kmodforge_e2e::promtext::{scrape, Scrape};
use kmodforge_e2e::{
    check_downloads, e2e_fixture, expect_failure, fixture, request, DockerProbe, Env, ServerOpts,
    KERNEL_A,
};
use reqwest::StatusCode;
use serde_json::Value;

/// How much each GC counter moved between two scrapes.
fn gc_moved(before: &Scrape, after: &Scrape, what: &str) -> Result<f64> {
    let labels = [("what", what)];
    Ok(after.value("kmodforge_gc_freed_total", &labels)?
        - before.value("kmodforge_gc_freed_total", &labels)?)
}

fn strings(report: &Value, field: &str) -> Vec<String> {
    report[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `/usr` volumes of the image `id` (the label `kmodforge.image`).
fn volumes_of(id: &str) -> Result<Vec<String>> {
    let out = Command::new("docker")
        .args(["volume", "ls", "-q", "--filter"])
        .arg(format!("label=kmodforge.image={id}"))
        .output()
        .context("docker volume ls")?;
    ensure!(out.status.success(), "docker volume ls: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn image_exists(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_records_go_what_artifacts_and_running_builds_use_stays() -> Result<()> {
    let env = Env::start(
        ServerOpts::default()
            .env("KMODFORGE_RETAIN_BUILDS", "1s")
            .env("KMODFORGE_RETAIN_KERNELS_UNUSED", "0s")
            .env("KMODFORGE_GC_INTERVAL_SECS", 0),
    )
    .await?;
    let c = &env.client;
    // A build that made an artifact, and one that failed (its record and log are garbage).
    c.add_module("kmf-gc-hello", "1.0", &fixture("hello"))
        .await?;
    let (_, made) = c.build(&request("kmf-gc-hello", "1.0", KERNEL_A)?).await?;
    let made = c.wait(&made.build.id).await?;
    ensure!(made.build.state == BuildState::Succeeded, "{made:?}");
    c.add_module("kmf-gc-broken", "1.0", &fixture("compile-error"))
        .await?;
    let (_, broken) = c.build(&request("kmf-gc-broken", "1.0", KERNEL_A)?).await?;
    let broken = c.wait(&broken.build.id).await?;
    expect_failure(&broken, FailureKind::CompileError)?;
    ensure!(!c.build_log(&broken.build.id).await?.is_empty(), "a log");

    // A build that runs for a while (its make prints for 10 s), on KERNEL_A.
    c.add_module("kmf-gc-slow", "1.0", &e2e_fixture("live-log"))
        .await?;
    let (_, slow) = c.build(&request("kmf-gc-slow", "1.0", KERNEL_A)?).await?;
    let slow = c
        .wait_for(&slow.build.id, kmodforge_e2e::BUILD_WAIT, |r| {
            r.build.state != BuildState::Queued
        })
        .await?;
    ensure!(slow.build.state == BuildState::Running, "{slow:?}");
    let image = slow.build.image_id.clone();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // A dry run names the expired record and removes nothing.
    let dry = c.gc(true).await?;
    ensure!(dry["dry_run"] == true, "{dry}");
    ensure!(
        strings(&dry, "builds") == [broken.build.id.clone()],
        "{dry}"
    );
    ensure!(
        c.has_build(&broken.build.id).await?,
        "dry run removed a record"
    );

    let builder = env_builder_image().await?;
    let volumes_before = volumes_of(&builder)?;
    let metrics_before = scrape(c).await?;
    let report = c.gc(false).await?;
    eprintln!("gc report: {report}");
    // The metrics moved by exactly what the collection says it freed.
    let metrics_after = scrape(c).await?;
    let runs = |m: &Scrape| m.value("kmodforge_gc_runs_total", &[]);
    ensure!(
        runs(&metrics_after)? - runs(&metrics_before)? == 1.0,
        "gc runs"
    );
    ensure!(
        gc_moved(&metrics_before, &metrics_after, "records")? == 1.0,
        "records"
    );
    ensure!(
        gc_moved(&metrics_before, &metrics_after, "logs")? == 1.0,
        "logs"
    );
    let bytes = |m: &Scrape| m.value("kmodforge_gc_freed_bytes_total", &[]);
    ensure!(
        Some(bytes(&metrics_after)? - bytes(&metrics_before)?) == report["bytes"].as_f64(),
        "freed bytes: {report}"
    );
    // Only the failed build's record and log: the artifact's build and the running one stay.
    ensure!(
        strings(&report, "builds") == [broken.build.id.clone()],
        "{report}"
    );
    ensure!(
        report["logs"] == 1 && report["bytes"].as_u64() > Some(0),
        "{report}"
    );
    ensure!(
        !c.has_build(&broken.build.id).await?,
        "expired record still served"
    );
    let log = c
        .get(&format!("/v1/builds/{}/log", broken.build.id))
        .await?;
    ensure!(
        log.status() == StatusCode::NOT_FOUND,
        "log of a removed build: {}",
        log.status()
    );
    ensure!(
        c.has_build(&made.build.id).await?,
        "the artifact's build record went"
    );
    // The artifact still downloads and verifies.
    let m = c.manifest("kmf-gc-hello", "1.0", KERNEL_A).await?;
    check_downloads(c, &m).await?;
    // The running build's kernel keeps its images and volumes, although unused for "0s".
    ensure!(
        report["images"].as_array().is_some_and(Vec::is_empty),
        "images removed while a build of their kernel runs: {report}"
    );
    ensure!(strings(&report, "volumes").is_empty(), "{report}");
    ensure!(image_exists(&builder), "builder image {builder} removed");
    if let Some(id) = &image {
        ensure!(image_exists(id), "the running build's image {id} removed");
    }
    ensure!(volumes_of(&builder)? == volumes_before, "volumes changed");
    let slow = c.wait(&slow.build.id).await?;
    ensure!(
        slow.build.state == BuildState::Succeeded,
        "{:?}",
        slow.build.failure
    );
    // No second collection here: with kernels unused for "0s", KERNEL_A (shared with
    // other tests) would be unprotected once no build of it runs.
    env.assert_no_job_containers().await?;
    Ok(())
}

/// The id of KERNEL_A's builder image.
async fn env_builder_image() -> Result<String> {
    let tag = format!("kmodforge-builder:debian-bookworm-{KERNEL_A}");
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &tag])
        .output()?;
    ensure!(out.status.success(), "no image {tag}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// An image of this test (`FROM scratch` with labels only) and a `/usr`-like
/// volume of it; removed on drop if the test did not see them go.
struct TestImage {
    tag: String,
    id: String,
    volume: String,
}

impl TestImage {
    fn make(kernel: &str) -> Result<TestImage> {
        let nonce = format!("{:016x}", rand_nonce());
        let tag = format!("kmodforge-gc-test:{kernel}-{nonce}");
        let dockerfile =
            format!("FROM scratch\nLABEL kmodforge.kernel={kernel} kmodforge.gc-test={nonce}\n");
        let mut child = Command::new("docker")
            .args(["build", "-q", "-t", &tag, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(dockerfile.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "docker build: {out:?}");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let volume = format!("kmodforge-usr-gctest-{nonce}");
        let made = Command::new("docker")
            .args(["volume", "create", "--label", "kmodforge=1", "--label"])
            .arg(format!("kmodforge.image={id}"))
            .arg(&volume)
            .output()?;
        ensure!(made.status.success(), "docker volume create: {made:?}");
        Ok(TestImage { tag, id, volume })
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", &self.volume])
            .output();
        let _ = Command::new("docker").args(["rmi", &self.tag]).output();
    }
}

fn rand_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unused_kernels_images_and_volumes_go_and_no_others() -> Result<()> {
    let _docker = DockerProbe::connect().await?;
    // Made-up kernels: one this server will know, one it will not.
    let (known, unknown) = ("6.1.0-999-amd64", "6.1.0-998-amd64");
    let unused = TestImage::make(known)?;
    let foreign = TestImage::make(unknown)?;
    let env = Env::start(
        ServerOpts::default()
            .env("KMODFORGE_RETAIN_KERNELS_UNUSED", "1s")
            .env("KMODFORGE_GC_INTERVAL_SECS", 0),
    )
    .await?;
    let c = &env.client;
    // The server learns the kernel (a prebuild with no modules registered builds nothing).
    let resp = c
        .http()
        .post(c.url(&format!("/v1/kernels/{known}/prebuild")))
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::ACCEPTED,
        "prebuild: {}",
        resp.status()
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let expect = |report: &Value| -> Result<()> {
        let images: Vec<(String, String)> = report["images"]
            .as_array()
            .context("images")?
            .iter()
            .map(|i| {
                (
                    i["id"].as_str().unwrap_or("").into(),
                    i["kernel"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        // Exactly the test image of the known kernel: KERNEL_A/KERNEL_B images and
        // the image of the kernel the server never heard of are not candidates.
        ensure!(
            images == [(unused.id.clone(), known.to_string())],
            "{report}"
        );
        ensure!(
            strings(report, "volumes") == [unused.volume.clone()],
            "{report}"
        );
        ensure!(strings(report, "builds").is_empty(), "{report}");
        Ok(())
    };
    let dry = c.gc(true).await?;
    expect(&dry)?;
    ensure!(image_exists(&unused.id), "dry run removed the image");
    ensure!(
        volumes_of(&unused.id)? == [unused.volume.clone()],
        "dry run removed the volume"
    );

    let report = c.gc(false).await?;
    expect(&report)?;
    ensure!(
        report["errors"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
    ensure!(
        !image_exists(&unused.id),
        "the unused kernel's image is still there"
    );
    ensure!(
        volumes_of(&unused.id)?.is_empty(),
        "its volume is still there"
    );
    ensure!(
        image_exists(&foreign.id),
        "an unknown kernel's image was removed"
    );
    ensure!(
        volumes_of(&foreign.id)? == [foreign.volume.clone()],
        "{report}"
    );

    // A second collection finds nothing more.
    let again = c.gc(false).await?;
    if !again["images"].as_array().is_some_and(Vec::is_empty) {
        bail!("second collection removed more: {again}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_periodic_collection_removes_expired_records_and_logs_what_it_freed() -> Result<()> {
    let env = Env::start(
        ServerOpts::default()
            // Long enough for the client to see the build end before its record may go
            // (a collection every second would otherwise race the client's poll).
            .env("KMODFORGE_RETAIN_BUILDS", "20s")
            .env("KMODFORGE_GC_INTERVAL_SECS", 1),
    )
    .await?;
    let c = &env.client;
    c.add_module("kmf-gc-periodic", "1.0", &fixture("compile-error"))
        .await?;
    let (_, b) = c
        .build(&request("kmf-gc-periodic", "1.0", KERNEL_A)?)
        .await?;
    let b = c.wait(&b.build.id).await?;
    expect_failure(&b, FailureKind::CompileError)?;
    // Collections run every second; the record expires 20 s after it was made.
    let mut gone = false;
    for _ in 0..120 {
        if !c.has_build(&b.build.id).await? {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(gone, "build {} was not collected within 60 s", b.build.id);
    // The collection deletes the record first and writes its summary line when the whole
    // pass (logs, blobs, images, volumes) is done, so the line may follow the record's
    // disappearance by a moment.
    let collected = |log: &str| {
        log.lines()
            .any(|l| l.contains("gc: collected") && l.contains("records=1") && l.contains("logs=1"))
    };
    for _ in 0..100 {
        if collected(&env.server.log_text()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = env.server.log_text();
    ensure!(
        collected(&log),
        "no info line of the collection in the server log within 10 s of the record going:\n{log}"
    );
    Ok(())
}
