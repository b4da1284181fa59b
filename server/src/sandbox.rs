//! The Docker sandbox: one fresh, locked-down container per build job.
//!
//! Everything that touches uploaded content runs here, under the policy of
//! DESIGN.md: network `none`, read-only root filesystem with tmpfs mounts for the
//! DKMS trees and `/tmp`, a non-root user, every capability dropped,
//! `no-new-privileges`, a pids limit, memory with swap equal to memory (no swap),
//! a CPU quota matched to `make -jN`, wall-clock and no-output timeouts.
//!
//! # Why exec, not bind mounts or `docker cp`
//! Sources go in and modules come out as tar streams over `docker exec` stdin and
//! stdout: `docker cp` cannot write into a read-only rootfs nor see a tmpfs, and
//! bind mounts would tie the server to the engine's filesystem (it must work from
//! inside a compose container or against a remote engine). The container's main
//! process only sleeps; each step is an exec, so one container serves unpack,
//! evaluation, build and collection, and is removed when the job ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

/// Label carried by every job container; the sweeper removes leftovers by it.
pub const JOB_LABEL: &str = "kmodforge.job";
/// Label naming the server instance (its data directory) that owns a container,
/// so one server's start-up sweep never removes another server's jobs.
pub const OWNER_LABEL: &str = "kmodforge.owner";

/// Mount points of the writable tmpfs filesystems inside a build container.
pub const DKMS_TREE: &str = "/var/lib/dkms";
/// DKMS's source_tree. The directory itself stays read-only (it holds the kernel
/// headers); each module source is a tmpfs of its own at `/usr/src/<m>-<v>`.
pub const SOURCE_TREE: &str = "/usr/src";

/// Resource limits of one build container. Defaults live in `Config`.
#[derive(Clone, Debug)]
pub struct SandboxLimits {
    /// `make -jN`; the CPU quota is N CPUs.
    pub jobs: u32,
    /// Memory limit in bytes; swap is set to the same value (no swap).
    pub memory_bytes: u64,
    /// Size of the `/var/lib/dkms` tmpfs in bytes (counts against memory).
    pub tmpfs_bytes: u64,
    /// Maximum number of processes.
    pub pids: i64,
    /// Wall-clock limit of the build step.
    pub wall_clock: Duration,
    /// Limit on the time without any output during the build step.
    pub idle: Duration,
    /// Cap of the stored build log, in bytes.
    pub log_cap_bytes: usize,
}

/// Failures of the sandbox itself (never of the module being built).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot reach the Docker engine: {0}")]
    Connect(#[source] bollard::errors::Error),
    #[error("Docker {op} failed for container {container}: {source}")]
    Docker {
        op: &'static str,
        container: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("exec {cmd:?} in container {container} produced more than {limit} bytes on stdout")]
    OutputTooLarge {
        cmd: String,
        container: String,
        limit: usize,
    },
    #[error("the server is shutting down: no new containers")]
    ShuttingDown,
}

/// Where an exec's stdout/stderr go.
pub trait OutputSink: Send + Sync {
    fn append(&self, bytes: &[u8]);
}

/// Output discarded.
pub struct Discard;
impl OutputSink for Discard {
    fn append(&self, _bytes: &[u8]) {}
}

/// Why an exec was stopped before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    WallClock,
    Idle,
}

/// The result of one exec.
#[derive(Debug)]
pub struct ExecOutcome {
    /// Exit code; `None` when the exec was stopped by a timeout.
    pub exit_code: Option<i64>,
    /// Collected stdout (when `collect_stdout` was set).
    pub stdout: Vec<u8>,
    pub stopped: Option<Stopped>,
    pub elapsed: Duration,
}

/// One exec inside a job container.
pub struct Exec<'a> {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Written to the process's stdin, which is then closed.
    pub stdin: Option<Bytes>,
    /// Collect stdout into `ExecOutcome::stdout` up to this many bytes
    /// (`None`: stdout goes to `log`).
    pub collect_stdout: Option<usize>,
    /// Receives stderr, and stdout when it is not collected.
    pub log: &'a dyn OutputSink,
    /// Wall-clock and no-output limits; `None` for short service steps.
    pub timeouts: Option<(Duration, Duration)>,
}

