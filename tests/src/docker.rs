//! The Docker engine as the tests see it: job containers created, left over, and
//! their configuration.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;

/// The label every job container carries (`kmodforge=1`).
const KMODFORGE_LABEL: &str = "kmodforge=1";
/// The label naming a job container's build (`kmodforge.job=<build id>`).
const JOB_LABEL: &str = "kmodforge.job";
/// How long create events may take to arrive after the watched work ended. The
/// daemon publishes an event before the create call returns; this only covers the
/// delivery over the events stream.
const EVENT_DRAIN: Duration = Duration::from_secs(1);

/// A container creation seen on the events stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedContainer {
    pub id: String,
    pub name: Option<String>,
    /// Its `kmodforge.job` label: the build id.
    pub job: Option<String>,
}

/// An existing job container.
#[derive(Clone, Debug)]
pub struct JobContainer {
    pub id: String,
    pub names: Vec<String>,
    pub job: Option<String>,
    pub state: Option<String>,
}

/// A connection to the local Docker engine.
#[derive(Clone)]
pub struct DockerProbe {
    docker: Docker,
}

impl DockerProbe {
    /// Connects and negotiates the API version; fails (never skips) when the engine
    /// is unreachable.
    pub async fn connect() -> Result<Self> {
        let unreachable = |e: bollard::errors::Error| {
            anyhow!(
                "the Docker engine is unreachable ({e}); the kmodforge end-to-end tests \
                 need a running Docker engine (DOCKER_HOST or /var/run/docker.sock) and \
                 never skip"
            )
        };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(DockerProbe { docker })
    }

