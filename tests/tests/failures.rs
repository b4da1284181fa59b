//! Builds that must not produce modules, each with its own failure kind: a compile
//! error, a module with another kernel's vermagic, a declared module make never built,
//! and a dkms.conf that excludes the kernel.

use std::path::Path;

use anyhow::{ensure, Result};
use kmodforge_api::wire::{BuildResponse, BuildState, FailureKind};
use kmodforge_e2e::{e2e_fixture, expect_failure, fixture, request, Env, ServerOpts, KERNEL_A};
use reqwest::StatusCode;

/// Adds `dir` as `name`/1.0, builds it for `KERNEL_A`, waits, and checks that no
/// container is left and no artifact exists.
async fn build_to_end(env: &Env, name: &str, dir: &Path) -> Result<BuildResponse> {
    env.client.add_module(name, "1.0", dir).await?;
    let (status, first) = env.client.build(&request(name, "1.0", KERNEL_A)?).await?;
    ensure!(status == StatusCode::ACCEPTED, "{status} {first:?}");
    let done = env.client.wait(&first.build.id).await?;
    env.assert_no_container_of(&done.build.id).await?;
    env.assert_no_artifact(&done, name, "1.0", KERNEL_A).await?;
    Ok(done)
}

#[tokio::test(flavor = "multi_thread")]
async fn compile_error_is_reported_with_the_compiler_message() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let done = build_to_end(&env, "kmf-compile-error", &fixture("compile-error")).await?;
    let f = expect_failure(&done, FailureKind::CompileError)?;
    ensure!(
        f.log_tail.contains("kmf_this_symbol_does_not_exist") && f.log_tail.contains("error:"),
        "log_tail must quote gcc's error:\n{}",
        f.log_tail
    );
    let log = env.client.build_log(&done.build.id).await?;
    ensure!(log.contains("kmf_broken.c"), "full log:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rewritten_vermagic_is_refused() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let done = build_to_end(&env, "kmf-vm", &e2e_fixture("wrong-vermagic")).await?;
    let f = expect_failure(&done, FailureKind::WrongVermagic)?;
    ensure!(
        f.message.contains("kmf_vm.ko"),
        "message must name the file: {}",
        f.message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn module_that_make_did_not_build_is_missing() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let done = build_to_end(&env, "kmf-missing", &e2e_fixture("missing-module")).await?;
    let f = expect_failure(&done, FailureKind::MissingModule)?;
    ensure!(
        f.message.contains("kmf_absent.ko"),
        "message must name the file: {}",
        f.message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn build_exclusive_kernel_is_not_applicable() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let done = build_to_end(&env, "kmf-exclusive", &e2e_fixture("build-exclusive")).await?;
    ensure!(
        done.build.state == BuildState::NotApplicable,
        "expected not_applicable, got {:?}: {:?}",
        done.build.state,
        done.build.failure
    );
    if let Some(f) = &done.build.failure {
        ensure!(f.kind == FailureKind::NotApplicable, "{f:?}");
    }
    Ok(())
}
