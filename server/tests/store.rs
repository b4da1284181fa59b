//! The storage seams against every backend they have: the records contract on
//! SQLite and on a real PostgreSQL server, the object store on a local directory
//! and on a real S3 server (Garage). The servers come from `scripts/services.sh
//! start` (run by `scripts/test.sh`); without them these tests fail, naming it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use kmodforge_api::auth::{AuditAction, AuditEntry, AuditOutcome, Scope, TokenInfo};
use kmodforge_api::names::{Arch, KernelRelease, ModuleName, ModuleVersion, TokenName};
use kmodforge_api::wire::{
    BuildRecord, BuildState, KnownKernel, Manifest, ModuleSource, PublicKey,
};
use kmodforge_server::store::postgres::{PgRecords, MIGRATIONS};
use kmodforge_server::store::{
    AccessRecords, AuditQuery, BlobError, KernelRecords, Objects, ObjectsConfig, PutModule,
    Records, RetentionRecords, Revoked, S3Config, SqliteRecords, TokenRow,
};
use serde_json::json;

// ---------------------------------------------------------------------------
// The services

/// A variable of the services' environment: the process's, else the file
/// `scripts/services.sh start` wrote.
fn service_env(name: &str) -> String {
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    let dir = std::env::var("KMODFORGE_SERVICES_DIR")
        .unwrap_or_else(|_| "/tmp/kmodforge-services".into());
    let file = format!("{dir}/env");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!("{name} is not set and {file} cannot be read ({e}): run `scripts/services.sh start` (PostgreSQL and Garage) first")
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('\'').trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("{name} is missing from {file}"))
}

/// A fresh database on the test PostgreSQL server; dropped by [`FreshDb::drop`].
struct FreshDb {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDb {
    async fn new() -> FreshDb {
        let admin_url = service_env("KMODFORGE_TEST_DATABASE_URL");
        let name = format!("kmf_test_{:016x}", rand::random::<u64>());
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin_url}: {e} (run scripts/services.sh start)")
            });
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        FreshDb {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Best effort, on a thread of its own (the test's runtime may be gone).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn s3_config() -> S3Config {
    S3Config {
        bucket: service_env("KMODFORGE_TEST_S3_BUCKET"),
        endpoint: Some(service_env("KMODFORGE_TEST_S3_ENDPOINT")),
        region: service_env("KMODFORGE_TEST_S3_REGION"),
        access_key_id: service_env("AWS_ACCESS_KEY_ID"),
        secret_access_key: service_env("AWS_SECRET_ACCESS_KEY"),
    }
}

// ---------------------------------------------------------------------------
// Records: one contract, every backend

fn name(s: &str) -> ModuleName {
    ModuleName::parse(s).unwrap()
}
fn version(s: &str) -> ModuleVersion {
    ModuleVersion::parse(s).unwrap()
}
fn krel(s: &str) -> KernelRelease {
    KernelRelease::parse(s).unwrap()
}

fn module(n: &str, v: &str, digest: char) -> ModuleSource {
    serde_json::from_value(json!({
        "name": n, "version": v, "digest": digest.to_string().repeat(64),
        "declared": {"package_name": n, "package_version": v, "modules": [n], "dynamic": false},
        "files": 3, "bytes": 100, "added_at": "2026-12-07T00:00:00Z"
    }))
    .unwrap()
}

fn build(id: &str, state: &str, created: &str) -> BuildRecord {
    serde_json::from_value(json!({
        "id": id, "name": "m", "version": "1", "kernel": "6.1.0-47-amd64", "arch": "x86_64",
        "state": state, "source_digest": "a".repeat(64), "image_id": null, "artifact_key": null,
        "failure": null, "created_at": created, "finished_at": null, "seconds": null
    }))
    .unwrap()
}

fn manifest(key: char, kernel: &str, blobs: &[&str], build_id: &str) -> Manifest {
    let files: Vec<_> = blobs
        .iter()
        .enumerate()
        .map(|(i, sha)| {
            json!({
                "file": format!("m{i}.ko"), "dest_location": "/updates/dkms", "size": 1,
                "sha256": sha, "modinfo": {"name": null, "vermagic": null, "version": null,
                "srcversion": null, "depends": [], "license": null, "fields": []}
            })
        })
        .collect();
    serde_json::from_value(json!({
        "key": key.to_string().repeat(64), "name": "m", "version": "1", "kernel": kernel,
        "arch": "x86_64", "source_digest": "a".repeat(64),
        "builder_image": {"id": "sha256:test", "tag": "test"}, "files": files,
        "plan": {"package_name": "m", "package_version": "1", "modules": [], "make": "make",
            "patches": [], "pre_build": null, "post_build": null, "build_depends": [],
            "autoinstall": true, "no_weak_modules": false, "obsolete_by": null, "warnings": []},
        "build_id": build_id, "built_at": "2026-12-07T00:00:00Z", "build_seconds": 1.0
    }))
    .unwrap()
}

fn token(n: &str, id: &str) -> TokenRow {
    TokenRow {
        id: id.into(),
        hash: "h".repeat(64),
        info: TokenInfo {
            name: TokenName::parse(n).unwrap(),
            scope: Scope::Read,
            modules: vec![],
            created_at: "t0".into(),
            created_by: "cli:test".into(),
            revoked_at: None,
        },
    }
}

fn audit(module: Option<&str>) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: "t".into(),
        actor: "ci".into(),
        action: AuditAction::ModuleAdd,
        outcome: AuditOutcome::Done,
        module: module.map(name),
        version: None,
        digest: None,
        token: None,
        detail: "d".into(),
    }
}

