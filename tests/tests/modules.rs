//! Real modules built for real kernels: the hello fixture and Debian's
//! v4l2loopback-dkms for both kernels, and a Makefile that asks `uname -r`.
//!
//! Each build is checked end to end: one container for the build, vermagic in the
//! manifest and from the real `modinfo`, sha256 of the download, and a second
//! identical request answered from the cache (200, `cached: true`) without a container.

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildState, KernelInfo, Manifest};
use kmodforge_e2e::{
    check_downloads, debian_dkms_source, fixture, real_modinfo, request, tar_entries, Env,
    ServerOpts, KERNEL_A, KERNEL_B,
};
use reqwest::StatusCode;

/// Builds `name`/`version` for `krel` (a cache miss) and checks the artifact, then
/// asks again and checks the cache hit.
async fn build_checked(env: &Env, name: &str, version: &str, krel: &str) -> Result<Manifest> {
    let req = request(name, version, krel)?;
    let work = async {
        let (status, first) = env.client.build(&req).await?;
        ensure!(
            status == StatusCode::ACCEPTED && !first.cached,
            "first request for {name}/{version}/{krel} must start a build: {status} {first:?}"
        );
        env.client.wait(&first.build.id).await
    };
    let (done, created) = env.docker.count_created(work).await?;
    let done = done?;
    let id = &done.build.id;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "build {id} of {name}/{version} for {krel}: {:?}; log:\n{}",
        done.build.failure,
        env.client.build_log(id).await.unwrap_or_default()
    );
    let mine = env.own(&created).await?;
    ensure!(
        mine.len() == 1 && mine[0].job.as_deref() == Some(id.as_str()),
        "build {id} must use exactly one container, saw {mine:?}"
    );
    env.assert_no_container_of(id).await?;

    let m = done
        .artifact
        .context("a succeeded build carries its manifest")?;
    ensure!(done.build.artifact_key.as_ref() == Some(&m.key));
    ensure!(m.kernel.as_str() == krel && m.name.as_str() == name && m.version.as_str() == version);
    let fetched = env.client.manifest(name, version, krel).await?;
    ensure!(fetched == m, "GET manifest differs from the build's");
    check_downloads(&env.client, &m).await?;

    let (again, created) = env.docker.count_created(env.client.build(&req)).await?;
    let (status, again) = again?;
    ensure!(
        status == StatusCode::OK,
        "cache hit must answer 200, got {status}"
    );
    ensure!(
        again.cached,
        "second request must be a cache hit: {again:?}"
    );
    ensure!(again.build.state == BuildState::Succeeded);
    let hit = again.artifact.context("a cache hit carries the manifest")?;
    ensure!(hit.key == m.key, "cache hit key {} != {}", hit.key, m.key);
    let mine = env.own(&created).await?;
    ensure!(
        mine.is_empty(),
        "a cache hit must create no container: {mine:?}"
    );
    Ok(m)
}

