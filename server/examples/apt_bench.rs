//! The apt repository's cost, with the code the server uses, on the embedded
//! store (SQLite and a local object directory):
//! `cargo run --release -p kmodforge-server --example apt_bench -- ARTIFACTS KO_BYTES RUNS`.
//!
//! Records ARTIFACTS artifacts (one `.ko` of KO_BYTES each, distinct modules),
//! then times:
//! - `cold`: the first index, which makes, stores and records a package per artifact;
//! - `refresh`: an index after the cache expired with nothing new (what every
//!   replica does at most every 5 s while hosts run `apt update`): RUNS times;
//! - `cached`: an index served from the cache: RUNS times.
//!
//! Output: one JSON object on stdout.

use std::time::Instant;

use kmodforge_api::wire::Manifest;
use kmodforge_server::apt::AptRepo;
use kmodforge_server::keys::{KeySettings, Keys};
use kmodforge_server::store::{ObjectsConfig, RecordsConfig, Store};
use serde_json::json;

fn median_p90(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

fn manifest(i: usize, sha256: &str) -> anyhow::Result<Manifest> {
    Ok(serde_json::from_value(json!({
        "key": format!("{i:064x}"), "name": format!("m{i}"), "version": "1.0",
        "kernel": "6.1.0-47-amd64", "arch": "x86_64", "source_digest": "a".repeat(64),
        "builder_image": {"id": "sha256:bench", "tag": "bench"},
        "files": [{"file": format!("m{i}.ko"), "dest_location": "/updates/dkms", "size": 1,
            "sha256": sha256, "modinfo": {"name": null, "vermagic": null, "version": null,
            "srcversion": null, "depends": [], "license": null, "fields": []}}],
        "plan": {"package_name": "m", "package_version": "1", "modules": [], "make": "make",
            "patches": [], "pre_build": null, "post_build": null, "build_depends": [],
            "autoinstall": true, "no_weak_modules": false, "obsolete_by": null, "warnings": []},
        "build_id": format!("b{i}"), "built_at": "2026-12-07T00:00:00Z", "build_seconds": 1.0
    }))?)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 3, "usage: apt_bench ARTIFACTS KO_BYTES RUNS");
    let (n, ko_bytes, runs): (usize, usize, usize) =
        (args[0].parse()?, args[1].parse()?, args[2].parse()?);
    let dir = tempfile::tempdir()?;
    let store = Store::connect(
        dir.path(),
        &RecordsConfig::Sqlite,
        &ObjectsConfig::Local(dir.path().to_path_buf()),
    )
    .await?;
    let keys = Keys::open(dir.path(), &KeySettings::default(), store.records.clone()).await?;
    for i in 0..n {
        // Distinct, incompressible-ish contents per module.
        let ko: Vec<u8> = (0..ko_bytes)
            .map(|j| ((j as u64).wrapping_mul(2_654_435_761) ^ i as u64) as u8)
            .collect();
        let sha = store.objects.put_blob(&ko).await?;
        store.records.put_artifact(&manifest(i, &sha)?).await?;
    }
    let repo = AptRepo::new(store.clone(), keys);
    let t = Instant::now();
    let snap = repo.snapshot().await?;
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(snap.packages.len() == n, "{} packages", snap.packages.len());
    let index_bytes: usize = snap.indexes.values().map(|(plain, _)| plain.len()).sum();
    let mut refresh = Vec::with_capacity(runs);
    let mut cached = Vec::with_capacity(runs);
    for _ in 0..runs {
        repo.invalidate().await;
        let t = Instant::now();
        repo.snapshot().await?;
        refresh.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        repo.snapshot().await?;
        cached.push(t.elapsed().as_secs_f64() * 1_000_000.0);
    }
    let (refresh_median, refresh_p90) = median_p90(refresh);
    let (cached_median, _) = median_p90(cached);
    println!(
        "{}",
        json!({"artifacts": n, "ko_bytes": ko_bytes, "runs": runs,
               "cold_ms": cold_ms, "cold_ms_per_package": cold_ms / n.max(1) as f64,
               "refresh_median_ms": refresh_median, "refresh_p90_ms": refresh_p90,
               "cached_median_us": cached_median, "packages_index_bytes": index_bytes,
               "inrelease_bytes": snap.inrelease.len()})
    );
    Ok(())
}
