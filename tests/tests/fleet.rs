//! A fleet after a prebuild (issue 12): the new kernel's modules were prebuilt
//! (`POST /v1/kernels/{krel}/prebuild`), then 200 agents install it at the same
//! moment, each with its own root and a `read` token: every agent done, zero
//! builds; the agents' p50/p99 and the server's (from its access log) printed.

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
    let env = Env::start(
        ServerOpts::default().env("KMODFORGE_LOG", "info,kmodforge_server::access=debug"),
    )
    .await?;
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
    let log_before = env.server.log_text().len();
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
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    // The server's side: every request of the fleet, from the access log.
    let log = env.server.log_text();
    let mut server_ms = access_millis(&log[log_before..]);
    ensure!(
        server_ms.len() >= 2 * AGENTS,
        "the access log has {} requests for {AGENTS} agents (a manifest and a file each at least)",
        server_ms.len()
    );
    let access: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains("kmodforge_server::access"))
        .collect();
    ensure!(
        access
            .iter()
            .all(|l| !l.contains("kmf-hello") && !l.contains(KERNEL_B)),
        "the access log names routes, never raw paths: {:?}",
        access.iter().find(|l| l.contains("kmf-hello"))
    );
    server_ms.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "fleet: {AGENTS} agents after the prebuild, all done in {:.2} s; per agent p50 {:.3} s, p99 {:.3} s, max {:.3} s; \
         server: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        wall.as_secs_f64(),
        at(&times, 0.5),
        at(&times, 0.99),
        at(&times, 1.0),
        server_ms.len(),
        at(&server_ms, 0.5),
        at(&server_ms, 0.99),
        at(&server_ms, 1.0),
    );
    Ok(())
}

/// The `micros=` of each access-log line, in milliseconds.
fn access_millis(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("kmodforge_server::access"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("micros=")))
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect()
}
