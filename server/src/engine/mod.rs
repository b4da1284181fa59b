//! The container engine seam: every call the server makes to the engine that runs
//! its job containers and holds its images and volumes.
//!
//! [`ContainerEngine`] speaks in the server's own terms (a [`ContainerConfig`], an
//! [`ExecRequest`], an [`ImageBuild`], label selectors), never in an engine
//! client's types, so that the build core (`sandbox`, `images`, `usr_volumes`,
//! `bootcheck`, `builds`) is written once against it. [`docker::DockerEngine`]
//! implements it for Docker and is the only place that knows Docker's API; a
//! Kubernetes Jobs executor would be another implementation (see
//! `docs/SCALING-k8s.md`). Tests drive the core through an in-memory fake
//! (`fake::FakeEngine`).
//!
//! The sandbox policy itself (network none, read-only root, ...) is decided by
//! `sandbox` and handed to the engine as explicit fields of [`ContainerConfig`];
//! an engine renders them, it does not choose them.

use std::collections::BTreeMap;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::Serialize;

pub mod docker;
#[cfg(test)]
pub mod fake;

/// Labels of containers, images and volumes.
pub type Labels = BTreeMap<String, String>;

/// What an engine call failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Container,
    Image,
    Volume,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Container => "container",
            ObjectKind::Image => "image",
            ObjectKind::Volume => "volume",
        })
    }
}

/// The engine client's own error, kept as the source of an [`EngineError`].
pub type EngineCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed engine call, naming the engine, the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the {engine} engine: {source}")]
    Connect {
        engine: &'static str,
        #[source]
        source: EngineCause,
    },
    #[error("{engine} {op} failed for {kind} {object}: {source}")]
    Call {
        engine: &'static str,
        /// `create`, `start`, `exec create`, `list`, `inspect`, `build`, ...
        op: &'static str,
        kind: ObjectKind,
        /// The container/image/volume name or id (`*` for a listing).
        object: String,
        #[source]
        source: EngineCause,
    },
}

/// A user and group id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct UserId {
    pub uid: u32,
    pub gid: u32,
}

/// A writable in-memory filesystem of a container (counts against its memory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tmpfs {
    pub target: String,
    pub size_bytes: u64,
    /// Permission bits of the mount's root, e.g. `0o755` or `0o1777`.
    pub mode: u32,
    /// Owner of the mount's root (`None`: root).
    pub owner: Option<UserId>,
    // Always mounted `rw,exec,nosuid,nodev`.
}

/// A named volume mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VolumeMount {
    pub volume: String,
    pub target: String,
    pub read_only: bool,
}

/// Resource limits of a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceLimits {
    /// Memory in bytes; no swap on top of it.
    pub memory_bytes: u64,
    /// Maximum number of processes.
    pub pids: i64,
    /// CPU quota, in whole CPUs (0: none; an experiment switch, never the default).
    pub cpus: u32,
}

/// The isolation switches of a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Isolation {
    /// No network at all (not even loopback to the host).
    pub no_network: bool,
    pub read_only_root: bool,
    /// Every Linux capability dropped.
    pub drop_all_capabilities: bool,
    /// `no-new-privileges`: setuid binaries and file capabilities grant nothing.
    pub no_new_privileges: bool,
}

/// Everything an engine needs to create one job container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerConfig {
    /// Unique name (`kmodforge-<role>-<job id>`).
    pub name: String,
    /// Image id (or a reference the engine resolves).
    pub image: String,
    /// The main process (it only keeps the container alive; work is done by execs).
    pub cmd: Vec<String>,
    pub user: UserId,
    pub working_dir: String,
    pub labels: Labels,
    pub tmpfs: Vec<Tmpfs>,
    pub volumes: Vec<VolumeMount>,
    pub limits: ResourceLimits,
    pub isolation: Isolation,
    /// The engine's OCI runtime to run it under; `None`: the engine's default.
    /// Only a measurement switch sets it (`KMODFORGE_EXPERIMENT_RUNTIME`).
    pub runtime: Option<String>,
}

/// A container found by [`ContainerEngine::list_containers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    /// Creation time, seconds since the Unix epoch, when the engine knows it.
    pub created: Option<i64>,
    pub labels: Labels,
}

/// Selects objects by their labels: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// (key, `None`: the label exists / `Some(v)`: it equals `v`).
    pub terms: Vec<(String, Option<String>)>,
}

impl LabelSelector {
    /// The label `key` is present, whatever its value.
    pub fn has(mut self, key: &str) -> Self {
        self.terms.push((key.to_string(), None));
        self
    }

    /// The label `key` equals `value`.
    pub fn eq(mut self, key: &str, value: &str) -> Self {
        self.terms.push((key.to_string(), Some(value.to_string())));
        self
    }

    /// True when `labels` satisfy every term.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.terms.iter().all(|(k, v)| match v {
            None => labels.contains_key(k),
            Some(v) => labels.get(k) == Some(v),
        })
    }

    /// `key` and `key=value` terms, the syntax of Docker's label filter and of a
    /// Kubernetes label selector (joined by commas).
    pub fn to_terms(&self) -> Vec<String> {
        self.terms
            .iter()
            .map(|(k, v)| match v {
                None => k.clone(),
                Some(v) => format!("{k}={v}"),
            })
            .collect()
    }
}

