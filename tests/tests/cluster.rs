//! Several replicas on one PostgreSQL database and one S3 bucket (real servers:
//! `scripts/services.sh`), one Docker engine: single-flight across replicas, a
//! replica killed mid-build, read-after-write between replicas.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::future::join_all;
use kmodforge_api::wire::{BuildResponse, BuildState, ErrorKind};
use kmodforge_e2e::cluster::{Cluster, TEST_LEASE};
use kmodforge_e2e::{
    error_body, fixture, request, serial, tar_gz_dir, DockerProbe, ServerOpts, StopMode, KERNEL_A,
};
use reqwest::StatusCode;

fn cluster_opts() -> ServerOpts {
    ServerOpts::default().env("KMODFORGE_LEASE_SECS", TEST_LEASE.as_secs())
}

fn count(cluster: &Cluster, sql: &str) -> Result<u64> {
    cluster.db.query(sql)?.parse().context("a count")
}

/// One build record, one artifact and an empty queue: nothing was built twice or left behind.
fn one_build_one_artifact(cluster: &Cluster) -> Result<()> {
    let (builds, artifacts, jobs) = (
        count(cluster, "SELECT count(*) FROM builds")?,
        count(cluster, "SELECT count(*) FROM artifacts")?,
        count(cluster, "SELECT count(*) FROM jobs")?,
    );
    ensure!(
        (builds, artifacts, jobs) == (1, 1, 0),
        "expected one build record, one artifact and an empty queue: {builds}, {artifacts}, {jobs}"
    );
    Ok(())
}

