//! Builds that must not produce modules, each with its own failure kind: a compile
//! error (whose one-line message quotes the compiler's first error, for a fixture and
//! for a real Debian package), a module with another kernel's vermagic, a declared
//! module make never built, and a dkms.conf that excludes the kernel.

use std::path::Path;

use anyhow::{bail, ensure, Result};
use kmodforge_api::dkms::scan_declared;
use kmodforge_api::wire::{BuildResponse, BuildState, FailureKind};
use kmodforge_e2e::{
    debian_dkms_source, e2e_fixture, expect_failure, fixture, request, Env, ServerOpts, KERNEL_A,
    KERNEL_B,
};
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
    // The one-line message quotes gcc's first error, its path relative to the build.
    ensure!(
        f.message.starts_with("kmf-compile-error/1.0 for ")
            && f.message.contains(": make failed: kmf_broken.c:")
            && f.message
                .contains(": error: 'kmf_this_symbol_does_not_exist' undeclared"),
        "message: {}",
        f.message
    );
    let log = env.client.build_log(&done.build.id).await?;
    ensure!(log.contains("kmf_broken.c"), "full log:\n{log}");
    Ok(())
}

/// A real package that fails on the newer kernel: Debian bookworm's lttng-modules
/// on 6.1.0-56 (its tracepoint for `hrtimer_start` no longer matches the kernel's).
/// The message names gcc's first error, however long the log.
#[tokio::test(flavor = "multi_thread")]
async fn first_compiler_error_of_lttng_modules_on_the_newer_kernel() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let dir = debian_dkms_source("lttng-modules-dkms")?;
    let conf = std::fs::read_to_string(dir.join("dkms.conf"))?;
    let declared = scan_declared(&conf);
    let (Some(name), Some(version)) = (declared.package_name, declared.package_version) else {
        bail!("lttng-modules' dkms.conf names no static package and version: {conf}");
    };
    env.client.add_module(&name, &version, &dir).await?;
    let (_, first) = env
        .client
        .build(&request(&name, &version, KERNEL_B)?)
        .await?;
    let done = env.client.wait(&first.build.id).await?;
    env.assert_no_container_of(&done.build.id).await?;
    let f = expect_failure(&done, FailureKind::CompileError)?;
    eprintln!("lttng-modules on {KERNEL_B}: {}", f.message);
    let want = "make failed: include/lttng/tracepoint-event-impl.h:133:6: error: conflicting types for 'trace_hrtimer_start'";
    ensure!(f.message.contains(want), "message: {}", f.message);
    ensure!(
        !f.message.contains('\n') && !f.message.contains("/var/lib/dkms/"),
        "one line, paths shortened: {}",
        f.message
    );
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
