//! The job container as Docker sees it (the sandbox policy of the README's "How a build runs", step 3), and the
//! build log streamed while the build runs.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use kmodforge_api::wire::{BuildState, FailureKind};
use kmodforge_e2e::{
    e2e_fixture, ensure_sandbox_policy, fixture, request, Env, JobContainer, ServerOpts, KERNEL_A,
};

const JOBS: i64 = 2;
const MEMORY_MIB: i64 = 1024;

/// Waits until build `id` has a running container, and returns it. The engine lists
/// a container while it is still being created (copying the image into its volumes),
/// before `inspect` can find it: only a running one is sure to be there.
async fn container_of(env: &Env, id: &str) -> Result<JobContainer> {
    for _ in 0..600 {
        let running = env
            .docker
            .containers_of_job(id)
            .await?
            .into_iter()
            .find(|c| c.state.as_deref() == Some("running"));
        if let Some(c) = running {
            return Ok(c);
        }
        let r = env.client.get_build(id).await?;
        ensure!(!r.build.state.is_final(), "build {id} ended early: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no container for build {id} after 60 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn job_container_follows_the_sandbox_policy() -> Result<()> {
    let opts = ServerOpts::default()
        .env("KMODFORGE_JOBS", JOBS)
        .env("KMODFORGE_BUILD_MEMORY_MIB", MEMORY_MIB)
        .env("KMODFORGE_BUILD_TMPFS_MIB", 512)
        .env("KMODFORGE_BUILD_IDLE_SECS", 10);
    let env = Env::start(opts).await?;
    env.client
        .add_module("kmf-timeout", "1.0", &fixture("timeout"))
        .await?;
    let (_, first) = env
        .client
        .build(&request("kmf-timeout", "1.0", KERNEL_A)?)
        .await?;
    let id = first.build.id.clone();
    let c = container_of(&env, &id).await?;
    let inspect = match env.docker.inspect(&c.id).await {
        Ok(i) => i,
        Err(e) => {
            let r = env.client.get_build(&id).await?;
            let log = env.client.build_log(&id).await.unwrap_or_default();
            bail!("{e:#}: container {c:?} of build {r:?}; log:\n{log}")
        }
    };

    ensure!(inspect.name.as_deref() == Some(&*format!("/kmodforge-job-{id}")));
    ensure_sandbox_policy(&inspect, &id)?;
    // The build's own limits: the server's settings above.
    let host = inspect.host_config.clone().context("HostConfig")?;
    let memory = MEMORY_MIB << 20;
    ensure!(host.memory == Some(memory), "Memory {:?}", host.memory);
    ensure!(
        host.nano_cpus == Some(JOBS * 1_000_000_000),
        "NanoCpus {:?}",
        host.nano_cpus
    );

    // No host path inside: tmpfs, and the builder image's own /usr on read-only
    // named volumes (copied from the image by the engine; see server/src/usr_volumes.rs).
    let image_short: String = inspect
        .image
        .clone()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let mut usr_volumes = 0;
    let mut etc_volume = false;
    for m in inspect.mounts.clone().unwrap_or_default() {
        match m.typ.as_deref() {
            Some("tmpfs") => {}
            Some("volume") => {
                let name = m.name.clone().unwrap_or_default();
                let target = m.destination.clone().unwrap_or_default();
                ensure!(
                    m.rw == Some(false)
                        && name.starts_with(&format!("kmodforge-usr-{image_short}-"))
                        && (target.starts_with("/usr/") || target == "/etc"),
                    "a volume that is not the image's own read-only /usr or /etc: {m:?}"
                );
                usr_volumes += 1;
                etc_volume |= target == "/etc";
            }
            _ => bail!("a mount that is neither tmpfs nor an image /usr or /etc volume: {m:?}"),
        }
    }
    ensure!(
        usr_volumes > 0,
        "the image's /usr is not on volumes (KMODFORGE_USR_VOLUMES defaults to on)"
    );
    ensure!(etc_volume, "the image's /etc is not on a read-only volume");
    let tmpfs = host.tmpfs.clone().unwrap_or_default();
    ensure!(
        tmpfs.contains_key("/tmp") && tmpfs.contains_key("/var/lib/dkms"),
        "{tmpfs:?}"
    );

    let done = env.client.wait(&id).await?;
    let kind = done.build.failure.as_ref().map(|f| f.kind);
    ensure!(kind == Some(FailureKind::Timeout), "{:?}", done.build);
    env.assert_no_container_of(&id).await
}

#[tokio::test(flavor = "multi_thread")]
async fn build_log_streams_while_the_build_runs() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-live", "1.0", &e2e_fixture("live-log"))
        .await?;
    let (_, first) = env
        .client
        .build(&request("kmf-live", "1.0", KERNEL_A)?)
        .await?;
    let id = first.build.id.clone();
    env.client
        .wait_for(&id, Duration::from_secs(600), |r| {
            r.build.state != BuildState::Queued
        })
        .await?;

    let resp = env.client.log_stream(&id).await?;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    // The fixture prints a tick a second for 10 s before it builds: the first tick
    // must arrive while the build is still running.
    while !seen.contains("kmf-live: tick 1\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .context("no log data within 60 s")?;
        let Some(chunk) = chunk else {
            bail!("log stream ended before the first tick; got:\n{seen}")
        };
        seen.push_str(&String::from_utf8_lossy(&chunk?));
    }
    let state = env.client.get_build(&id).await?.build.state;
    ensure!(
        state == BuildState::Running,
        "the first tick must stream while the build runs, but it is {state:?}"
    );

    // The stream goes on to the end of the build, then closes.
    let rest = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk?));
        }
        anyhow::Ok(())
    });
    rest.await
        .context("log stream did not end with the build")??;
    ensure!(
        seen.contains("kmf-live: tick 10\n"),
        "streamed log:\n{seen}"
    );

    let done = env.client.wait(&id).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}",
        done.build.failure
    );
    let stored = env.client.build_log(&id).await?;
    ensure!(
        stored.contains("kmf-live: tick 10\n"),
        "stored log:\n{stored}"
    );
    ensure!(
        stored == seen,
        "the streamed log differs from the stored one:\n--- streamed\n{seen}\n--- stored\n{stored}"
    );
    Ok(())
}
