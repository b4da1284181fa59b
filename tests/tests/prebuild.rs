//! Prebuild on publication and readiness at a glance (issue 12): a Debian archive
//! over loopback (real index stanzas, pointing at the real mirror) gains a kernel;
//! the server prebuilds every AUTOINSTALL module for it with no client asking, the
//! matrix shows them ready or failed, the webhook receiver gets one notice for the
//! failure, and the readiness page, loaded in a real headless Chromium, shows the
//! same cells (its screenshot is saved). Prebuilds yield build slots to the builds
//! hosts wait for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kmodforge_api::wire::{BuildRecord, BuildState, CellState, Matrix};
use kmodforge_e2e::archive::TestArchive;
use kmodforge_e2e::minihttp::Receiver;
use kmodforge_e2e::{
    e2e_fixture, fixture, request, target_dir, Env, ServerOpts, KERNEL_A, KERNEL_B,
};

/// `src` copied with `AUTOINSTALL="yes"` appended to its dkms.conf.
fn autoinstalled(src: &Path) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        std::fs::copy(e.path(), dir.path().join(e.file_name()))?;
    }
    let conf = dir.path().join("dkms.conf");
    let text = std::fs::read_to_string(&conf)?;
    std::fs::write(&conf, format!("{text}AUTOINSTALL=\"yes\"\n"))?;
    Ok(dir)
}

async fn matrix(env: &Env) -> Result<Matrix> {
    Ok(env.client.get("/v1/matrix").await?.json().await?)
}

