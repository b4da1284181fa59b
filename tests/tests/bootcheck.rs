//! Boot checks: each artifact's own kernel, Debian's `linux-image-<krel>`, booted
//! under qemu (TCG) in a sandboxed verifier container, and the built modules
//! loaded into it (issue 5).
//!
//! Real parts throughout: the server builds the verifier images from Debian's
//! packages, the modules are built from the fixtures and Debian's `*-dkms`
//! sources, and the guest is the real kernel. The first run on a machine builds
//! a verifier image per kernel (about a minute each).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kmodforge_api::wire::{BootCheck, BuildRequest, BuildResponse, BuildState, FailureKind};
use kmodforge_e2e::{
    debian_dkms_source, e2e_fixture, ensure_sandbox_policy, expect_failure, fixture, request, Env,
    ServerOpts, KERNEL_A, KERNEL_B,
};
use reqwest::StatusCode;

/// Boot timeout of the failure tests' server (a hanging init costs this much).
const HANG_TIMEOUT_SECS: u64 = 20;

fn checked(name: &str, version: &str, krel: &str) -> Result<BuildRequest> {
    Ok(BuildRequest {
        boot_check: Some(true),
        ..request(name, version, krel)?
    })
}

/// Submits `req` and waits for the job (or takes the cache's answer).
async fn run(env: &Env, req: &BuildRequest) -> Result<BuildResponse> {
    let (status, first) = env.client.build(req).await?;
    if status == StatusCode::OK {
        return Ok(first);
    }
    ensure!(status == StatusCode::ACCEPTED, "{status} {first:?}");
    let done = env.client.wait(&first.build.id).await?;
    env.assert_no_container_of(&done.build.id).await?;
    Ok(done)
}

/// The passed check of a succeeded build, also as GET /v1/builds/{id} and the
/// artifact's manifest show it.
async fn passed_check(env: &Env, done: &BuildResponse) -> Result<BootCheck> {
    let id = &done.build.id;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "build {id} of {}: {:?}; log:\n{}",
        done.build.name,
        done.build.failure,
        env.client.build_log(id).await.unwrap_or_default()
    );
    let m = done
        .artifact
        .as_ref()
        .context("succeeded build has its manifest")?;
    let check = m
        .boot_check
        .clone()
        .with_context(|| format!("build {id}: the manifest has no boot check"))?;
    ensure!(
        check.passed && check.booted && check.completed && check.reason.is_none(),
        "build {id}: {check:#?}"
    );
    ensure!(
        check.kernel == m.kernel,
        "checked {} for {}",
        check.kernel,
        m.kernel
    );
    ensure!(
        check.kernel_package_version.is_some(),
        "the booted linux-image package version is recorded"
    );
    ensure!(
        check
            .verifier_image
            .tag
            .ends_with(&format!("-{}", m.kernel)),
        "{:?}",
        check.verifier_image
    );
    ensure!(check.boot_seconds > 0.0 && check.initramfs_bytes > 1_000_000);
    // Every built file was loaded, and the module in the guest is the one built.
    for f in &m.files {
        let name = f.modinfo.name.clone().unwrap_or_default();
        let loaded = check
            .modules
            .iter()
            .find(|b| b.new && b.file == f.file)
            .with_context(|| format!("{} not in the check: {check:#?}", f.file))?;
        ensure!(
            loaded.loaded && loaded.initstate.as_deref() == Some("live"),
            "{}: {loaded:?}",
            f.file
        );
        ensure!(
            loaded.name == name.replace('-', "_"),
            "{loaded:?} vs {name}"
        );
        if let Some(src) = &f.modinfo.srcversion {
            if loaded.srcversion.is_some() {
                ensure!(
                    loaded.srcversion.as_ref() == Some(src),
                    "{loaded:?} vs {src}"
                );
            }
        }
    }
    if m.module_signing.as_ref().is_some_and(|s| s.signed) {
        enforced(m, &check)?;
    }
    let again = env.client.get_build(id).await?;
    ensure!(
        again.artifact.as_ref().and_then(|a| a.boot_check.as_ref()) == Some(&check),
        "GET /v1/builds/{id} shows the check"
    );
    let manifest = env
        .client
        .manifest(m.name.as_str(), m.version.as_str(), m.kernel.as_str())
        .await?;
    ensure!(
        manifest.boot_check.as_ref() == Some(&check),
        "GET artifact shows the check"
    );
    Ok(check)
}

