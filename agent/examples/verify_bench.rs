//! What a signed manifest costs the agent: Ed25519 verification of the statement,
//! its parse and the comparisons, with the agent's own code.
//! `cargo run --release -p kmodforge-agent --example verify_bench -- MANIFEST.json RUNS`
//! (a manifest with its `attestation`, e.g. `sign_bench manifest`'s output). One
//! JSON object on stdout.

use std::time::Instant;

use kmodforge_agent::trust::TrustedKeys;
use kmodforge_api::names::Arch;
use kmodforge_api::wire::Manifest;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 2, "usage: verify_bench MANIFEST.json RUNS");
    let m: Manifest = serde_json::from_slice(&std::fs::read(&args[0])?)?;
    let runs: usize = args[1].parse()?;
    let key = m
        .attestation
        .as_ref()
        .map(|a| a.key.clone())
        .unwrap_or_default();
    let keys = TrustedKeys::parse(&[key]).map_err(anyhow::Error::msg)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        keys.verify(&m, &m.name, &m.version, &m.kernel, &Arch::host_default())?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({"what": "verify", "runs": runs, "median_us": at(0.5), "p90_us": at(0.9)})
    );
    Ok(())
}
