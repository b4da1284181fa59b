//! The agent's locking (issue 12): a sync fetches and waits without the host lock,
//! so an agent killed during a long build wait leaves nothing behind, and a kernel
//! removed during a sync (its prerm hook, then its files) leaves neither modules nor
//! state; the hook exits 0 without waiting for the build.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::BuildState;
use kmodforge_e2e::agent::{agent_binary, AgentRoot};
use kmodforge_e2e::{e2e_fixture, Env, ServerOpts, KERNEL_A, KERNEL_B};
use nix::fcntl::{Flock, FlockArg};

/// The live-log fixture with a longer tick phase: a build that takes ~35 s.
fn slow_module() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for e in std::fs::read_dir(e2e_fixture("live-log"))? {
        let e = e?;
        std::fs::copy(e.path(), dir.path().join(e.file_name()))?;
    }
    let conf = dir.path().join("dkms.conf");
    let text = std::fs::read_to_string(&conf)?.replace("ticks.sh 10", "ticks.sh 30");
    std::fs::write(&conf, text)?;
    Ok(dir)
}

fn spawn_sync(root: &AgentRoot, extra: &[&str]) -> Result<Child> {
    Command::new(agent_binary()?)
        .arg("--config")
        .arg(&root.config)
        .arg("sync")
        .args(extra)
        .env_remove("KMODFORGE_AGENT_CONFIG")
        .env_remove("KMODFORGE_SERVER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the agent")
}

/// Waits until the server runs a build of kmf-live.
async fn build_running(env: &Env) -> Result<()> {
    let start = Instant::now();
    loop {
        let builds: Vec<kmodforge_api::wire::BuildRecord> =
            env.client.get("/v1/builds").await?.json().await?;
        if builds.iter().any(|b| b.state == BuildState::Running) {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(300),
            "no build started: {builds:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn lock_is_free(root: &Path) -> Result<bool> {
    let path = root.join("var/lib/kmodforge-agent/lock");
    if !path.exists() {
        return Ok(true);
    }
    let f = OpenOptions::new().write(true).open(&path)?;
    Ok(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_during_a_build_wait_leaves_nothing_behind() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let src = slow_module()?;
    env.client.add_module("kmf-live", "1.0", src.path()).await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    root.write_config(&env.server, KERNEL_A, &[("kmf-live", "1.0")])?;

    let mut agent = spawn_sync(&root, &[])?;
    build_running(&env).await?;
    agent.kill()?;
    agent.wait()?;
    ensure!(lock_is_free(root.path())?, "the lock is free");
    let state_dir = root.path().join("var/lib/kmodforge-agent");
    ensure!(
        !state_dir.join("state.json").exists() && !state_dir.join("txn.json").exists(),
        "no state, no journal"
    );
    ensure!(
        !root.tree(KERNEL_A).join("updates").exists(),
        "nothing installed"
    );

    // The next run joins the same build and installs.
    let run = root.run(&["sync"]).await?.expect(0)?;
    ensure!(
        run.stdout
            .contains(&format!("kmf-live/1.0, {KERNEL_A}: installed")),
        "{run}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_removed_during_a_sync_keeps_no_modules_or_state() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let src = slow_module()?;
    env.client.add_module("kmf-live", "1.0", src.path()).await?;
    let root = AgentRoot::new(&[KERNEL_A, KERNEL_B])?;
    root.write_config(&env.server, KERNEL_A, &[("kmf-live", "1.0")])?;

    let agent = spawn_sync(&root, &[])?;
    build_running(&env).await?;
    // apt removes kernel B: its prerm hook, then its files. The hook does not wait
    // for the sync's build (no lock is held while it waits) and exits 0.
    let t = Instant::now();
    let hook = root
        .run(&["uninstall", "--all-modules", "--kernel", KERNEL_B, "--hook"])
        .await?
        .expect(0)?;
    ensure!(
        t.elapsed() < Duration::from_secs(15),
        "the prerm hook waited for the build: {hook}"
    );
    std::fs::remove_dir_all(root.tree(KERNEL_B))?;

    let out = tokio::task::spawn_blocking(move || agent.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "sync: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    ensure!(
        stdout.contains(&format!("kmf-live/1.0, {KERNEL_A}: installed")),
        "{stdout}\n{stderr}"
    );
    ensure!(
        stdout.contains(&format!(
            "kmf-live/1.0, {KERNEL_B}: not installed: the kernel was removed"
        )),
        "{stdout}\n{stderr}"
    );
    ensure!(
        !root.tree(KERNEL_B).exists(),
        "nothing recreated the removed kernel's tree"
    );
    let (modules, _) = root.status_json().await?;
    let kernels: Vec<&str> = modules
        .iter()
        .filter_map(|m| m["kernel"].as_str())
        .collect();
    ensure!(
        kernels == [KERNEL_A],
        "state only for the kernel that stayed: {kernels:?}"
    );
    Ok(())
}
