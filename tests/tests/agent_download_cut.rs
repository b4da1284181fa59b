//! Downloads cut mid-body, for real: a TCP proxy between the agent and the real
//! server closes the connection after half of a `.ko`'s body. Cut twice, the agent
//! retries and installs the right file; cut every time, it fails with one line,
//! installs nothing and leaves no file behind in the kernel's tree.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::agent::{built_hello, AgentRoot};
use kmodforge_e2e::cutproxy::CutProxy;
use kmodforge_e2e::{fixture, Env, ServerOpts, KERNEL_A};
use sha2::{Digest, Sha256};

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_download_is_retried_and_a_partial_one_never_installed() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let (manifest, ko) = built_hello(&env, KERNEL_A).await?;
    ensure!(ko.len() > 1024, "a .ko of {} bytes", ko.len());
    let token = env.server.admin_token()?;

    // Cut twice, three retries: the third attempt gets the whole file.
    let proxy = CutProxy::start(env.server.addr(), 2).await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    let url = proxy.base_url();
    root.write_config_with(
        (url.as_str(), token.as_str()),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
        "retries = 3\n",
    )?;
    let run = root.run(&["sync"]).await?.expect(0)?;
    ensure!(
        proxy.cuts() == 2 && proxy.left() == 0,
        "cuts {}: {run}",
        proxy.cuts()
    );
    let installed = std::fs::read(root.tree(KERNEL_A).join("updates/dkms/kmf_hello.ko"))
        .context("the installed .ko")?;
    let want = &manifest.files[0].sha256;
    ensure!(
        hex::encode(Sha256::digest(&installed)) == *want && installed == ko,
        "the installed file is not the server's"
    );

    // Cut every time: three attempts, then one line, nothing installed, nothing left.
    let proxy = CutProxy::start(env.server.addr(), usize::MAX).await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    let before = tree(&root.tree(KERNEL_A))?;
    let url = proxy.base_url();
    root.write_config_with(
        (url.as_str(), token.as_str()),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
        "retries = 2\n",
    )?;
    let run = root.run(&["sync"]).await?.expect(3)?;
    ensure!(proxy.cuts() == 3, "cuts {}: {run}", proxy.cuts());
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    ensure!(lines.len() == 1, "one line on stderr:\n{run}");
    let line = lines[0];
    for part in [
        "kmf-hello/1.0 on 6.1.0-47-amd64",
        "downloading kmf_hello.ko",
        "the answer was cut short",
        &format!(" of {} bytes", ko.len()),
        "in each of 3 attempts",
    ] {
        ensure!(line.contains(part), "{part:?} not in {line:?}");
    }
    let after = tree(&root.tree(KERNEL_A))?;
    ensure!(
        before == after,
        "the kernel tree changed: {before:?} -> {after:?}"
    );
    let status = root.run(&["status"]).await?.expect(0)?;
    ensure!(
        !status.stdout.contains("installed"),
        "nothing is installed:\n{status}"
    );
    Ok(())
}
