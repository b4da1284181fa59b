//! The private keys never enter a container (issue 11): a signed build and its
//! boot check under signature enforcement, with the server's audit trace of every
//! container input (create requests, exec commands and environments, stdin tar
//! streams) and `docker inspect` of every container they created, searched for the
//! module-signing and manifest keys in every form they could travel in.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::BuildRequest;
use kmodforge_e2e::{fixture, request, Env, ServerOpts, KERNEL_A};
use reqwest::StatusCode;

/// Byte strings that would show the private key `pem`: its DER, its PEM's base64
/// lines, and (RSA) the private exponent and primes, raw and as hex.
fn secrets_of(pem: &Path) -> Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(pem)?;
    let mut out: Vec<Vec<u8>> = text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let der = Command::new("openssl")
        .args(["pkey", "-outform", "DER", "-in"])
        .arg(pem)
        .output()?;
    ensure!(
        der.status.success(),
        "openssl pkey: {}",
        String::from_utf8_lossy(&der.stderr)
    );
    out.push(der.stdout);
    let dump = Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(pem)
        .output()?;
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    // `privateExponent:`, `prime1:`, `prime2:` (RSA) or `priv:` (Ed25519): hex in colon pairs.
    let mut field: Option<Vec<u8>> = None;
    for line in dump.lines() {
        let t = line.trim();
        if ["privateExponent:", "prime1:", "prime2:", "priv:"].contains(&t) {
            if let Some(f) = field.take() {
                out.push(f);
            }
            field = Some(Vec::new());
        } else if let Some(f) = field.as_mut() {
            if t.chars().all(|c| c.is_ascii_hexdigit() || c == ':') && !t.is_empty() {
                f.extend(
                    t.split(':')
                        .filter(|h| !h.is_empty())
                        .filter_map(|h| u8::from_str_radix(h, 16).ok()),
                );
            } else {
                out.push(field.take().unwrap_or_default());
            }
        }
    }
    if let Some(f) = field {
        out.push(f);
    }
    let raw: Vec<Vec<u8>> = out
        .iter()
        .filter(|s| s.len() >= 32 && !s.is_ascii())
        .cloned()
        .collect();
    for r in raw {
        let r = r.strip_prefix(&[0u8][..]).unwrap_or(&r).to_vec();
        out.push(hex::encode(&r).into_bytes());
        out.push(hex::encode_upper(&r).into_bytes());
        out.push(r);
    }
    ensure!(
        out.len() >= 6,
        "too few secret forms of {}: {}",
        pem.display(),
        out.len()
    );
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() >= 16 && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_private_key_enters_any_container() -> Result<()> {
    let trace = tempfile::tempdir()?;
    let env = Env::start(
        ServerOpts::default().env("KMODFORGE_TRACE_CONTAINER_INPUT", trace.path().display()),
    )
    .await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let req = BuildRequest {
        boot_check: Some(true),
        ..request("kmf-hello", "1.0", KERNEL_A)?
    };
    let work = async {
        let (status, first) = env.client.build(&req).await?;
        ensure!(status == StatusCode::ACCEPTED, "{status}");
        env.client.wait(&first.build.id).await
    };
    let (done, created) = env.docker.inspect_created(work).await?;
    let done = done?;
    let m = done.artifact.clone().context("built")?;
    let check = m.boot_check.clone().context("checked")?;
    ensure!(check.passed && check.signature_enforced, "{check:#?}");

    let keys = env.server.data_dir().data().join("keys");
    let mut secrets = secrets_of(&keys.join("module-signing.key"))?;
    secrets.extend(secrets_of(&keys.join("manifest-signing.key"))?);

    // Every input the server handed to a container.
    let mut traced = 0;
    for entry in std::fs::read_dir(trace.path())? {
        let path = entry?.path();
        let bytes = std::fs::read(&path)?;
        for s in &secrets {
            ensure!(
                !contains(&bytes, s),
                "a private key is in the container input {}",
                path.display()
            );
        }
        traced += 1;
    }
    let stdin_traces = std::fs::read_dir(trace.path())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with("-stdin"))
        .count();
    ensure!(
        traced >= 6 && stdin_traces >= 2,
        "the trace saw the build's and the check's inputs ({traced} files)"
    );

    // Every container those requests created, as the engine described it while it ran.
    let ids: Vec<kmodforge_e2e::CreatedContainer> =
        created.iter().map(|(c, _)| c.clone()).collect();
    let mine = env.own(&ids).await?;
    ensure!(mine.len() >= 2, "a build and a check container: {mine:?}");
    let mut inspected = 0;
    for (c, inspect) in &created {
        let Some(inspect) = inspect else { continue };
        inspected += 1;
        let text = serde_json::to_vec(inspect)?;
        for s in &secrets {
            ensure!(
                !contains(&text, s),
                "a private key is in container {}",
                c.id
            );
        }
        for m in inspect.mounts.clone().unwrap_or_default() {
            let src = m.source.unwrap_or_default();
            ensure!(!src.contains("/keys"), "container {} mounts {src}", c.id);
        }
        let env_vars = inspect
            .config
            .as_ref()
            .and_then(|c| c.env.clone())
            .unwrap_or_default();
        ensure!(
            !env_vars
                .iter()
                .any(|v| v.contains("KEY") && v.contains('/')),
            "container {} has a key path in its environment: {env_vars:?}",
            c.id
        );
    }
    ensure!(
        inspected >= 2,
        "the build and check containers were inspected while they ran ({inspected})"
    );
    Ok(())
}
