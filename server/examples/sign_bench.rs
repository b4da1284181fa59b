//! Module signing and manifest attestation cost, in this process, with the code
//! the server uses: `cargo run --release -p kmodforge-server --example sign_bench -- ARGS`.
//!
//!   sign_bench module KEY.pem CERT.pem MODULE.ko RUNS OUT.ko
//!       signs MODULE.ko RUNS times, prints the median and p90 in milliseconds,
//!       writes the signed module to OUT.ko (to compare with `scripts/sign-file`'s)
//!   sign_bench manifest MANIFEST.json RUNS
//!       signs the manifest's statement RUNS times with a fresh Ed25519 key, prints
//!       the median in microseconds
//!
//! Output: one JSON object on stdout.

use std::time::Instant;

use kmodforge_api::wire::Manifest;
use kmodforge_server::keys::{ManifestSigningKey, ModuleSigningKey};

fn median_p90(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("module") if args.len() == 6 => {
            let key =
                ModuleSigningKey::from_pem(&std::fs::read(&args[1])?, &std::fs::read(&args[2])?)?;
            let module = std::fs::read(&args[3])?;
            let runs: usize = args[4].parse()?;
            let mut times = Vec::with_capacity(runs);
            let mut signed = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                signed = key.sign(&module)?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            std::fs::write(&args[5], &signed)?;
            let (median, p90) = median_p90(times);
            println!(
                "{}",
                serde_json::json!({"what": "module", "bytes": module.len(), "signed_bytes": signed.len(),
                                    "runs": runs, "median_ms": median, "p90_ms": p90})
            );
        }
        Some("manifest") if args.len() == 3 => {
            let mut m: Manifest = serde_json::from_slice(&std::fs::read(&args[1])?)?;
            let runs: usize = args[2].parse()?;
            let key = ManifestSigningKey::generate()?;
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                let statement = kmodforge_api::attest::ManifestStatement::of(&m);
                m.attestation = Some(key.attest(&statement)?);
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let (median, p90) = median_p90(times);
            println!(
                "{}",
                serde_json::json!({"what": "manifest", "runs": runs, "median_us": median, "p90_us": p90,
                                    "signed": m})
            );
        }
        _ => anyhow::bail!(
            "usage: sign_bench module KEY CERT MODULE RUNS OUT | sign_bench manifest MANIFEST RUNS"
        ),
    }
    Ok(())
}
