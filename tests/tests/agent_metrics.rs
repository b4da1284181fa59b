//! The agent's textfile for node_exporter (`metrics_textfile`), written after a sync
//! against the real server and parsed by the Prometheus project's own text parser:
//! a successful sync, then one with the server gone.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::promtext;
use kmodforge_e2e::{fixture, Env, ServerOpts, KERNEL_A, KERNEL_B};

fn now() -> Result<f64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64())
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut n: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    n.sort();
    Ok(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_textfile_tells_the_last_sync_and_what_is_installed() -> Result<()> {
    let mut env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let root = AgentRoot::new(&[KERNEL_A, KERNEL_B])?;
    let dir = root.path().join("var/lib/node_exporter/textfile_collector");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("kmodforge.prom");
    let extra = format!("metrics_textfile = \"{}\"\n", file.display());
    root.write_config_with(&env.server, KERNEL_A, &[("kmf-hello", "1.0")], &extra)?;

    let t0 = now()?.floor();
    root.run(&["sync"]).await?.expect(0)?;
    let t1 = now()?;
    let text = std::fs::read_to_string(&file).context("the textfile after a sync")?;
    let scrape = promtext::parse(&text)?;
    ensure!(scrape.kind_of("kmodforge_agent_last_sync_success") == Some("gauge"));
    let get = |name: &str, labels: &[(&str, &str)]| scrape.get(name, labels);
    ensure!(
        get("kmodforge_agent_last_sync_success", &[])? == Some(1.0),
        "{text}"
    );
    ensure!(
        get("kmodforge_agent_last_sync_exit_code", &[])? == Some(0.0),
        "{text}"
    );
    let at = get("kmodforge_agent_last_sync_timestamp_seconds", &[])?.context("timestamp")?;
    ensure!(
        t0 <= at && at <= t1,
        "timestamp {at} not within [{t0}, {t1}]"
    );
    for k in [KERNEL_A, KERNEL_B] {
        let labels = [("kernel", k), ("module", "kmf-hello"), ("version", "1.0")];
        for name in [
            "kmodforge_agent_module_installed",
            "kmodforge_agent_module_intact",
        ] {
            ensure!(
                get(name, &labels)? == Some(1.0),
                "{name}{labels:?} in\n{text}"
            );
        }
        ensure!(
            get("kmodforge_agent_module_boot_verified", &labels)? == Some(0.0),
            "no boot check was asked for:\n{text}"
        );
    }
    ensure!(
        get("kmodforge_agent_boot_guard_held", &[])? == Some(0.0),
        "{text}"
    );
    ensure!(
        names(&dir)? == ["kmodforge.prom"],
        "a temp file was left: {:?}",
        names(&dir)?
    );

    // The server gone: the sync fails, the file says so, the installed modules stay listed.
    env.server.stop();
    root.run(&["sync"]).await?.expect(3)?;
    let text = std::fs::read_to_string(&file)?;
    let scrape = promtext::parse(&text)?;
    ensure!(
        scrape.get("kmodforge_agent_last_sync_success", &[])? == Some(0.0),
        "{text}"
    );
    ensure!(
        scrape.get("kmodforge_agent_last_sync_exit_code", &[])? == Some(3.0),
        "{text}"
    );
    let installed = scrape
        .samples
        .iter()
        .filter(|s| s.name == "kmodforge_agent_module_installed" && s.value == 1.0)
        .count();
    ensure!(
        installed == 2,
        "both kernels' installs are still listed:\n{text}"
    );
    ensure!(
        names(&dir)? == ["kmodforge.prom"],
        "a temp file was left: {:?}",
        names(&dir)?
    );
    Ok(())
}
