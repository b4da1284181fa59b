//! The Docker engine restarted under a running build (issue 14, "faults that lose
//! nothing"): the attempt ends as `infrastructure` and the server runs the build
//! once more by itself, under the same build id, as soon as the engine answers;
//! no container and no half-written blob is left.
//!
//! The engine restarted is a private `dockerd` of this test
//! ([`kmodforge_e2e::engine::PrivateEngine`]): the shared engine other tests use
//! is never stopped. The builder image is built in the shared engine (as by any
//! test) and loaded into the private one.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures_util::StreamExt;
use kmodforge_api::wire::{BuildState, FailureKind, KernelInfo, Manifest};
use kmodforge_e2e::engine::PrivateEngine;
use kmodforge_e2e::{
    check_downloads, e2e_fixture, expect_failure, request, Env, ServerOpts, KERNEL_A,
};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// The line the slow fixture's MAKE prints before it sleeps 20 s.
const MAKE_STARTED: &str = "kmf-slow: make started";

/// One private engine for both cases (loading the builder image into it takes a while).
#[tokio::test(flavor = "multi_thread")]
async fn engine_restart_during_a_build_is_retried_once() -> Result<()> {
    let mut engine = private_engine_with_builder().await?;
    restarted_engine_build_is_retried(&mut engine).await?;
    engine_down_beyond_the_retry_wait(&mut engine).await
}

/// The engine stops (SIGTERM) while make runs and starts again: the build
/// succeeds after one automatic retry, under the same id and log.
async fn restarted_engine_build_is_retried(engine: &mut PrivateEngine) -> Result<()> {
    let env = Env::start(on(engine)).await?;
    let id = start_slow_build(&env).await?;

    engine.stop().await?;
    // The engine is gone and the build is not over: it waits for the engine.
    let during = env.client.get_build(&id).await?;
    ensure!(
        during.build.state == BuildState::Running,
        "with the engine down the build waits to be retried: {:?}",
        during.build
    );
    engine.start_again().await?;

    let done = env.client.wait(&id).await?;
    let log = env.client.build_log(&id).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}\n{log}",
        done.build
    );
    let warning = done
        .build
        .warnings
        .iter()
        .find(|w| w.starts_with("attempt 1 failed (infrastructure) and was retried"))
        .with_context(|| format!("no retry warning in {:?}", done.build.warnings))?;
    eprintln!("{warning}");
    ensure!(
        log.matches(MAKE_STARTED).count() == 2 && log.contains("attempt 2 (the retry)"),
        "one build log with both attempts:\n{log}"
    );
    let manifest = done.artifact.clone().context("manifest")?;
    check_downloads(&env.client, &manifest).await?;
    no_containers(engine).await?;
    blobs_are_whole(&env.server.data_dir().data(), &manifest)
}

/// With an engine that does not come back within the retry wait the build ends as
/// `infrastructure`, saying so, and its container is removed once the engine is back.
async fn engine_down_beyond_the_retry_wait(engine: &mut PrivateEngine) -> Result<()> {
    let env = Env::start(on(engine).env("KMODFORGE_ENGINE_RETRY_WAIT_SECS", 3)).await?;
    let id = start_slow_build(&env).await?;

    engine.stop().await?;
    let done = env.client.wait(&id).await?;
    let f = expect_failure(&done, FailureKind::Infrastructure)?;
    ensure!(
        f.message
            .contains("(not retried: the Docker engine did not answer within 3 s)"),
        "{}",
        f.message
    );
    env.assert_no_artifact(&done, "kmf-slow", "1.0", KERNEL_A)
        .await?;
    let data = env.server.data_dir().data();
    ensure!(blob_files(&data)?.is_empty(), "no blob of the failed build");

    // Back: the server removes the stopped container of the failed attempt.
    engine.start_again().await?;
    let probe = engine.probe()?;
    let mut left = probe.containers_of_job(&id).await?;
    for _ in 0..60 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        left = probe.containers_of_job(&id).await?;
    }
    ensure!(left.is_empty(), "container of build {id} left: {left:?}");
    Ok(())
}

/// A private engine holding the shared engine's builder image for kernel A (the
/// image is prepared in the shared engine first, by a server of this test).
async fn private_engine_with_builder() -> Result<PrivateEngine> {
    let main = Env::start(ServerOpts::default()).await?;
    let resp = main
        .client
        .http()
        .put(main.client.url(&format!("/v1/kernels/{KERNEL_A}")))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    let info: KernelInfo = resp.json().await?;
    let shared = main.docker.clone();
    // The test lock is taken again by each case's server.
    drop(main);
    let engine = PrivateEngine::start("restart", &shared).await?;
    engine.load_from(&shared, &info.image.tag).await?;
    Ok(engine)
}

/// A server on `engine`, without `/usr` volumes (copying them is slow on a fresh engine).
fn on(engine: &PrivateEngine) -> ServerOpts {
    ServerOpts::default()
        .env("DOCKER_HOST", engine.host())
        .env("KMODFORGE_USR_VOLUMES", "false")
}

/// Submits the slow fixture and returns once its make runs.
async fn start_slow_build(env: &Env) -> Result<String> {
    env.client
        .add_module("kmf-slow", "1.0", &e2e_fixture("slow-make"))
        .await?;
    let (status, first) = env
        .client
        .build(&request("kmf-slow", "1.0", KERNEL_A)?)
        .await?;
    ensure!(status == StatusCode::ACCEPTED, "{status} {first:?}");
    let id = first.build.id;
    let mut stream = env.client.log_stream(&id).await?.bytes_stream();
    let mut text = String::new();
    while !text.contains(MAKE_STARTED) {
        let chunk = tokio::time::timeout(Duration::from_secs(600), stream.next())
            .await
            .context("no log output for 600 s")?
            .with_context(|| format!("the log ended before make started:\n{text}"))??;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    Ok(id)
}

/// The private engine holds no kmodforge container.
async fn no_containers(engine: &PrivateEngine) -> Result<()> {
    let left = engine.probe()?.kmodforge_containers().await?;
    ensure!(left.is_empty(), "containers left: {left:?}");
    Ok(())
}

/// Every stored blob is whole (its name is its content's sha256) and belongs to
/// `manifest` (a module or its Module.symvers).
fn blobs_are_whole(data: &Path, manifest: &Manifest) -> Result<()> {
    let mut known: BTreeSet<String> = manifest.files.iter().map(|f| f.sha256.clone()).collect();
    known.extend(manifest.symvers.iter().map(|s| s.sha256.clone()));
    let files = blob_files(data)?;
    ensure!(!files.is_empty(), "no blobs under {}", data.display());
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let bytes = std::fs::read(&path)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        ensure!(sha == name, "{} holds {sha}: not whole", path.display());
        ensure!(
            known.contains(name),
            "{} belongs to no artifact",
            path.display()
        );
    }
    Ok(())
}

/// Every file under `<data>/blobs` (staging files included).
fn blob_files(data: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![data.join("blobs")];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    Ok(out)
}
