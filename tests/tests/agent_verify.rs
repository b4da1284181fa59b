//! The agent refuses what does not verify: a manifest whose sha256 is not the
//! download's, and a `.ko` whose vermagic names another kernel. Real modules built by
//! the real server are served by a tiny fake server that lies about them.

use anyhow::{ensure, Result};
use kmodforge_e2e::agent::{built_hello, serve_hello, AgentRoot, FakeServer, Run};
use kmodforge_e2e::{fixture, Env, ServerOpts, KERNEL_A, KERNEL_B};

/// Runs `sync --kernel krel` against `fake`; expects exit 5 and nothing installed.
async fn refused(root: &AgentRoot, fake: &FakeServer, krel: &str) -> Result<Run> {
    root.write_config(&fake.base_url(), KERNEL_A, &[("kmf-hello", "1.0")])?;
    let run = root.run(&["sync", "--kernel", krel]).await?.expect(5)?;
    let prefix = format!("kmodforge-agent: kmf-hello/1.0 on {krel}: ");
    let lines: Vec<&str> = run.stderr.lines().collect();
    ensure!(
        lines.len() == 1 && lines[0].starts_with(&prefix),
        "expected one error line starting {prefix:?}:\n{run}"
    );
    let dkms = root.tree(krel).join("updates/dkms");
    let left: Vec<_> = std::fs::read_dir(&dkms)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(
        left.is_empty(),
        "files installed despite the failure: {left:?}"
    );
    ensure!(!root.modules_dep(krel).contains("kmf_hello"));
    let (entries, _) = root.status_json().await?;
    ensure!(entries.is_empty(), "state must be empty: {entries:?}");
    Ok(run)
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_sha256_or_vermagic_installs_nothing() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let (m_a, ko_a) = built_hello(&env, KERNEL_A).await?;
    let (_, ko_b) = built_hello(&env, KERNEL_B).await?;
    let root = AgentRoot::new(&[KERNEL_A])?;

    let mut lying = m_a.clone();
    lying.files[0].sha256 = "0".repeat(64);
    let fake = serve_hello(KERNEL_A, &lying, ko_a.clone())?;
    let run = refused(&root, &fake, KERNEL_A).await?;
    ensure!(run.stderr.contains("sha256 mismatch"), "{run}");

    // The manifest is right about the bytes, but they are kernel B's module.
    let mut other = m_a.clone();
    other.files[0].sha256 = sha256_hex(&ko_b);
    other.files[0].size = ko_b.len() as u64;
    other.files[0].modinfo.vermagic = None;
    let fake = serve_hello(KERNEL_A, &other, ko_b)?;
    let run = refused(&root, &fake, KERNEL_A).await?;
    ensure!(run.stderr.contains("vermagic"), "{run}");

    // The honest manifest installs (the fake server is not the cause of the refusals).
    let fake = serve_hello(KERNEL_A, &m_a, ko_a)?;
    root.write_config(&fake.base_url(), KERNEL_A, &[("kmf-hello", "1.0")])?;
    root.run(&["sync", "--kernel", KERNEL_A]).await?.expect(0)?;
    ensure!(root
        .modules_dep(KERNEL_A)
        .contains("updates/dkms/kmf_hello.ko:"));
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
