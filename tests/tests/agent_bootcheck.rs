//! The agent and boot checks, against the real server, Docker and qemu:
//! `require_boot_check = true` gets an installed but unchecked module checked
//! (without touching it) and a new install checked first; an artifact whose
//! check failed is never installed; `status --json` says whether the installed
//! artifact was boot-verified.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::{e2e_fixture, fixture, Env, ServerOpts, KERNEL_A};

fn mtime(path: &Path) -> Result<SystemTime> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} must exist", path.display()))?
        .modified()?)
}

/// `status --json` entries.
async fn status(root: &AgentRoot) -> Result<Vec<serde_json::Value>> {
    Ok(root.status_json().await?.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn require_boot_check_verifies_before_trusting_an_artifact() -> Result<()> {
    // The server does not check unless asked.
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    let server = &env.server;
    let modules = [("kmf-hello", "1.0")];
    root.write_config(server, KERNEL_A, &modules)?;

    // Installed without a check: status says so.
    let first = root.run(&["sync"]).await?.expect(0)?;
    let line = format!("kmf-hello/1.0, {KERNEL_A}: installed (kmf_hello.ko)");
    ensure!(first.stdout.contains(&line), "no {line:?} in\n{first}");
    let entries = status(&root).await?;
    ensure!(
        entries.len() == 1
            && entries[0]["boot_verified"] == false
            && entries[0]["boot_check"].is_null(),
        "{entries:?}"
    );

    // Required now: the installed artifact is checked on the server, the files stay.
    let ko = root.tree(KERNEL_A).join("updates/dkms/kmf_hello.ko");
    let before = (
        mtime(&ko)?,
        mtime(&root.tree(KERNEL_A).join("modules.dep"))?,
    );
    root.write_config_with(server, KERNEL_A, &modules, "require_boot_check = true\n")?;
    let second = root.run(&["sync"]).await?.expect(0)?;
    let line =
        format!("kmf-hello/1.0, {KERNEL_A}: unchanged (already installed; boot-verified now)");
    ensure!(second.stdout.contains(&line), "no {line:?} in\n{second}");
    ensure!(
        (
            mtime(&ko)?,
            mtime(&root.tree(KERNEL_A).join("modules.dep"))?
        ) == before,
        "recording the check rewrote the module or reran depmod"
    );
    let entries = status(&root).await?;
    let e = &entries[0];
    ensure!(
        e["boot_verified"] == true && e["boot_check"]["passed"] == true,
        "{entries:?}"
    );
    let manifest = env.client.manifest("kmf-hello", "1.0", KERNEL_A).await?;
    let check = manifest
        .boot_check
        .context("the server recorded the check")?;
    ensure!(check.passed, "{check:?}");
    ensure!(
        e["boot_check"]["checked_at"] == check.checked_at.as_str(),
        "the state holds the server's check: {e}"
    );

    // Once verified, a sync neither asks again nor changes anything.
    let third = root.run(&["sync"]).await?.expect(0)?;
    let line = format!("kmf-hello/1.0, {KERNEL_A}: unchanged (already installed)");
    ensure!(third.stdout.contains(&line), "no {line:?} in\n{third}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_whose_boot_check_failed_is_never_installed() -> Result<()> {
    let env = Env::start(ServerOpts::default().env("KMODFORGE_BOOT_CHECK", "true")).await?;
    env.client
        .add_module("kmf-boot-enodev", "1.0", &e2e_fixture("boot-enodev"))
        .await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    // Not even required: a failed check is a refusal.
    root.write_config(&env.server, KERNEL_A, &[("kmf-boot-enodev", "1.0")])?;
    let run = root.run(&["sync"]).await?.expect(5)?;
    let prefix = format!("kmodforge-agent: kmf-boot-enodev/1.0 on {KERNEL_A}: boot check failed: ");
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("kmodforge-agent: "))
        .with_context(|| format!("no error line in\n{run}"))?;
    ensure!(
        line.starts_with(&prefix) && line.contains("No such device"),
        "one line naming module, kernel and the kernel's refusal: {line}"
    );
    ensure!(
        !root
            .tree(KERNEL_A)
            .join("updates/dkms/kmf_bc_enodev.ko")
            .exists(),
        "nothing installed"
    );
    ensure!(status(&root).await?.is_empty(), "no state entry");
    Ok(())
}
