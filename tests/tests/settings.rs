//! Per-module settings (`/v1/modules/{name}/settings`) against the real server and
//! Docker: DKMS override files, Debian build packages, and BUILD_DEPENDS (from
//! dkms.conf and from the settings), including the ways they fail.

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildResponse, BuildState, FailureKind, Manifest};
use kmodforge_e2e::{
    e2e_fixture, error_body, expect_failure, fixture, real_modinfo, request, Env, ServerOpts,
    KERNEL_A,
};
use reqwest::StatusCode;
use serde_json::json;

/// Builds `name`/1.0 for `KERNEL_A` and waits for the end.
async fn build(env: &Env, name: &str) -> Result<BuildResponse> {
    let (_, first) = env.client.build(&request(name, "1.0", KERNEL_A)?).await?;
    let done = env.client.wait(&first.build.id).await?;
    env.assert_no_job_containers().await?;
    Ok(done)
}

async fn succeeded(env: &Env, done: &BuildResponse) -> Result<Manifest> {
    ensure!(
        done.build.state == BuildState::Succeeded,
        "build {} of {}: {:?}\n{}",
        done.build.id,
        done.build.name,
        done.build.failure,
        env.client
            .build_log(&done.build.id)
            .await
            .unwrap_or_default()
    );
    done.artifact.clone().context("succeeded without artifact")
}