fn public_key(purpose: &str, id: &str) -> PublicKey {
    serde_json::from_value(json!({
        "purpose": purpose, "id": id, "public": "pem", "first_used": "t", "current": false
    }))
    .unwrap()
}

/// Everything the server relies on, for any implementation of the seam.
async fn records_contract(r: &dyn Records) {
    // Modules: created once, then unchanged or a conflict.
    let (m, v) = (name("m"), version("1"));
    assert_eq!(
        r.put_module(&module("m", "1", 'a')).await.unwrap(),
        PutModule::Created
    );
    assert!(matches!(
        r.put_module(&module("m", "1", 'a')).await.unwrap(),
        PutModule::Unchanged(_)
    ));
    assert!(matches!(
        r.put_module(&module("m", "1", 'b')).await.unwrap(),
        PutModule::Conflict(_)
    ));
    r.put_module(&module("a", "2", 'c')).await.unwrap();
    let listed: Vec<String> = r
        .list_modules()
        .await
        .unwrap()
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(listed, ["a", "m"]);
    assert!(r.digest_in_use(&"a".repeat(64)).await.unwrap());
    assert!(r.delete_module(&name("a"), &version("2")).await.unwrap());
    assert!(!r.delete_module(&name("a"), &version("2")).await.unwrap());
    assert!(!r.digest_in_use(&"c".repeat(64)).await.unwrap());
    assert_eq!(
        r.get_module(&m, &v).await.unwrap().unwrap().digest.as_str(),
        "a".repeat(64)
    );

    // Builds: upsert, newest first, unfinished ones failed on demand.
    r.put_build(&build("b1", "queued", "2026-12-07T00:00:01Z"))
        .await
        .unwrap();
    r.put_build(&build("b2", "succeeded", "2026-12-07T00:00:02Z"))
        .await
        .unwrap();
    r.put_build(&build("b1", "running", "2026-12-07T00:00:01Z"))
        .await
        .unwrap();
    let ids: Vec<String> = r
        .list_builds(10)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, ["b2", "b1"]);
    assert_eq!(r.fail_unfinished("restarted", "now").await.unwrap(), ["b1"]);
    let b1 = r.get_build("b1").await.unwrap().unwrap();
    assert_eq!(b1.state, BuildState::Failed);
    assert!(b1.failure.unwrap().message.contains("restarted"));
    assert!(r.get_build("nope").await.unwrap().is_none());

    // Artifacts: the latest per (module, kernel, arch), blobs referenced, versions pinned.
    let (k, arch) = (krel("6.1.0-47-amd64"), Arch::parse("x86_64").unwrap());
    let sha1 = "1".repeat(64);
    let sha2 = "2".repeat(64);
    r.put_artifact(&manifest('c', "6.1.0-47-amd64", &[&sha1], "b1"))
        .await
        .unwrap();
    r.put_artifact(&manifest('d', "6.1.0-47-amd64", &[&sha2], "b2"))
        .await
        .unwrap();
    let latest = r.latest_artifact(&m, &v, &k, &arch).await.unwrap().unwrap();
    assert_eq!(latest.build_id, "b2");
    // Re-putting an older key makes it the latest again (a rebuild of the same key).
    r.put_artifact(&manifest('c', "6.1.0-47-amd64", &[&sha1], "b3"))
        .await
        .unwrap();
    assert_eq!(
        r.latest_artifact(&m, &v, &k, &arch)
            .await
            .unwrap()
            .unwrap()
            .build_id,
        "b3"
    );
    // The newest per kernel, for every kernel (the DKMS bundle's default).
    r.put_artifact(&manifest('e', "6.1.0-56-amd64", &[&sha2], "b4"))
        .await
        .unwrap();
    let per_kernel: Vec<(String, String)> = r
        .latest_artifacts_per_kernel(&m, &v, &arch)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.kernel.to_string(), a.build_id))
        .collect();
    assert_eq!(
        per_kernel,
        [
            ("6.1.0-47-amd64".to_string(), "b3".to_string()),
            ("6.1.0-56-amd64".to_string(), "b4".to_string())
        ]
    );
    let arm = Arch::parse("aarch64").unwrap();
    assert!(r
        .latest_artifacts_per_kernel(&m, &v, &arm)
        .await
        .unwrap()
        .is_empty());
    let mut updated = latest.clone();
    updated.build_seconds = 42.0;
    assert!(r.update_manifest(&updated).await.unwrap());
    assert_eq!(
        r.get_artifact(&updated.key)
            .await
            .unwrap()
            .unwrap()
            .build_seconds,
        42.0
    );
    assert!(r.blob_in_use(&sha1).await.unwrap());
    assert_eq!(
        r.pinned_digest(&m, &v).await.unwrap().unwrap(),
        "a".repeat(64)
    );
    let gone = r.delete_artifacts(&m, &v).await.unwrap();
    assert_eq!(gone.len(), 3);
    assert!(!r.blob_in_use(&sha1).await.unwrap());
    assert!(r
        .latest_artifact(&m, &v, &k, &arch)
        .await
        .unwrap()
        .is_none());
    assert!(!r.update_manifest(&updated).await.unwrap());
    // The pin outlives the artifacts; an admin may move it.
    r.pin_digest(&m, &v, "x", "t").await.unwrap();
    assert_eq!(r.pinned_digest(&m, &v).await.unwrap().unwrap(), "x");

    // Evaluations and settings.
    assert!(r.get_eval("e").await.unwrap().is_none());
    r.put_eval("e", "1").await.unwrap();
    r.put_eval("e", "2").await.unwrap();
    assert_eq!(r.get_eval("e").await.unwrap().unwrap(), "2");
    let settings: kmodforge_api::settings::SettingsRecord =
        serde_json::from_value(json!({"name": "m"})).unwrap();
    r.put_settings(&settings).await.unwrap();
    assert!(r.get_settings(&m).await.unwrap().is_some());
    assert!(r.delete_settings(&m).await.unwrap());
    assert!(!r.delete_settings(&m).await.unwrap());

    // Kernels, in kernel order.
    for kr in ["6.1.0-56-amd64", "6.1.0-47-amd64"] {
        let known: KnownKernel = serde_json::from_value(json!({
            "kernel": kr, "published": true, "first_seen": "t"
        }))
        .unwrap();
        r.put_kernel(&known).await.unwrap();
    }
    let kernels: Vec<String> = r
        .list_kernels()
        .await
        .unwrap()
        .iter()
        .map(|k| k.kernel.to_string())
        .collect();
    assert_eq!(kernels, ["6.1.0-47-amd64", "6.1.0-56-amd64"]);
    assert!(
        r.get_kernel(&krel("6.1.0-56-amd64"))
            .await
            .unwrap()
            .unwrap()
            .published
    );
    // Publishing: once per kernel, a kernel known only as requested included.
    let k57 = |published: bool| -> KnownKernel {
        serde_json::from_value(json!({
            "kernel": "6.1.0-57-amd64", "published": published, "requested": true, "first_seen": "t"
        }))
        .unwrap()
    };
    r.put_kernel(&k57(false)).await.unwrap();
    assert!(r.publish_kernel(&k57(true)).await.unwrap());
    assert!(!r.publish_kernel(&k57(true)).await.unwrap());
    assert!(
        r.get_kernel(&krel("6.1.0-57-amd64"))
            .await
            .unwrap()
            .unwrap()
            .published
    );

    // Tokens: a name is unique until revoked; a revocation is seen at once.
    assert!(!r.any_tokens().await.unwrap());
    assert!(r.insert_token(&token("ci", "id1")).await.unwrap());
    assert!(
        !r.insert_token(&token("ci", "id2")).await.unwrap(),
        "active name taken"
    );
    assert!(r.token_by_id("id2").await.unwrap().is_none());
    let ci = TokenName::parse("ci").unwrap();
    assert!(matches!(
        r.revoke_token(&ci, "t1").await.unwrap(),
        Revoked::Now(_)
    ));
    assert!(matches!(
        r.revoke_token(&ci, "t2").await.unwrap(),
        Revoked::Already(_)
    ));
    let revoked = r.token_by_id("id1").await.unwrap().unwrap();
    assert_eq!(revoked.info.revoked_at.as_deref(), Some("t1"));
    assert!(
        r.insert_token(&token("ci", "id3")).await.unwrap(),
        "rotation"
    );
    assert!(r.token_by_id("id1").await.unwrap().is_none());
    assert_eq!(r.list_tokens().await.unwrap().len(), 1);
    let nope = TokenName::parse("nope").unwrap();
    assert_eq!(r.revoke_token(&nope, "t").await.unwrap(), Revoked::Unknown);
    r.forget_token(&ci).await.unwrap();
    assert!(r.token_by_id("id3").await.unwrap().is_none());

    // Audit: increasing seq, newest first, by module, paged.
    let a1 = r.append_audit(&audit(Some("a"))).await.unwrap();
    let a2 = r.append_audit(&audit(None)).await.unwrap();
    let a3 = r.append_audit(&audit(Some("a"))).await.unwrap();
    assert!(a1 < a2 && a2 < a3);
    let all = r
        .list_audit(&AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [a3, a2, a1]);
    let q = AuditQuery {
        limit: 10,
        module: Some(name("a")),
        before: Some(a3),
    };
    assert_eq!(
        r.list_audit(&q)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [a1]
    );

    // Public keys: the latest of each purpose is current; a key seen before comes back.
    assert!(r
        .put_public_key(&public_key("manifest", "k1"))
        .await
        .unwrap());
    assert!(r
        .put_public_key(&public_key("manifest", "k2"))
        .await
        .unwrap());
    assert!(r
        .put_public_key(&public_key("module_signing", "c1"))
        .await
        .unwrap());
    let current = |keys: &[PublicKey]| -> Vec<String> {
        keys.iter()
            .filter(|k| k.current)
            .map(|k| k.id.clone())
            .collect()
    };
    let mut now = current(&r.list_public_keys().await.unwrap());
    now.sort();
    assert_eq!(now, ["c1", "k2"]);
    assert!(
        !r.put_public_key(&public_key("manifest", "k1"))
            .await
            .unwrap(),
        "known key"
    );
    let mut now = current(&r.list_public_keys().await.unwrap());
    now.sort();
    assert_eq!(now, ["c1", "k1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_contract_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let r = SqliteRecords::open(&dir.path().join("db")).unwrap();
    records_contract(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_contract_on_postgresql() {
    let db = FreshDb::new().await;
    let r = PgRecords::connect(&db.url).await.unwrap();
    records_contract(&r).await;
}

/// The apt repository's records: packages keyed by (name, version, arch),
/// replaced in place; their blobs count as referenced; the newest artifact of
/// each (module, version, kernel, arch).
async fn apt_contract(r: &dyn Records) {
    use kmodforge_api::wire::{AptOrigin, AptPackage};
    let pkg = |version: &str, sha: char| AptPackage {
        package: "kmodforge-agent".into(),
        version: version.into(),
        architecture: "amd64".into(),
        filename: format!("pool/main/k/kmodforge-agent/kmodforge-agent_{version}_amd64.deb"),
        sha256: sha.to_string().repeat(64),
        size: 10,
        control: "Package: kmodforge-agent\n".into(),
        origin: AptOrigin::Upload { by: "admin".into() },
        added_at: "2026-12-07T00:00:00Z".into(),
    };
    assert!(r.list_apt_packages().await.unwrap().is_empty());
    r.put_apt_package(&pkg("1.0-1", 'd')).await.unwrap();
    r.put_apt_package(&pkg("0.9-1", 'e')).await.unwrap();
    // The same (name, version, arch) again replaces the row.
    r.put_apt_package(&pkg("1.0-1", 'f')).await.unwrap();
    let all = r.list_apt_packages().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|p| (p.version.as_str(), p.sha256.as_bytes()[0]))
            .collect::<Vec<_>>(),
        vec![("0.9-1", b'e'), ("1.0-1", b'f')]
    );
    assert!(r.blob_in_use(&"f".repeat(64)).await.unwrap());
    assert!(!r.blob_in_use(&"d".repeat(64)).await.unwrap());
    assert!(r
        .referenced_blobs()
        .await
        .unwrap()
        .contains(&"e".repeat(64)));
    assert!(r
        .delete_apt_package("kmodforge-agent", "0.9-1", "amd64")
        .await
        .unwrap());
    assert!(!r
        .delete_apt_package("kmodforge-agent", "0.9-1", "amd64")
        .await
        .unwrap());
    assert!(!r.blob_in_use(&"e".repeat(64)).await.unwrap());

    // Two artifacts of one (module, version, kernel, arch): only the newer is listed.
    assert!(r.latest_artifacts().await.unwrap().is_empty());
    r.put_artifact(&manifest('1', "6.1.0-47-amd64", &[&"1".repeat(64)], "b1"))
        .await
        .unwrap();
    r.put_artifact(&manifest('2', "6.1.0-47-amd64", &[&"2".repeat(64)], "b2"))
        .await
        .unwrap();
    r.put_artifact(&manifest('3', "6.1.0-56-amd64", &[&"3".repeat(64)], "b3"))
        .await
        .unwrap();
    let latest: Vec<String> = r
        .latest_artifacts()
        .await
        .unwrap()
        .iter()
        .map(|m| m.build_id.clone())
        .collect();
    assert_eq!(latest, vec!["b2", "b3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_contract_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let r = SqliteRecords::open(&dir.path().join("db")).unwrap();
    apt_contract(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_contract_on_postgresql() {
    let db = FreshDb::new().await;
    let r = PgRecords::connect(&db.url).await.unwrap();
    apt_contract(&r).await;
}

/// Retention's queries: expired records (final, unreferenced, old), blob and
/// source references, and what is in flight.
async fn retention_contract(r: &dyn Records) {
    let old = "2026-01-01T00:00:00Z";
    let new = "2026-12-07T00:00:00Z";
    r.put_build(&build("b-old-failed", "failed", old))
        .await
        .unwrap();
    r.put_build(&build("b-old-kept", "succeeded", old))
        .await
        .unwrap();
    r.put_build(&build("b-old-running", "running", old))
        .await
        .unwrap();
    r.put_build(&build("b-old-queued", "queued", old))
        .await
        .unwrap();
    r.put_build(&build("b-new", "failed", new)).await.unwrap();
    // b-old-kept made an artifact: its record stays as long as the manifest names it.
    r.put_artifact(&manifest(
        'c',
        "6.1.0-47-amd64",
        &[&"1".repeat(64)],
        "b-old-kept",
    ))
    .await
    .unwrap();
    let cutoff = "2026-06-01T00:00:00Z";
    assert_eq!(
        r.expired_builds(cutoff, 100).await.unwrap(),
        ["b-old-failed"]
    );
    assert!(r.expired_builds(cutoff, 0).await.unwrap().is_empty());
    // Deleting re-checks: in-flight, referenced and unknown ids are left alone.
    let asked: Vec<String> = [
        "b-old-failed",
        "b-old-kept",
        "b-old-running",
        "b-new",
        "nope",
    ]
    .map(String::from)
    .to_vec();
    let mut gone = r.delete_builds(&asked).await.unwrap();
    gone.sort();
    assert_eq!(gone, ["b-new", "b-old-failed"]);
    assert!(r.get_build("b-old-failed").await.unwrap().is_none());
    assert!(r.get_build("b-old-kept").await.unwrap().is_some());
    let mut unfinished: Vec<String> = r
        .unfinished_builds()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    unfinished.sort();
    assert_eq!(unfinished, ["b-old-queued", "b-old-running"]);

    let symvers = "2".repeat(64);
    let mut m = manifest('f', "6.1.0-47-amd64", &[&"3".repeat(64)], "b-x");
    m.symvers = Some(serde_json::from_value(json!({"sha256": symvers, "size": 1})).unwrap());
    r.put_artifact(&m).await.unwrap();
    let blobs = r.referenced_blobs().await.unwrap();
    for sha in ["1".repeat(64), symvers, "3".repeat(64)] {
        assert!(blobs.contains(&sha), "{sha} is referenced");
    }
    assert!(!blobs.contains(&"4".repeat(64)));
    r.put_module(&module("m", "1", 'd')).await.unwrap();
    assert!(r
        .referenced_sources()
        .await
        .unwrap()
        .contains(&"d".repeat(64)));
    assert!(!r
        .referenced_sources()
        .await
        .unwrap()
        .contains(&"e".repeat(64)));
    // Once the manifest is gone, so is the protection of its build's record.
    r.delete_artifacts(&name("m"), &version("1")).await.unwrap();
    assert_eq!(r.expired_builds(cutoff, 100).await.unwrap(), ["b-old-kept"]);
    assert!(r.referenced_blobs().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_contract_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let r = SqliteRecords::open(&dir.path().join("db")).unwrap();
    retention_contract(&r).await;
    assert!(r.try_gc_lock().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_contract_on_postgresql() {
    let db = FreshDb::new().await;
    let r = PgRecords::connect(&db.url).await.unwrap();
    retention_contract(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_gc_lock_is_held_by_one_replica_at_a_time() {
    let db = FreshDb::new().await;
    let a = PgRecords::connect(&db.url).await.unwrap();
    let b = PgRecords::connect(&db.url).await.unwrap();
    let held = a.try_gc_lock().await.unwrap().expect("first replica locks");
    assert!(
        b.try_gc_lock().await.unwrap().is_none(),
        "second is refused"
    );
    assert!(
        a.try_gc_lock().await.unwrap().is_none(),
        "not re-entrant per session pool"
    );
    drop(held);
    // The lock goes with its session, which closes asynchronously.
    let mut got = None;
    for _ in 0..50 {
        got = b.try_gc_lock().await.unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(got.is_some(), "released when dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_migrates_once_when_replicas_start_together() {
    let db = FreshDb::new().await;
    let starts = (0..3).map(|_| {
        let url = db.url.clone();
        tokio::spawn(async move { PgRecords::connect(&url).await })
    });
    let replicas: Vec<PgRecords> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    for r in &replicas {
        assert_eq!(r.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
    }
    // A database newer than the server is refused, not guessed at.
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("INSERT INTO schema_migrations (version) VALUES (999)")
        .await
        .unwrap();
    let err = PgRecords::connect(&db.url).await.err().unwrap();
    assert!(err.to_string().contains("version 999"), "{err}");
}

/// Two replicas on one database: what one writes, the other reads at once, and
/// racing writers of one name get exactly one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_replicas_see_each_other_at_once_and_race_safely() {
    let db = FreshDb::new().await;
    let a = Arc::new(PgRecords::connect(&db.url).await.unwrap());
    let b = Arc::new(PgRecords::connect(&db.url).await.unwrap());
    for i in 0..20 {
        let id = format!("build{i}");
        a.put_build(&build(&id, "queued", "t")).await.unwrap();
        assert_eq!(
            b.get_build(&id).await.unwrap().unwrap().id,
            id,
            "read after write"
        );
    }
    assert!(a.insert_token(&token("fleet", "t1")).await.unwrap());
    assert!(b.token_by_id("t1").await.unwrap().is_some());
    let fleet = TokenName::parse("fleet").unwrap();
    assert!(matches!(
        b.revoke_token(&fleet, "now").await.unwrap(),
        Revoked::Now(_)
    ));
    assert!(
        a.token_by_id("t1")
            .await
            .unwrap()
            .unwrap()
            .info
            .revoked_at
            .is_some(),
        "revocation seen by the other replica"
    );

    let tokens = (0..16).map(|i| {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            r.insert_token(&token("race", &format!("r{i}")))
                .await
                .unwrap()
        })
    });
    let won = futures_util::future::join_all(tokens)
        .await
        .into_iter()
        .filter(|w| *w.as_ref().unwrap())
        .count();
    assert_eq!(won, 1, "one token of a name");
    let modules = (0..16).map(|i| {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { r.put_module(&module("race", "1", 'e')).await.unwrap() })
    });
    let created = futures_util::future::join_all(modules)
        .await
        .into_iter()
        .filter(|p| *p.as_ref().unwrap() == PutModule::Created)
        .count();
    assert_eq!(created, 1, "one module record");
    let publishes = (0..8).map(|i| {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            let k: KnownKernel = serde_json::from_value(json!({
                "kernel": "6.1.0-99-amd64", "published": true, "first_seen": "t"
            }))
            .unwrap();
            r.publish_kernel(&k).await.unwrap()
        })
    });
    let first = futures_util::future::join_all(publishes)
        .await
        .into_iter()
        .filter(|p| *p.as_ref().unwrap())
        .count();
    assert_eq!(
        first, 1,
        "one replica publishes a new kernel (and prebuilds it)"
    );
    let audits = (0..20).map(|i| {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { r.append_audit(&audit(None)).await.unwrap() })
    });
    let mut seqs: Vec<u64> = futures_util::future::join_all(audits)
        .await
        .into_iter()
        .map(|s| s.unwrap())
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 20, "distinct audit positions");
}

/// A database that is down answers with an error that says so (503 upstream),
/// and the pool reconnects by itself once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_unreachable_is_an_unavailable_error() {
    let r = PgRecords::connect("postgres://kmodforge:kmodforge@127.0.0.1:1/none")
        .await
        .err()
        .unwrap();
    assert!(r.is_unavailable(), "{r}");
}

// ---------------------------------------------------------------------------
// Objects: one contract, both backends

async fn objects_contract(o: &Objects) {
    let data = format!("module bytes {}", rand::random::<u64>()).into_bytes();
    let sha = o.put_blob(&data).await.unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(
        o.put_blob(&data).await.unwrap(),
        sha,
        "same bytes, same address"
    );
    assert_eq!(o.get_blob(&sha).await.unwrap().unwrap(), data);
    assert!(o.contains_blob(&sha).await.unwrap());
    assert!(o.get_blob(&"0".repeat(64)).await.unwrap().is_none());
    assert!(matches!(
        o.get_blob("../etc/passwd").await,
        Err(BlobError::BadAddress(_))
    ));
    o.delete_blob(&sha).await.unwrap();
    o.delete_blob(&sha).await.unwrap();
    assert!(!o.contains_blob(&sha).await.unwrap());

    let digest =
        kmodforge_api::names::SourceDigest::parse(&format!("{:064x}", rand::random::<u128>()))
            .unwrap();
    o.put_source(&digest, bytes::Bytes::from_static(b"tar"))
        .await
        .unwrap();
    assert_eq!(&o.get_source(&digest).await.unwrap()[..], b"tar");
    o.delete_source(&digest).await.unwrap();
    assert!(
        o.get_source(&digest).await.is_err(),
        "a missing source is an error"
    );

    let id = format!("{:016x}", rand::random::<u64>());
    assert!(o.get_log(&id).await.unwrap().is_none());
    o.put_log(&id, bytes::Bytes::from_static(b"line 1\n"))
        .await
        .unwrap();
    o.put_log(&id, bytes::Bytes::from_static(b"line 1\nline 2\n"))
        .await
        .unwrap();
    assert_eq!(
        &o.get_log(&id).await.unwrap().unwrap()[..],
        b"line 1\nline 2\n"
    );
    assert!(matches!(
        o.get_log("../x").await,
        Err(BlobError::BadAddress(_))
    ));
}

/// Retention's view of the object store: listings with sizes and times, log sizes.
async fn objects_listing_contract(o: &Objects) {
    let data = format!("listed {}", rand::random::<u64>()).into_bytes();
    let before = std::time::SystemTime::now() - Duration::from_secs(60);
    let sha = o.put_blob(&data).await.unwrap();
    let listed = o.list_blobs().await.unwrap();
    let mine = listed.iter().find(|b| b.name == sha).expect("listed");
    assert_eq!(mine.size, data.len() as u64);
    assert!(mine.modified > before, "{:?}", mine.modified);
    assert_eq!(
        o.blob_meta(&sha).await.unwrap().unwrap().size,
        data.len() as u64
    );
    o.delete_blob(&sha).await.unwrap();
    assert!(o.blob_meta(&sha).await.unwrap().is_none());
    assert!(!o.list_blobs().await.unwrap().iter().any(|b| b.name == sha));

    let digest =
        kmodforge_api::names::SourceDigest::parse(&format!("{:064x}", rand::random::<u128>()))
            .unwrap();
    o.put_source(&digest, bytes::Bytes::from_static(b"tar"))
        .await
        .unwrap();
    let sources = o.list_sources().await.unwrap();
    let mine = sources
        .iter()
        .find(|s| s.name == digest.as_str())
        .expect("listed");
    assert_eq!(mine.size, 3);
    o.delete_source(&digest).await.unwrap();

    let id = format!("{:016x}", rand::random::<u64>());
    assert_eq!(o.log_size(&id).await.unwrap(), None);
    o.put_log(&id, bytes::Bytes::from_static(b"12345"))
        .await
        .unwrap();
    assert_eq!(o.log_size(&id).await.unwrap(), Some(5));
    o.delete_log(&id).await.unwrap();
    assert_eq!(o.log_size(&id).await.unwrap(), None);
}

#[tokio::test]
async fn objects_listing_contract_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let o = Objects::open(&ObjectsConfig::Local(dir.path().to_path_buf())).unwrap();
    objects_listing_contract(&o).await;
}

#[tokio::test]
async fn objects_listing_contract_on_s3() {
    let o = Objects::open(&ObjectsConfig::S3(s3_config())).unwrap();
    objects_listing_contract(&o).await;
}

/// A small tmpfs, unmounted (and its directory removed) on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed: this test needs root");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Fills the filesystem of `dir` with one file, until ENOSPC.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "{e}");
            break;
        }
    }
    path
}

