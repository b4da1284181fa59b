//! A representative subset of Debian's DKMS corpus, built for both kernels and
//! compared with what the real DKMS 3.0.10 built from the same sources
//! (`tests/corpus/dkms-baseline-subset.json`, taken from the corpus baseline):
//! the same `.ko` names, the same modinfo `version` and `srcversion` (never bytes:
//! DKMS signs with a per-host key), and a failure where DKMS failed.
//!
//! The subset covers what the issue names: several modules per package with
//! dependencies between them (ddcci, xtables-addons' 23), BUILD_EXCLUSIVE_CONFIG
//! (acpi-call), shell code in dkms.conf (lttng-modules picks 46 of its 54 modules
//! from the kernel's `.config`; its 6.1.0-56 build fails in DKMS and here), a
//! dangling symlink, PRE_BUILD, STRIP and a Debian build package given through the
//! settings (iptables-netflow), and BUILD_DEPENDS by name with hard-coded `/usr/src`
//! paths (west-chamber needs xtables-addons' source; DKMS fails without it on the
//! baseline machine, kmodforge builds it when the settings name the dependency).
//! `compat/run.py` runs the whole corpus against the real DKMS on this machine.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use kmodforge_api::wire::{BuildResponse, BuildState, FailureKind};
use kmodforge_e2e::{debian_dkms_source, request, Env, ServerOpts, KERNEL_A, KERNEL_B};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Baseline {
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    package: String,
    name: String,
    version: String,
    kernel: String,
    dkms_status: i32,
    dkms_failure: Option<String>,
    modules: Vec<Module>,
    /// west-chamber: DKMS's result with xtables-addons' source beside it.
    with_dependency_source: Option<Vec<Module>>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Module {
    file: String,
    version: String,
    srcversion: String,
}

fn baseline(package: &str, kernel: &str) -> Result<Row> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/corpus/dkms-baseline-subset.json"
    );
    let text = std::fs::read_to_string(path).with_context(|| path.to_string())?;
    let b: Baseline = serde_json::from_str(&text).context("baseline subset")?;
    b.rows
        .into_iter()
        .find(|r| r.package == package && r.kernel == kernel)
        .with_context(|| format!("{package} on {kernel} is not in the baseline subset"))
}

/// Fetches the package with apt, registers its tree under DKMS's name/version.
async fn add(env: &Env, package: &str) -> Result<Row> {
    let row = baseline(package, KERNEL_A)?;
    let dir = debian_dkms_source(package)?;
    let (_, added) = env.client.add_module(&row.name, &row.version, &dir).await?;
    for w in &added.warnings {
        eprintln!("{package}: warning: {w}");
    }
    Ok(row)
}

async fn build(env: &Env, row: &Row, kernel: &str) -> Result<BuildResponse> {
    let (_, first) = env
        .client
        .build(&request(&row.name, &row.version, kernel)?)
        .await?;
    env.client.wait(&first.build.id).await
}

