//! The agent's command line without a server: configuration errors, the lock, an
//! unreachable server, and the documented exit codes (agent/README.md).

use std::fs::OpenOptions;
use std::net::TcpListener;

use anyhow::{ensure, Result};
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::KERNEL_A;
use nix::fcntl::{Flock, FlockArg};

/// A loopback URL where nothing listens.
fn dead_url() -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_name_the_key_and_exit_2() -> Result<()> {
    let root = AgentRoot::new(&[KERNEL_A])?;
    root.write_config("http://127.0.0.1:1", KERNEL_A, &[("kmf-hello", "1.0")])?;
    let text = std::fs::read_to_string(&root.config)?;
    std::fs::write(
        &root.config,
        text.replace("retries = 1", "retries = \"many\""),
    )?;
    let run = root.run(&["sync"]).await?.expect(2)?;
    ensure!(run.stderr.lines().count() == 1, "one line:\n{run}");
    ensure!(run.stderr.contains("retries"), "{run}");

    std::fs::write(&root.config, "server = \"ftp://x\"\n")?;
    let run = root.run(&["status"]).await?.expect(2)?;
    ensure!(run.stderr.contains("`server`"), "{run}");

    let run = root.run(&["uninstall"]).await?.expect(2)?;
    ensure!(run.stderr.contains("NAME/VERSION"), "{run}");
    Ok(())
}

/// A kernel hook on a host where the agent is installed but not configured (or
/// badly configured) never fails the kernel package: one line, exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn hooks_without_a_configuration_exit_0_with_one_line() -> Result<()> {
    let root = AgentRoot::new(&[KERNEL_A])?;
    std::fs::remove_file(&root.config).ok();
    for args in [
        vec!["sync", "--kernel", KERNEL_A, "--hook"],
        vec!["uninstall", "--all-modules", "--kernel", KERNEL_A, "--hook"],
    ] {
        let run = root.run(&args).await?.expect(0)?;
        ensure!(
            run.stderr.lines().count() == 1
                && run.stderr.contains(&format!(
                    "not configured ({} does not exist): nothing done for {KERNEL_A}; not failing the kernel package",
                    root.config.display()
                )),
            "{args:?}:\n{run}"
        );
    }
    // Without --hook it is the usage error it always was.
    root.run(&["sync", "--kernel", KERNEL_A]).await?.expect(2)?;
    if let Some(dir) = root.config.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&root.config, "retries = \"many\"\n")?;
    let run = root
        .run(&["sync", "--kernel", KERNEL_A, "--hook"])
        .await?
        .expect(0)?;
    ensure!(
        run.stderr.lines().count() == 1 && run.stderr.contains("retries"),
        "{run}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_held_exits_7() -> Result<()> {
    let root = AgentRoot::new(&[KERNEL_A])?;
    let dead = dead_url()?;
    root.write_config_with(
        dead.as_str(),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
        "lock_wait_secs = 1\n",
    )?;
    let dir = root.path().join("var/lib/kmodforge-agent");
    std::fs::create_dir_all(&dir)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    let held = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e)?;
    // A sync takes the lock only to install (its server is down here: exit 3, no wait);
    // an uninstall takes it at once and gives up after lock_wait_secs.
    root.run(&["sync"]).await?.expect(3)?;
    let run = root
        .run(&["uninstall", "kmf-hello/1.0", "--kernel", KERNEL_A])
        .await?
        .expect(7)?;
    ensure!(run.stderr.contains("lock"), "{run}");
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_exits_3_with_one_line_per_pair() -> Result<()> {
    let root = AgentRoot::new(&[KERNEL_A, "6.1.0-56-amd64"])?;
    root.write_config(&dead_url()?, KERNEL_A, &[("kmf-hello", "1.0")])?;
    let run = root.run(&["sync"]).await?.expect(3)?;
    let lines: Vec<&str> = run.stderr.lines().collect();
    ensure!(lines.len() == 2, "one line per kernel:\n{run}");
    for (line, k) in lines.iter().zip([KERNEL_A, "6.1.0-56-amd64"]) {
        let prefix = format!("kmodforge-agent: kmf-hello/1.0 on {k}: ");
        ensure!(
            line.starts_with(&prefix) && line.contains("unreachable"),
            "{run}"
        );
    }
    // A hook never fails the kernel package.
    let hook = root
        .run(&["sync", "--kernel", KERNEL_A, "--hook"])
        .await?
        .expect(0)?;
    ensure!(hook.stderr.contains("unreachable"), "{hook}");
    Ok(())
}
