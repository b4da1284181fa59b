//! Signed manifests (issue 11): an agent that pins the server's manifest key
//! refuses an unsigned manifest, a tampered one, a tampered `.ko`, a genuine
//! manifest replayed for another kernel, and a manifest signed by a key it does
//! not pin, each with exit 9, one line, and nothing installed. Genuine answers of
//! the real server are replayed and altered by a fake server.

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::agent::{built_hello, run_agent, serve_hello, AgentRoot, Run};
use kmodforge_e2e::{fixture, DataDir, Env, ServerOpts, KERNEL_A, KERNEL_B};

/// `trust show URL`: the `trusted_keys = [...]` line it prints.
async fn trust_line(url: &str) -> Result<String> {
    let run = run_agent(vec!["trust".into(), "show".into(), url.into()])
        .await?
        .expect(0)?;
    run.stdout
        .lines()
        .find(|l| l.starts_with("trusted_keys = "))
        .map(str::to_string)
        .with_context(|| format!("no trusted_keys line:\n{run}"))
}

/// Syncs kmf-hello on `krel` from `url` pinning `trust`; expects exit 9, one
/// error line, and nothing installed.
async fn untrusted(url: &str, trust: &str, krel: &str) -> Result<Run> {
    let root = AgentRoot::new(&[krel])?;
    root.write_config_with(url, krel, &[("kmf-hello", "1.0")], &format!("{trust}\n"))?;
    let run = root.run(&["sync", "--kernel", krel]).await?.expect(9)?;
    let prefix = format!("kmodforge-agent: kmf-hello/1.0 on {krel}: untrusted: ");
    let lines: Vec<&str> = run.stderr.lines().collect();
    ensure!(
        lines.len() == 1 && lines[0].starts_with(&prefix),
        "one line starting {prefix:?}:\n{run}"
    );
    ensure!(
        !root.tree(krel).join("updates").exists(),
        "nothing installed:\n{run}"
    );
    ensure!(!root.modules_dep(krel).contains("kmf_hello"));
    Ok(run)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_key_refuses_every_untrusted_manifest() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let (m_a, ko_a) = built_hello(&env, KERNEL_A).await?;
    let (m_b, ko_b) = built_hello(&env, KERNEL_B).await?;
    let trust = trust_line(&env.server.base_url()).await?;
    let fleet = env.server.token("fleet", "read", &[]).await?;

    // The real server, the right key: installed, and status says who signed what.
    let root = AgentRoot::new(&[KERNEL_A])?;
    let url = env.server.base_url();
    root.write_config_with(
        (url.as_str(), fleet.as_str()),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
        &format!("{trust}\n"),
    )?;
    root.run(&["sync"]).await?.expect(0)?;
    let (status, _) = root.status_json().await?;
    let signing = &status[0]["signing"];
    let pinned = trust
        .trim_start_matches("trusted_keys = [\"")
        .trim_end_matches("\"]");
    ensure!(
        signing["signed"] == true
            && signing["manifest_key"] == pinned
            && signing["signer"] == "kmodforge module signing key",
        "{status:#?}"
    );

    // Unsigned.
    let mut unsigned = m_a.clone();
    unsigned.attestation = None;
    let fake = serve_hello(KERNEL_A, &unsigned, ko_a.clone())?;
    let run = untrusted(&fake.base_url(), &trust, KERNEL_A).await?;
    ensure!(run.stderr.contains("not signed"), "{run}");

    // Tampered manifest: another file behind the same signature.
    let mut tampered = m_a.clone();
    tampered.files[0].sha256 = sha256_hex(&ko_b);
    tampered.files[0].size = ko_b.len() as u64;
    let fake = serve_hello(KERNEL_A, &tampered, ko_b.clone())?;
    let run = untrusted(&fake.base_url(), &trust, KERNEL_A).await?;
    ensure!(
        run.stderr.contains("differs from its signed statement"),
        "{run}"
    );

    // Tampered .ko under the genuine manifest.
    let mut evil = ko_a.clone();
    let mid = evil.len() / 2;
    evil[mid] ^= 0x55;
    let fake = serve_hello(KERNEL_A, &m_a, evil)?;
    let run = untrusted(&fake.base_url(), &trust, KERNEL_A).await?;
    ensure!(
        run.stderr.contains("does not match the signed manifest"),
        "{run}"
    );

    // Kernel B's genuine manifest and module, replayed for kernel A.
    let fake = serve_hello(KERNEL_A, &m_b, ko_b.clone())?;
    let run = untrusted(&fake.base_url(), &trust, KERNEL_A).await?;
    ensure!(
        run.stderr.contains(KERNEL_B),
        "names the kernel it is really for: {run}"
    );

    // Signed by a key the agent does not pin.
    let other = format!("trusted_keys = [\"ed25519:{}\"]", "ab".repeat(32));
    let fake = serve_hello(KERNEL_A, &m_a, ko_a.clone())?;
    let run = untrusted(&fake.base_url(), &other, KERNEL_A).await?;
    ensure!(run.stderr.contains("not in trusted_keys"), "{run}");

    // The fake server is not the cause: it serves the genuine pair fine.
    let honest = AgentRoot::new(&[KERNEL_A])?;
    honest.write_config_with(
        fake.base_url().as_str(),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
        &format!("{trust}\n"),
    )?;
    honest
        .run(&["sync", "--kernel", KERNEL_A])
        .await?
        .expect(0)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pinned_keys_carry_a_fleet_through_a_key_rotation() -> Result<()> {
    let dir = DataDir::new()?;
    let mut env = Env::start(ServerOpts::default().data_dir(dir.clone())).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    built_hello(&env, KERNEL_A).await?;
    let old_trust = trust_line(&env.server.base_url()).await?;

    // A new manifest key (and module key): what is built from now on is signed with them.
    let keys = tempfile::tempdir()?;
    let gen = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(keys.path().join("manifest.key"))
        .output()?;
    ensure!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    env.restart(ServerOpts::default().data_dir(dir.clone()).env(
        "KMODFORGE_MANIFEST_SIGNING_KEY",
        keys.path().join("manifest.key").display(),
    ))
    .await?;
    built_hello(&env, KERNEL_B).await?;
    let new_trust = trust_line(&env.server.base_url()).await?;
    ensure!(new_trust != old_trust, "the key changed");
    let key = |line: &str| {
        line.trim_start_matches("trusted_keys = [")
            .trim_end_matches(']')
            .to_string()
    };
    let url = env.server.base_url();
    let token = env.server.admin_token()?;

    // Only the old key pinned: kernel A (signed before) installs, kernel B is refused.
    let root = AgentRoot::new(&[KERNEL_A, KERNEL_B])?;
    root.write_config_with(
        (url.as_str(), token.as_str()),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
        &format!("{old_trust}\n"),
    )?;
    let run = root.run(&["sync"]).await?.expect(9)?;
    ensure!(
        run.stdout
            .contains(&format!("kmf-hello/1.0, {KERNEL_A}: installed")),
        "{run}"
    );
    ensure!(run.stderr.contains("not in trusted_keys"), "{run}");

    // Both pinned: both kernels.
    let both = format!("trusted_keys = [{}, {}]", key(&old_trust), key(&new_trust));
    root.write_config_with(
        (url.as_str(), token.as_str()),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
        &format!("{both}\n"),
    )?;
    let run = root.run(&["sync"]).await?.expect(0)?;
    ensure!(
        run.stdout
            .contains(&format!("kmf-hello/1.0, {KERNEL_B}: installed")),
        "{run}"
    );
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
