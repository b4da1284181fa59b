//! Bad input is refused with a 4xx and a JSON error kind, stores nothing, and leaves
//! the server serving.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::{error_body, fixture, tar_gz_dir, Env, ServerOpts, BUILD_WAIT, KERNEL_A};
use reqwest::{Response, StatusCode};
use serde_json::json;

/// Every file the server stored under its data dir, but the SQLite database (whose
/// pages change on reads too).
fn stored_files(data: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![data.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.to_string_lossy().contains("kmodforge.db") {
                out.insert(path);
            }
        }
    }
    Ok(out)
}

/// A plain tar whose entry names are written as given, unchecked (the tar crate's
/// builder refuses `..` itself).
fn raw_tar(entries: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_old();
        let name = &mut h.as_old_mut().name;
        ensure!(path.len() < name.len(), "path too long for a raw header");
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, *data)?;
    }
    Ok(tar.into_inner()?)
}

async fn expect_error(resp: Response, status: StatusCode, kind: &str) -> Result<String> {
    let (got, body) = error_body(resp).await?;
    ensure!(
        got == status && body.error.kind.as_str() == kind,
        "expected {status} {kind}, got {got} {:?}",
        body.error
    );
    ensure!(!body.error.message.is_empty(), "empty error message");
    Ok(body.error.message)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_archives_are_refused_and_nothing_is_stored() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let (status, added) = env
        .client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    ensure!(
        status == StatusCode::CREATED && added.created,
        "{status} {added:?}"
    );
    let modules = env.client.modules().await?;
    let data = env.server.data_dir().data();
    let files = stored_files(&data)?;

    let conf = b"PACKAGE_NAME=\"kmf-evil\"\nPACKAGE_VERSION=\"1.0\"\n".as_slice();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not a tar",
            b"this is not a tar archive\n".repeat(40),
            "not_a_tar",
        ),
        (
            "../evil",
            raw_tar(&[("dkms.conf", conf), ("../evil", b"escaped\n")])?,
            "parent_dir",
        ),
        (
            "no dkms.conf",
            raw_tar(&[("Makefile", b"obj-m := x.o\n"), ("x.c", b"int x;\n")])?,
            "no_dkms_conf",
        ),
    ];
    for (what, body, kind) in cases {
        let resp = env.client.put_module("kmf-evil", "1.0", body).await?;
        expect_error(resp, StatusCode::BAD_REQUEST, kind)
            .await
            .with_context(|| what.to_string())?;
        ensure!(
            env.client.modules().await? == modules,
            "{what}: modules changed"
        );
        ensure!(stored_files(&data)? == files, "{what}: files were stored");
        let resp = env.client.get("/v1/modules/kmf-evil/1.0").await?;
        ensure!(
            resp.status() == StatusCode::NOT_FOUND,
            "{what}: module exists"
        );
        env.client.healthz().await.context(what.to_string())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn same_name_other_content_conflicts() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let hello = fixture("hello");
    let (status, first) = env.client.add_module("kmf-hello", "1.0", &hello).await?;
    ensure!(status == StatusCode::CREATED && first.created);
    let (status, again) = env.client.add_module("kmf-hello", "1.0", &hello).await?;
    ensure!(
        status == StatusCode::OK && !again.created,
        "{status} {again:?}"
    );
    ensure!(again.module.digest == first.module.digest);

    let other = tar_gz_dir(&fixture("compile-error"))?;
    let resp = env.client.put_module("kmf-hello", "1.0", other).await?;
    expect_error(resp, StatusCode::CONFLICT, "conflict").await?;
    let kept = env.client.modules().await?;
    ensure!(
        kept.len() == 1 && kept[0].digest == first.module.digest,
        "{kept:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_build_requests() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let resp = env
        .client
        .post_build(&json!({"name": "kmf-nope", "version": "1.0", "kernel": KERNEL_A}))
        .await?;
    let message = expect_error(resp, StatusCode::NOT_FOUND, "unknown_module").await?;
    ensure!(message.contains("kmf-nope"), "{message}");

    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    for kernel in ["not a kernel!", "../../etc", ""] {
        let body = json!({"name": "kmf-hello", "version": "1.0", "kernel": kernel});
        let resp = env.client.post_build(&body).await?;
        let (status, body) = error_body(resp).await?;
        ensure!(
            status == StatusCode::BAD_REQUEST,
            "kernel {kernel:?}: {status} {body:?}"
        );
    }
    let resp = env
        .client
        .get("/v1/artifacts/kmf-hello/1.0/not_a_kernel")
        .await?;
    ensure!(
        resp.status() == StatusCode::BAD_REQUEST,
        "{}",
        resp.status()
    );
    env.assert_no_job_containers().await?;
    env.client.healthz().await
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kernel_names_the_missing_headers_package() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let url = env.client.url("/v1/kernels/6.1.0-999-amd64");
    let resp = env
        .client
        .http()
        .put(&url)
        .timeout(BUILD_WAIT)
        .send()
        .await?;
    let message = expect_error(resp, StatusCode::NOT_FOUND, "unknown_kernel").await?;
    ensure!(
        message.contains("linux-headers-6.1.0-999-amd64"),
        "{message}"
    );

    let resp = env
        .client
        .http()
        .put(env.client.url("/v1/kernels/bogus"))
        .send()
        .await?;
    let (status, body) = error_body(resp).await?;
    ensure!(status == StatusCode::BAD_REQUEST, "{status} {body:?}");
    env.client.healthz().await
}