/// A signed artifact's check ran under signature enforcement: the kernel trusted
/// the server's certificate (UEFI db), loaded the signed modules, and refused an
/// unsigned and a foreign-signed copy with `Key was rejected by service`.
fn enforced(m: &kmodforge_api::wire::Manifest, check: &BootCheck) -> Result<()> {
    ensure!(
        check.signature_enforced && check.trusted_cert_loaded == Some(true),
        "signed artifact {} not checked under enforcement: {check:#?}",
        m.key
    );
    ensure!(
        check.boot_image == "bzimage",
        "enforced checks boot through OVMF's EFI stub"
    );
    let kinds: Vec<&str> = check.probes.iter().map(|p| p.kind.as_str()).collect();
    ensure!(kinds == ["unsigned", "foreign"], "{:#?}", check.probes);
    for (p, kernel_says) in check.probes.iter().zip([
        "Loading of unsigned module is rejected",
        "Loading of module with unavailable key is rejected",
    ]) {
        ensure!(
            p.rejected
                && p.error
                    .as_deref()
                    .is_some_and(|e| e.contains("Key was rejected by service"))
                && p.messages.iter().any(|l| l == kernel_says),
            "the {} copy must be refused with {kernel_says:?}: {p:#?}",
            p.kind
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_and_v4l2loopback_pass_on_both_kernels() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let v4l2 = debian_dkms_source("v4l2loopback-dkms")?;
    let version = v4l2
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("v4l2loopback-"))
        .context("source dir is v4l2loopback-<version>")?
        .to_string();
    env.client
        .add_module("v4l2loopback", &version, &v4l2)
        .await?;

    for krel in [KERNEL_A, KERNEL_B] {
        // Without a check (the server's default is off): nothing is booted.
        let plain = run(&env, &request("kmf-hello", "1.0", krel)?).await?;
        ensure!(plain.build.state == BuildState::Succeeded, "{plain:?}");
        ensure!(
            plain
                .artifact
                .as_ref()
                .is_some_and(|m| m.boot_check.is_none()),
            "no check was asked for: {:?}",
            plain.artifact
        );
        // The cached artifact is checked when a request asks: one check container,
        // no build container, and the artifact is the same.
        let (done, created) = env
            .docker
            .count_created(run(&env, &checked("kmf-hello", "1.0", krel)?))
            .await?;
        let done = done?;
        let check = passed_check(&env, &done).await?;
        ensure!(
            done.cached,
            "the modules came from the cache: {:?}",
            done.build
        );
        let names: Vec<String> = env
            .own(&created)
            .await?
            .into_iter()
            .filter_map(|c| c.name.map(|n| n.trim_start_matches('/').to_string()))
            .collect();
        ensure!(
            names == [format!("kmodforge-check-{}", done.build.id)],
            "exactly one container, the check's: {names:?}"
        );
        ensure!(done.artifact.as_ref().map(|m| &m.key) == plain.artifact.as_ref().map(|m| &m.key));
        let hello = &check.modules;
        ensure!(
            hello.len() == 1 && hello[0].name == "kmf_hello",
            "{hello:#?}"
        );
        ensure!(
            hello[0].messages.iter().any(|l| l.contains("kmf_hello")),
            "the module's own message: {hello:#?}"
        );
        // Checked once: the next request is a plain cache hit with the same record.
        let (status, hit) = env
            .client
            .build(&checked("kmf-hello", "1.0", krel)?)
            .await?;
        ensure!(status == StatusCode::OK && hit.cached, "{status} {hit:?}");
        ensure!(hit.artifact.and_then(|m| m.boot_check) == Some(check));

        // v4l2loopback needs videodev and mc from the kernel's own tree.
        let done = run(&env, &checked("v4l2loopback", &version, krel)?).await?;
        let check = passed_check(&env, &done).await?;
        let order: Vec<(&str, bool)> = check
            .modules
            .iter()
            .map(|m| (m.name.as_str(), m.new))
            .collect();
        let pos = |n: &str| order.iter().position(|(m, _)| *m == n);
        ensure!(
            pos("mc") < pos("videodev") && pos("videodev") < pos("v4l2loopback"),
            "load order {order:?}"
        );
        ensure!(
            order.contains(&("mc", false)) && order.contains(&("videodev", false)),
            "mc and videodev come from the kernel: {order:?}"
        );
        let v = check
            .modules
            .iter()
            .find(|m| m.name == "v4l2loopback")
            .context("v4l2loopback")?;
        ensure!(
            v.devices.iter().any(|d| d == "video0"),
            "/dev/video0 appears: {v:?}"
        );
        ensure!(
            v.taint.as_deref().is_some_and(|t| t.contains('O')),
            "out-of-tree taint: {v:?}"
        );
    }
    Ok(())
}

/// A failed check: the build fails with `boot_check_failed`, its modules stay in
/// the cache with the failed record, and a request without a check still gets them.
async fn failed_check(
    env: &Env,
    name: &str,
    fixture_dir: &str,
) -> Result<(BuildResponse, BootCheck)> {
    env.client
        .add_module(name, "1.0", &e2e_fixture(fixture_dir))
        .await?;
    let started = Instant::now();
    let done = run(env, &request(name, "1.0", KERNEL_A)?).await?;
    let f = expect_failure(&done, FailureKind::BootCheckFailed)?;
    ensure!(
        f.message
            .starts_with(&format!("{name}/1.0 on {KERNEL_A}: boot check failed: ")),
        "one line naming module, kernel and cause: {}",
        f.message
    );
    ensure!(!f.message.contains('\n'));
    ensure!(
        started.elapsed() < Duration::from_secs(HANG_TIMEOUT_SECS + 240),
        "the check ended ({:?})",
        started.elapsed()
    );
    let m = done
        .artifact
        .clone()
        .context("the built modules are kept")?;
    let check = m.boot_check.clone().context("with the failed check")?;
    ensure!(!check.passed && check.reason.is_some(), "{check:#?}");
    ensure!(
        f.message
            .ends_with(check.reason.as_deref().unwrap_or_default()),
        "{} vs {:?}",
        f.message,
        check.reason
    );
    ensure!(!check.console_tail.is_empty(), "console tail recorded");
    let again = env.client.get_build(&done.build.id).await?;
    ensure!(
        again.build.state == BuildState::Failed
            && again.artifact.as_ref().and_then(|a| a.boot_check.as_ref()) == Some(&check),
        "GET /v1/builds shows the failed check: {again:?}"
    );
    let manifest = env.client.manifest(name, "1.0", KERNEL_A).await?;
    ensure!(manifest.boot_check.as_ref() == Some(&check));
    // Asked again with a check: the same failure, from the record, without booting.
    let (again, created) = env
        .docker
        .count_created(run(env, &request(name, "1.0", KERNEL_A)?))
        .await?;
    let again = again?;
    expect_failure(&again, FailureKind::BootCheckFailed)?;
    ensure!(
        env.own(&created).await?.is_empty(),
        "no container: {created:?}"
    );
    // Without a check, the modules are served (a client that wants only loadable
    // modules asks for the check or reads the record).
    let plain = BuildRequest {
        boot_check: Some(false),
        ..request(name, "1.0", KERNEL_A)?
    };
    let (hit, created) = env.docker.count_created(run(env, &plain)).await?;
    let hit = hit?;
    ensure!(
        hit.build.state == BuildState::Succeeded
            && hit.cached
            && hit.artifact.as_ref().map(|a| &a.key) == Some(&m.key),
        "the cached modules, as a succeeded build: {hit:?}"
    );
    ensure!(
        env.own(&created).await?.is_empty(),
        "no container: {created:?}"
    );
    Ok((done, check))
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_init_oops_and_hang_fail_the_check_with_the_kernel_messages() -> Result<()> {
    // The server's default is on here: requests need not ask.
    let opts = ServerOpts::default()
        .env("KMODFORGE_BOOT_CHECK", "true")
        .env("KMODFORGE_BOOT_TIMEOUT_SECS", HANG_TIMEOUT_SECS);
    let env = Env::start(opts).await?;

    let (_, check) = failed_check(&env, "kmf-boot-enodev", "boot-enodev").await?;
    let m = check
        .modules
        .iter()
        .find(|m| m.name == "kmf_bc_enodev")
        .context("module in the record")?;
    ensure!(m.rc == Some(19) && !m.loaded, "ENODEV: {m:?}");
    // Exactly once: the init ran once, as under kmod's insmod on a host (busybox insmod
    // would retry a failed finit_module with init_module), and the retry's trace is gone.
    let said = m
        .messages
        .iter()
        .filter(|l| l.contains("no such hardware"))
        .count();
    ensure!(said == 1, "its pr_err once, not {said} times: {m:?}");
    ensure!(
        !m.messages.iter().any(|l| l.contains("Invalid ELF header")),
        "{m:?}"
    );
    let reason = check.reason.unwrap_or_default();
    ensure!(reason.contains("No such device"), "{reason}");

    let (_, check) = failed_check(&env, "kmf-boot-bug", "boot-bug").await?;
    ensure!(check.completed, "an Oops kills insmod only: {check:#?}");
    let m = check
        .modules
        .iter()
        .find(|m| m.name == "kmf_bc_bug")
        .context("module in the record")?;
    ensure!(
        m.rc.is_some_and(|rc| rc >= 128) && m.initstate.as_deref() == Some("coming"),
        "{m:?}"
    );
    ensure!(
        m.messages.iter().any(|l| l.contains("kernel BUG at")),
        "the Oops: {:#?}",
        m.messages
    );
    let reason = check.reason.unwrap_or_default();
    ensure!(reason.contains("kernel BUG at"), "{reason}");

    // A hang: the check container follows the sandbox policy while it runs, and
    // the timeout ends the check with the console tail.
    env.client
        .add_module("kmf-boot-hang", "1.0", &e2e_fixture("boot-hang"))
        .await?;
    let (status, first) = env
        .client
        .build(&request("kmf-boot-hang", "1.0", KERNEL_A)?)
        .await?;
    ensure!(status == StatusCode::ACCEPTED, "{status} {first:?}");
    let id = first.build.id.clone();
    let container = check_container(&env, &id).await?;
    check_policy(&env, &container, &id).await?;
    let started = Instant::now();
    let done = env.client.wait(&id).await?;
    env.assert_no_container_of(&id).await?;
    expect_failure(&done, FailureKind::BootCheckFailed)?;
    ensure!(
        started.elapsed() < Duration::from_secs(HANG_TIMEOUT_SECS + 60),
        "{:?}",
        started.elapsed()
    );
    let check = done
        .artifact
        .and_then(|m| m.boot_check)
        .context("hang: the failed check is recorded")?;
    let reason = check.reason.clone().unwrap_or_default();
    ensure!(
        check.timed_out
            && !check.completed
            && reason.contains(&format!("timed out after {HANG_TIMEOUT_SECS} s"))
            && reason.contains("kmf_bc_hang"),
        "{check:#?}"
    );
    ensure!(
        check.console_tail.contains("kmf_bc_hang: still in init"),
        "{}",
        check.console_tail
    );
    env.assert_no_job_containers().await?;
    Ok(())
}

/// Waits for build `id`'s check container (`/kmodforge-check-<id>`) to run (the
/// engine lists a container before `inspect` can find it).
async fn check_container(env: &Env, id: &str) -> Result<String> {
    let name = format!("/kmodforge-check-{id}");
    for _ in 0..3000 {
        for c in env.docker.containers_of_job(id).await? {
            if c.names.contains(&name) && c.state.as_deref() == Some("running") {
                return Ok(c.id);
            }
        }
        let r = env.client.get_build(id).await?;
        ensure!(
            !r.build.state.is_final(),
            "build {id} ended before its check: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no check container for build {id} after 300 s")
}

/// The boot check's sandbox: no network, no privileges, no devices (TCG needs
/// no /dev/kvm), read-only root, nothing of the host mounted.
async fn check_policy(env: &Env, container: &str, id: &str) -> Result<()> {
    let inspect = env.docker.inspect(container).await?;
    ensure_sandbox_policy(&inspect, id)?;
    let config = inspect.config.context("Config")?;
    let image = config.image.clone().unwrap_or_default();
    let tag = env
        .docker
        .docker()
        .inspect_image(&image)
        .await?
        .repo_tags
        .unwrap_or_default();
    ensure!(
        tag.iter().any(|t| t.starts_with("kmodforge-verifier:")),
        "a verifier image: {tag:?}"
    );
    let host = inspect.host_config.context("HostConfig")?;
    ensure!(
        host.mounts.clone().unwrap_or_default().is_empty(),
        "no volumes: {:?}",
        host.mounts
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn module_built_for_kernel_a_is_refused_by_kernel_b() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let a = run(&env, &checked("kmf-hello", "1.0", KERNEL_A)?).await?;
    passed_check(&env, &a).await?;
    // Kernel B's verifier image, through the server as any check makes it.
    let b = run(&env, &checked("kmf-hello", "1.0", KERNEL_B)?).await?;
    let verifier_b = passed_check(&env, &b).await?.verifier_image;

    // The server would refuse A's module for B on its vermagic before any boot;
    // here the verifier container is run directly, as the server runs it.
    let m = a.artifact.context("manifest")?;
    let f = &m.files[0];
    let ko = env
        .client
        .bytes(&format!(
            "/v1/artifacts/kmf-hello/1.0/{KERNEL_A}/files/{}",
            f.file
        ))
        .await?;
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(ko.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, &f.file, ko.as_slice())?;
        b.into_inner()?
    };
    let mut child = Command::new("docker")
        .args([
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            "--read-only",
            "--cap-drop",
            "ALL",
        ])
        .args(["--security-opt", "no-new-privileges", "--user", "1000:1000"])
        .args(["--tmpfs", "/tmp:rw,exec,nosuid,nodev,size=512m,mode=1777"])
        .args([
            "--memory",
            "1536m",
            "--label",
            "kmodforge.test=bootcheck-cross",
        ])
        .args([
            "-e",
            &format!("KMF_KREL={KERNEL_B}"),
            "-e",
            "KMF_BOOT_TIMEOUT=60",
        ])
        .arg(&verifier_b.id)
        .arg("/usr/local/lib/kmodforge/bootcheck")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("docker run")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&tar)
        .context("writing the tar")?;
    let out = child.wait_with_output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "bootcheck's report; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(out.status.code() == Some(1), "the check fails: {report:#}");
    let module = &report["modules"][0];
    ensure!(
        module["name"] == "kmf_hello" && module["loaded"] == false && module["rc"] == 8,
        "ENOEXEC (invalid module format): {module:#}"
    );
    let reason = report["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("disagrees about version of symbol"),
        "the kernel's own refusal: {reason}"
    );
    Ok(())
}

/// Adds Debian's `package` (DKMS name `name`, version from its source dir `<name>-<v>`),
/// builds it for kernel A with a check, and returns the passed check.
async fn debian_package_passes(env: &Env, package: &str, name: &str) -> Result<BootCheck> {
    let src = debian_dkms_source(package)?;
    let version = src
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(&format!("{name}-")))
        .with_context(|| format!("source dir is {name}-<version>"))?
        .to_string();
    env.client.add_module(name, &version, &src).await?;
    let done = run(env, &checked(name, &version, KERNEL_A)?).await?;
    passed_check(env, &done).await
}

#[tokio::test(flavor = "multi_thread")]
async fn ddcci_modules_load_in_dependency_order() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let check = debian_package_passes(&env, "ddcci-dkms", "ddcci").await?;
    let new: Vec<&str> = check
        .modules
        .iter()
        .filter(|m| m.new)
        .map(|m| m.name.as_str())
        .collect();
    ensure!(new == ["ddcci", "ddcci_backlight"], "load order {new:?}");
    Ok(())
}

/// dm-writeboost needs libcrc32c (a dependency from the kernel's tree), whose init asks
/// the crypto API for "crc32c": the kernel's request_module() loads crc32c_generic or
/// crc32c-intel on demand, which nobody names as a dependency. The guest's modprobe
/// finds them in the kernel's own tree (shared over 9p), as on a host.
#[tokio::test(flavor = "multi_thread")]
async fn modules_requested_at_init_load_on_demand() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let check = debian_package_passes(&env, "dm-writeboost-dkms", "dm-writeboost").await?;
    let names: Vec<(&str, bool, bool)> = check
        .modules
        .iter()
        .map(|m| (m.name.as_str(), m.new, m.loaded))
        .collect();
    ensure!(
        names.contains(&("libcrc32c", false, true))
            && names.last() == Some(&("dm_writeboost", true, true)),
        "{names:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kernels_prepare_their_verifier_images_ahead() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let url = env
        .client
        .url(&format!("/v1/kernels/{KERNEL_A}?boot_check=true"));
    let resp = env.client.http().put(&url).send().await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "PUT {url}: {}",
        resp.status()
    );
    let info: kmodforge_api::wire::KernelInfo = resp.json().await?;
    let verifier = info.verifier.context("the verifier image is prepared")?;
    ensure!(
        verifier.tag == format!("kmodforge-verifier:debian-bookworm-{KERNEL_A}"),
        "{verifier:?}"
    );
    let listed: Vec<kmodforge_api::wire::KernelInfo> =
        env.client.get("/v1/kernels").await?.json().await?;
    let a = listed
        .iter()
        .find(|k| k.kernel.as_str() == KERNEL_A)
        .context("kernel A listed")?;
    ensure!(a.verifier.as_ref() == Some(&verifier), "{a:?}");
    Ok(())
}