/// One process to run inside a running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// `NAME=value` entries added to the container's environment.
    pub env: Vec<String>,
    /// Attach stdin ([`ExecSession::stdin`] is then `Some`).
    pub stdin: bool,
}

/// A chunk of an exec's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// The writing end of an exec's stdin: shut it down to close the process's stdin.
pub type ExecStdin = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// A started exec: its output as it comes, and its stdin when attached.
/// Processes in a container's cgroup, and its limit (see [`ContainerEngine::pids_usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidsUsage {
    pub current: u64,
    /// 0: no limit.
    pub limit: u64,
}

impl PidsUsage {
    /// Within 5% (at least 2) of a set limit: a process is refused any moment.
    pub fn at_limit(&self) -> bool {
        self.limit > 0 && self.current + (self.limit / 20).max(2) >= self.limit
    }
}

pub struct ExecSession {
    /// The engine's exec id, for [`ContainerEngine::exec_exit_code`].
    pub id: String,
    /// stdout and stderr chunks until the process ends.
    pub output: BoxStream<'static, Result<ExecOutput, EngineError>>,
    pub stdin: Option<ExecStdin>,
}

/// An image description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image id (`sha256:...`).
    pub id: String,
    pub labels: Labels,
}

/// A named volume found by [`ContainerEngine::list_volumes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub labels: Labels,
}

/// An image to build from a Dockerfile in a build context.
#[derive(Clone, Debug)]
pub struct ImageBuild {
    /// The tag the built image gets.
    pub tag: String,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: String,
    /// The context, an uncompressed tar.
    pub context: Vec<u8>,
    /// Build arguments (`ARG`).
    pub args: BTreeMap<String, String>,
    /// Labels of the built image.
    pub labels: Labels,
}

/// One event of an image build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildEvent {
    /// Build output (plain text).
    Log(String),
    /// A step failed (the build's own failure, not the engine's); the last event.
    Failed {
        message: String,
        /// The failed step's exit code, when the engine reports it.
        code: Option<i64>,
    },
}

/// Every engine operation the server performs.
///
/// Containers are created stopped, then started; the server never reuses one
/// (a job's container is removed when the job ends, leftovers are swept by label).
#[async_trait::async_trait]
pub trait ContainerEngine: Send + Sync {
    /// The engine's name in messages (`Docker`).
    fn name(&self) -> &'static str;

    /// Checks that the engine answers.
    async fn ping(&self) -> Result<(), EngineError>;

    // --- Containers ---

    /// Creates a container (not started) and returns its id.
    async fn create_container(&self, config: &ContainerConfig) -> Result<String, EngineError>;

    /// The create request as this engine sends it, for the audit trace of
    /// container inputs (`--trace-container-input`).
    fn create_request_json(&self, config: &ContainerConfig) -> Vec<u8> {
        serde_json::to_vec_pretty(config).unwrap_or_default()
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError>;

    /// Whether the container is running (`Err`: it is gone or unknown).
    async fn container_running(&self, id: &str) -> Result<bool, EngineError>;

    /// The container's process count and limit right now (`None` when the engine
    /// does not report them).
    async fn pids_usage(&self, _id: &str) -> Result<Option<PidsUsage>, EngineError> {
        Ok(None)
    }

    /// Kills every process of the container at once (SIGKILL).
    async fn kill_container(&self, id: &str) -> Result<(), EngineError>;

    /// Removes the container, running or not, with its anonymous volumes.
    async fn remove_container(&self, id: &str) -> Result<(), EngineError>;

    /// Every container (running or not) whose labels match `selector`.
    async fn list_containers(
        &self,
        selector: &LabelSelector,
    ) -> Result<Vec<ContainerSummary>, EngineError>;

    // --- Exec ---

    /// Starts a process in a running container, its output attached.
    async fn exec(
        &self,
        container: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, EngineError>;

    /// The exit code of a finished exec (`None` if the engine does not know it).
    async fn exec_exit_code(&self, container: &str, exec: &str)
        -> Result<Option<i64>, EngineError>;

    // --- Images ---

    /// The image named by `reference` (a tag or an id); `Err` when absent.
    async fn inspect_image(&self, reference: &str) -> Result<ImageInfo, EngineError>;

    /// Every image whose labels match `selector`.
    async fn list_images(&self, selector: &LabelSelector) -> Result<Vec<ImageInfo>, EngineError>;

    /// Pulls `reference` from its registry (waits for the pull to finish).
    async fn pull_image(&self, reference: &str) -> Result<(), EngineError>;

    /// Builds and tags an image; the stream ends after the build, with a
    /// [`BuildEvent::Failed`] if a step failed, with `Err` if the engine did.
    fn build_image(&self, build: ImageBuild) -> BoxStream<'_, Result<BuildEvent, EngineError>>;

    // --- Volumes ---

    /// Creates a named volume (succeeds when it exists already).
    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<(), EngineError>;

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError>;

    // --- Retention (`gc`) ---

    /// Removes an image by id or tag, never by force: an image a container uses
    /// (or that more than one tag names) is refused with `Err`.
    async fn remove_image(&self, reference: &str) -> Result<(), EngineError>;

    /// Every volume whose labels match `selector`.
    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeInfo>, EngineError>;
}
