//! The apt repository for real: a Debian host (a container with Debian's own
//! `linux-image-<KERNEL_A>` installed, so its `/lib/modules` tree is the real one)
//! adds the server's repository with its key and a read token in
//! `/etc/apt/auth.conf.d`, `apt-get update` verifies the signed `InRelease`, and
//! `apt-get install` puts the module where DKMS would, `depmod` and `modinfo` see
//! it, `apt-get remove` leaves nothing behind. A build for another kernel appears
//! without a manual step. Attacks, each refused with nothing installed: a
//! tampered `Release`, a tampered package, another key, no token, an upload of a
//! module package's name, an upload by a token without `admin`.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::debhost::{image, kmodforge_debs, DebHost};
use kmodforge_e2e::{fixture, minihttp, request, Env, ServerOpts, KERNEL_A, KERNEL_B};
use reqwest::StatusCode;

const PKG_A: &str = "kmf-hello-modules-6.1.0-47-amd64";
const PKG_B: &str = "kmf-hello-modules-6.1.0-56-amd64";
const KO_A: &str = "/lib/modules/6.1.0-47-amd64/updates/dkms/kmf_hello.ko";

/// A Debian host with its distribution kernel: linux-image-KERNEL_A (and so kmod,
/// initramfs-tools, /lib/modules/KERNEL_A) from Debian's archive.
fn host_image() -> Result<String> {
    image(
        "kmodforge-test-debhost",
        &format!(
            "FROM debian:bookworm-slim\n\
             RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
             --no-install-recommends linux-image-{KERNEL_A} kmod && apt-get clean && \
             rm -rf /var/lib/apt/lists/*\n"
        ),
    )
}

/// Points the host's apt at `base` (`http://127.0.0.1:PORT`) only, trusting
/// `keyring`, with `token` (if any) in auth.conf.d.
fn configure(host: &DebHost, base: &str, keyring: &[u8], token: Option<&str>) -> Result<()> {
    // Nothing of an earlier configuration stays: indexes and downloaded packages.
    host.must(
        "apt-get clean && rm -rf /etc/apt/sources.list /etc/apt/sources.list.d/* \
         /etc/apt/auth.conf.d/* /var/lib/apt/lists/*",
    )?;
    host.put("/etc/apt/keyrings/kmodforge.gpg", keyring, 0o644)?;
    host.put(
        "/etc/apt/sources.list.d/kmodforge.list",
        format!("deb [signed-by=/etc/apt/keyrings/kmodforge.gpg] {base}/apt kmodforge main\n")
            .as_bytes(),
        0o644,
    )?;
    if let Some(token) = token {
        // apt uses auth.conf for plain http only where the machine names the scheme.
        host.put(
            "/etc/apt/auth.conf.d/kmodforge.conf",
            format!("machine {base}/apt\nlogin kmodforge\npassword {token}\n").as_bytes(),
            0o600,
        )?;
    }
    Ok(())
}

/// True when dpkg knows `pkg` as installed.
fn installed(host: &DebHost, pkg: &str) -> Result<bool> {
    let ran = host.sh(&format!("dpkg-query -W -f='${{Status}}' {pkg} 2>/dev/null"))?;
    Ok(ran.stdout.contains("install ok installed"))
}

/// The module tree and what depmod made of it, to compare before and after.
fn tree_state(host: &DebHost) -> Result<String> {
    Ok(host
        .must(&format!(
            "cd /lib/modules/{KERNEL_A} && find . -path ./kernel -prune -o -print | sort && \
             cat modules.dep modules.alias | sha256sum"
        ))?
        .stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn apt_installs_verifies_and_removes_module_packages() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let base = env.server.base_url();
    let image = tokio::task::spawn_blocking(host_image).await??;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let (_, first) = env
        .client
        .build(&request("kmf-hello", "1.0", KERNEL_A)?)
        .await?;
    let done = env.client.wait(&first.build.id).await?;
    let manifest = done.artifact.context("the build made an artifact")?;
    let ko_sha = manifest.files[0].sha256.clone();

    // The key, public: its fingerprint is the one GET /v1/keys lists for the repository.
    let anon = reqwest::Client::new();
    let keyring = anon
        .get(format!("{base}/apt/kmodforge.gpg"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?
        .to_vec();
    let keys: serde_json::Value = anon
        .get(format!("{base}/v1/keys"))
        .send()
        .await?
        .json()
        .await?;
    let fpr = keys
        .as_array()
        .context("key list")?
        .iter()
        .find(|k| k["purpose"] == "apt_repository")
        .context("GET /v1/keys lists the apt repository key")?["id"]
        .as_str()
        .context("its id")?
        .to_string();
    let shown = show_key(&keyring)?;
    ensure!(
        shown.contains(&fpr),
        "gpg sees {shown}, /v1/keys says {fpr}"
    );

    // Without a token: 401 with a Basic challenge (what apt answers with auth.conf).
    let resp = anon
        .get(format!("{base}/apt/dists/kmodforge/InRelease"))
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::UNAUTHORIZED,
        "{}",
        resp.status()
    );
    let challenges: Vec<_> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    ensure!(
        challenges.iter().any(|c| c.starts_with("Basic")),
        "{challenges:?}"
    );

    let read = env.server.token("apt-host", "read", &[]).await?;
    let host = DebHost::start(&image)?;
    let before = tree_state(&host)?;
    configure(&host, &base, &keyring, Some(&read))?;
    let update = host.must("apt-get update 2>&1")?;
    ensure!(
        update.stdout.contains("kmodforge InRelease") && !update.stdout.contains("W:"),
        "apt-get update: {update}"
    );
    let install = host.must(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y {PKG_A} 2>&1"
    ))?;
    ensure!(installed(&host, PKG_A)?, "{install}");
    let sum = host.must(&format!("sha256sum {KO_A}"))?;
    ensure!(
        sum.stdout.starts_with(&ko_sha),
        "installed {sum}, built {ko_sha}"
    );
    let modinfo = host.must(&format!("modinfo -k {KERNEL_A} -F filename kmf_hello"))?;
    ensure!(modinfo.stdout.trim() == KO_A, "modinfo finds {modinfo}");
    let dep = host.must(&format!(
        "grep -c '^updates/dkms/kmf_hello.ko:' /lib/modules/{KERNEL_A}/modules.dep"
    ))?;
    ensure!(dep.stdout.trim() == "1", "modules.dep: {dep}");

    host.must(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get remove -y --purge {PKG_A} 2>&1"
    ))?;
    ensure!(!installed(&host, PKG_A)?, "still installed after remove");
    let after = tree_state(&host)?;
    ensure!(
        before == after,
        "the module tree changed:\nbefore\n{before}\nafter\n{after}"
    );

    // A build for another kernel appears without a manual step (the index is
    // refreshed from the records).
    let (_, b) = env
        .client
        .build(&request("kmf-hello", "1.0", KERNEL_B)?)
        .await?;
    env.client.wait(&b.build.id).await?;
    let mut seen = false;
    for _ in 0..20 {
        host.must("apt-get update >/dev/null 2>&1")?;
        if host.sh(&format!("apt-cache show {PKG_B}"))?.ok() {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    ensure!(seen, "{PKG_B} never appeared in the repository");

    attacks(&env, &host, &keyring, &read).await?;
    uploads(&env, &host, &keyring, &read).await?;
    Ok(())
}

/// `gpg --show-keys` of a keyring, in a throwaway home.
fn show_key(keyring: &[u8]) -> Result<String> {
    let home = tempfile::tempdir()?;
    let path = home.path().join("k.gpg");
    std::fs::write(&path, keyring)?;
    let out = std::process::Command::new("gpg")
        .arg("--homedir")
        .arg(home.path())
        .args(["--batch", "--with-colons", "--show-keys"])
        .arg(&path)
        .output()
        .context("gpg is installed")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A copy of the repository, served by a stand-in that changes what `tamper` says.
async fn mirror(env: &Env, read: &str, tamper: fn(&str, Vec<u8>) -> Vec<u8>) -> Result<String> {
    let client = env.server.client_with(Some(read))?;
    let listing: Vec<kmodforge_api::wire::AptPackage> =
        client.get("/v1/apt/packages").await?.json().await?;
    let mut paths = vec![
        "dists/kmodforge/InRelease".to_string(),
        "dists/kmodforge/Release".to_string(),
        "dists/kmodforge/Release.gpg".to_string(),
        "dists/kmodforge/main/binary-amd64/Packages".to_string(),
        "dists/kmodforge/main/binary-amd64/Packages.gz".to_string(),
    ];
    paths.extend(listing.into_iter().map(|p| p.filename));
    let mut files = std::collections::HashMap::new();
    for p in paths {
        let bytes = client.bytes(&format!("/apt/{p}")).await?;
        files.insert(format!("/apt/{p}"), tamper(&p, bytes));
    }
    let files = Arc::new(files);
    let addr = minihttp::serve(move |req| match files.get(&req.path) {
        Some(b) => (200, b.clone()),
        None => (404, b"not found".to_vec()),
    })?;
    Ok(format!("http://{addr}"))
}

async fn attacks(env: &Env, host: &DebHost, keyring: &[u8], read: &str) -> Result<()> {
    let install = format!("DEBIAN_FRONTEND=noninteractive apt-get install -y {PKG_A} 2>&1");

    // 1. A Release changed on the way (a man in the middle): the signature fails.
    let base = mirror(env, read, |path, bytes| {
        if path.ends_with("Release") {
            String::from_utf8_lossy(&bytes)
                .replace("Label: kmodforge", "Label: kmodforgf")
                .into_bytes()
        } else {
            bytes
        }
    })
    .await?;
    configure(host, &base, keyring, None)?;
    let update = host.sh("apt-get update 2>&1")?;
    ensure!(
        !update.ok() && update.stdout.contains("BADSIG"),
        "a tampered InRelease must be refused: {update}"
    );
    ensure!(!host.sh(&install)?.ok(), "installed from a tampered index");
    ensure!(!installed(host, PKG_A)?);

    // 2. A package changed on the way: apt's hash check refuses it.
    let base = mirror(env, read, |path, mut bytes| {
        if path.ends_with(".deb") {
            let n = bytes.len();
            bytes[n - 100] ^= 0xFF;
        }
        bytes
    })
    .await?;
    configure(host, &base, keyring, None)?;
    host.must("apt-get update 2>&1")?;
    let ran = host.sh(&install)?;
    ensure!(
        !ran.ok() && ran.stdout.contains("Hash Sum mismatch"),
        "a tampered package must be refused: {ran}"
    );
    ensure!(!installed(host, PKG_A)?);
    ensure!(!host.sh(&format!("test -e {KO_A}"))?.ok(), "{KO_A} exists");

    // 3. The real server, but the host trusts another key.
    let other = other_keyring()?;
    configure(host, &env.server.base_url(), &other, Some(read))?;
    let update = host.sh("apt-get update 2>&1")?;
    ensure!(
        !update.ok() && update.stdout.contains("NO_PUBKEY"),
        "a Release signed by an untrusted key must be refused: {update}"
    );

    // 4. No token: the server refuses apt.
    configure(host, &env.server.base_url(), keyring, None)?;
    let update = host.sh("apt-get update 2>&1")?;
    ensure!(
        !update.ok() && update.stdout.contains("401"),
        "apt without a token: {update}"
    );
    ensure!(!host.sh(&install)?.ok());
    ensure!(!installed(host, PKG_A)?);
    Ok(())
}

/// A keyring of a key the server never had (made by the real gpg).
fn other_keyring() -> Result<Vec<u8>> {
    let home = tempfile::tempdir()?;
    let gpg = |args: &[&str]| -> Result<Vec<u8>> {
        let out = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    };
    gpg(&[
        "--quick-gen-key",
        "mallory <m@example.invalid>",
        "ed25519",
        "sign",
        "1d",
    ])?;
    gpg(&["--export", "mallory"])
}

/// kmodforge's own packages go into the same repository (admin only, `kmodforge-*`
/// names only) and install with apt.
async fn uploads(env: &Env, host: &DebHost, keyring: &[u8], read: &str) -> Result<()> {
    let admin = env.server.client();
    let url = admin.url("/v1/apt/packages");
    let deb = tiny_deb("kmodforge-testtool", "1.0-1")?;

    // Refused: a read token; a module package's name; garbage.
    let reader = env.server.client_with(Some(read))?;
    let resp = reader.http().put(&url).body(deb.clone()).send().await?;
    ensure!(resp.status() == StatusCode::FORBIDDEN, "{}", resp.status());
    let spoof = tiny_deb(PKG_A, "9.9-1")?;
    let resp = admin.http().put(&url).body(spoof).send().await?;
    let (status, body) = kmodforge_e2e::error_body(resp).await?;
    ensure!(
        status == StatusCode::UNPROCESSABLE_ENTITY && body.error.message.contains("kmodforge-"),
        "{status} {body:?}"
    );
    let resp = admin
        .http()
        .put(&url)
        .body(b"!<arch>\nnot a deb".to_vec())
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        resp.status()
    );
    let listing: Vec<kmodforge_api::wire::AptPackage> =
        reader.get("/v1/apt/packages").await?.json().await?;
    ensure!(
        listing.iter().all(|p| p.version != "9.9-1"),
        "a refused upload was stored: {listing:?}"
    );

    let resp = admin.http().put(&url).body(deb).send().await?;
    ensure!(resp.status() == StatusCode::CREATED, "{}", resp.status());

    // The real kmodforge-agent package (scripts/package.sh): one apt source gives a
    // host the agent, its kernel hooks and boot unit, and its modules.
    let debs = tempfile::tempdir()?;
    let version = "0.1.0-1";
    let dir = debs.path().to_path_buf();
    tokio::task::spawn_blocking(move || kmodforge_debs(version, &dir)).await??;
    let agent = std::fs::read(
        debs.path()
            .join(format!("kmodforge-agent_{version}_amd64.deb")),
    )?;
    let resp = admin.http().put(&url).body(agent).send().await?;
    ensure!(resp.status() == StatusCode::CREATED, "{}", resp.status());

    configure(host, &env.server.base_url(), keyring, Some(read))?;
    host.must("apt-get update 2>&1")?;
    host.must("apt-get install -y kmodforge-testtool kmodforge-agent 2>&1")?;
    host.must("test -x /usr/bin/kmodforge-testtool && /usr/bin/kmodforge-testtool")?;
    let shown =
        host.must("dpkg-query -W -f='${Version}' kmodforge-agent && kmodforge-agent --version")?;
    ensure!(shown.stdout.starts_with(version), "{shown}");
    for hook in [
        "/etc/kernel/postinst.d/dkms-kmodforge",
        "/etc/kernel/prerm.d/kmodforge-agent",
    ] {
        ensure!(
            host.exists(hook)?,
            "the agent package did not install {hook}"
        );
    }

    // Debian 13's apt verifies with Sequoia's sqv instead of gpgv: it accepts the
    // key and the signature too, and refuses a tampered index.
    let trixie = DebHost::start(&trixie_image()?)?;
    configure(&trixie, &env.server.base_url(), keyring, Some(read))?;
    let update = trixie.must("apt-get update 2>&1")?;
    ensure!(!update.stdout.contains("W:"), "apt 3 on trixie: {update}");
    trixie.must("DEBIAN_FRONTEND=noninteractive apt-get install -y kmodforge-testtool 2>&1")?;
    trixie.must("/usr/bin/kmodforge-testtool")?;
    let base = mirror(env, read, |path, bytes| {
        if path.ends_with("InRelease") {
            String::from_utf8_lossy(&bytes)
                .replace("Suite: kmodforge", "Suite: kmodforgf")
                .into_bytes()
        } else {
            bytes
        }
    })
    .await?;
    configure(&trixie, &base, keyring, None)?;
    let update = trixie.sh("apt-get update 2>&1")?;
    ensure!(
        !update.ok() && update.stdout.contains("not signed"),
        "sqv must refuse a tampered InRelease: {update}"
    );
    Ok(())
}

/// Debian 13 (apt 3, sqv), made from Debian's packages like the bookworm base.
fn trixie_image() -> Result<String> {
    let tag = "debian:trixie-slim";
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/bootstrap-base.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(["trixie", tag])
        .output()
        .context("running images/bootstrap-base.sh")?;
    ensure!(
        out.status.success(),
        "bootstrap-base.sh trixie: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(tag.to_string())
}

/// A real `.deb` made by `dpkg-deb` (xz, as dpkg-deb and cargo-deb write them).
fn tiny_deb(name: &str, version: &str) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("DEBIAN"))?;
    std::fs::create_dir_all(root.join("usr/bin"))?;
    let tool = root.join(format!("usr/bin/{name}"));
    std::fs::write(&tool, "#!/bin/sh\necho ok\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n\
             Maintainer: kmodforge tests <t@example.invalid>\nDescription: a test package\n"
        ),
    )?;
    let out_path = dir.path().join("p.deb");
    let out = std::process::Command::new("dpkg-deb")
        .args(["-Zxz", "--root-owner-group", "--build"])
        .arg(&root)
        .arg(&out_path)
        .output()
        .context("dpkg-deb is installed")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(std::fs::read(&out_path)?)
}
