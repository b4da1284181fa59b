//! `trust show` (the server's manifest key, to pin in `trusted_keys`) and `mok
//! status|enroll` (this host's module signature enforcement, and enrolling the
//! server's module-signing certificate with shim's MOK manager).
//!
//! The key fetched by `trust show` is only as good as the channel it came over:
//! compare its fingerprint with the server's (its log at start-up, or `GET
//! /v1/keys` on its host) before pinning it.

use std::process::Command;

use kmodforge_agent::host::secureboot::{self, Enrolled};
use kmodforge_api::attest::{fingerprint, parse_public_key};
use kmodforge_api::wire::{KeyPurpose, PublicKey};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::config::Config;
use crate::exitcode::Exit;
use crate::report;

fn client(cfg: &Config, url: Option<&str>) -> Result<Client, Exit> {
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => match cfg.server() {
            Ok(s) => s.to_string(),
            Err(e) => {
                report::general(e);
                return Err(Exit::Usage);
            }
        },
    };
    Client::new(&base, &cfg.http).map_err(|e| {
        report::general(e);
        Exit::Usage
    })
}

fn keys(client: &Client) -> Result<Vec<PublicKey>, Exit> {
    client.public_keys().map_err(|e| {
        report::general(format!("GET /v1/keys: {e}"));
        e.exit()
    })
}

/// `trust show [URL]`: the `trusted_keys` line for the server's current manifest
/// key (and the keys it used before), with fingerprints.
pub fn show(cfg: &Config, url: Option<&str>, json: bool) -> Exit {
    let client = match client(cfg, url) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let keys = match keys(&client) {
        Ok(k) => k,
        Err(e) => return e,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&keys).unwrap_or_default()
        );
        return Exit::Ok;
    }
    let manifest: Vec<&PublicKey> = keys
        .iter()
        .filter(|k| k.purpose == KeyPurpose::Manifest)
        .collect();
    let Some(current) = manifest.iter().find(|k| k.current) else {
        report::general(format!("{} lists no manifest key", client.base()));
        return Exit::Unreachable;
    };
    let fp = parse_public_key(&current.public)
        .map(|r| fingerprint(&r))
        .unwrap_or_default();
    println!(
        "manifest key of {} (fingerprint {fp}, in use since {}):",
        client.base(),
        current.first_used
    );
    println!("trusted_keys = [\"{}\"]", current.public);
    for old in manifest.iter().filter(|k| !k.current) {
        let fp = parse_public_key(&old.public)
            .map(|r| fingerprint(&r))
            .unwrap_or_default();
        println!(
            "earlier: \"{}\" (fingerprint {fp}, first used {})",
            old.public, old.first_used
        );
    }
    for k in keys
        .iter()
        .filter(|k| k.purpose == KeyPurpose::ModuleSigning && k.current)
    {
        println!(
            "module-signing certificate: {} (serial {}, sha256 {})",
            k.signer.as_deref().unwrap_or("?"),
            k.key_id.as_deref().unwrap_or("?"),
            k.id
        );
    }
    println!("compare the fingerprint with the server's own (its start-up log, GET /v1/keys on its host) before pinning");
    Exit::Ok
}

/// The server's current module-signing certificate: DER and sha256.
fn current_cert(client: &Client) -> Result<(PublicKey, Vec<u8>), Exit> {
    let keys = keys(client)?;
    let Some(current) = keys
        .into_iter()
        .find(|k| k.purpose == KeyPurpose::ModuleSigning && k.current)
    else {
        report::general(format!(
            "{} lists no module-signing certificate",
            client.base()
        ));
        return Err(Exit::Unreachable);
    };
    let der = client.module_certificate(&current.id).map_err(|e| {
        report::general(format!("fetching the certificate: {e}"));
        e.exit()
    })?;
    if hex::encode(Sha256::digest(&der)) != current.id {
        report::general(format!(
            "the certificate served as {} has another sha256",
            current.id
        ));
        return Err(Exit::Untrusted);
    }
    Ok((current, der))
}

