//! Crash, stop and restart: the server is killed with SIGKILL, or stopped with SIGTERM,
//! while a build runs, and a new server on the same data directory recovers.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildRequest, BuildState, FailureKind, Manifest};
use kmodforge_e2e::{
    check_downloads, fixture, request, Env, ServerOpts, StopMode, KERNEL_A, KERNEL_B,
};
use reqwest::StatusCode;

/// Adds and builds the hello fixture for kernel A; returns the request and its manifest.
async fn build_hello(env: &Env) -> Result<(BuildRequest, Manifest)> {
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let hello = request("kmf-hello", "1.0", KERNEL_A)?;
    let (_, first) = env.client.build(&hello).await?;
    let done = env.client.wait(&first.build.id).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}",
        done.build.failure
    );
    let manifest = done.artifact.context("manifest")?;
    Ok((hello, manifest))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_build_then_restart() -> Result<()> {
    let mut env = Env::start(ServerOpts::default().stop_mode(StopMode::Kill)).await?;

    // A finished build whose artifact must survive the crash.
    let (_, manifest) = build_hello(&env).await?;

    // A build that is running (its container exists) when the server dies.
    env.client
        .add_module("kmf-timeout", "1.0", &fixture("timeout"))
        .await?;
    let (_, running) = env
        .client
        .build(&request("kmf-timeout", "1.0", KERNEL_A)?)
        .await?;
    let running_id = running.build.id.clone();
    wait_for_container(&env, &running_id).await?;
    let state = env.client.get_build(&running_id).await?.build.state;
    ensure!(
        state == BuildState::Running,
        "build must be running, is {state:?}"
    );
    let modules_before = env.client.modules().await?;

    env.server.kill9();
    ensure!(
        !env.docker.containers_of_job(&running_id).await?.is_empty(),
        "the killed server's job container must still exist before the restart"
    );

    let dir = env.server.data_dir();
    env.restart(ServerOpts::default().data_dir(dir)).await?;

    // Start-up removed the leftover container.
    ensure!(
        env.docker.containers_of_job(&running_id).await?.is_empty(),
        "leftover container of build {running_id} not removed at start-up"
    );
    // The module records are there.
    let modules_after = env.client.modules().await?;
    ensure!(
        modules_after == modules_before,
        "modules changed across the restart:\n{modules_before:?}\n{modules_after:?}"
    );
    // The interrupted build failed as infrastructure.
    let interrupted = env.client.get_build(&running_id).await?;
    ensure!(
        interrupted.build.state == BuildState::Failed,
        "{:?}",
        interrupted.build
    );
    let kind = interrupted.build.failure.as_ref().map(|f| f.kind);
    ensure!(kind == Some(FailureKind::Infrastructure), "{kind:?}");
    // The finished build, its manifest and its .ko are still served.
    let hello_again = env.client.get_build(&manifest.build_id).await?;
    ensure!(hello_again.build.state == BuildState::Succeeded);
    ensure!(hello_again.artifact.as_ref() == Some(&manifest));
    let fetched = env.client.manifest("kmf-hello", "1.0", KERNEL_A).await?;
    ensure!(fetched == manifest, "manifest changed across the restart");
    check_downloads(&env.client, &manifest).await?;

    Ok(())
}

/// `systemctl stop` while a build runs and a client follows its log: the server closes
/// the open connection after its drain time, exits by itself, and removes the build's
/// container on the way out (a data directory that is never started again leaves no
/// container behind). The next start marks the build failed.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_build_leaves_no_container() -> Result<()> {
    // One build slot: a second build queues behind the running one, and must not
    // start a container once the server is stopping.
    let mut env = Env::start(ServerOpts::default().env("KMODFORGE_MAX_BUILDS", 1)).await?;
    env.client
        .add_module("kmf-timeout", "1.0", &fixture("timeout"))
        .await?;
    let (_, running) = env
        .client
        .build(&request("kmf-timeout", "1.0", KERNEL_A)?)
        .await?;
    let id = running.build.id.clone();
    wait_for_container(&env, &id).await?;
    let (_, queued) = env
        .client
        .build(&request("kmf-timeout", "1.0", KERNEL_B)?)
        .await?;
    let queued = queued.build.id;
    // A follower of the live log holds a connection open through the shutdown.
    let mut follower = env.client.log_stream(&id).await?;
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = follower.chunk().await {} });

    let status = tokio::task::block_in_place(|| env.server.terminate());
    let status = status.context("the server did not exit within 30 s of SIGTERM")?;
    ensure!(
        status.success(),
        "the server exited with {status} after SIGTERM"
    );
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .context("the log follower's connection was not closed")??;
    // Give a straggler the time to appear: none may.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for job in [&id, &queued] {
        ensure!(
            env.docker.containers_of_job(job).await?.is_empty(),
            "the stopped server left build {job}'s container behind"
        );
    }
    let log = env.server.log_text();
    ensure!(
        log.contains("shutdown: removed running job containers"),
        "the server did not say it removed the container:\n{log}"
    );

    let dir = env.server.data_dir();
    env.restart(ServerOpts::default().data_dir(dir)).await?;
    let after = env.client.get_build(&id).await?;
    ensure!(after.build.state == BuildState::Failed, "{:?}", after.build);
    Ok(())
}

/// After a restart the artifact cache still answers: asking again for a built module
/// creates no container and reports the answer as cached.
#[tokio::test(flavor = "multi_thread")]
async fn artifact_cache_survives_a_restart() -> Result<()> {
    let mut env = Env::start(ServerOpts::default()).await?;
    let (hello, manifest) = build_hello(&env).await?;

    let dir = env.server.data_dir();
    env.restart(ServerOpts::default().data_dir(dir)).await?;
    let work = async {
        // The builder image and the dkms.conf evaluation are both known on disk, so
        // the very first request after the restart is answered at once.
        let (status, r) = env.client.build(&hello).await?;
        ensure!(
            status == StatusCode::OK,
            "expected an immediate cache hit, got {status}: {r:?}"
        );
        anyhow::Ok(r)
    };
    let (again, created) = env.docker.count_created(work).await?;
    let again = again?;
    ensure!(again.build.state == BuildState::Succeeded, "{again:?}");
    let mine = env.own(&created).await?;
    ensure!(mine.is_empty(), "a cached artifact was rebuilt: {mine:?}");
    let hit = again.artifact.as_ref().context("manifest")?;
    ensure!(hit.key == manifest.key && hit.build_id == manifest.build_id);
    ensure!(
        again.cached,
        "build {} was answered from the artifact cache (its manifest comes from build {}), \
         but GET /v1/builds/{} says cached: false",
        again.build.id,
        hit.build_id,
        again.build.id
    );
    Ok(())
}

async fn wait_for_container(env: &Env, id: &str) -> Result<()> {
    for _ in 0..600 {
        if !env.docker.containers_of_job(id).await?.is_empty() {
            return Ok(());
        }
        let r = env.client.get_build(id).await?;
        ensure!(!r.build.state.is_final(), "build {id} ended early: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no container for build {id} after 60 s")
}
