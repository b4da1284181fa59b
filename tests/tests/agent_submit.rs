//! `kmodforge-agent submit` (CI): pack, upload, build, follow the log, write the
//! artifacts; a failing build gives exit 4 and its log.

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::Manifest;
use kmodforge_e2e::agent::run_agent;
use kmodforge_e2e::{fixture, Env, ServerOpts, KERNEL_A};

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_writes_artifacts_and_fails_on_a_failed_build() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let work = tempfile::tempdir()?;
    // An empty config, so a /etc/kmodforge/agent.toml of this machine plays no part.
    let config = work.path().join("agent.toml");
    std::fs::write(&config, "")?;
    // CI's token: allowed to publish, nothing more.
    let token_file = work.path().join("token");
    std::fs::write(&token_file, env.server.token("ci", "publish", &[]).await?)?;
    let out = work.path().join("out");
    let args = |src: &str| -> Vec<String> {
        [
            "--config",
            &config.display().to_string(),
            "--server",
            &env.server.base_url(),
            "--token-file",
            &token_file.display().to_string(),
            "submit",
            &fixture(src).display().to_string(),
            "--kernel",
            KERNEL_A,
            "--out",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let run = run_agent(args("hello")).await?.expect(0)?;
    ensure!(
        run.stdout
            .contains(&format!("kmf-hello/1.0, {KERNEL_A}: built")),
        "{run}"
    );
    // The live log was followed.
    ensure!(
        run.stdout.contains("kmf_hello"),
        "no build log in stdout:\n{run}"
    );
    let dir = out.join(KERNEL_A);
    let ko = std::fs::read(dir.join("kmf_hello.ko")).context("kmf_hello.ko written")?;
    let m: Manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    ensure!(m.kernel.as_str() == KERNEL_A && m.name.as_str() == "kmf-hello");
    ensure!(m.files.len() == 1 && m.files[0].sha256 == sha256_hex(&ko));

    // The same again is a cache hit.
    let again = run_agent(args("hello")).await?.expect(0)?;
    ensure!(
        again
            .stdout
            .contains(&format!("kmf-hello/1.0, {KERNEL_A}: cached")),
        "{again}"
    );

    let failed = run_agent(args("compile-error")).await?.expect(4)?;
    let line = format!("kmodforge-agent: kmf-compile-error/1.0 on {KERNEL_A}: build ");
    ensure!(failed.stderr.contains(&line), "{failed}");
    ensure!(failed.stderr.contains("(compile_error)"), "{failed}");
    ensure!(
        failed.stdout.contains("kmf_this_symbol_does_not_exist"),
        "log followed:\n{failed}"
    );
    ensure!(!out.join(KERNEL_A).join("kmf_compile_error.ko").exists());
    Ok(())
}