/// Polls the matrix until `done` holds for it.
async fn wait_matrix(env: &Env, what: &str, done: impl Fn(&Matrix) -> bool) -> Result<Matrix> {
    let start = Instant::now();
    loop {
        let m = matrix(env).await?;
        if done(&m) {
            return Ok(m);
        }
        if start.elapsed() > Duration::from_secs(20 * 60) {
            bail!("{what}: not after 20 minutes: {m:#?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn state(m: &Matrix, kernel: &str, name: &str) -> Option<CellState> {
    m.cells
        .iter()
        .find(|c| c.kernel.as_str() == kernel && c.name.as_str() == name)
        .map(|c| c.state)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newly_published_kernel_is_prebuilt_and_shown() -> Result<()> {
    let archive = TestArchive::start("bookworm", &[KERNEL_A])?;
    let hook = Receiver::start()?;
    let env = Env::start(
        ServerOpts::default()
            .env("KMODFORGE_ARCHIVES", archive.setting())
            .env("KMODFORGE_ARCHIVE_INTERVAL_SECS", 1)
            .env("KMODFORGE_WEBHOOK_URL", &hook.url),
    )
    .await?;
    // The first scan records the archive's kernel.
    wait_matrix(&env, "kernel A published", |m| {
        m.kernels
            .iter()
            .any(|k| k.kernel.as_str() == KERNEL_A && k.published)
    })
    .await?;

    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let broken = autoinstalled(&fixture("compile-error"))?;
    env.client
        .add_module("kmf-compile-error", "1.0", broken.path())
        .await?;
    // Not AUTOINSTALL: not prebuilt.
    env.client
        .add_module("kmf-timeout", "1.0", &fixture("timeout"))
        .await?;

    archive.publish(KERNEL_B)?;
    let m = wait_matrix(&env, "kernel B's prebuild", |m| {
        state(m, KERNEL_B, "kmf-hello") == Some(CellState::Ready)
            && state(m, KERNEL_B, "kmf-compile-error") == Some(CellState::Failed)
    })
    .await?;
    ensure!(
        state(&m, KERNEL_B, "kmf-timeout") == Some(CellState::Missing),
        "{m:#?}"
    );
    let b = m
        .kernels
        .iter()
        .find(|k| k.kernel.as_str() == KERNEL_B)
        .context("kernel B listed")?;
    ensure!(
        b.published && !b.requested,
        "no client asked for kernel B: {b:?}"
    );
    let prebuild = b.prebuild.as_ref().context("kernel B was prebuilt")?;
    ensure!(
        prebuild.trigger == "published" && prebuild.builds.len() == 2,
        "{prebuild:?}"
    );
    let failed = m
        .cells
        .iter()
        .find(|c| c.kernel.as_str() == KERNEL_B && c.name.as_str() == "kmf-compile-error")
        .context("cell")?;
    let f = failed
        .failure
        .as_ref()
        .context("the failure is in the cell")?;
    ensure!(
        f.kind.as_str() == "compile_error" && !f.message.contains('\n'),
        "{f:?}"
    );

    // Exactly one notice, for the failure, retried deliveries aside.
    let start = Instant::now();
    while hook.received().is_empty() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = hook.received();
    ensure!(got.len() == 1, "one notice: {got:#?}");
    ensure!(
        got[0]["event"] == "prebuild_failed"
            && got[0]["kernel"] == KERNEL_B
            && got[0]["module"] == "kmf-compile-error"
            && got[0]["kind"] == "compile_error",
        "{:#}",
        got[0]
    );

    page_shows_the_matrix(&env, &m).await
}

/// The readiness page in a real headless Chromium: every cell's state as the API
/// says, and a screenshot under `target/kmodforge-e2e/`.
async fn page_shows_the_matrix(env: &Env, m: &Matrix) -> Result<()> {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context(
            "Debian's chromium is not installed (apt-get install chromium); this test never skips",
        )?;
    let token = env.server.admin_token()?;
    let url = format!("http://browser:{token}@{}/", env.server.addr());
    let profile = tempfile::tempdir()?;
    let base = |extra: &[&str]| {
        let mut c = Command::new(&chromium);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url);
        c
    };
    let dom = base(&["--dump-dom"]).output().context("running chromium")?;
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    ensure!(
        dom.contains("id=\"matrix\""),
        "the page rendered: {}",
        &dom[..dom.len().min(2000)]
    );
    let mut checked = 0;
    for c in &m.cells {
        let needle = format!(
            "data-kernel=\"{}\" data-module=\"{}\" data-version=\"{}\" data-state=\"{}\"",
            c.kernel,
            c.name,
            c.version,
            c.state.as_str()
        );
        ensure!(
            dom.contains(&needle),
            "the page's cell {needle} (API says {:?})",
            c.state
        );
        checked += 1;
    }
    ensure!(checked >= 6, "cells checked: {checked}");
    let shot_dir = target_dir().join("kmodforge-e2e");
    std::fs::create_dir_all(&shot_dir)?;
    let shot = shot_dir.join("readiness-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = base(&[&format!("--screenshot={}", shot.display())]).output()?;
    ensure!(
        shot.metadata().map(|m| m.len() > 10_000).unwrap_or(false),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("readiness page screenshot: {}", shot.display());
    Ok(())
}

/// `tests/fixtures-e2e/live-log` (a tick a second, then a real build) as `name`,
/// with AUTOINSTALL.
fn slow_autoinstalled(name: &str, ticks: u32) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for e in std::fs::read_dir(e2e_fixture("live-log"))? {
        let e = e?;
        std::fs::copy(e.path(), dir.path().join(e.file_name()))?;
    }
    let conf = dir.path().join("dkms.conf");
    let text = std::fs::read_to_string(&conf)?
        .replace(
            "PACKAGE_NAME=\"kmf-live\"",
            &format!("PACKAGE_NAME=\"{name}\""),
        )
        .replace("ticks.sh 10", &format!("ticks.sh {ticks}"));
    std::fs::write(&conf, format!("{text}AUTOINSTALL=\"yes\"\n"))?;
    Ok(dir)
}

/// Prebuilds run behind the builds hosts wait for: with one build slot, three
/// prebuilds queued and the first one running, a host's build takes the slot next,
/// ahead of the two prebuilds queued before it; then the prebuilds finish.
#[tokio::test(flavor = "multi_thread")]
async fn prebuilds_yield_build_slots_to_builds_a_host_waits_for() -> Result<()> {
    let env = Env::start(ServerOpts::default().env("KMODFORGE_MAX_BUILDS", 1)).await?;
    let slow = ["kmf-slow-a", "kmf-slow-b", "kmf-slow-c"];
    for name in slow {
        env.client
            .add_module(name, "1.0", slow_autoinstalled(name, 6)?.path())
            .await?;
    }
    // The host's module is not AUTOINSTALL: no prebuild builds it.
    let hello = tempfile::tempdir()?;
    for e in std::fs::read_dir(fixture("hello"))? {
        let e = e?;
        std::fs::copy(e.path(), hello.path().join(e.file_name()))?;
    }
    let conf = hello.path().join("dkms.conf");
    let text = std::fs::read_to_string(&conf)?.replace("AUTOINSTALL=\"yes\"\n", "");
    std::fs::write(&conf, text)?;
    env.client
        .add_module("kmf-hello", "1.0", hello.path())
        .await?;
    let resp = env
        .client
        .http()
        .post(env.client.url(&format!("/v1/kernels/{KERNEL_A}/prebuild")))
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 202, "prebuild: {}", resp.status());

    let builds = || async {
        let all: Vec<BuildRecord> = env.client.get("/v1/builds").await?.json().await?;
        anyhow::Ok(all)
    };
    // The first prebuild holds the only slot; the other two queue behind it.
    let start = Instant::now();
    loop {
        let all = builds().await?;
        let running = all
            .iter()
            .filter(|b| b.state == BuildState::Running)
            .count();
        let queued = all.iter().filter(|b| b.state == BuildState::Queued).count();
        if running == 1 && queued == 2 {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(600),
            "three prebuilds, one running: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A host asks for kmf-hello now: it is the next to run.
    let (_, hello) = env
        .client
        .build(&request("kmf-hello", "1.0", KERNEL_A)?)
        .await?;
    let hello_id = hello.build.id.clone();
    loop {
        let all = builds().await?;
        let mine = all
            .iter()
            .find(|b| b.id == hello_id)
            .context("the host's build is listed")?;
        if mine.state != BuildState::Queued {
            let prebuilds: Vec<&BuildRecord> = all.iter().filter(|b| b.id != hello_id).collect();
            let done = prebuilds.iter().filter(|b| b.state.is_final()).count();
            let waiting = prebuilds
                .iter()
                .filter(|b| b.state == BuildState::Queued)
                .count();
            ensure!(
                done == 1 && waiting == 2,
                "the host's build ({mine:?}) ran ahead of the queued prebuilds: {prebuilds:?}"
            );
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(600),
            "the host's build never ran: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = env.client.wait(&hello_id).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}",
        done.build
    );
    // Then the prebuilds run, and every one is ready.
    let m = wait_matrix(&env, "the prebuilds done", |m| {
        slow.iter()
            .all(|n| state(m, KERNEL_A, n).is_some_and(|s| s != CellState::Building))
    })
    .await?;
    for n in slow {
        ensure!(
            state(&m, KERNEL_A, n) == Some(CellState::Ready),
            "{n}: {:?}",
            state(&m, KERNEL_A, n)
        );
    }
    Ok(())
}