/// `mok status`: enforcement on this host and the server's key's enrolment.
pub fn status(cfg: &Config, url: Option<&str>) -> Exit {
    let state = secureboot::read(&cfg.paths);
    println!(
        "module signatures: {}",
        if state.enforces() {
            state.why()
        } else {
            "not enforced".into()
        }
    );
    println!(
        "efi: {}, secure boot: {}, lockdown: {}, sig_enforce: {}",
        state.efi,
        state
            .secure_boot
            .map_or("unknown".into(), |b| b.to_string()),
        state.lockdown.as_deref().unwrap_or("unknown"),
        state
            .sig_enforce
            .map_or("unknown".into(), |b| b.to_string()),
    );
    let (cert, path) = match fetch_cert(cfg, url, None) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let verdict = secureboot::test_key(&cfg.paths.mokutil, &path);
    let what = match &verdict {
        Enrolled::Yes => "enrolled".to_string(),
        Enrolled::No => "not enrolled (kmodforge-agent mok enroll)".to_string(),
        Enrolled::Unknown(why) => format!("unknown: {why}"),
    };
    println!(
        "{} (sha256 {}): {what}",
        cert.signer.as_deref().unwrap_or("?"),
        cert.id
    );
    Exit::Ok
}

/// The server's current certificate, written under the state directory; refused
/// when `expect` (a sha256 checked out of band) names another.
fn fetch_cert(
    cfg: &Config,
    url: Option<&str>,
    expect: Option<&str>,
) -> Result<(PublicKey, std::path::PathBuf), Exit> {
    let client = client(cfg, url)?;
    let (cert, der) = current_cert(&client)?;
    if let Some(want) = expect {
        if !want.eq_ignore_ascii_case(&cert.id) {
            report::general(format!(
                "the server's module-signing certificate is {}, not the expected {want}: nothing enrolled",
                cert.id
            ));
            return Err(Exit::Untrusted);
        }
    }
    let path = write_cert(cfg, &cert.id, &der)?;
    Ok((cert, path))
}

fn write_cert(cfg: &Config, sha: &str, der: &[u8]) -> Result<std::path::PathBuf, Exit> {
    let path = secureboot::cert_path(&cfg.paths, sha);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, der));
    written.map(|()| path.clone()).map_err(|e| {
        report::general(format!("writing {}: {e}", path.display()));
        Exit::Internal
    })
}

/// `mok enroll`: fetches the server's module-signing certificate and runs
/// `mokutil --import` on it (mokutil asks for a one-time password; the enrolment
/// is confirmed in the MOK manager at the next boot). `expect`: the sha256 the
/// operator checked out of band.
pub fn enroll(cfg: &Config, url: Option<&str>, expect: Option<&str>) -> Exit {
    let (cert, path) = match fetch_cert(cfg, url, expect) {
        Ok(c) => c,
        Err(e) => return e,
    };
    println!(
        "enrolling {} (serial {}, sha256 {}) from {}",
        cert.signer.as_deref().unwrap_or("?"),
        cert.key_id.as_deref().unwrap_or("?"),
        cert.id,
        path.display()
    );
    if let Enrolled::Yes = secureboot::test_key(&cfg.paths.mokutil, &path) {
        println!("already enrolled: nothing to do");
        return Exit::Ok;
    }
    let status = Command::new(&cfg.paths.mokutil)
        .arg("--import")
        .arg(&path)
        .status();
    match status {
        Ok(s) if s.success() => {
            println!(
                "enrolment requested: reboot, and in the blue MOK manager choose \"Enroll MOK\" and enter \
                 the password you just gave; until then modules signed with this key do not load"
            );
            Exit::Ok
        }
        Ok(s) => {
            report::general(format!(
                "{} --import failed ({s})",
                cfg.paths.mokutil.display()
            ));
            Exit::InstallFailed
        }
        Err(e) => {
            report::general(format!("cannot run {}: {e}", cfg.paths.mokutil.display()));
            Exit::Usage
        }
    }
}