fn only_file<'a>(m: &'a Manifest, file: &str) -> Result<&'a kmodforge_api::wire::ArtifactFile> {
    ensure!(
        m.files.len() == 1 && m.files[0].file == file,
        "expected only {file} in {}, got {:?}",
        m.key,
        m.files.iter().map(|f| &f.file).collect::<Vec<_>>()
    );
    Ok(&m.files[0])
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_for_both_kernels() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    for krel in [KERNEL_A, KERNEL_B] {
        let m = build_checked(&env, "kmf-hello", "1.0", krel).await?;
        let f = only_file(&m, "kmf_hello.ko")?;
        let info = &f.modinfo;
        ensure!(info.version.as_deref() == Some("1.0"), "{info:?}");
        ensure!(info.license.as_deref() == Some("GPL"), "{info:?}");
        ensure!(info.name.as_deref() == Some("kmf_hello"), "{info:?}");
        let srcversion = info.srcversion.clone().unwrap_or_default();
        ensure!(!srcversion.is_empty(), "srcversion missing: {info:?}");
        let ko = env
            .client
            .download("kmf-hello", "1.0", krel, "kmf_hello.ko")
            .await?;
        ensure!(real_modinfo(&ko, "version")? == "1.0");
        ensure!(real_modinfo(&ko, "license")? == "GPL");
        ensure!(real_modinfo(&ko, "srcversion")? == srcversion);

        let path = format!("/v1/artifacts/kmf-hello/1.0/{krel}/modules.tar");
        let entries = tar_entries(&env.client.bytes(&path).await?)?;
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        ensure!(names == ["kmf_hello.ko", "manifest.json"], "{names:?}");
        ensure!(entries[0].1 == ko, "modules.tar's kmf_hello.ko differs");
        let in_tar: Manifest = serde_json::from_slice(&entries[1].1)?;
        ensure!(in_tar == m, "modules.tar's manifest.json differs");

        // The kernel's builder image is listed, and is the one the artifact names.
        let resp = env.client.get("/v1/kernels").await?;
        let kernels: Vec<KernelInfo> = resp.error_for_status()?.json().await?;
        let listed = kernels.iter().find(|k| k.kernel.as_str() == krel);
        let listed = listed.with_context(|| format!("{krel} not in /v1/kernels"))?;
        ensure!(
            listed.image == m.builder_image,
            "{listed:?} vs {:?}",
            m.builder_image
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn v4l2loopback_for_both_kernels() -> Result<()> {
    let src = debian_dkms_source("v4l2loopback-dkms")?;
    let env = Env::start(ServerOpts::default()).await?;
    let (_, added) = env
        .client
        .add_module("v4l2loopback", "0.12.7", &src)
        .await?;
    ensure!(added.module.declared.package_version.as_deref() == Some("0.12.7"));
    for krel in [KERNEL_A, KERNEL_B] {
        let m = build_checked(&env, "v4l2loopback", "0.12.7", krel).await?;
        let f = only_file(&m, "v4l2loopback.ko")?;
        let info = &f.modinfo;
        ensure!(info.name.as_deref() == Some("v4l2loopback"), "{info:?}");
        ensure!(info.license.as_deref() == Some("GPL"), "{info:?}");
        ensure!(
            info.depends.iter().any(|d| d == "videodev"),
            "depends must include videodev: {:?}",
            info.depends
        );
        ensure!(m.version.as_str() == "0.12.7");
        let ko = env
            .client
            .download("v4l2loopback", "0.12.7", krel, "v4l2loopback.ko")
            .await?;
        let depends = real_modinfo(&ko, "depends")?;
        ensure!(depends.split(',').any(|d| d == "videodev"), "{depends}");
        // v4l2loopback 0.12.7 declares no MODULE_VERSION: the manifest must say what
        // modinfo says (nothing), not invent one.
        let real_version = real_modinfo(&ko, "version")?;
        ensure!(
            info.version.clone().unwrap_or_default() == real_version,
            "manifest version {:?} != modinfo -F version {real_version:?}",
            info.version
        );
    }
    Ok(())
}

/// The Makefile builds for `uname -r` unless told otherwise; the builder's own kernel
/// is something else, so only the sandbox's uname shim makes this right.
#[tokio::test(flavor = "multi_thread")]
async fn uname_makefile_targets_the_requested_kernel() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-uname", "0.1", &fixture("uname-makefile"))
        .await?;
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    ensure!(
        host.trim() != KERNEL_B,
        "this test needs a machine not running {KERNEL_B}"
    );
    let m = build_checked(&env, "kmf-uname", "0.1", KERNEL_B).await?;
    let f = only_file(&m, "kmf_uname.ko")?;
    let vermagic = f.modinfo.vermagic.clone().unwrap_or_default();
    ensure!(
        vermagic.starts_with(&format!("{KERNEL_B} ")),
        "vermagic {vermagic:?}"
    );
    Ok(())
}
