//! No container is left behind, whatever the outcome: success, compile error,
//! no-output timeout, out of memory.

use std::path::Path;

use anyhow::{ensure, Result};
use kmodforge_api::wire::{BuildResponse, BuildState, FailureKind};
use kmodforge_e2e::{fixture, request, Env, ServerOpts, KERNEL_A};

/// Builds `dir` as `name`/1.0 for `KERNEL_A`, checks that the build used a container
/// and that no container of this server is left once it ended.
async fn build_and_check_gone(env: &Env, name: &str, dir: &Path) -> Result<BuildResponse> {
    env.client.add_module(name, "1.0", dir).await?;
    let req = request(name, "1.0", KERNEL_A)?;
    let work = async {
        let (_, first) = env.client.build(&req).await?;
        env.client.wait(&first.build.id).await
    };
    let (done, created) = env.docker.count_created(work).await?;
    let done = done?;
    let mine = env.own(&created).await?;
    ensure!(
        mine.len() == 1,
        "{name}: one container expected, saw {mine:?}"
    );
    env.assert_no_container_of(&done.build.id).await?;
    env.assert_no_job_containers().await?;
    Ok(done)
}

fn assert_failed(done: &BuildResponse, kind: FailureKind) -> Result<()> {
    let got = done.build.failure.as_ref().map(|f| f.kind);
    ensure!(
        done.build.state == BuildState::Failed && got == Some(kind),
        "expected failed/{kind:?}, got {:?}/{:?}",
        done.build.state,
        done.build.failure
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_success_and_compile_error() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let done = build_and_check_gone(&env, "kmf-hello", &fixture("hello")).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}",
        done.build.failure
    );
    let done = build_and_check_gone(&env, "kmf-compile-error", &fixture("compile-error")).await?;
    assert_failed(&done, FailureKind::CompileError)
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_no_output_timeout() -> Result<()> {
    let opts = ServerOpts::default().env("KMODFORGE_BUILD_IDLE_SECS", 5);
    let env = Env::start(opts).await?;
    let done = build_and_check_gone(&env, "kmf-timeout", &fixture("timeout")).await?;
    assert_failed(&done, FailureKind::Timeout)?;
    let seconds = done.build.seconds.unwrap_or_default();
    ensure!(
        (5.0..120.0).contains(&seconds),
        "a 5 s idle limit ended the build after {seconds} s"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_running_out_of_memory() -> Result<()> {
    let opts = ServerOpts::default()
        .env("KMODFORGE_BUILD_MEMORY_MIB", 256)
        .env("KMODFORGE_BUILD_TMPFS_MIB", 64);
    let env = Env::start(opts).await?;
    let done = build_and_check_gone(&env, "kmf-oom", &fixture("oom")).await?;
    assert_failed(&done, FailureKind::OutOfMemory)
}