/// The artifact's modules as (file, version, srcversion), sorted.
fn modules_of(done: &BuildResponse) -> Result<Vec<Module>> {
    let m = done.artifact.as_ref().context("no artifact")?;
    let mut out: Vec<Module> = m
        .files
        .iter()
        .map(|f| Module {
            file: f.file.clone(),
            version: f.modinfo.version.clone().unwrap_or_default(),
            srcversion: f.modinfo.srcversion.clone().unwrap_or_default(),
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Fails unless kmodforge's result for `package` on `kernel` matches DKMS's.
async fn compare(env: &Env, package: &str, kernel: &str) -> Result<()> {
    let row = baseline(package, kernel)?;
    let done = build(env, &row, kernel).await?;
    let what = format!("{package} ({}/{}) on {kernel}", row.name, row.version);
    let log = || async {
        env.client
            .build_log(&done.build.id)
            .await
            .unwrap_or_default()
    };
    let expected = match (row.dkms_status, &row.with_dependency_source) {
        (0, _) => Some(row.modules.clone()),
        // DKMS failed only for want of another package's source on its host.
        (_, Some(with_dep)) => Some(with_dep.clone()),
        _ => None,
    };
    match expected {
        Some(mut expected) => {
            ensure!(
                done.build.state == BuildState::Succeeded,
                "{what}: DKMS built it, kmodforge: {:?} {:?}\n{}",
                done.build.state,
                done.build.failure,
                log().await
            );
            expected.sort();
            let got = modules_of(&done)?;
            if got != expected {
                let got: BTreeMap<_, _> = got.iter().map(|m| (&m.file, m)).collect();
                let want: BTreeMap<_, _> = expected.iter().map(|m| (&m.file, m)).collect();
                let mut diffs = Vec::new();
                for (file, w) in &want {
                    match got.get(file) {
                        None => diffs.push(format!("{file}: missing")),
                        Some(g) if g != w => {
                            diffs.push(format!("{file}: kmodforge {g:?}, DKMS {w:?}"))
                        }
                        Some(_) => {}
                    }
                }
                for file in got.keys().filter(|f| !want.contains_key(*f)) {
                    diffs.push(format!("{file}: only kmodforge built it"));
                }
                bail!("{what}: modules differ from DKMS's:\n{}", diffs.join("\n"));
            }
        }
        None => {
            let f = done
                .build
                .failure
                .as_ref()
                .context("failed build without failure")?;
            ensure!(
                done.build.state == BuildState::Failed && f.kind == FailureKind::CompileError,
                "{what}: DKMS failed with {} ({}), kmodforge: {:?} {:?}",
                row.dkms_status,
                row.dkms_failure.as_deref().unwrap_or(""),
                done.build.state,
                f
            );
            ensure!(
                !f.message.contains('\n'),
                "{what}: the failure must be one line: {}",
                f.message
            );
        }
    }
    env.assert_no_job_containers().await?;
    Ok(())
}

/// Registers `packages` (then the settings, by DKMS name), and builds and compares
/// each for both kernels, last registered first: a dependent is listed after its
/// dependency and builds it on the way.
async fn corpus_case(packages: &[&str], settings: &[(&str, serde_json::Value)]) -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    for p in packages {
        add(&env, p).await?;
    }
    for (name, body) in settings {
        env.client.set_settings(name, body).await?;
    }
    for k in [KERNEL_A, KERNEL_B] {
        for p in packages.iter().rev() {
            compare(&env, p, k).await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn acpi_call_build_exclusive_config() -> Result<()> {
    corpus_case(&["acpi-call-dkms"], &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn ddcci_two_modules_that_depend_on_each_other() -> Result<()> {
    corpus_case(&["ddcci-dkms"], &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn lttng_modules_from_shell_code_and_the_same_failure_on_56() -> Result<()> {
    corpus_case(&["lttng-modules-dkms"], &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn iptables_netflow_with_its_build_package() -> Result<()> {
    // Depends: libc6-dev, libxtables-dev, pkg-config (libc6 is there already).
    let packages = json!({"packages": ["libc6-dev", "libxtables-dev", "pkg-config"]});
    corpus_case(&["iptables-netflow-dkms"], &[("ipt-netflow", packages)]).await
}

/// West-chamber first (it builds xtables-addons on the way), then xtables-addons
/// itself, which matches DKMS too.
#[tokio::test(flavor = "multi_thread")]
async fn west_chamber_with_xtables_addons_as_build_depends() -> Result<()> {
    // Depends: bzip2, libxtables-dev (>= 1.4.3), make, xtables-addons-dkms (>= 3.13).
    let settings = json!({
        "packages": ["bzip2", "libxtables-dev", "make"],
        "build_depends": ["xtables-addons"],
    });
    corpus_case(
        &["xtables-addons-dkms", "west-chamber-dkms"],
        &[("west-chamber", settings)],
    )
    .await
}