/// The Docker engine, as the sandbox uses it.
#[derive(Clone)]
pub struct Sandbox {
    docker: Docker,
    limits: SandboxLimits,
    owner: String,
    trace: Option<Arc<InputTrace>>,
    /// Set on shutdown: no container is created any more.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// An audit copy of everything the server hands to containers: each container's
/// create request, and each exec's command, environment and stdin, one file each
/// (`--trace-container-input DIR`). For checking that no secret (a signing key)
/// ever enters a sandbox; it writes every uploaded source tree too, so it is off
/// by default.
pub struct InputTrace {
    dir: std::path::PathBuf,
    seq: AtomicU64,
}

impl InputTrace {
    fn record(&self, container: &str, what: &str, bytes: &[u8]) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let short: String = container.chars().take(24).collect();
        let path = self.dir.join(format!("{n:06}-{short}-{what}"));
        if let Err(e) = std::fs::write(&path, bytes) {
            tracing::warn!(path = %path.display(), error = %e, "container input trace not written");
        }
    }
}

/// What a job container is made from.
pub struct ContainerSpec<'a> {
    /// The build the container works for (its `kmodforge.job` label).
    pub job_id: &'a str,
    /// What it does: `job` (a build's steps) or `check` (a boot check); the
    /// container is named `kmodforge-<role>-<job id>`.
    pub role: &'a str,
    pub image_id: &'a str,
    /// `<m>-<v>` of each source tree the job unpacks: each gets a writable tmpfs
    /// at `/usr/src/<m>-<v>`, where DKMS keeps it (packages hard-code the path).
    pub source_dirs: &'a [String],
    /// Named volumes mounted read-only: (volume name, target), see `usr_volumes`.
    pub ro_volumes: &'a [(String, String)],
}

/// A running job container. Call [`JobContainer::remove`] when done.
pub struct JobContainer {
    docker: Docker,
    pub id: String,
    trace: Option<Arc<InputTrace>>,
}

impl Sandbox {
    /// Connects to the local engine (`DOCKER_HOST` honoured) and negotiates the API version.
    /// `owner` identifies this server instance (e.g. a hash of its data directory).
    pub async fn connect(limits: SandboxLimits, owner: String) -> Result<Self, SandboxError> {
        let docker = Docker::connect_with_defaults().map_err(SandboxError::Connect)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(SandboxError::Connect)?;
        docker.ping().await.map_err(SandboxError::Connect)?;
        Ok(Sandbox {
            docker,
            limits,
            owner,
            trace: None,
            closed: Arc::default(),
        })
    }

    /// Writes an audit copy of every container input under `dir` (see [`InputTrace`]).
    pub fn with_input_trace(mut self, dir: std::path::PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        self.trace = Some(Arc::new(InputTrace {
            dir,
            seq: AtomicU64::new(0),
        }));
        Ok(self)
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Creates and starts a fresh job container under the sandbox policy.
    pub async fn create(&self, spec: &ContainerSpec<'_>) -> Result<JobContainer, SandboxError> {
        let name = format!("kmodforge-{}-{}", spec.role, spec.job_id);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = self.container_body(spec);
        if let Some(t) = &self.trace {
            t.record(
                &name,
                "create.json",
                &serde_json::to_vec_pretty(&body).unwrap_or_default(),
            );
        }
        if self.is_closed() {
            return Err(SandboxError::ShuttingDown);
        }
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| SandboxError::Docker {
                op: "create",
                container: name.clone(),
                source,
            })?;
        let container = JobContainer {
            docker: self.docker.clone(),
            id: created.id,
            trace: self.trace.clone(),
        };
        // Closed while the engine created it: the shutdown sweep may have listed
        // the containers before this one existed.
        if self.is_closed() {
            container.remove().await;
            return Err(SandboxError::ShuttingDown);
        }
        if let Err(source) = self.docker.start_container(&container.id, None).await {
            container.remove().await;
            return Err(SandboxError::Docker {
                op: "start",
                container: name,
                source,
            });
        }
        Ok(container)
    }