#[tokio::test]
async fn a_full_local_store_says_so_and_keeps_nothing_half_written() {
    let fs = Tmpfs::mount("1m");
    let o = Objects::open(&ObjectsConfig::Local(fs.0.path().to_path_buf())).unwrap();
    let small = o.put_blob(b"before").await.unwrap();
    let filler = fill(fs.0.path());
    let data = vec![7u8; 256 * 1024];
    let err = o.put_blob(&data).await.unwrap_err();
    assert!(matches!(err, BlobError::Full { .. }), "{err:?}");
    assert!(err.to_string().contains("is full"), "{err}");
    assert_eq!(err.store(), Some(o.name()));
    // Nothing of it was left, listed or served; what was there still is.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    assert!(o.get_blob(&sha).await.unwrap().is_none());
    assert!(!o.list_blobs().await.unwrap().iter().any(|b| b.name == sha));
    let leftovers = walk(&fs.0.path().join("blobs"));
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert_eq!(&o.get_blob(&small).await.unwrap().unwrap()[..], b"before");
    // Space returns: the same write succeeds.
    std::fs::remove_file(filler).unwrap();
    assert_eq!(o.put_blob(&data).await.unwrap(), sha);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn objects_contract_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let o = Objects::open(&ObjectsConfig::Local(dir.path().to_path_buf())).unwrap();
    objects_contract(&o).await;
    // The embedded layout, and a blob altered on disk is never served.
    let sha = o.put_blob(b"original").await.unwrap();
    let path = dir.path().join("blobs/sha256").join(&sha[..2]).join(&sha);
    assert!(path.is_file(), "{}", path.display());
    std::fs::write(&path, b"tampered").unwrap();
    let err = o.get_blob(&sha).await.unwrap_err();
    assert!(
        err.to_string().contains("does not match its sha256"),
        "{err}"
    );
    assert!(o
        .presigned_blob_url(&sha, Duration::from_secs(60))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn objects_contract_on_s3() {
    let o = Objects::open(&ObjectsConfig::S3(s3_config())).unwrap();
    objects_contract(&o).await;
    // Two handles (two replicas): a write through one is read through the other at once.
    let other = Objects::open(&ObjectsConfig::S3(s3_config())).unwrap();
    for i in 0..10 {
        let sha = o
            .put_blob(format!("replica {i} {}", rand::random::<u64>()).as_bytes())
            .await
            .unwrap();
        assert!(other.get_blob(&sha).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn s3_presigned_urls_serve_the_blob_without_credentials_until_they_expire() {
    let o = Objects::open(&ObjectsConfig::S3(s3_config())).unwrap();
    let data = format!("presigned {}", rand::random::<u64>()).into_bytes();
    let sha = o.put_blob(&data).await.unwrap();
    let url = o
        .presigned_blob_url(&sha, Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), data);
    // A URL for another blob, made by editing this one, is refused.
    let forged = url.replace(&sha, &"0".repeat(64));
    assert_eq!(reqwest::get(&forged).await.unwrap().status(), 403);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Garage answers an expired signature 400 (AWS: 403): refused either way.
    let expired = reqwest::get(&url).await.unwrap().status();
    assert!(
        expired == 400 || expired == 403,
        "expired URL answered {expired}"
    );
}

#[tokio::test]
async fn s3_with_wrong_credentials_is_an_unavailable_error_naming_the_store() {
    let mut config = s3_config();
    config.secret_access_key = "wrong".into();
    let o = Objects::open(&ObjectsConfig::S3(config.clone())).unwrap();
    let err = o.put_blob(b"x").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("s3://{}", config.bucket)), "{text}");
    assert_eq!(err.store(), Some(o.name()));
}