/// The hello module built after a 25 s pause (a build to kill a replica in), as a
/// source tree in a temp dir: the hello fixture with another dkms.conf.
fn slow_hello() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for f in ["Makefile", "kmf_hello.c"] {
        std::fs::copy(fixture("hello").join(f), dir.path().join(f))?;
    }
    std::fs::write(
        dir.path().join("dkms.conf"),
        "PACKAGE_NAME=\"kmf-slow-hello\"\nPACKAGE_VERSION=\"1.0\"\n\
         MAKE[0]=\"echo 'slow build: pausing 25 s'; sleep 25; make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build\"\n\
         BUILT_MODULE_NAME[0]=\"kmf_hello\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\n",
    )?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_requests_spread_over_three_replicas_build_once() -> Result<()> {
    let _serial = serial().await;
    let docker = DockerProbe::connect().await?;
    let cluster = Cluster::start(3, cluster_opts()).await?;
    let clients = (0..3)
        .map(|i| cluster.client(i))
        .collect::<Result<Vec<_>>>()?;
    clients[0]
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    // Written through r1, seen by r2 and r3 at once.
    for c in &clients[1..] {
        let names: Vec<String> = c
            .modules()
            .await?
            .iter()
            .map(|m| m.name.to_string())
            .collect();
        ensure!(
            names == ["kmf-hello"],
            "a module written through r1 is listed by every replica: {names:?}"
        );
    }
    let req = request("kmf-hello", "1.0", KERNEL_A)?;
    let work = async {
        let posts = (0..100).map(|i| {
            let c = clients[i % 3].clone();
            let req = req.clone();
            async move {
                let (_, r) = c.build(&req).await?;
                let done = if r.build.state.is_final() {
                    r
                } else {
                    c.wait(&r.build.id).await?
                };
                anyhow::Ok(done)
            }
        });
        join_all(posts).await
    };
    let (answers, created) = docker.count_created(work).await?;
    let finals: Vec<BuildResponse> = answers.into_iter().collect::<Result<_>>()?;

    let ids: HashSet<&str> = finals.iter().map(|r| r.build.id.as_str()).collect();
    ensure!(
        ids.len() == 1,
        "every request must get the one build: {ids:?}"
    );
    let id = *ids.iter().next().context("no build")?;
    let mut keys = HashSet::new();
    for done in &finals {
        ensure!(
            done.build.state == BuildState::Succeeded,
            "{:?}",
            done.build.failure
        );
        keys.insert(
            done.artifact
                .as_ref()
                .context("succeeded without manifest")?
                .key
                .clone(),
        );
    }
    ensure!(keys.len() == 1, "one artifact for all: {keys:?}");
    let containers: Vec<_> = created
        .iter()
        .filter(|c| c.job.as_deref() == Some(id))
        .collect();
    ensure!(
        containers.len() == 1,
        "exactly one container fleet-wide, saw {containers:?}"
    );
    one_build_one_artifact(&cluster)?;
    // Every replica serves the same module bytes, from the shared bucket.
    let mut kos = HashSet::new();
    for c in &clients {
        kos.insert(
            c.bytes(&format!(
                "/v1/artifacts/kmf-hello/1.0/{KERNEL_A}/files/kmf_hello.ko"
            ))
            .await?,
        );
    }
    ensure!(kos.len() == 1, "the replicas serve different bytes");
    // And the log of the build, wherever it ran, from every replica.
    for c in &clients {
        let log = c.build_log(id).await?;
        ensure!(
            log.contains("build succeeded"),
            "log of {id} from a replica:\n{log}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_build_loses_nothing() -> Result<()> {
    let _serial = serial().await;
    let docker = DockerProbe::connect().await?;
    let mut cluster = Cluster::start(2, cluster_opts().stop_mode(StopMode::Kill)).await?;
    let (r1, r2) = (cluster.client(0)?, cluster.client(1)?);
    let slow = slow_hello()?;
    r1.add_module("kmf-slow-hello", "1.0", slow.path()).await?;
    let req = request("kmf-slow-hello", "1.0", KERNEL_A)?;
    // r1 takes the build (its row first); a client of r2 joins it.
    let (_, first) = r1.build(&req).await?;
    let id = first.build.id.clone();
    let (_, joined) = r2.build(&req).await?;
    ensure!(
        joined.build.id == id,
        "r2 must join r1's build: {} vs {id}",
        joined.build.id
    );
    // Wait until the build runs in r1's container, then kill r1 (no clean-up at all).
    r2.wait_for(&id, Duration::from_secs(600), |r| {
        r.build.state == BuildState::Running
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = docker.containers_of_job(&id).await?;
        if !live.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "build {id} never got a container"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another replica refuses to delete the module while the build runs on r1.
    let resp = r2
        .http()
        .delete(r2.url("/v1/modules/kmf-slow-hello/1.0"))
        .send()
        .await?;
    let (status, body) = error_body(resp).await?;
    ensure!(
        status == StatusCode::CONFLICT && body.error.kind == ErrorKind::Busy,
        "delete during a build on another replica: {status} {body:?}"
    );
    let killed_at = Instant::now();
    cluster.replicas[0].kill9();

    // The client on r2 gets the result: r2 claims the build when r1's lease ends
    // and runs it again under the same id.
    let done = r2.wait(&id).await?;
    let took = killed_at.elapsed();
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}",
        done.build.failure
    );
    ensure!(
        took < TEST_LEASE + Duration::from_secs(120),
        "the build finished {took:?} after the kill"
    );
    eprintln!("replica death to build finished elsewhere: {took:?}");
    let log = r2.build_log(&id).await?;
    ensure!(
        log.contains("replica r2 claimed the build (attempt 2)"),
        "log:\n{log}"
    );
    one_build_one_artifact(&cluster)?;
    // r1's orphaned container is removed by r2, which shares the engine.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = docker.containers_of_job(&id).await?;
        if left.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "containers left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A replica started again with the same id serves the result too.
    let r1_again = cluster.start_replica("r1").await?;
    let again = r1_again.client_with(Some(&cluster.admin_token()?))?;
    ensure!(again.get_build(&id).await?.build.state == BuildState::Succeeded);
    cluster.replicas[0] = r1_again;
    Ok(())
}

/// `scripts/services.sh CMD` (the test services: PostgreSQL and Garage).
fn services(cmd: &str) -> Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let out = std::process::Command::new(script).arg(cmd).output()?;
    ensure!(
        out.status.success(),
        "scripts/services.sh {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Brings Garage back however the test ends.
struct ResumeS3;

impl Drop for ResumeS3 {
    fn drop(&mut self) {
        let _ = services("resume-s3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_store_outage_and_a_database_restart_lose_nothing() -> Result<()> {
    let _serial = serial().await;
    let cluster = Cluster::start(2, cluster_opts()).await?;
    let (r1, r2) = (cluster.client(0)?, cluster.client(1)?);
    r1.add_module("kmf-hello", "1.0", &fixture("hello")).await?;
    let (_, b) = r1.build(&request("kmf-hello", "1.0", KERNEL_A)?).await?;
    let id = b.build.id.clone();
    ensure!(r1.wait(&id).await?.build.state == BuildState::Succeeded);
    let ko = format!("/v1/artifacts/kmf-hello/1.0/{KERNEL_A}/files/kmf_hello.ko");
    let before = r2.bytes(&ko).await?;

    // The object store goes away for 30 s.
    services("pause-s3")?;
    let resume = ResumeS3;
    let outage = Instant::now();
    for c in [&r1, &r2] {
        let (status, body) = error_body(c.get(&ko).await?).await?;
        ensure!(
            status == StatusCode::SERVICE_UNAVAILABLE
                && body.error.kind == ErrorKind::StoreUnavailable
                && body.error.message.contains("s3://"),
            "a download while the store is down: {status} {body:?}"
        );
    }
    let upload = tar_gz_dir(&fixture("uname-makefile"))?;
    let (status, body) =
        error_body(r1.put_module("kmf-uname", "0.1", upload.clone()).await?).await?;
    ensure!(
        status == StatusCode::SERVICE_UNAVAILABLE && body.error.message.contains("s3://"),
        "an upload while the store is down: {status} {body:?}"
    );
    ensure!(
        r2.modules().await?.len() == 1,
        "the refused upload left a record"
    );
    // The records still answer.
    ensure!(r2.get_build(&id).await?.build.state == BuildState::Succeeded);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    drop(resume);

    // Back: the same bytes, uploads and builds work again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match r2.bytes(&ko).await {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                eprintln!("store not back yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    ensure!(after == before, "the module changed across the outage");
    r1.add_module("kmf-uname", "0.1", &fixture("uname-makefile"))
        .await?;
    let (_, b) = r2.build(&request("kmf-uname", "0.1", KERNEL_A)?).await?;
    let done = r2.wait(&b.build.id).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}",
        done.build.failure
    );

    // PostgreSQL restarts: the replicas reconnect by themselves.
    services("restart-pg")?;
    for c in [&r1, &r2] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.modules().await {
                Ok(m) if m.len() == 2 => break,
                Ok(m) => anyhow::bail!("after the restart: {} modules", m.len()),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("database not back yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.context("the replica did not reconnect to PostgreSQL")),
            }
        }
    }
    ensure!(r1.get_build(&id).await?.build.state == BuildState::Succeeded);
    Ok(())
}

const AGENTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_replica_while_fifty_agents_sync() -> Result<()> {
    use kmodforge_e2e::agent::{agent_binary, AgentRoot};
    use kmodforge_e2e::cluster::LoadBalancer;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let _serial = serial().await;
    let mut cluster = Cluster::start(3, cluster_opts()).await?;
    let r1 = cluster.client(0)?;
    r1.add_module("kmf-hello", "1.0", &fixture("hello")).await?;
    let (_, b) = r1.build(&request("kmf-hello", "1.0", KERNEL_A)?).await?;
    ensure!(r1.wait(&b.build.id).await?.build.state == BuildState::Succeeded);
    let token = cluster.replicas[0].token("fleet", "read", &[]).await?;
    let lb = LoadBalancer::start(cluster.replicas.iter().map(|r| r.addr()).collect()).await?;
    let url = lb.url();
    let bin = agent_binary()?;
    let mut roots = Vec::new();
    for _ in 0..AGENTS {
        let root = AgentRoot::new(&[KERNEL_A])?;
        root.write_config(
            (url.as_str(), token.as_str()),
            KERNEL_A,
            &[("kmf-hello", "1.0")],
        )?;
        roots.push(root);
    }
    let done = Arc::new(AtomicBool::new(false));
    let (syncs, retried) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let agents: Vec<_> = roots
        .iter()
        .map(|root| {
            let (bin, config) = (bin.clone(), root.config.clone());
            let (done, syncs, retried) = (done.clone(), syncs.clone(), retried.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                // Sync again and again until the restart is over, then once more.
                let mut last = false;
                loop {
                    last |= done.load(Ordering::SeqCst);
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let out = std::process::Command::new(&bin)
                            .arg("--config")
                            .arg(&config)
                            .args(["sync", "--kernel", KERNEL_A])
                            .env_remove("KMODFORGE_AGENT_CONFIG")
                            .env_remove("KMODFORGE_SERVER")
                            .output()?;
                        if out.status.success() {
                            break;
                        }
                        retried.fetch_add(1, Ordering::SeqCst);
                        ensure!(
                            attempt < 5,
                            "an agent failed 5 times in a row: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    syncs.fetch_add(1, Ordering::SeqCst);
                    if last {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();

    // One replica at a time: SIGTERM (drain), start again, back into the balancer.
    let restarted = Instant::now();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let old = cluster.replicas[i].addr();
        cluster.replicas[i].terminate();
        let again = cluster.start_replica(&format!("r{}", i + 1)).await?;
        lb.replace(old, again.addr());
        cluster.replicas[i] = again;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::SeqCst);
    for a in futures_util::future::join_all(agents).await {
        a??;
    }
    eprintln!(
        "rolling restart of 3 replicas in {:.1} s: {} agent syncs succeeded, {} retried after a failure",
        restarted.elapsed().as_secs_f64(),
        syncs.load(Ordering::SeqCst),
        retried.load(Ordering::SeqCst)
    );
    for root in &roots {
        ensure!(
            root.tree(KERNEL_A)
                .join("updates/dkms/kmf_hello.ko")
                .is_file(),
            "every agent installed the module"
        );
    }
    ensure!(
        count(&cluster, "SELECT count(*) FROM builds")? == 1,
        "no build during the restart"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_replica_queues_and_a_builder_replica_builds() -> Result<()> {
    let _serial = serial().await;
    let docker = DockerProbe::connect().await?;
    let mut cluster = Cluster::start(1, cluster_opts()).await?;
    let api = cluster
        .start_replica_with("api1", &[("KMODFORGE_ROLE", "api")])
        .await?;
    cluster.replicas.push(api);
    let (builder, api) = (cluster.client(0)?, cluster.client(1)?);
    api.add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let work = async {
        let (_, b) = api.build(&request("kmf-hello", "1.0", KERNEL_A)?).await?;
        api.wait(&b.build.id).await
    };
    let (done, created) = docker.count_created(work).await?;
    let done = done?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "{:?}",
        done.build.failure
    );
    let id = done.build.id.as_str();
    let ours: Vec<_> = created
        .iter()
        .filter(|c| c.job.as_deref() == Some(id))
        .collect();
    ensure!(ours.len() == 1, "one container: {ours:?}");
    let log = builder.build_log(id).await?;
    ensure!(
        log.contains("replica r1 claimed the build (attempt 1)"),
        "log:\n{log}"
    );
    ensure!(
        api.build_log(id).await? == log,
        "the same log through the api replica"
    );
    ensure!(
        count(&cluster, "SELECT count(*) FROM jobs")? == 0,
        "the queue is empty"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presigned_downloads_go_to_the_object_store_and_agents_follow_them() -> Result<()> {
    use kmodforge_e2e::agent::{agent_binary, AgentRoot};

    let _serial = serial().await;
    let cluster = Cluster::start(
        1,
        cluster_opts().env("KMODFORGE_PRESIGN_DOWNLOADS_SECS", 60),
    )
    .await?;
    let r1 = cluster.client(0)?;
    r1.add_module("kmf-hello", "1.0", &fixture("hello")).await?;
    let (_, b) = r1.build(&request("kmf-hello", "1.0", KERNEL_A)?).await?;
    let done = r1.wait(&b.build.id).await?;
    let manifest = done.artifact.context("no artifact")?;
    // The server answers with a redirect to a presigned URL of the bucket...
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let ko = format!("/v1/artifacts/kmf-hello/1.0/{KERNEL_A}/files/kmf_hello.ko");
    let resp = no_redirects
        .get(r1.url(&ko))
        .bearer_auth(cluster.admin_token()?)
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::TEMPORARY_REDIRECT,
        "{}",
        resp.status()
    );
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .context("no Location")?
        .to_str()?
        .to_string();
    let endpoint = kmodforge_e2e::cluster::service_env("KMODFORGE_TEST_S3_ENDPOINT")?;
    ensure!(
        location.starts_with(&endpoint) && location.contains("X-Amz-Signature="),
        "{location}"
    );
    // ...that serves the bytes without any credentials, which match the signed manifest.
    let bytes = reqwest::get(&location).await?.bytes().await?;
    let sha = hex_sha256(&bytes);
    ensure!(
        manifest.files[0].sha256 == sha,
        "presigned bytes differ from the manifest"
    );
    // An agent installs through it.
    let token = cluster.replicas[0].token("fleet", "read", &[]).await?;
    let url = cluster.replicas[0].base_url();
    let root = AgentRoot::new(&[KERNEL_A])?;
    root.write_config(
        (url.as_str(), token.as_str()),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
    )?;
    let out = std::process::Command::new(agent_binary()?)
        .arg("--config")
        .arg(&root.config)
        .args(["sync", "--kernel", KERNEL_A])
        .env_remove("KMODFORGE_AGENT_CONFIG")
        .env_remove("KMODFORGE_SERVER")
        .output()?;
    ensure!(
        out.status.success(),
        "agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = std::fs::read(root.tree(KERNEL_A).join("updates/dkms/kmf_hello.ko"))?;
    ensure!(
        hex_sha256(&installed) == sha,
        "the agent installed other bytes"
    );
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