    fn container_body(&self, spec: &ContainerSpec<'_>) -> ContainerCreateBody {
        let l = &self.limits;
        let tmpfs_opts =
            |size: u64| format!("rw,exec,nosuid,nodev,size={size},uid=1000,gid=1000,mode=0755");
        let mut tmpfs = HashMap::from([
            (DKMS_TREE.to_string(), tmpfs_opts(l.tmpfs_bytes)),
            (
                "/tmp".to_string(),
                "rw,exec,nosuid,nodev,size=536870912,mode=1777".to_string(),
            ),
        ]);
        for dir in spec.source_dirs {
            tmpfs.insert(
                format!("{SOURCE_TREE}/{dir}"),
                tmpfs_opts(l.tmpfs_bytes / 4),
            );
        }
        let host_config = HostConfig {
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            pids_limit: Some(l.pids),
            memory: Some(l.memory_bytes as i64),
            memory_swap: Some(l.memory_bytes as i64),
            nano_cpus: Some(i64::from(l.jobs) * 1_000_000_000),
            tmpfs: Some(tmpfs),
            mounts: Some(
                spec.ro_volumes
                    .iter()
                    .map(|(name, target)| Mount {
                        target: Some(target.clone()),
                        source: Some(name.clone()),
                        typ: Some(MountType::VOLUME),
                        read_only: Some(true),
                        ..Default::default()
                    })
                    .collect(),
            ),
            auto_remove: Some(false),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image_id.to_string()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            user: Some("1000:1000".into()),
            working_dir: Some("/tmp".into()),
            network_disabled: Some(true),
            labels: Some(HashMap::from([
                (JOB_LABEL.to_string(), spec.job_id.to_string()),
                ("kmodforge.role".to_string(), spec.role.to_string()),
                (OWNER_LABEL.to_string(), self.owner.clone()),
                ("kmodforge".to_string(), "1".to_string()),
            ])),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Creates no container from now on (shutdown); [`Self::sweep`] then removes the rest.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// This sandbox's owner (the replica id on its containers' labels).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Removes the job containers of other replicas on this engine whose build no
    /// longer has a live lease held by that replica (the replica died), once they
    /// are older than `min_age`. `live` holds (build id, owner) pairs. Returns how many.
    pub async fn sweep_orphans(
        &self,
        live: &std::collections::HashSet<(String, String)>,
        min_age: std::time::Duration,
    ) -> Result<usize, SandboxError> {
        let filters = HashMap::from([("label".to_string(), vec![JOB_LABEL.to_string()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| SandboxError::Docker {
                op: "list",
                container: "*".into(),
                source,
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let mut removed = 0;
        for c in list {
            let labels = c.labels.unwrap_or_default();
            let (Some(id), Some(job), Some(owner)) =
                (c.id, labels.get(JOB_LABEL), labels.get(OWNER_LABEL))
            else {
                continue;
            };
            let old = now - c.created.unwrap_or(now) >= min_age.as_secs() as i64;
            if owner == &self.owner || !old || live.contains(&(job.clone(), owner.clone())) {
                continue;
            }
            tracing::warn!(container = %id, build = %job, replica = %owner, "removing the container of a build whose replica lost its lease");
            JobContainer {
                docker: self.docker.clone(),
                id,
                trace: None,
            }
            .remove()
            .await;
            removed += 1;
        }
        Ok(removed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Removes every container left by an earlier run of this server (by label). Returns how many.
    pub async fn sweep(&self) -> Result<usize, SandboxError> {
        let owner = format!("{OWNER_LABEL}={}", self.owner);
        let filters = HashMap::from([("label".to_string(), vec![JOB_LABEL.to_string(), owner])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| SandboxError::Docker {
                op: "list",
                container: "*".into(),
                source,
            })?;
        let mut removed = 0;
        for c in list {
            if let Some(id) = c.id {
                JobContainer {
                    docker: self.docker.clone(),
                    id,
                    trace: None,
                }
                .remove()
                .await;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl JobContainer {
    /// Runs one exec to completion (or until a timeout kills the container).
    pub async fn exec(&self, exec: Exec<'_>) -> Result<ExecOutcome, SandboxError> {
        let started = Instant::now();
        let cmd_text = exec.cmd.join(" ");
        if let Some(t) = &self.trace {
            let head = format!("cmd: {cmd_text}\nenv:\n{}\n", exec.env.join("\n"));
            t.record(&self.id, "exec.txt", head.as_bytes());
            if let Some(stdin) = &exec.stdin {
                t.record(&self.id, "stdin", stdin);
            }
        }
        let options = CreateExecOptions {
            cmd: Some(exec.cmd.clone()),
            env: Some(exec.env.clone()),
            attach_stdin: Some(exec.stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(&self.id, options)
            .await
            .map_err(|e| self.err("exec create", e))?;
        let started_exec = self
            .docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(|e| self.err("exec start", e))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started_exec
        else {
            unreachable!("start_exec without detach always attaches")
        };
        let writer = exec.stdin.clone().map(|data| {
            tokio::spawn(async move {
                // A failed write means the process exited early; its exit code says why.
                let _ = input.write_all(&data).await;
                let _ = input.shutdown().await;
            })
        });
        let mut stdout = Vec::new();
        let mut stopped = None;
        loop {
            let wait = exec
                .timeouts
                .map(|(wall, idle)| idle.min(wall.saturating_sub(started.elapsed())));
            let next = match wait {
                Some(w) => match tokio::time::timeout(w, output.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        let wall = exec.timeouts.map(|t| t.0).unwrap_or_default();
                        stopped = Some(if started.elapsed() >= wall {
                            Stopped::WallClock
                        } else {
                            Stopped::Idle
                        });
                        break;
                    }
                },
                None => output.next().await,
            };
            let Some(item) = next else { break };
            let item = item.map_err(|e| self.err("exec output", e))?;
            use bollard::container::LogOutput;
            match item {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    match exec.collect_stdout {
                        Some(limit) => {
                            if stdout.len() + message.len() > limit {
                                return Err(SandboxError::OutputTooLarge {
                                    cmd: cmd_text,
                                    container: self.id.clone(),
                                    limit,
                                });
                            }
                            stdout.extend_from_slice(&message);
                        }
                        None => exec.log.append(&message),
                    }
                }
                LogOutput::StdErr { message } => exec.log.append(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        if let Some(w) = writer {
            w.abort();
        }
        if stopped.is_some() {
            // Why kill the whole container: an exec has no kill API, and the job's
            // container is disposable; the caller removes it right after.
            self.kill().await;
            return Ok(ExecOutcome {
                exit_code: None,
                stdout,
                stopped,
                elapsed: started.elapsed(),
            });
        }
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| self.err("exec inspect", e))?;
        Ok(ExecOutcome {
            exit_code: inspect.exit_code,
            stdout,
            stopped: None,
            elapsed: started.elapsed(),
        })
    }

    /// Runs a short command and returns its stdout (capped), ignoring stderr.
    pub async fn read(&self, cmd: &[&str], limit: usize) -> Result<ExecOutcome, SandboxError> {
        self.exec(Exec {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            stdin: None,
            collect_stdout: Some(limit),
            log: &Discard,
            timeouts: Some((Duration::from_secs(60), Duration::from_secs(60))),
        })
        .await
    }

    /// True when the container's memory cgroup recorded an OOM kill.
    ///
    /// Why not `State.OOMKilled`: Docker sets it only when the container's main
    /// process is killed, not an exec'd `make`; the cgroup counter sees both.
    pub async fn oom_killed(&self) -> bool {
        let cmd = [
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events 2>/dev/null",
        ];
        match self.read(&cmd, 4096).await {
            Ok(out) => parse_oom_kill_count(&out.stdout) > 0,
            Err(_) => false,
        }
    }

    /// True while the container is running (false once it was stopped or removed
    /// from outside, e.g. by an operator or another server's sweep).
    pub async fn is_running(&self) -> bool {
        match self.docker.inspect_container(&self.id, None).await {
            Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn kill(&self) {
        let options = KillContainerOptionsBuilder::default()
            .signal("KILL")
            .build();
        if let Err(e) = self.docker.kill_container(&self.id, Some(options)).await {
            tracing::warn!(container = %self.id, error = %e, "kill failed");
        }
    }

    /// Removes the container (forcefully); errors are logged, the sweeper retries.
    pub async fn remove(self) {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(&self.id, Some(options)).await {
            tracing::warn!(container = %self.id, error = %e, "remove failed");
        }
    }

    fn err(&self, op: &'static str, source: bollard::errors::Error) -> SandboxError {
        SandboxError::Docker {
            op,
            container: self.id.clone(),
            source,
        }
    }
}

/// Reads `oom_kill N` from cgroup v1 `memory.oom_control` or v2 `memory.events`.
fn parse_oom_kill_count(text: &[u8]) -> u64 {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counter_parsing() {
        let v1 = b"oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(parse_oom_kill_count(v1), 1);
        let v2 = b"low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(parse_oom_kill_count(v2), 2);
        assert_eq!(parse_oom_kill_count(b"oom_kill_disable 0\n"), 0);
    }
}
