//! The curl one-shot: `POST /v1/build?kernel=KREL` with a tar.gz answers with a tar
//! of the built modules, or a JSON error carrying the log tail and the build id.

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildState, ErrorKind, FailureKind, Manifest};
use kmodforge_e2e::{
    error_body, fixture, real_modinfo, tar_entries, tar_gz_dir, Env, ServerOpts, BUILD_WAIT,
    KERNEL_A,
};
use reqwest::{Response, StatusCode};
use sha2::{Digest, Sha256};

async fn one_shot(env: &Env, query: &str, body: Vec<u8>) -> Result<Response> {
    let url = env.client.url(&format!("/v1/build?{query}"));
    let resp = env
        .client
        .http()
        .post(&url)
        .timeout(BUILD_WAIT)
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    Ok(resp)
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_tar_gz_in_modules_tar_out() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let body = tar_gz_dir(&fixture("hello"))?;
    let resp = one_shot(&env, &format!("kernel={KERNEL_A}"), body).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "{}: {}",
        resp.status(),
        resp.text().await?
    );
    let tar = resp.bytes().await?;
    let entries = tar_entries(&tar)?;
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(names == ["kmf_hello.ko", "manifest.json"], "{names:?}");

    let ko = &entries[0].1;
    let m: Manifest = serde_json::from_slice(&entries[1].1).context("manifest.json")?;
    ensure!(m.kernel.as_str() == KERNEL_A && m.name.as_str() == "kmf-hello");
    ensure!(m.files.len() == 1 && m.files[0].sha256 == hex::encode(Sha256::digest(ko)));
    let vermagic = real_modinfo(ko, "vermagic")?;
    ensure!(vermagic.starts_with(&format!("{KERNEL_A} ")), "{vermagic}");

    // The source was registered under dkms.conf's name and version.
    let resp = env.client.get("/v1/modules/kmf-hello/1.0").await?;
    ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    ensure!(env.client.manifest("kmf-hello", "1.0", KERNEL_A).await? == m);
    env.assert_no_job_containers().await
}

#[tokio::test(flavor = "multi_thread")]
async fn compile_error_answers_422_with_the_log_tail() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let body = tar_gz_dir(&fixture("compile-error"))?;
    let query = format!("kernel={KERNEL_A}&name=kmf-oneshot-broken&version=2.0");
    let resp = one_shot(&env, &query, body).await?;
    let (status, err) = error_body(resp).await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status} {err:?}"
    );
    ensure!(err.error.kind == ErrorKind::CompileError, "{err:?}");
    let tail = err.error.log_tail.clone().unwrap_or_default();
    ensure!(
        tail.contains("kmf_this_symbol_does_not_exist"),
        "log_tail:\n{tail}"
    );
    let id = err.error.build_id.context("build_id")?;
    let build = env.client.get_build(&id).await?.build;
    ensure!(build.state == BuildState::Failed && build.name.as_str() == "kmf-oneshot-broken");
    ensure!(build.failure.map(|f| f.kind) == Some(FailureKind::CompileError));
    env.assert_no_container_of(&id).await
}

#[tokio::test(flavor = "multi_thread")]
async fn boot_check_in_the_one_shot() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    // Passed: the manifest in the tar carries the check.
    let body = tar_gz_dir(&fixture("hello"))?;
    let resp = one_shot(&env, &format!("kernel={KERNEL_A}&boot_check=true"), body).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "{}: {}",
        resp.status(),
        resp.text().await?
    );
    let entries = tar_entries(&resp.bytes().await?)?;
    let m: Manifest =
        serde_json::from_slice(&entries[entries.len() - 1].1).context("manifest.json")?;
    let check = m.boot_check.context("manifest.json has the boot check")?;
    ensure!(
        check.passed
            && check
                .modules
                .iter()
                .any(|b| b.name == "kmf_hello" && b.loaded)
    );

    // Failed: 422, kind boot_check_failed, one line with the kernel's refusal.
    let body = tar_gz_dir(&kmodforge_e2e::e2e_fixture("boot-enodev"))?;
    let resp = one_shot(&env, &format!("kernel={KERNEL_A}&boot_check=true"), body).await?;
    let (status, err) = error_body(resp).await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY && err.error.kind == ErrorKind::BootCheckFailed,
        "{status} {err:?}"
    );
    ensure!(
        err.error.message.contains("No such device") && !err.error.message.contains('\n'),
        "{}",
        err.error.message
    );
    ensure!(err.error.build_id.is_some());
    env.assert_no_job_containers().await
}

/// A dkms.conf whose PACKAGE_VERSION is an install script's placeholder
/// (`#MODULE_VERSION#`): without `version=` the answer says how to pass it; with it,
/// the module builds.
#[tokio::test(flavor = "multi_thread")]
async fn placeholder_version_answers_how_to_pass_it() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    for file in ["Makefile", "kmf_hello.c"] {
        std::fs::copy(fixture("hello").join(file), dir.path().join(file))?;
    }
    std::fs::write(
        dir.path().join("dkms.conf"),
        "PACKAGE_NAME=\"kmf-placeholder\"\nPACKAGE_VERSION=\"#MODULE_VERSION#\"\n\
         BUILT_MODULE_NAME[0]=\"kmf_hello\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\n",
    )?;
    let body = tar_gz_dir(dir.path())?;

    let resp = one_shot(&env, &format!("kernel={KERNEL_A}"), body.clone()).await?;
    let (status, err) = error_body(resp).await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY
            && err.error.kind == kmodforge_api::errors::ErrorKind::Placeholder,
        "{status} {err:?}"
    );
    ensure!(
        err.error.message
            == "dkms.conf's PACKAGE_VERSION is the placeholder #MODULE_VERSION#: \
                pass the version with ?version=X or replace it in dkms.conf",
        "{}",
        err.error.message
    );
    // Nothing was registered.
    ensure!(env.client.modules().await?.is_empty());
    // Registered under a version of its own, the upload's answer says what the
    // placeholder means.
    let (_, added) = env
        .client
        .add_module("kmf-placeholder", "3.0", dir.path())
        .await?;
    ensure!(
        added.warnings.iter().any(|w| w.contains(
            "dkms.conf's PACKAGE_VERSION is the placeholder #MODULE_VERSION#: built as 3.0"
        )),
        "{:?}",
        added.warnings
    );

    let resp = one_shot(&env, &format!("kernel={KERNEL_A}&version=2.5"), body).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "{}: {}",
        resp.status(),
        resp.text().await?
    );
    let entries = tar_entries(&resp.bytes().await?)?;
    let m: Manifest = serde_json::from_slice(&entries[entries.len() - 1].1)?;
    ensure!(m.name.as_str() == "kmf-placeholder" && m.version.as_str() == "2.5");
    env.assert_no_job_containers().await
}
