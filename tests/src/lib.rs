//! `kmodforge-e2e`: end-to-end tests of kmodforge against the real Docker engine,
//! real Debian kernel headers and the real `modinfo`.
//!
//! The harness starts the real `kmodforge-server` binary on a free loopback port with
//! a temporary data directory ([`Server`]), talks to it over HTTP ([`Client`]), and
//! watches the Docker engine ([`DockerProbe`]) to count, list and inspect the job
//! containers the server creates. [`agent`] runs the real `kmodforge-agent` binary
//! against temporary host roots (and a fake server for answers the real one never gives).
//!
//! # Rules the tests follow
//! - Nothing skips: a test that needs Docker fails with a message saying the engine is
//!   unreachable ([`DockerProbe::connect`]).
//! - Tests run one at a time ([`Env::start`] holds a process-wide lock), so a container
//!   count of one test never includes another test's builds. Counts are further limited
//!   to builds the server under test knows ([`Env::own`]), so another program using
//!   the same engine does not disturb them either.
//! - Every server gets a fresh data directory unless a test hands one over on purpose
//!   (restart), so every first build is a cache miss.

pub mod agent;
pub mod archive;
pub mod bins;
mod client;
pub mod cluster;
pub mod cutproxy;
pub mod debhost;
mod docker;
pub mod engine;
mod fixtures;
pub mod grubvm;
pub mod minihttp;
mod modinfo;
pub mod promtext;
mod server;
pub mod signature;
pub mod tls;
pub mod tmpfs;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::{BuildRequest, BuildResponse, BuildState, Failure, FailureKind};
use tokio::sync::{Mutex, MutexGuard};

pub use client::{error_body, Client};
pub use docker::{ensure_sandbox_policy, CreatedContainer, DockerProbe, JobContainer};
pub use fixtures::{debian_dkms_source, e2e_fixture, fixture, tar_entries, tar_gz_dir, target_dir};
pub use modinfo::{check_downloads, real_modinfo};
pub use server::{DataDir, Server, ServerOpts, StopMode};
pub use tls::TestPki;

pub use kmodforge_api::wire;

/// A kernel of Debian bookworm's archive.
pub const KERNEL_A: &str = "6.1.0-47-amd64";
/// The newest `6.1.0-*-amd64` in Debian bookworm's archive when these tests were
/// written (`apt-cache search linux-headers-6.1.0`); hard-coded so that runs are
/// comparable.
pub const KERNEL_B: &str = "6.1.0-56-amd64";

/// How long a build may take in a test: the first build of a kernel's builder image
/// on a fresh machine takes minutes (the image stays in Docker afterwards).
pub const BUILD_WAIT: Duration = Duration::from_secs(20 * 60);

/// `{"name", "version", "kernel"}` (arch and options left to the server's defaults).
pub fn request(name: &str, version: &str, kernel: &str) -> Result<BuildRequest> {
    Ok(BuildRequest {
        name: ModuleName::parse(name).context("module name")?,
        version: ModuleVersion::parse(version).context("module version")?,
        kernel: KernelRelease::parse(kernel).context("kernel release")?,
        arch: None,
        options: Default::default(),
        boot_check: None,
        sign: None,
    })
}

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Takes the process-wide test lock (released when the guard drops).
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// One test's world: the lock, the Docker engine, a running server and its client.
pub struct Env {
    pub docker: DockerProbe,
    pub server: Server,
    pub client: Client,
    // Declared last: dropped after the server, so the next test starts only once
    // this test's server is gone.
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    /// Takes the test lock, connects to Docker (failing clearly when it is down) and
    /// starts a server with `opts`.
    pub async fn start(opts: ServerOpts) -> Result<Env> {
        let serial = serial().await;
        let docker = DockerProbe::connect().await?;
        let server = Server::start(opts).await?;
        let client = server.client();
        Ok(Env {
            docker,
            server,
            client,
            _serial: serial,
        })
    }

    /// Replaces the server by a new one started with `opts` (the old one is stopped
    /// first, as its `StopMode` says).
    pub async fn restart(&mut self, opts: ServerOpts) -> Result<()> {
        self.server.stop();
        self.server = Server::start(opts).await?;
        self.client = self.server.client();
        Ok(())
    }

    /// The containers of `created` that belong to builds of the server under test.
    pub async fn own(&self, created: &[CreatedContainer]) -> Result<Vec<CreatedContainer>> {
        let mut mine = Vec::new();
        for c in created {
            if let Some(job) = &c.job {
                if self.client.has_build(job).await? {
                    mine.push(c.clone());
                }
            }
        }
        Ok(mine)
    }

    /// Fails when a container of build `id` still exists.
    pub async fn assert_no_container_of(&self, id: &str) -> Result<()> {
        let left = self.docker.containers_of_job(id).await?;
        ensure!(
            left.is_empty(),
            "build {id} ended but its container(s) are still there: {left:?}"
        );
        Ok(())
    }

    /// Fails when any container of a build this server knows still exists.
    pub async fn assert_no_job_containers(&self) -> Result<()> {
        let mut left = Vec::new();
        for c in self.docker.kmodforge_containers().await? {
            let known = match &c.job {
                Some(job) => self.client.has_build(job).await?,
                None => false,
            };
            if known {
                left.push(c);
            }
        }
        ensure!(left.is_empty(), "job containers left behind: {left:?}");
        Ok(())
    }

    /// Fails unless the failed build `done` has no artifact, and none is served for
    /// `name`/`version` on `kernel`.
    pub async fn assert_no_artifact(
        &self,
        done: &BuildResponse,
        name: &str,
        version: &str,
        kernel: &str,
    ) -> Result<()> {
        ensure!(done.artifact.is_none(), "no artifact expected: {done:?}");
        let resp = self
            .client
            .get(&format!("/v1/artifacts/{name}/{version}/{kernel}"))
            .await?;
        ensure!(
            resp.status() == reqwest::StatusCode::NOT_FOUND,
            "{name}/{version}: GET artifact answered {}",
            resp.status()
        );
        Ok(())
    }
}

/// The failure of a build that must have failed with `kind` (the message quotes
/// the record and its log tail otherwise).
pub fn expect_failure(done: &BuildResponse, kind: FailureKind) -> Result<&Failure> {
    let f = done
        .build
        .failure
        .as_ref()
        .with_context(|| format!("build {} has no failure: {done:?}", done.build.id))?;
    ensure!(
        done.build.state == BuildState::Failed && f.kind == kind,
        "build {} of {}: expected failed/{kind:?}, got {:?} {:?}: {}\n{}",
        done.build.id,
        done.build.name,
        done.build.state,
        f.kind,
        f.message,
        f.log_tail
    );
    Ok(f)
}
