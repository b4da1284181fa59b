//! Module signing on the server (issue 11): the kernel's own format, checked with
//! the real `modinfo` and `openssl`; keys that rotate into new artifacts while the
//! old ones stay verifiable; and no private key in any container, ever.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildRequest, KeyPurpose, Manifest};
use kmodforge_e2e::signature::{check_signature, public_keys};
use kmodforge_e2e::{check_downloads, fixture, request, DataDir, Env, ServerOpts, KERNEL_A};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

async fn build(env: &Env, req: &BuildRequest) -> Result<Manifest> {
    let (status, first) = env.client.build(req).await?;
    let done = if status == StatusCode::OK {
        first
    } else {
        env.client.wait(&first.build.id).await?
    };
    done.artifact.with_context(|| {
        format!(
            "build {} has no artifact: {:?}",
            done.build.id, done.build.failure
        )
    })
}

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_are_signed_in_the_kernels_format_unless_asked_not_to() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let signed = build(&env, &request("kmf-hello", "1.0", KERNEL_A)?).await?;
    let s = signed.module_signing.clone().context("signing facts")?;
    ensure!(
        s.signed
            && s.hash_algo.as_deref() == Some("sha256")
            && s.signer.as_deref() == Some("kmodforge module signing key"),
        "{s:?}"
    );
    // modinfo's signer, sig_key, sig_hashalgo; openssl verifies against the served certificate.
    check_downloads(&env.client, &signed).await?;

    // The certificate is served without a token, as DER and PEM, and is the one named.
    let anon = env.server.client_with(None)?;
    let der = anon.bytes("/v1/keys/module-signing.der").await?;
    ensure!(
        Some(hex::encode(Sha256::digest(&der))) == s.certificate_sha256,
        "DER is the manifest's certificate"
    );
    let pem = String::from_utf8(anon.bytes("/v1/keys/module-signing.pem").await?)?;
    ensure!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let by_sha = anon
        .bytes(&format!(
            "/v1/keys/module-signing/{}",
            s.certificate_sha256.clone().unwrap_or_default()
        ))
        .await?;
    ensure!(by_sha == der);
    let text = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(&der));
            c.wait_with_output()
        })?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(
        text.contains("Code Signing"),
        "code-signing extended key usage:\n{text}"
    );
    // The manifest is attested with the key served at /v1/keys/manifest.pub.
    let pubkey = String::from_utf8(anon.bytes("/v1/keys/manifest.pub").await?)?;
    let att = signed
        .attestation
        .clone()
        .context("the manifest is attested")?;
    ensure!(att.key == pubkey.trim() && att.statement.contains(&signed.files[0].sha256));

    // Unsigned on request: another artifact, no signature, and the manifest says so.
    let unsigned_req = BuildRequest {
        sign: Some(false),
        ..request("kmf-hello", "1.0", KERNEL_A)?
    };
    let unsigned = build(&env, &unsigned_req).await?;
    ensure!(
        unsigned.key != signed.key,
        "the signing key is part of the cache key"
    );
    ensure!(
        unsigned.module_signing.as_ref().is_some_and(|s| !s.signed),
        "{:?}",
        unsigned.module_signing
    );
    check_downloads(&env.client, &unsigned).await?;
    ensure!(
        unsigned.attestation.is_some(),
        "an unsigned module still has a signed manifest"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_signing_key_makes_new_artifacts_and_old_ones_stay_verifiable() -> Result<()> {
    let dir = DataDir::new()?;
    let mut env = Env::start(ServerOpts::default().data_dir(dir.clone())).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let old = build(&env, &request("kmf-hello", "1.0", KERNEL_A)?).await?;
    let old_sha = old
        .module_signing
        .clone()
        .and_then(|s| s.certificate_sha256)
        .context("old cert")?;

    // The generated key is stored like DKMS's: 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let keys = dir.data().join("keys");
    ensure!(std::fs::metadata(&keys)?.permissions().mode() & 0o777 == 0o700);
    for f in ["module-signing.key", "manifest-signing.key"] {
        ensure!(
            std::fs::metadata(keys.join(f))?.permissions().mode() & 0o777 == 0o600,
            "{f}"
        );
    }

    // The operator imports a key of their own.
    let pki = tempfile::tempdir()?;
    openssl(
        &[
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=fleet rotation key",
            "-addext",
            "extendedKeyUsage=codeSigning",
            "-keyout",
            "new.key",
            "-out",
            "new.pem",
        ],
        pki.path(),
    )?;
    let opts = ServerOpts::default()
        .data_dir(dir.clone())
        .env(
            "KMODFORGE_MODULE_SIGNING_KEY",
            pki.path().join("new.key").display(),
        )
        .env(
            "KMODFORGE_MODULE_SIGNING_CERT",
            pki.path().join("new.pem").display(),
        );
    env.restart(opts).await?;
    let (status, again) = env
        .client
        .build(&request("kmf-hello", "1.0", KERNEL_A)?)
        .await?;
    ensure!(
        status == StatusCode::ACCEPTED && !again.cached,
        "a new key means a new build: {status}"
    );
    let new = build(&env, &request("kmf-hello", "1.0", KERNEL_A)?).await?;
    ensure!(new.key != old.key);
    ensure!(
        new.module_signing
            .as_ref()
            .and_then(|s| s.signer.as_deref())
            == Some("fleet rotation key")
    );
    check_downloads(&env.client, &new).await?;

    // Byte for byte what the kernel's own scripts/sign-file makes with that key
    // (PKCS#1 v1.5 signatures are deterministic), run in the kernel's builder image.
    let ko = env
        .client
        .download("kmf-hello", "1.0", KERNEL_A, "kmf_hello.ko")
        .await?;
    let (body, _) = kmodforge_e2e::signature::split_signature(&ko).context("signed")?;
    std::fs::write(pki.path().join("kmf_hello.ko"), body)?;
    let image = format!("kmodforge-builder:debian-bookworm-{KERNEL_A}");
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--user", "0", "-v"])
        .arg(format!("{}:/w", pki.path().display()))
        .args([
            "-w",
            "/w",
            &image,
            "/usr/lib/linux-kbuild-6.1/scripts/sign-file",
            "sha256",
            "new.key",
            "new.pem",
            "kmf_hello.ko",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "sign-file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        std::fs::read(pki.path().join("kmf_hello.ko"))? == ko,
        "the server's signed module differs from sign-file's"
    );

    // The old artifact's bytes still verify, with the old certificate the server still lists.
    let old_ko = env
        .client
        .bytes(&format!("/v1/blobs/{}", old.files[0].sha256))
        .await?;
    check_signature(&env.client, &old, &old.files[0].file, &old_ko).await?;
    let listed = public_keys(&env.client).await?;
    let module: Vec<(&str, bool)> = listed
        .iter()
        .filter(|k| k.purpose == KeyPurpose::ModuleSigning)
        .map(|k| (k.id.as_str(), k.current))
        .collect();
    let new_sha = new
        .module_signing
        .clone()
        .and_then(|s| s.certificate_sha256)
        .unwrap_or_default();
    ensure!(
        module == [(new_sha.as_str(), true), (old_sha.as_str(), false)],
        "{module:?}"
    );

    // Both keys are in the audit log.
    let log: Vec<serde_json::Value> = env.client.get("/v1/audit").await?.json().await?;
    let changes: Vec<&str> = log
        .iter()
        .filter(|e| e["action"] == "key_change")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    ensure!(
        changes
            .iter()
            .any(|d| d.contains("imported from") && d.contains("fleet rotation key"))
            && changes.iter().any(|d| d.contains("generated")),
        "{changes:#?}"
    );
    Ok(())
}
