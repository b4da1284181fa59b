//! Checking module signatures from outside, with the real tools: kmod's `modinfo`
//! reads the signer, key and hash the kernel would, and `openssl cms -verify`
//! checks the appended PKCS#7 against the certificate the server serves.

use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use kmodforge_api::wire::{KeyPurpose, Manifest, PublicKey};

use crate::client::Client;
use crate::modinfo::real_modinfo;

const MARKER: &[u8] = b"~Module signature appended~\n";

/// A signed module split into the module and its PKCS#7 (DER), by the kernel's
/// trailer (`struct module_signature`, signature length big-endian at its end).
pub fn split_signature(signed: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = signed.strip_suffix(MARKER)?;
    let at = body.len().checked_sub(12)?;
    let len = u32::from_be_bytes(body[at + 8..at + 12].try_into().ok()?) as usize;
    let start = at.checked_sub(len)?;
    (body[at + 2] == 2).then_some((&body[..start], &body[start..at]))
}

/// True when `openssl cms -verify` accepts `sig` over `body` with `cert_pem` as
/// the only candidate signer (no chain: the certificate is self-signed).
pub fn openssl_verifies(body: &[u8], sig: &[u8], cert_pem: &[u8]) -> Result<bool> {
    let dir = tempfile::tempdir()?;
    let (b, s, c) = (
        dir.path().join("body"),
        dir.path().join("sig.der"),
        dir.path().join("cert.pem"),
    );
    std::fs::write(&b, body)?;
    std::fs::write(&s, sig)?;
    std::fs::write(&c, cert_pem)?;
    let out = Command::new("openssl")
        .args([
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-nointern",
            "-noverify",
        ])
        .arg("-in")
        .arg(&s)
        .arg("-content")
        .arg(&b)
        .arg("-certfile")
        .arg(&c)
        .args(["-out", "/dev/null"])
        .output()
        .context("running openssl (apt-get install openssl)")?;
    Ok(out.status.success())
}

/// The server's public keys (`GET /v1/keys`, no token).
pub async fn public_keys(client: &Client) -> Result<Vec<PublicKey>> {
    let resp = client.get("/v1/keys").await?;
    let resp = crate::client::expect_status(resp, &[reqwest::StatusCode::OK]).await?;
    Ok(resp.json().await?)
}

/// The PEM of the module-signing certificate with this sha256, as the server serves it.
pub async fn certificate_pem(client: &Client, sha256: &str) -> Result<Vec<u8>> {
    let keys = public_keys(client).await?;
    let k = keys
        .iter()
        .find(|k| k.purpose == KeyPurpose::ModuleSigning && k.id == sha256)
        .with_context(|| format!("GET /v1/keys lists no certificate {sha256}: {keys:?}"))?;
    Ok(k.public.clone().into_bytes())
}

/// Checks a downloaded `.ko` of `m` against its manifest's signing facts: signed
/// ones show signer, key and hash in the real `modinfo` and verify with openssl
/// against the served certificate (and not against another); unsigned ones carry
/// no signature.
pub async fn check_signature(client: &Client, m: &Manifest, file: &str, ko: &[u8]) -> Result<()> {
    let signing = m.module_signing.clone().unwrap_or_default();
    if !signing.signed {
        ensure!(
            split_signature(ko).is_none(),
            "{file}: unsigned artifact carries a signature"
        );
        ensure!(
            real_modinfo(ko, "signer")?.is_empty(),
            "{file}: modinfo shows a signer"
        );
        return Ok(());
    }
    for (field, want) in [
        ("signer", signing.signer.as_deref()),
        ("sig_key", signing.key_id.as_deref()),
        ("sig_hashalgo", Some("sha256")),
        ("sig_id", Some("PKCS#7")),
    ] {
        let got = real_modinfo(ko, field)?;
        ensure!(
            Some(got.as_str()) == want,
            "{file}: modinfo {field} = {got:?}, manifest says {want:?}"
        );
    }
    let (body, sig) =
        split_signature(ko).with_context(|| format!("{file}: no appended signature"))?;
    let sha = signing
        .certificate_sha256
        .context("signed without a certificate sha256")?;
    let pem = certificate_pem(client, &sha).await?;
    if !openssl_verifies(body, sig, &pem)? {
        bail!(
            "{file}: openssl cms -verify refuses the signature with the served certificate {sha}"
        );
    }
    Ok(())
}