    /// A probe of the engine `docker` is connected to (e.g. a [`crate::engine::PrivateEngine`]).
    pub fn with(docker: Docker) -> Self {
        DockerProbe { docker }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Runs `work` and returns its output with every container labelled
    /// `kmodforge=1` that was created while it ran.
    ///
    /// The events subscription starts with `since` = the time before `work`, so that
    /// events between the subscription request and its start are replayed, and stops
    /// [`EVENT_DRAIN`] after `work` ends.
    pub async fn count_created<T>(
        &self,
        work: impl Future<Output = T>,
    ) -> Result<(T, Vec<CreatedContainer>)> {
        self.count_created_with(work, None).await
    }

    /// [`DockerProbe::count_created`], also sending each container to `tap` as it is seen.
    async fn count_created_with<T>(
        &self,
        work: impl Future<Output = T>,
        tap: Option<tokio::sync::mpsc::UnboundedSender<CreatedContainer>>,
    ) -> Result<(T, Vec<CreatedContainer>)> {
        let since = docker_time(SystemTime::now());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(None));
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["create".to_string()]),
            ("label".to_string(), vec![KMODFORGE_LABEL.to_string()]),
        ]);
        let options = EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build();
        let mut events = self.docker.events(Some(options));
        let (seen2, failed2) = (seen.clone(), failed.clone());
        let collector = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(e) => {
                        let actor = e.actor.unwrap_or_default();
                        let attrs = actor.attributes.unwrap_or_default();
                        let c = CreatedContainer {
                            id: actor.id.unwrap_or_default(),
                            name: attrs.get("name").cloned(),
                            job: attrs.get(JOB_LABEL).cloned(),
                        };
                        if let Some(t) = &tap {
                            let _ = t.send(c.clone());
                        }
                        lock(&seen2).push(c);
                    }
                    Err(e) => {
                        *lock(&failed2) = Some(e.to_string());
                        break;
                    }
                }
            }
        });
        let out = work.await;
        tokio::time::sleep(EVENT_DRAIN).await;
        collector.abort();
        if let Some(e) = lock(&failed).take() {
            bail!("Docker events stream failed: {e}");
        }
        let created = lock(&seen).clone();
        Ok((out, created))
    }

    /// [`DockerProbe::count_created`], and each container inspected as soon as its
    /// create event arrives (jobs remove their containers when they end): what the
    /// engine was told about it (env, mounts, command, labels).
    pub async fn inspect_created<T>(
        &self,
        work: impl Future<Output = T>,
    ) -> Result<(T, Vec<(CreatedContainer, Option<ContainerInspectResponse>)>)> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CreatedContainer>();
        let docker = self.docker.clone();
        let seen2 = seen.clone();
        let inspector = tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let inspect = docker.inspect_container(&c.id, None).await.ok();
                lock(&seen2).push((c, inspect));
            }
        });
        let (out, created) = self.count_created_with(work, Some(tx)).await?;
        // The sender is gone with count_created_with's collector: the inspector drains.
        let _ = tokio::time::timeout(Duration::from_secs(30), inspector).await;
        let mut all = lock(&seen).clone();
        for c in created {
            if !all.iter().any(|(s, _)| s.id == c.id) {
                all.push((c, None));
            }
        }
        Ok((out, all))
    }

    /// Every container (running or not) labelled `kmodforge=1`.
    pub async fn kmodforge_containers(&self) -> Result<Vec<JobContainer>> {
        self.list(KMODFORGE_LABEL.to_string()).await
    }

    /// The containers of build `id` (label `kmodforge.job=<id>`).
    pub async fn containers_of_job(&self, id: &str) -> Result<Vec<JobContainer>> {
        self.list(format!("{JOB_LABEL}={id}")).await
    }

    async fn list(&self, label: String) -> Result<Vec<JobContainer>> {
        let filters = HashMap::from([("label".to_string(), vec![label])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .context("listing containers")?;
        Ok(list
            .into_iter()
            .map(|c| JobContainer {
                id: c.id.unwrap_or_default(),
                names: c.names.unwrap_or_default(),
                job: c.labels.unwrap_or_default().get(JOB_LABEL).cloned(),
                state: c.state.map(|s| s.to_string()),
            })
            .collect())
    }

    /// `docker inspect` of one container.
    pub async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse> {
        self.docker
            .inspect_container(id, None)
            .await
            .with_context(|| format!("inspecting container {id}"))
    }
}

/// The sandbox policy every job container follows (the README's "How a build runs", step 3), as Docker reports
/// it: labels naming build `job`, uid 1000, network `none`, read-only root, no
/// privileges or capabilities, no-new-privileges, no devices, a pids limit, no swap,
/// and nothing of the host bound in. What differs between a build's container and
/// a boot check's (limits, tmpfs, volumes) is checked by the caller.
pub fn ensure_sandbox_policy(inspect: &ContainerInspectResponse, job: &str) -> Result<()> {
    let config = inspect.config.as_ref().context("Config")?;
    let labels = config.labels.clone().unwrap_or_default();
    ensure!(
        labels.get("kmodforge").map(String::as_str) == Some("1"),
        "{labels:?}"
    );
    ensure!(
        labels.get("kmodforge.job").map(String::as_str) == Some(job),
        "{labels:?}"
    );
    ensure!(
        config.user.as_deref() == Some("1000:1000"),
        "User {:?}",
        config.user
    );
    let host = inspect.host_config.as_ref().context("HostConfig")?;
    ensure!(
        host.network_mode.as_deref() == Some("none"),
        "NetworkMode {:?}",
        host.network_mode
    );
    ensure!(
        host.readonly_rootfs == Some(true),
        "ReadonlyRootfs {:?}",
        host.readonly_rootfs
    );
    ensure!(host.privileged != Some(true), "Privileged");
    let cap_drop = host.cap_drop.clone().unwrap_or_default();
    ensure!(cap_drop == ["ALL"], "CapDrop {cap_drop:?}");
    ensure!(
        host.cap_add.clone().unwrap_or_default().is_empty(),
        "CapAdd {:?}",
        host.cap_add
    );
    let security = host.security_opt.clone().unwrap_or_default();
    ensure!(
        security.iter().any(|o| o.starts_with("no-new-privileges")),
        "SecurityOpt {security:?}"
    );
    ensure!(
        host.devices.clone().unwrap_or_default().is_empty(),
        "Devices {:?}",
        host.devices
    );
    ensure!(
        host.pids_limit.is_some_and(|p| p > 0),
        "PidsLimit {:?}",
        host.pids_limit
    );
    ensure!(
        host.memory.is_some_and(|m| m > 0) && host.memory_swap == host.memory,
        "Memory {:?}, MemorySwap {:?}",
        host.memory,
        host.memory_swap
    );
    ensure!(
        host.binds.clone().unwrap_or_default().is_empty(),
        "Binds {:?}",
        host.binds
    );
    ensure!(
        host.volumes_from.clone().unwrap_or_default().is_empty(),
        "VolumesFrom {:?}",
        host.volumes_from
    );
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A time in the events API's `since` format: `<seconds>.<nanoseconds>`.
fn docker_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}
