//! A fleet after a prebuild (issue 12): the new kernel's modules were prebuilt
//! (`POST /v1/kernels/{krel}/prebuild`), then 200 agents install it at the same
//! moment, each with its own root and a `read` token: every agent done, zero
//! builds, and the agents' p50/p99 printed.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildRecord, CellState, Matrix};
use kmodforge_e2e::agent::{agent_binary, AgentRoot};
use kmodforge_e2e::{fixture, Env, ServerOpts, KERNEL_B};
use reqwest::StatusCode;

const AGENTS: usize = 200;

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_agents_install_a_prebuilt_kernel_with_zero_builds() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let resp = env
        .client
        .http()
        .post(env.client.url(&format!("/v1/kernels/{KERNEL_B}/prebuild")))
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::ACCEPTED,
        "prebuild: {}",
        resp.status()
    );
    let start = Instant::now();
    loop {
        let m: Matrix = env.client.get("/v1/matrix").await?.json().await?;
        let cell = m
            .cells
            .iter()
            .find(|c| c.kernel.as_str() == KERNEL_B && c.name.as_str() == "kmf-hello");
        if cell.is_some_and(|c| c.state == CellState::Ready) {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(900),
            "prebuild not ready: {cell:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before: Vec<BuildRecord> = env.client.get("/v1/builds").await?.json().await?;

    let token = env.server.token("fleet", "read", &[]).await?;
    let url = env.server.base_url();
    let mut roots = Vec::with_capacity(AGENTS);
    for _ in 0..AGENTS {
        let root = AgentRoot::new(&[KERNEL_B])?;
        root.write_config(
            (url.as_str(), token.as_str()),
            KERNEL_B,
            &[("kmf-hello", "1.0")],
        )?;
        roots.push(root);
    }
    let bin = agent_binary()?;
    let released = Instant::now();
    let runs = roots.iter().map(|root| {
        let (bin, config) = (bin.clone(), root.config.clone());
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let out = Command::new(bin)
                .arg("--config")
                .arg(config)
                .args(["sync", "--kernel", KERNEL_B])
                .env_remove("KMODFORGE_AGENT_CONFIG")
                .env_remove("KMODFORGE_SERVER")
                .output();
            (out, t.elapsed())
        })
    });
    let results = futures_util::future::join_all(runs).await;
    let wall = released.elapsed();
    let mut times = Vec::with_capacity(AGENTS);
    for (i, r) in results.into_iter().enumerate() {
        let (out, took) = r?;
        let out = out.context("running an agent")?;
        ensure!(
            out.status.success(),
            "agent {i}: {:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        times.push(took.as_secs_f64());
    }
    for root in &roots {
        ensure!(
            root.tree(KERNEL_B)
                .join("updates/dkms/kmf_hello.ko")
                .is_file(),
            "installed everywhere"
        );
    }
    let after: Vec<BuildRecord> = env.client.get("/v1/builds").await?.json().await?;
    ensure!(
        after.len() == before.len(),
        "zero builds: {} then {}",
        before.len(),
        after.len()
    );
    times.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "fleet: {AGENTS} agents after the prebuild, all done in {:.2} s; per agent p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        wall.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
