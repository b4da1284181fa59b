//! A build's own misbehaviour fails with its own kind, never `infrastructure`: a
//! Makefile that writes to the descriptor that once carried the module tar, a fork
//! bomb, a build that prints forever. Each leaves no container behind, and the
//! server's peak memory stays bounded whatever the build sends.

use std::path::Path;

use anyhow::{ensure, Result};
use kmodforge_api::wire::{BuildResponse, FailureKind};
use kmodforge_e2e::{e2e_fixture, expect_failure, request, Env, ServerOpts, KERNEL_A};

/// Generous bound on the server's peak resident memory (`VmHWM`), in MiB: the
/// build log is capped at 4 MiB plus a 64 KiB tail, the module tar at its cap,
/// which these builds never reach. Before, the descriptor 3 writer alone made the
/// server buffer 1 GiB.
const PEAK_RSS_MIB: u64 = 300;

fn opts() -> ServerOpts {
    ServerOpts::default()
        .env("KMODFORGE_JOBS", 1)
        .env("KMODFORGE_BUILD_PIDS", 64)
        .env("KMODFORGE_BUILD_OUTPUT_CAP_MIB", 64)
        .env("KMODFORGE_BUILD_TIMEOUT_SECS", 40)
        .env("KMODFORGE_BUILD_IDLE_SECS", 30)
}

/// Adds `dir` as `name`/1.0, builds it for `KERNEL_A` to its end, and checks that
/// no container of the build is left and the server's peak memory stayed bounded.
async fn build_to_end(env: &Env, name: &str, dir: &Path) -> Result<BuildResponse> {
    env.client.add_module(name, "1.0", dir).await?;
    let (_, first) = env.client.build(&request(name, "1.0", KERNEL_A)?).await?;
    let done = env.client.wait(&first.build.id).await?;
    env.assert_no_container_of(&done.build.id).await?;
    env.assert_no_job_containers().await?;
    let peak = env.server.peak_rss_kib()? / 1024;
    ensure!(
        peak < PEAK_RSS_MIB,
        "{name}: the server's peak RSS reached {peak} MiB (bound {PEAK_RSS_MIB} MiB)"
    );
    eprintln!("{name}: server peak RSS {peak} MiB");
    Ok(done)
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_to_the_old_artifact_descriptor_reaches_nothing() -> Result<()> {
    let env = Env::start(opts()).await?;
    let done = build_to_end(&env, "kmf-fd3", &e2e_fixture("fd3-writer")).await?;
    let f = expect_failure(&done, FailureKind::CompileError)?;
    ensure!(
        f.message
            .contains("make failed: make: *** [Makefile:2: all] Error 2"),
        "the message quotes make's error: {}",
        f.message
    );
    let log = env.client.build_log(&done.build.id).await?;
    ensure!(log.contains("Bad file descriptor"), "log:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_fails_at_the_pids_limit() -> Result<()> {
    let env = Env::start(opts()).await?;
    let done = build_to_end(&env, "kmf-fork-bomb", &e2e_fixture("fork-bomb")).await?;
    let f = expect_failure(&done, FailureKind::PidsLimit)?;
    ensure!(
        f.message.contains("limit of 64 processes"),
        "the message names the limit: {}",
        f.message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_that_prints_forever_stops_at_the_output_cap() -> Result<()> {
    let env = Env::start(opts()).await?;
    let done = build_to_end(&env, "kmf-print-forever", &e2e_fixture("print-forever")).await?;
    let f = expect_failure(&done, FailureKind::OutputLimit)?;
    ensure!(
        f.message.contains("64 MiB output cap"),
        "the message names the cap: {}",
        f.message
    );
    // The stored log is the capped head, the cut and the tail, not 64 MiB.
    let log = env.client.build_log(&done.build.id).await?;
    ensure!(
        log.len() < 5 << 20 && log.contains("log truncated"),
        "log of {} bytes",
        log.len()
    );
    Ok(())
}
