//! DKMS's version sanity check through the agent, with real modules as the
//! "original" in-tree module: a newer one blocks the install unless `--force`, and
//! is used again after `uninstall`; the same version with another srcversion is
//! replaced.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::BuildState;
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::{fixture, request, Env, ServerOpts, KERNEL_A};

const ORIGINAL: &str = "kernel/drivers/misc/kmf_hello.ko";
const OURS: &str = "updates/dkms/kmf_hello.ko";

/// The hello fixture with `version` as PACKAGE_VERSION, `modversion` as
/// MODULE_VERSION and `greeting` in its code (a different srcversion).
fn variant(dir: &Path, version: &str, modversion: &str, greeting: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let src = fixture("hello");
    let conf = std::fs::read_to_string(src.join("dkms.conf"))?;
    std::fs::write(
        dir.join("dkms.conf"),
        conf.replace(
            "PACKAGE_VERSION=\"1.0\"",
            &format!("PACKAGE_VERSION=\"{version}\""),
        ),
    )?;
    let c = std::fs::read_to_string(src.join("kmf_hello.c"))?
        .replace(
            "MODULE_VERSION(\"1.0\")",
            &format!("MODULE_VERSION(\"{modversion}\")"),
        )
        .replace("kmf_hello: loaded", greeting);
    std::fs::write(dir.join("kmf_hello.c"), c)?;
    std::fs::copy(src.join("Makefile"), dir.join("Makefile"))?;
    Ok(())
}

/// Registers `dir` as kmf-hello/`version`, builds it for KERNEL_A, returns the `.ko`.
async fn build_ko(env: &Env, dir: &Path, version: &str) -> Result<Vec<u8>> {
    env.client.add_module("kmf-hello", version, dir).await?;
    let (_, first) = env
        .client
        .build(&request("kmf-hello", version, KERNEL_A)?)
        .await?;
    let done = env.client.wait(&first.build.id).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}",
        done.build
    );
    env.client
        .download("kmf-hello", version, KERNEL_A, "kmf_hello.ko")
        .await
}

/// A root whose KERNEL_A tree holds `ko` as an in-tree module, indexed by depmod.
fn root_with_original(ko: &[u8]) -> Result<AgentRoot> {
    let root = AgentRoot::new(&[KERNEL_A])?;
    let path = root.tree(KERNEL_A).join(ORIGINAL);
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(&path, ko)?;
    let st = Command::new("/sbin/depmod")
        .arg("-b")
        .arg(root.path())
        .args(["-a", KERNEL_A])
        .status()?;
    ensure!(st.success(), "depmod failed");
    ensure!(root.modules_dep(KERNEL_A).contains(&format!("{ORIGINAL}:")));
    Ok(root)
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_original_blocks_same_version_is_replaced() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let work = tempfile::tempdir()?;
    variant(&work.path().join("v2"), "2.0", "2.0", "kmf_hello: loaded")?;
    variant(
        &work.path().join("other"),
        "1.0-other",
        "1.0",
        "kmf_hello: other build",
    )?;
    let newer = build_ko(&env, &work.path().join("v2"), "2.0").await?;
    let same_version = build_ko(&env, &work.path().join("other"), "1.0-other").await?;

    // An in-tree 2.0 blocks 1.0 (exit 8, DKMS's message), and nothing is written.
    let root = root_with_original(&newer)?;
    root.write_config(&env.server, KERNEL_A, &[("kmf-hello", "1.0")])?;
    let run = root.run(&["sync"]).await?.expect(8)?;
    ensure!(
        run.stderr
            .contains("is not newer than what is already found"),
        "{run}"
    );
    ensure!(!root.tree(KERNEL_A).join(OURS).exists());

    // --force installs it, keeps the original where it is, and status says so.
    let run = root.run(&["sync", "--force"]).await?.expect(0)?;
    ensure!(run.stdout.contains("original modules kept"), "{run}");
    ensure!(root.tree(KERNEL_A).join(ORIGINAL).exists());
    ensure!(root.modules_dep(KERNEL_A).contains(&format!("{OURS}:")));
    let status = root.run(&["status"]).await?.expect(0)?;
    let line = format!("kmf-hello/1.0, {KERNEL_A}, x86_64: installed (Original modules exist)");
    ensure!(status.stdout.lines().any(|l| l == line), "{status}");

    // Uninstall: the original is in place and indexed again.
    root.run(&["uninstall", "kmf-hello/1.0", "--kernel", KERNEL_A])
        .await?
        .expect(0)?;
    ensure!(root.tree(KERNEL_A).join(ORIGINAL).exists());
    let dep = root.modules_dep(KERNEL_A);
    ensure!(
        dep.contains(&format!("{ORIGINAL}:")) && !dep.contains(OURS),
        "{dep}"
    );

    // Same version 1.0, another srcversion: DKMS's `=`, which installs.
    let root = root_with_original(&same_version)?;
    root.write_config(&env.server, KERNEL_A, &[("kmf-hello", "1.0")])?;
    root.run(&["sync"]).await?.expect(0)?;
    ensure!(root.modules_dep(KERNEL_A).contains(&format!("{OURS}:")));
    Ok(())
}
