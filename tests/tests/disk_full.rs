//! The data directory's disk full, for real: the server's data directory is a
//! small tmpfs that the test fills. Uploads and builds are answered with a JSON 507
//! naming the store, what was stored before is still served whole, nothing
//! half-written appears, and once space returns the same requests succeed.

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::{BuildState, FailureKind};
use kmodforge_e2e::tmpfs::SmallFs;
use kmodforge_e2e::{
    check_downloads, error_body, fixture, request, tar_gz_dir, DataDir, Env, ServerOpts, KERNEL_A,
};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// Every blob file under the data directory holds exactly the bytes its name says
/// (no staging file, no truncated blob).
fn blobs_are_whole(fs: &SmallFs, data: &std::path::Path) -> Result<usize> {
    let mut n = 0;
    for rel in fs.files()? {
        if !rel.starts_with("blobs") {
            continue;
        }
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .context("file name")?;
        let bytes = std::fs::read(data.join(&rel))?;
        ensure!(
            hex::encode(Sha256::digest(&bytes)) == name,
            "{}: a blob whose content is not its address (half-written?)",
            rel.display()
        );
        n += 1;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_data_directory_answers_507_keeps_serving_and_recovers() -> Result<()> {
    let dir = DataDir::new()?;
    // Declared before the server: unmounted after the server stopped.
    let fs = SmallFs::mount(&dir.data(), "8m")?;
    let env = Env::start(
        ServerOpts::default()
            .data_dir(dir.clone())
            .env("KMODFORGE_GC_INTERVAL_SECS", 0),
    )
    .await?;
    let c = &env.client;
    c.add_module("kmf-full-a", "1.0", &fixture("hello")).await?;
    c.add_module("kmf-full-b", "1.0", &fixture("hello")).await?;
    let (_, a) = c.build(&request("kmf-full-a", "1.0", KERNEL_A)?).await?;
    let a = c.wait(&a.build.id).await?;
    ensure!(
        a.build.state == BuildState::Succeeded,
        "{:?}",
        a.build.failure
    );
    let manifest = c.manifest("kmf-full-a", "1.0", KERNEL_A).await?;
    let blobs_before = blobs_are_whole(&fs, &dir.data())?;

    // A source of its own (the hello tree plus a file): its tar is a new object.
    let tree = tempfile::tempdir()?;
    for f in ["Makefile", "dkms.conf", "kmf_hello.c"] {
        std::fs::copy(fixture("hello").join(f), tree.path().join(f))?;
    }
    std::fs::write(
        tree.path().join("NOTES"),
        "uploaded while the disk is full\n",
    )?;
    let body = tar_gz_dir(tree.path())?;

    let filler = fs.fill()?;
    // An upload: 507 with the JSON error naming the store.
    let resp = c.put_module("kmf-full-c", "1.0", body.clone()).await?;
    let (status, err) = error_body(resp).await?;
    ensure!(
        status == StatusCode::INSUFFICIENT_STORAGE,
        "{status} {err:?}"
    );
    ensure!(
        err.error.kind == kmodforge_api::errors::ErrorKind::InsufficientStorage,
        "{err:?}"
    );
    ensure!(err.error.message.contains("full"), "{err:?}");
    let data = dir.data().display().to_string();
    ensure!(
        err.error.message.contains(&data) || err.error.message.contains("records"),
        "the message names neither the directory nor the records: {}",
        err.error.message
    );
    let missing = c.get("/v1/modules/kmf-full-c/1.0").await?;
    ensure!(
        missing.status() == StatusCode::NOT_FOUND,
        "a refused upload was registered"
    );

    // A new build: refused with 507, or it runs and ends with its own kind.
    let resp = c
        .post_build(&serde_json::to_value(request(
            "kmf-full-b",
            "1.0",
            KERNEL_A,
        )?)?)
        .await?;
    let status = resp.status();
    if status == StatusCode::INSUFFICIENT_STORAGE {
        let (_, err) = error_body(resp).await?;
        ensure!(
            err.error.kind == kmodforge_api::errors::ErrorKind::InsufficientStorage,
            "{err:?}"
        );
    } else {
        ensure!(
            status == StatusCode::ACCEPTED,
            "build on a full disk answered {status}"
        );
        let started: kmodforge_api::wire::BuildResponse = resp.json().await?;
        let done = c.wait(&started.build.id).await?;
        let f = kmodforge_e2e::expect_failure(&done, FailureKind::InsufficientStorage)?;
        ensure!(f.message.contains("full"), "{}", f.message);
        env.assert_no_artifact(&done, "kmf-full-b", "1.0", KERNEL_A)
            .await?;
        eprintln!("build on a full disk: {}", f.message);
    }
    // What was stored is still served whole; the server answers.
    c.healthz().await?;
    check_downloads(c, &manifest).await?;
    ensure!(
        blobs_are_whole(&fs, &dir.data())? == blobs_before,
        "a blob appeared while the disk was full"
    );

    // Space returns: the same requests succeed.
    std::fs::remove_file(&filler)?;
    let resp = c.put_module("kmf-full-c", "1.0", body).await?;
    ensure!(
        resp.status() == StatusCode::CREATED,
        "upload after: {}",
        resp.status()
    );
    let (_, b) = c.build(&request("kmf-full-b", "1.0", KERNEL_A)?).await?;
    let b = c.wait(&b.build.id).await?;
    ensure!(
        b.build.state == BuildState::Succeeded,
        "{:?}",
        b.build.failure
    );
    let m = c.manifest("kmf-full-b", "1.0", KERNEL_A).await?;
    check_downloads(c, &m).await?;
    blobs_are_whole(&fs, &dir.data())?;
    env.assert_no_job_containers().await?;
    drop(env);
    drop(fs);
    Ok(())
}

/// The object store's disk full while the records still take writes (blobs on a
/// volume of their own): the build runs, its modules cannot be stored, and it ends
/// failed with `insufficient_storage` (not a 500, not `infrastructure`), leaving
/// no blob and no artifact; with space back, the same request builds.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_whose_modules_cannot_be_stored_fails_with_its_own_kind() -> Result<()> {
    let dir = DataDir::new()?;
    let data_fs = SmallFs::mount(&dir.data(), "16m")?;
    let blob_fs = SmallFs::mount(&dir.data().join("blobs"), "1m")?;
    let env = Env::start(
        ServerOpts::default()
            .data_dir(dir.clone())
            .env("KMODFORGE_GC_INTERVAL_SECS", 0),
    )
    .await?;
    let c = &env.client;
    c.add_module("kmf-full-d", "1.0", &fixture("hello")).await?;
    let filler = blob_fs.fill()?;
    let (_, started) = c.build(&request("kmf-full-d", "1.0", KERNEL_A)?).await?;
    let done = c.wait(&started.build.id).await?;
    let f = kmodforge_e2e::expect_failure(&done, FailureKind::InsufficientStorage)?;
    eprintln!("build with a full object store: {}", f.message);
    ensure!(f.message.contains("full"), "{}", f.message);
    ensure!(
        f.message.contains(&dir.data().display().to_string()),
        "the message names no store: {}",
        f.message
    );
    env.assert_no_artifact(&done, "kmf-full-d", "1.0", KERNEL_A)
        .await?;
    // Nothing half-written: every file left is whole (its content is its address;
    // an empty Module.symvers fits on any disk), and no staging file remains.
    for rel in blob_fs.files()? {
        if rel == std::path::Path::new("filler") {
            continue;
        }
        let name = rel.file_name().and_then(|n| n.to_str()).context("name")?;
        let bytes = std::fs::read(dir.data().join("blobs").join(&rel))?;
        ensure!(
            hex::encode(Sha256::digest(&bytes)) == name,
            "{}: left half-written in the full blob store",
            rel.display()
        );
    }
    // The record is final, and stays so when read back from the records.
    let again = c.get_build(&done.build.id).await?;
    ensure!(again.build.state == BuildState::Failed, "{again:?}");
    env.assert_no_container_of(&done.build.id).await?;

    std::fs::remove_file(&filler)?;
    let (_, b) = c.build(&request("kmf-full-d", "1.0", KERNEL_A)?).await?;
    let b = c.wait(&b.build.id).await?;
    ensure!(
        b.build.state == BuildState::Succeeded,
        "{:?}",
        b.build.failure
    );
    let m = c.manifest("kmf-full-d", "1.0", KERNEL_A).await?;
    check_downloads(c, &m).await?;
    blobs_are_whole(&data_fs, &dir.data())?;
    drop(env);
    drop(blob_fs);
    drop(data_fs);
    Ok(())
}
