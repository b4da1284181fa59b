//! A module installed under another file name than its own (`DEST_MODULE_NAME`,
//! as distributions do to let two versions of a driver coexist), with a second
//! module that depends on it through its exported symbol (issue 14): built,
//! boot-checked with both loaded (by file, in dependency order), and installed by
//! the agent under their DKMS names, where the real depmod resolves the dependency.
//!
//! Fixture `tests/fixtures-e2e/renamed/`: `kmf_rn_base` shipped as
//! `kmf_rn_base-current.ko`, and `kmf_rn_user.ko`, which calls `kmf_rn_base_answer`.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildRequest, BuildState, FailureKind};
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::{
    check_downloads, e2e_fixture, expect_failure, request, Env, ServerOpts, KERNEL_A,
};
use reqwest::StatusCode;

const BASE_FILE: &str = "kmf_rn_base-current.ko";
const USER_FILE: &str = "kmf_rn_user.ko";

#[tokio::test(flavor = "multi_thread")]
async fn renamed_module_and_its_dependent_are_boot_checked() -> Result<()> {
    // A guest under signature enforcement boots through OVMF: slow on a busy machine.
    let env = Env::start(ServerOpts::default().env("KMODFORGE_BOOT_TIMEOUT_SECS", 300)).await?;
    env.client
        .add_module("kmf-renamed", "1.0", &e2e_fixture("renamed"))
        .await?;
    let req = BuildRequest {
        boot_check: Some(true),
        ..request("kmf-renamed", "1.0", KERNEL_A)?
    };
    let (status, first) = env.client.build(&req).await?;
    ensure!(status == StatusCode::ACCEPTED, "{status} {first:?}");
    let id = first.build.id;
    let done = env.client.wait(&id).await?;
    env.assert_no_container_of(&id).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}\n{}",
        done.build,
        env.client.build_log(&id).await.unwrap_or_default()
    );
    let m = done.artifact.context("manifest")?;

    // The artifact: the files under their DKMS names, the modules under their own.
    let files: Vec<(&str, Option<&str>, &str)> = m
        .files
        .iter()
        .map(|f| {
            (
                f.file.as_str(),
                f.modinfo.name.as_deref(),
                f.dest_location.as_str(),
            )
        })
        .collect();
    ensure!(
        files
            == [
                (BASE_FILE, Some("kmf_rn_base"), "/updates/dkms"),
                (USER_FILE, Some("kmf_rn_user"), "/updates/dkms")
            ],
        "{files:?}"
    );

    // The check: both loaded, the renamed one first (kmf_rn_user needs its symbol).
    let check = m.boot_check.context("the manifest has the check")?;
    ensure!(
        check.passed && check.completed && check.reason.is_none(),
        "{check:#?}"
    );
    let new: Vec<(&str, &str, bool)> = check
        .modules
        .iter()
        .filter(|b| b.new)
        .map(|b| (b.file.as_str(), b.name.as_str(), b.loaded))
        .collect();
    ensure!(
        new == [
            (BASE_FILE, "kmf_rn_base", true),
            (USER_FILE, "kmf_rn_user", true)
        ],
        "load order and outcome: {new:?}"
    );
    let user = check
        .modules
        .iter()
        .find(|b| b.name == "kmf_rn_user")
        .context("kmf_rn_user in the check")?;
    ensure!(
        user.messages
            .iter()
            .any(|l| l.contains("kmf_rn_user: the answer is 42")),
        "its init called the renamed module: {:?}",
        user.messages
    );
    Ok(())
}

/// The agent (requiring a passed boot check) installs both files under
/// `updates/dkms/<DEST_MODULE_NAME>.ko`; the real depmod finds the dependency by
/// symbol, and the real modprobe resolves it from the tree by the file's name.
#[tokio::test(flavor = "multi_thread")]
async fn agent_installs_them_under_their_dkms_names_and_depmod_resolves_them() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-renamed", "1.0", &e2e_fixture("renamed"))
        .await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    let modules = [("kmf-renamed", "1.0")];
    root.write_config_with(
        &env.server,
        KERNEL_A,
        &modules,
        "require_boot_check = true\n",
    )?;
    let run = root.run(&["sync"]).await?.expect(0)?;
    let line = format!("kmf-renamed/1.0, {KERNEL_A}: installed ({BASE_FILE} {USER_FILE})");
    ensure!(
        run.stdout
            .lines()
            .any(|l| l.contains(&line) && l.contains("boot-verified")),
        "no {line:?} (boot-verified) in\n{run}"
    );

    let tree = root.tree(KERNEL_A);
    for f in [BASE_FILE, USER_FILE] {
        let path = tree.join("updates/dkms").join(f);
        ensure!(path.is_file(), "{} not installed", path.display());
    }
    let dep = root.modules_dep(KERNEL_A);
    let want = format!("updates/dkms/{USER_FILE}: updates/dkms/{BASE_FILE}");
    ensure!(
        dep.lines().any(|l| l == want),
        "modules.dep does not say {want:?}:\n{dep}"
    );
    ensure!(
        dep.lines()
            .any(|l| l == format!("updates/dkms/{BASE_FILE}:")),
        "{dep}"
    );

    // kmod looks the renamed module up by its file's name, and brings it in for its user.
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(root.path())
        .args(["-S", KERNEL_A, "--show-depends", "kmf_rn_user"])
        .output()
        .context("running modprobe --show-depends")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let loads: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|p| p.trim().rsplit('/').next().unwrap_or_default())
        .collect();
    ensure!(
        out.status.success() && loads == [BASE_FILE, USER_FILE],
        "modprobe --show-depends kmf_rn_user: {loads:?}\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A check that cannot run for its own reasons (bootcheck refuses two files of one
/// module) is `boot_check_not_run`, never `infrastructure`: the record says the
/// modules were built, that the check could not run and why, in one line, and the
/// artifact is kept (unchecked, so a later request may check it).
#[tokio::test(flavor = "multi_thread")]
async fn a_check_that_cannot_run_says_so_and_keeps_the_modules() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-twice", "1.0", &e2e_fixture("boot-not-run"))
        .await?;
    let req = BuildRequest {
        boot_check: Some(true),
        ..request("kmf-twice", "1.0", KERNEL_A)?
    };
    let (status, first) = env.client.build(&req).await?;
    ensure!(status == StatusCode::ACCEPTED, "{status} {first:?}");
    let id = first.build.id;
    let done = env.client.wait(&id).await?;
    env.assert_no_container_of(&id).await?;
    let f = expect_failure(&done, FailureKind::BootCheckNotRun)?;
    let key = done.build.artifact_key.clone().context("artifact key")?;
    let want = format!(
        "kmf-twice/1.0 on {KERNEL_A}: the modules were built (artifact {key}), but the boot check \
         could not run: bootcheck failed (exit 2): two files in the input are module kmf_twice"
    );
    ensure!(f.message == want, "{}\nwanted {want}", f.message);
    ensure!(!f.message.contains('\n'), "one line");

    // The modules are there, unchecked, from the record as from the live job.
    let again = env.client.get_build(&id).await?;
    let m = again.artifact.context("the record shows the artifact")?;
    ensure!(m.boot_check.is_none(), "{:?}", m.boot_check);
    let files: Vec<&str> = m.files.iter().map(|f| f.file.as_str()).collect();
    ensure!(files == ["kmf_twice-a.ko", "kmf_twice-b.ko"], "{files:?}");
    check_downloads(&env.client, &m).await?;
    Ok(())
}
