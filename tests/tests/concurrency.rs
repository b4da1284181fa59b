//! Single flight: identical requests that arrive together share one build and one
//! container.

use anyhow::{ensure, Context, Result};
use futures_util::future::join_all;
use kmodforge_api::wire::BuildState;
use kmodforge_e2e::{fixture, request, Env, ServerOpts, KERNEL_A};
use reqwest::StatusCode;

const REQUESTS: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn ten_identical_requests_share_one_build() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    // A name of its own so that nothing is cached: module name and dkms.conf's
    // PACKAGE_NAME (kmf-hello) may differ.
    let (name, version) = ("kmf-hello-conc", "1.0");
    env.client
        .add_module(name, version, &fixture("hello"))
        .await?;
    let req = request(name, version, KERNEL_A)?;

    let work = async {
        let posts = (0..REQUESTS).map(|_| env.client.build(&req));
        let answers = join_all(posts).await;
        let mut finals = Vec::new();
        for answer in &answers {
            let (_, r) = answer.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            finals.push(env.client.wait(&r.build.id).await?);
        }
        anyhow::Ok((answers, finals))
    };
    let (out, created) = env.docker.count_created(work).await?;
    let (answers, finals) = out?;

    let mut ids = Vec::new();
    for answer in answers {
        let (status, r) = answer?;
        ensure!(
            status == StatusCode::ACCEPTED && !r.cached,
            "every request must join the running build: {status} {r:?}"
        );
        ids.push(r.build.id);
    }
    ids.dedup();
    ensure!(
        ids.len() == 1,
        "all requests must get one build id: {ids:?}"
    );
    let id = &ids[0];

    let mut keys = Vec::new();
    for done in &finals {
        ensure!(
            done.build.state == BuildState::Succeeded,
            "{:?}",
            done.build.failure
        );
        let m = done
            .artifact
            .as_ref()
            .context("succeeded without manifest")?;
        keys.push(m.key.clone());
    }
    keys.dedup();
    ensure!(
        keys.len() == 1,
        "all requests must end with one artifact: {keys:?}"
    );

    let mine = env.own(&created).await?;
    ensure!(
        mine.len() == 1 && mine[0].job.as_deref() == Some(id.as_str()),
        "exactly one container (of build {id}) expected, saw {mine:?}"
    );
    env.assert_no_job_containers().await?;
    Ok(())
}