fn failed_with(done: &BuildResponse, kind: FailureKind) -> Result<String> {
    Ok(expect_failure(done, kind)?.message.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_round_trip_and_bad_settings_are_refused() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let empty = env.client.set_settings("kmf-x", &json!({})).await?;
    ensure!(
        empty["packages"] == json!([]) && empty["overrides"] == json!([]),
        "{empty}"
    );
    let set = env
        .client
        .set_settings(
            "kmf-x",
            &json!({
                "packages": ["libxtables-dev", "gawk", "gawk"],
                "build_depends": ["kmf-y"],
                "overrides": [
                    {"kernel": KERNEL_A, "conf": "MAKE[0]=x"},
                    {"conf": "STRIP[0]=no"},
                ],
            }),
        )
        .await?;
    ensure!(
        set["packages"] == json!(["gawk", "libxtables-dev"]),
        "{set}"
    );
    ensure!(
        set["overrides"][0]["conf"] == "STRIP[0]=no" && set["overrides"][1]["kernel"] == KERNEL_A,
        "overrides must be in DKMS's order (<m>.conf before <m>--<kver>.conf): {set}"
    );
    let got: serde_json::Value = env
        .client
        .get("/v1/modules/kmf-x/settings")
        .await?
        .json()
        .await?;
    ensure!(got == set, "GET {got} != PUT {set}");

    for (body, field) in [
        (json!({"packages": ["libfoo-dev (>= 1)"]}), "packages[0]"),
        (json!({"build_depends": ["kmf-x"]}), "build_depends[0]"),
        (
            json!({"overrides": [{"version": "1.0", "arch": "x86_64", "conf": ""}]}),
            "overrides[0].arch",
        ),
        (json!({"packges": []}), "packges"),
        (json!({"build_depends": ["../etc"]}), "../etc"),
    ] {
        let (status, err) = error_body(env.client.put_settings("kmf-x", &body).await?).await?;
        ensure!(
            status == StatusCode::BAD_REQUEST && err.error.message.contains(field),
            "{body}: {status} {err:?} must name {field}"
        );
    }
    // Nothing of the refused bodies was stored.
    let after: serde_json::Value = env
        .client
        .get("/v1/modules/kmf-x/settings")
        .await?
        .json()
        .await?;
    ensure!(after == set, "refused PUTs changed the settings: {after}");
    env.client.delete_settings("kmf-x").await?;
    let gone: serde_json::Value = env
        .client
        .get("/v1/modules/kmf-x/settings")
        .await?
        .json()
        .await?;
    ensure!(
        gone["build_depends"] == json!([]) && gone["updated_at"].is_null(),
        "{gone}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn overrides_are_sourced_after_dkms_conf_and_change_the_build() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    // <m>-<v>.conf renames the module; <m>--<kver>.conf sees the value before it.
    env.client
        .set_settings(
            "kmf-hello",
            &json!({"overrides": [
                {"version": "1.0", "conf": "DEST_MODULE_NAME[0]=\"kmf_renamed\""},
                {"kernel": KERNEL_A, "conf": "DEST_MODULE_NAME[0]=\"${DEST_MODULE_NAME[0]}_$arch\""},
            ]}),
        )
        .await?;
    let m = succeeded(&env, &build(&env, "kmf-hello").await?).await?;
    let files: Vec<&str> = m.files.iter().map(|f| f.file.as_str()).collect();
    ensure!(files == ["kmf_renamed_x86_64.ko"], "{files:?}");
    ensure!(
        m.overrides == ["kmf-hello-1.0.conf", "kmf-hello--6.1.0-47-amd64.conf"],
        "{:?}",
        m.overrides
    );

    // A kernel-scoped BUILD_EXCLUSIVE makes the same source not applicable here.
    env.client
        .set_settings(
            "kmf-hello",
            &json!({"overrides": [{"kernel": KERNEL_A, "conf": "BUILD_EXCLUSIVE_KERNEL=\"^5\\\\.\""}]}),
        )
        .await?;
    let done = build(&env, "kmf-hello").await?;
    ensure!(
        done.build.state == BuildState::NotApplicable,
        "{:?} {:?}",
        done.build.state,
        done.build.failure
    );

    // Without settings the plain build (another cache key) comes back.
    env.client.delete_settings("kmf-hello").await?;
    let m = succeeded(&env, &build(&env, "kmf-hello").await?).await?;
    ensure!(
        m.files[0].file == "kmf_hello.ko" && m.overrides.is_empty(),
        "{m:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn build_depends_from_dkms_conf_builds_the_dependency_first() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-dep-user", "1.0", &e2e_fixture("dep-user"))
        .await?;
    // Not registered yet: DKMS's "missing BUILD_DEPENDS", in one line.
    let msg = failed_with(
        &build(&env, "kmf-dep-user").await?,
        FailureKind::DependencyFailed,
    )?;
    ensure!(
        msg.contains("kmf-dep-base") && msg.contains("not registered") && !msg.contains('\n'),
        "{msg}"
    );

    env.client
        .add_module("kmf-dep-base", "1.0", &e2e_fixture("dep-base"))
        .await?;
    let done = build(&env, "kmf-dep-user").await?;
    let m = succeeded(&env, &done).await?;
    let base = env.client.manifest("kmf-dep-base", "1.0", KERNEL_A).await?;
    ensure!(
        m.dependencies.len() == 1
            && m.dependencies[0].name.as_str() == "kmf-dep-base"
            && m.dependencies[0].key == base.key,
        "{:?} vs {}",
        m.dependencies,
        base.key
    );
    ensure!(
        base.symvers.is_some(),
        "the dependency keeps its Module.symvers"
    );
    let ko = env
        .client
        .download("kmf-dep-user", "1.0", KERNEL_A, "kmf_dep_user.ko")
        .await?;
    let depends = real_modinfo(&ko, "depends")?;
    ensure!(depends == "kmf_dep_base", "modinfo -F depends: {depends:?}");
    let log = env.client.build_log(&done.build.id).await?;
    ensure!(log.contains("BUILD_DEPENDS kmf-dep-base/1.0"), "{log}");

    // A second request is a cache hit that builds nothing.
    let (status, again) = env
        .client
        .build(&request("kmf-dep-user", "1.0", KERNEL_A)?)
        .await?;
    let again = env.client.wait(&again.build.id).await?;
    ensure!(
        again.artifact.as_ref().map(|a| &a.key) == Some(&m.key) && again.cached,
        "{status} {again:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn build_depends_cycle_fails_without_hanging() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-dep-user", "1.0", &e2e_fixture("dep-user"))
        .await?;
    env.client
        .add_module("kmf-dep-base", "1.0", &e2e_fixture("dep-base"))
        .await?;
    // dkms.conf: user needs base; settings: base needs user.
    env.client
        .set_settings("kmf-dep-base", &json!({"build_depends": ["kmf-dep-user"]}))
        .await?;
    let msg = failed_with(
        &build(&env, "kmf-dep-user").await?,
        FailureKind::DependencyFailed,
    )?;
    ensure!(msg.contains("cycle"), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn packages_are_installed_into_a_derived_builder_image() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-needs-package", "1.0", &e2e_fixture("needs-package"))
        .await?;
    let msg = failed_with(
        &build(&env, "kmf-needs-package").await?,
        FailureKind::CompileError,
    )?;
    ensure!(msg.contains("make failed"), "{msg}");

    env.client
        .set_settings(
            "kmf-needs-package",
            &json!({"packages": ["kmf-no-such-package"]}),
        )
        .await?;
    let msg = failed_with(
        &build(&env, "kmf-needs-package").await?,
        FailureKind::DependencyFailed,
    )?;
    ensure!(
        msg.contains("kmf-no-such-package") && msg.contains("Unable to locate package"),
        "{msg}"
    );

    env.client
        .set_settings(
            "kmf-needs-package",
            &json!({"packages": ["libxtables-dev"]}),
        )
        .await?;
    let done = build(&env, "kmf-needs-package").await?;
    let m = succeeded(&env, &done).await?;
    ensure!(m.packages == ["libxtables-dev"], "{:?}", m.packages);
    ensure!(
        m.builder_image.tag.contains("-pkgs-"),
        "built in the derived image: {:?}",
        m.builder_image
    );
    // The derived image is not a kernel of its own.
    let kernels: serde_json::Value = env.client.get("/v1/kernels").await?.json().await?;
    ensure!(
        !kernels.to_string().contains("-pkgs-"),
        "GET /v1/kernels lists a package image: {kernels}"
    );
    Ok(())
}
