//! The Docker sandbox: one fresh, locked-down container per build job.
//!
//! Everything that touches uploaded content runs here, under the policy of
//! README's sandbox policy ("How a build runs", step 3): network `none`, read-only root filesystem with tmpfs mounts for the
//! DKMS trees and `/tmp`, a non-root user, every capability dropped,
//! `no-new-privileges`, a pids limit, memory with swap equal to memory (no swap),
//! a CPU quota matched to `make -jN`, wall-clock and no-output timeouts, and a
//! cap on the output an exec may send to its log.
//!
//! # Why exec, not bind mounts or `docker cp`
//! Sources go in and modules come out as tar streams over `docker exec` stdin and
//! stdout: `docker cp` cannot write into a read-only rootfs nor see a tmpfs, and
//! bind mounts would tie the server to the engine's filesystem (it must work from
//! inside a compose container or against a remote engine). The container's main
//! process only sleeps; each step is an exec, so one container serves unpack,
//! evaluation, build and collection, and is removed when the job ends.
//!
//! The engine is reached through [`ContainerEngine`] (Docker today, see
//! `engine::docker`): this module decides the policy and the steps, the engine
//! only carries them out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::engine::{
    ContainerConfig, ContainerEngine, ContainerSummary, EngineError, ExecOutput, ExecRequest,
    Isolation, LabelSelector, Labels, PidsUsage, ResourceLimits, Tmpfs, UserId, VolumeMount,
};

/// Label carried by every job container; the sweeper removes leftovers by it.
pub const JOB_LABEL: &str = "kmodforge.job";
/// Label naming the server instance (its data directory) that owns a container,
/// so one server's start-up sweep never removes another server's jobs.
pub const OWNER_LABEL: &str = "kmodforge.owner";
/// Label of the cluster (its database) a replica's containers belong to.
pub const CLUSTER_LABEL: &str = "kmodforge.cluster";

/// Mount points of the writable tmpfs filesystems inside a build container.
pub const DKMS_TREE: &str = "/var/lib/dkms";
/// DKMS's source_tree. The directory itself stays read-only (it holds the kernel
/// headers); each module source is a tmpfs of its own at `/usr/src/<m>-<v>`.
pub const SOURCE_TREE: &str = "/usr/src";

/// The non-root user every job container runs as (`builder` in the images).
pub const JOB_USER: UserId = UserId {
    uid: 1000,
    gid: 1000,
};
/// Size of the `/tmp` tmpfs.
const TMP_BYTES: u64 = 512 * 1024 * 1024;

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
    /// Output (stdout and stderr) a build may print, in bytes; beyond it the build
    /// is stopped ([`Stopped::OutputLimit`]). The server holds at most
    /// `log_cap_bytes` of it and a fixed tail, whatever this is.
    pub output_cap_bytes: u64,
    /// Largest module tar a build may hand back, in bytes (held in memory while
    /// its modules are checked and stored).
    pub artifact_cap_bytes: usize,
}

/// Failures of the sandbox itself (never of the module being built).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The engine failed (it names the operation and the container).
    #[error(transparent)]
    Engine(#[from] EngineError),
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
    /// It printed more than [`Exec::output_cap`] bytes.
    OutputLimit,
}

/// The result of one exec.
#[derive(Debug)]
pub struct ExecOutcome {
    /// Exit code; `None` when the exec was stopped by a timeout.
    pub exit_code: Option<i64>,
    /// Collected stdout (when `collect_stdout` was set).
    pub stdout: Vec<u8>,
    pub stopped: Option<Stopped>,
    /// The container's processes when the exec was stopped, read before the kill:
    /// a fork bomb stops the build by another limit (time, output), and once the
    /// container is killed its cgroup is gone; an exec to read `pids.events`
    /// cannot start either while the bomb holds every pid.
    pub pids_at_stop: Option<PidsUsage>,
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
    /// Bytes the exec may send to `log`; beyond them it is stopped
    /// ([`Stopped::OutputLimit`]) and the container killed.
    pub output_cap: Option<u64>,
}

/// The container engine, as the sandbox uses it.
#[derive(Clone)]
pub struct Sandbox {
    engine: Arc<dyn ContainerEngine>,
    limits: SandboxLimits,
    owner: String,
    /// The cluster this replica belongs to (labels its containers; bounds orphan sweeps).
    cluster: Option<String>,
    trace: Option<Arc<InputTrace>>,
    /// Set on shutdown: no container is created any more.
    closed: Arc<std::sync::atomic::AtomicBool>,
    experiments: Experiments,
}

/// Switches for A/B measurements of the build sandbox (issue 16, docs/BUILD-PROFILE.md),
/// read once from the environment when the sandbox is made. All off by default, and
/// none is a supported setting: each removes one suspect from a build to measure it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Experiments {
    /// `KMODFORGE_EXPERIMENT_NO_CPU_QUOTA=1`: no CFS quota (`--cpus`) on job
    /// containers; memory, pids and every isolation switch stay.
    pub no_cpu_quota: bool,
    /// `KMODFORGE_EXPERIMENT_DISK_BUILD_TREE=1`: `/var/lib/dkms` on an anonymous
    /// volume (the engine's disk, removed with the container) instead of a tmpfs
    /// that counts against the memory limit.
    pub disk_build_tree: bool,
    /// `KMODFORGE_EXPERIMENT_NO_ETC_VOLUME=1`: the image's `/etc` stays on the
    /// image's own filesystem (fuse-overlayfs here) instead of a read-only volume
    /// like `/usr`: the "before" arm of that fix.
    pub no_etc_volume: bool,
    /// `KMODFORGE_EXPERIMENT_RUNTIME=<name>`: job containers run under that OCI
    /// runtime registered with the engine (`bench/kernel-overlay-runtime.sh`
    /// registers one that is runc with the image's layers on the kernel's
    /// overlayfs instead of fuse-overlayfs: what an overlay2 engine does). Every
    /// other part of the container stays.
    pub runtime: Option<String>,
    /// `KMODFORGE_EXPERIMENT_NO_LIVE_LOG=1`: `kmf build` writes make's output to the
    /// build's `make.log` inside the container only (as DKMS does), instead of also
    /// through its `tee` to the exec stream, the server's capped log and live
    /// followers: the A/B of the log path. The server's log of such a build lacks
    /// make's lines, and a make that prints nothing for the idle limit is stopped.
    pub no_live_log: bool,
}

impl Experiments {
    /// The variables a `kmf build` exec gets from the switches.
    pub fn build_env(&self) -> Vec<String> {
        let mut env = Vec::new();
        if self.no_live_log {
            env.push("KMF_EXPERIMENT_NO_LIVE_LOG=1".into());
        }
        env
    }

    pub fn from_env() -> Self {
        let on = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        let e = Experiments {
            no_cpu_quota: on("KMODFORGE_EXPERIMENT_NO_CPU_QUOTA"),
            disk_build_tree: on("KMODFORGE_EXPERIMENT_DISK_BUILD_TREE"),
            no_etc_volume: on("KMODFORGE_EXPERIMENT_NO_ETC_VOLUME"),
            runtime: std::env::var("KMODFORGE_EXPERIMENT_RUNTIME")
                .ok()
                .filter(|r| !r.is_empty()),
            no_live_log: on("KMODFORGE_EXPERIMENT_NO_LIVE_LOG"),
        };
        if e != Experiments::default() {
            tracing::warn!(experiments = ?e, "sandbox experiments on (measurement only)");
        }
        e
    }
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
    /// container is named `kmodforge-<role>-<job id>` (in a cluster
    /// `kmodforge-<role>-<job id>-<replica>`).
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
    engine: Arc<dyn ContainerEngine>,
    pub id: String,
    trace: Option<Arc<InputTrace>>,
}

impl Sandbox {
    /// The sandbox on `engine` (connected). `owner` identifies this server
    /// instance (e.g. a hash of its data directory).
    pub fn new(engine: Arc<dyn ContainerEngine>, limits: SandboxLimits, owner: String) -> Self {
        Sandbox {
            engine,
            limits,
            owner,
            cluster: None,
            trace: None,
            closed: Arc::default(),
            experiments: Experiments::from_env(),
        }
    }

    /// Marks this sandbox's containers as the cluster's (`kmodforge.cluster`).
    pub fn with_cluster(mut self, id: String) -> Self {
        self.cluster = Some(id);
        self
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

    /// The measurement switches this sandbox was made with.
    pub fn experiments(&self) -> &Experiments {
        &self.experiments
    }

    /// The engine the sandbox runs its containers on.
    pub fn engine(&self) -> &Arc<dyn ContainerEngine> {
        &self.engine
    }

    fn container(&self, id: String, trace: Option<Arc<InputTrace>>) -> JobContainer {
        JobContainer {
            engine: self.engine.clone(),
            id,
            trace,
        }
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Creates and starts a fresh job container under the sandbox policy.
    pub async fn create(&self, spec: &ContainerSpec<'_>) -> Result<JobContainer, SandboxError> {
        let config = self.container_config(spec);
        if let Some(t) = &self.trace {
            t.record(
                &config.name,
                "create.json",
                &self.engine.create_request_json(&config),
            );
        }
        if self.is_closed() {
            return Err(SandboxError::ShuttingDown);
        }
        let id = self.engine.create_container(&config).await?;
        let container = self.container(id, self.trace.clone());
        // Closed while the engine created it: the shutdown sweep may have listed
        // the containers before this one existed.
        if self.is_closed() {
            container.remove().await;
            return Err(SandboxError::ShuttingDown);
        }
        if let Err(e) = self.engine.start_container(&container.id).await {
            container.remove().await;
            return Err(e.into());
        }
        Ok(container)
    }

    /// The sandbox policy, applied to one job container.
    fn container_config(&self, spec: &ContainerSpec<'_>) -> ContainerConfig {
        let l = &self.limits;
        let job_tmpfs = |target: String, size_bytes: u64| Tmpfs {
            target,
            size_bytes,
            mode: 0o755,
            owner: Some(JOB_USER),
        };
        let x = &self.experiments;
        let mut tmpfs = vec![Tmpfs {
            target: "/tmp".to_string(),
            size_bytes: TMP_BYTES,
            mode: 0o1777,
            owner: None,
        }];
        if !x.disk_build_tree {
            tmpfs.insert(0, job_tmpfs(DKMS_TREE.to_string(), l.tmpfs_bytes));
        }
        let mut volumes: Vec<VolumeMount> = spec
            .ro_volumes
            .iter()
            .map(|(name, target)| VolumeMount {
                volume: name.clone(),
                target: target.clone(),
                read_only: true,
            })
            .collect();
        if x.disk_build_tree {
            // An empty name: an anonymous volume (Docker copies the image's
            // /var/lib/dkms, owned by the job user, into it).
            volumes.push(VolumeMount {
                volume: String::new(),
                target: DKMS_TREE.to_string(),
                read_only: false,
            });
        }
        for dir in spec.source_dirs {
            tmpfs.push(job_tmpfs(format!("{SOURCE_TREE}/{dir}"), l.tmpfs_bytes / 4));
        }
        ContainerConfig {
            // In a cluster a build may run again on another replica (its first one
            // died) while the dead replica's container still exists: the replica
            // in the name keeps the two apart.
            name: match &self.cluster {
                None => format!("kmodforge-{}-{}", spec.role, spec.job_id),
                Some(_) => format!("kmodforge-{}-{}-{}", spec.role, spec.job_id, self.owner),
            },
            image: spec.image_id.to_string(),
            cmd: vec!["sleep".into(), "infinity".into()],
            user: JOB_USER,
            working_dir: "/tmp".into(),
            labels: {
                let mut labels = Labels::from([
                    (JOB_LABEL.to_string(), spec.job_id.to_string()),
                    ("kmodforge.role".to_string(), spec.role.to_string()),
                    (OWNER_LABEL.to_string(), self.owner.clone()),
                    ("kmodforge".to_string(), "1".to_string()),
                ]);
                if let Some(cluster) = &self.cluster {
                    labels.insert(CLUSTER_LABEL.to_string(), cluster.clone());
                }
                labels
            },
            tmpfs,
            volumes,
            limits: ResourceLimits {
                memory_bytes: l.memory_bytes,
                pids: l.pids,
                cpus: if x.no_cpu_quota { 0 } else { l.jobs },
            },
            isolation: Isolation {
                no_network: true,
                read_only_root: true,
                drop_all_capabilities: true,
                no_new_privileges: true,
            },
            runtime: x.runtime.clone(),
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

    /// Removes the job containers of other replicas of this cluster on this engine
    /// whose build no longer has a live lease held by that replica (the replica
    /// died), once they are older than `min_age`. `live` holds (build id, owner)
    /// pairs. Containers of other servers and clusters on the engine are never
    /// touched. Returns how many.
    pub async fn sweep_orphans(
        &self,
        live: &std::collections::HashSet<(String, String)>,
        min_age: std::time::Duration,
    ) -> Result<usize, SandboxError> {
        let Some(cluster) = &self.cluster else {
            return Ok(0);
        };
        let selector = LabelSelector::default()
            .has(JOB_LABEL)
            .eq(CLUSTER_LABEL, cluster);
        let list = self.engine.list_containers(&selector).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let mut removed = 0;
        for ContainerSummary {
            id,
            created,
            labels,
        } in list
        {
            let (Some(job), Some(owner)) = (labels.get(JOB_LABEL), labels.get(OWNER_LABEL)) else {
                continue;
            };
            let old = now - created.unwrap_or(now) >= min_age.as_secs() as i64;
            if owner == &self.owner || !old || live.contains(&(job.clone(), owner.clone())) {
                continue;
            }
            tracing::warn!(container = %id, build = %job, replica = %owner, "removing the container of a build whose replica lost its lease");
            self.container(id, None).remove().await;
            removed += 1;
        }
        Ok(removed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Removes every container left by an earlier run of this server (by label). Returns how many.
    pub async fn sweep(&self) -> Result<usize, SandboxError> {
        let selector = LabelSelector::default()
            .has(JOB_LABEL)
            .eq(OWNER_LABEL, &self.owner);
        let list = self.engine.list_containers(&selector).await?;
        let mut removed = 0;
        for c in list {
            self.container(c.id, None).remove().await;
            removed += 1;
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
        let request = ExecRequest {
            cmd: exec.cmd.clone(),
            env: exec.env.clone(),
            stdin: exec.stdin.is_some(),
        };
        let session = self.engine.exec(&self.id, &request).await?;
        let mut output = session.output;
        let writer = exec
            .stdin
            .clone()
            .zip(session.stdin)
            .map(|(data, mut input)| {
                tokio::spawn(async move {
                    // A failed write means the process exited early; its exit code says why.
                    let _ = input.write_all(&data).await;
                    let _ = input.shutdown().await;
                })
            });
        let mut stdout = Vec::new();
        let mut stopped = None;
        let mut logged: u64 = 0;
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
            let to_log = match item? {
                ExecOutput::Stdout(message) => match exec.collect_stdout {
                    Some(limit) => {
                        if stdout.len() + message.len() > limit {
                            self.kill().await;
                            return Err(SandboxError::OutputTooLarge {
                                cmd: cmd_text,
                                container: self.id.clone(),
                                limit,
                            });
                        }
                        stdout.extend_from_slice(&message);
                        continue;
                    }
                    None => message,
                },
                ExecOutput::Stderr(message) => message,
            };
            logged += to_log.len() as u64;
            if exec.output_cap.is_some_and(|cap| logged > cap) {
                stopped = Some(Stopped::OutputLimit);
                break;
            }
            exec.log.append(&to_log);
        }
        if let Some(w) = writer {
            w.abort();
        }
        if stopped.is_some() {
            let pids_at_stop = self.engine.pids_usage(&self.id).await.unwrap_or(None);
            // Why kill the whole container: an exec has no kill API, and the job's
            // container is disposable; the caller removes it right after.
            self.kill().await;
            return Ok(ExecOutcome {
                exit_code: None,
                stdout,
                stopped,
                pids_at_stop,
                elapsed: started.elapsed(),
            });
        }
        let exit_code = self.engine.exec_exit_code(&self.id, &session.id).await?;
        Ok(ExecOutcome {
            exit_code,
            stdout,
            stopped: None,
            pids_at_stop: None,
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
            output_cap: None,
        })
        .await
    }

    /// Which of its limits the container's cgroup recorded as hit (cgroup v1 or
    /// v2; nothing when the counters cannot be read).
    ///
    /// Why not `State.OOMKilled`: Docker sets it only when the container's main
    /// process is killed, not an exec'd `make`; the cgroup counter sees both.
    pub async fn limits_hit(&self) -> LimitsHit {
        let cmd = [
            "sh",
            "-c",
            "cd /sys/fs/cgroup && for f in memory/memory.oom_control memory.events pids/pids.events pids.events; do [ -r $f ] && echo \"file $f\" && cat $f; done",
        ];
        match self.read(&cmd, 16 * 1024).await {
            Ok(out) => LimitsHit::parse(&out.stdout),
            Err(_) => LimitsHit::default(),
        }
    }

    /// The container's processes now (`None` when the engine cannot tell).
    pub async fn pids_usage(&self) -> Option<PidsUsage> {
        self.engine.pids_usage(&self.id).await.unwrap_or(None)
    }

    /// True while the container is running (false once it was stopped or removed
    /// from outside, e.g. by an operator or another server's sweep).
    pub async fn is_running(&self) -> bool {
        self.engine
            .container_running(&self.id)
            .await
            .unwrap_or(false)
    }

    async fn kill(&self) {
        if let Err(e) = self.engine.kill_container(&self.id).await {
            tracing::warn!(container = %self.id, error = %e, "kill failed");
        }
    }

    /// Removes the container (forcefully); errors are logged, the sweeper retries.
    pub async fn remove(self) {
        if let Err(e) = self.engine.remove_container(&self.id).await {
            tracing::warn!(container = %self.id, error = %e, "remove failed");
        }
    }
}

/// A container's cgroup counters of limits hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitsHit {
    /// Processes the kernel OOM-killed (`oom_kill` of cgroup v1 `memory.oom_control`
    /// or v2 `memory.events`).
    pub oom_kills: u64,
    /// Forks refused at the pids limit (`max` of `pids.events`).
    pub pids_refused: u64,
}

impl LimitsHit {
    /// Reads `file <name>` headers each followed by that file's lines (v2's
    /// `memory.events` has a `max` line of its own, so lines count by file).
    fn parse(text: &[u8]) -> Self {
        let mut hit = LimitsHit::default();
        let mut pids_file = false;
        for line in String::from_utf8_lossy(text).lines() {
            if let Some(file) = line.strip_prefix("file ") {
                pids_file = file.ends_with("pids.events");
                continue;
            }
            let Some((key, n)) = line.split_once(' ') else {
                continue;
            };
            let n: u64 = n.trim().parse().unwrap_or(0);
            match (pids_file, key) {
                (false, "oom_kill") => hit.oom_kills += n,
                (true, "max") => hit.pids_refused += n,
                _ => {}
            }
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{stderr, stdout, Call, FakeEngine, FakeExec};

    fn limits() -> SandboxLimits {
        SandboxLimits {
            jobs: 3,
            memory_bytes: 2 << 30,
            tmpfs_bytes: 1 << 30,
            pids: 1024,
            wall_clock: Duration::from_secs(600),
            idle: Duration::from_secs(300),
            log_cap_bytes: 1 << 20,
            output_cap_bytes: 1 << 30,
            artifact_cap_bytes: 1 << 28,
        }
    }

    /// Collects what an exec sends to the log.
    #[derive(Default)]
    struct Sink(std::sync::Mutex<Vec<u8>>);
    impl OutputSink for Sink {
        fn append(&self, bytes: &[u8]) {
            self.0.lock().expect("sink").extend_from_slice(bytes);
        }
    }

    fn spec<'a>(
        job: &'a str,
        dirs: &'a [String],
        vols: &'a [(String, String)],
    ) -> ContainerSpec<'a> {
        ContainerSpec {
            job_id: job,
            role: "job",
            image_id: "sha256:builder",
            source_dirs: dirs,
            ro_volumes: vols,
        }
    }

    /// The measurement switches (off unless their variables are set) change only
    /// what they name: no CPU quota, the build tree on an anonymous volume, or one
    /// variable of `kmf build` (make's output to its file only).
    #[test]
    fn experiments_change_only_what_they_name() {
        let engine = FakeEngine::scripted(|_| FakeExec::Exit {
            output: Vec::new(),
            code: 0,
        });
        let mut sandbox = Sandbox::new(engine, limits(), "replica-a".into());
        let dirs = vec!["foo-1.0".to_string()];
        let base = sandbox.container_config(&spec("b1", &dirs, &[]));
        assert_eq!(base.runtime, None);
        sandbox.experiments = Experiments {
            no_cpu_quota: true,
            disk_build_tree: true,
            no_etc_volume: true,
            runtime: Some("kmf-kernel-overlay".into()),
            no_live_log: true,
        };
        let x = sandbox.container_config(&spec("b1", &dirs, &[]));
        assert_eq!(x.limits.cpus, 0);
        assert_eq!(x.limits.memory_bytes, base.limits.memory_bytes);
        assert_eq!(x.limits.pids, base.limits.pids);
        assert_eq!(x.isolation, base.isolation);
        assert_eq!(x.user, base.user);
        assert_eq!(x.runtime.as_deref(), Some("kmf-kernel-overlay"));
        assert!(!x.tmpfs.iter().any(|t| t.target == DKMS_TREE));
        assert_eq!(x.tmpfs.len(), base.tmpfs.len() - 1);
        assert_eq!(
            x.volumes,
            [VolumeMount {
                volume: String::new(),
                target: DKMS_TREE.into(),
                read_only: false,
            }]
        );
        assert!(Experiments::default().build_env().is_empty());
        assert_eq!(
            sandbox.experiments.build_env(),
            ["KMF_EXPERIMENT_NO_LIVE_LOG=1"]
        );
    }

    /// A job container under the policy: created and started, one exec with stdin
    /// and collected stdout, removed; nothing left behind.
    #[tokio::test]
    async fn job_container_lifecycle_under_the_policy() {
        let engine = FakeEngine::scripted(|req| {
            if req.cmd[0] == "kmf" {
                FakeExec::Exit {
                    output: vec![stdout("dump"), stderr("warning: x\n")],
                    code: 3,
                }
            } else {
                FakeExec::Exit {
                    output: Vec::new(),
                    code: 0,
                }
            }
        });
        let sandbox = Sandbox::new(engine.clone(), limits(), "replica-a".into());
        let dirs = vec!["foo-1.0".to_string()];
        let vols = vec![(
            "kmodforge-usr-abc-usr-lib".to_string(),
            "/usr/lib".to_string(),
        )];
        let container = sandbox
            .create(&spec("b123", &dirs, &vols))
            .await
            .expect("created");

        let calls = engine.calls();
        let Call::Create(c) = &calls[0] else {
            panic!("first call is a create: {calls:?}")
        };
        assert_eq!(calls[1], Call::Start(container.id.clone()));
        assert_eq!(c.name, "kmodforge-job-b123");
        assert_eq!(c.image, "sha256:builder");
        assert_eq!(c.cmd, ["sleep", "infinity"]);
        // The policy.
        assert_eq!(
            c.isolation,
            Isolation {
                no_network: true,
                read_only_root: true,
                drop_all_capabilities: true,
                no_new_privileges: true,
            }
        );
        assert_eq!(
            c.user,
            UserId {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(c.working_dir, "/tmp");
        assert_eq!(
            c.limits,
            ResourceLimits {
                memory_bytes: 2 << 30,
                pids: 1024,
                cpus: 3,
            }
        );
        let tmpfs: Vec<(&str, u64, u32, Option<UserId>)> = c
            .tmpfs
            .iter()
            .map(|t| (t.target.as_str(), t.size_bytes, t.mode, t.owner))
            .collect();
        assert_eq!(
            tmpfs,
            [
                ("/var/lib/dkms", 1 << 30, 0o755, Some(JOB_USER)),
                ("/tmp", 512 << 20, 0o1777, None),
                ("/usr/src/foo-1.0", 1 << 28, 0o755, Some(JOB_USER)),
            ]
        );
        assert_eq!(
            c.volumes,
            [VolumeMount {
                volume: "kmodforge-usr-abc-usr-lib".into(),
                target: "/usr/lib".into(),
                read_only: true,
            }]
        );
        let labels: Vec<(&str, &str)> = c
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("kmodforge", "1"),
                ("kmodforge.job", "b123"),
                ("kmodforge.owner", "replica-a"),
                ("kmodforge.role", "job"),
            ]
        );
        assert!(engine.is_running(&container.id));

        let log = Sink::default();
        let out = container
            .exec(Exec {
                cmd: vec!["kmf".into(), "prepare".into()],
                env: vec!["KMF_JOBS=3".into()],
                stdin: Some(Bytes::from_static(b"source tar")),
                collect_stdout: Some(1024),
                log: &log,
                timeouts: Some((Duration::from_secs(5), Duration::from_secs(5))),
                output_cap: None,
            })
            .await
            .expect("exec");
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout, b"dump");
        assert_eq!(out.stopped, None);
        assert_eq!(*log.0.lock().expect("log"), b"warning: x\n");
        assert_eq!(engine.stdin_of(0), b"source tar");
        assert!(engine.calls().contains(&Call::Exec {
            container: container.id.clone(),
            request: ExecRequest {
                cmd: vec!["kmf".into(), "prepare".into()],
                env: vec!["KMF_JOBS=3".into()],
                stdin: true,
            },
        }));
        assert!(container.is_running().await);

        let id = container.id.clone();
        container.remove().await;
        assert_eq!(engine.calls().last(), Some(&Call::Remove(id)));
        assert!(engine.containers().is_empty());
    }

    /// Stdout beyond the cap is an error, not a truncated answer.
    #[tokio::test]
    async fn collected_stdout_is_capped() {
        let engine = FakeEngine::scripted(|_| FakeExec::Exit {
            output: vec![stdout("0123456789")],
            code: 0,
        });
        let sandbox = Sandbox::new(engine.clone(), limits(), "r".into());
        let container = sandbox
            .create(&spec("b1", &[], &[]))
            .await
            .expect("created");
        let err = container
            .read(&["cat", "big"], 4)
            .await
            .expect_err("too large");
        assert!(
            matches!(err, SandboxError::OutputTooLarge { limit: 4, .. }),
            "{err}"
        );
        container.remove().await;
    }

    /// A silent exec is stopped by the no-output limit, and the container killed.
    #[tokio::test]
    async fn idle_exec_kills_the_container() {
        let engine = FakeEngine::scripted(|_| FakeExec::Hang);
        let sandbox = Sandbox::new(engine.clone(), limits(), "r".into());
        let container = sandbox
            .create(&spec("b1", &[], &[]))
            .await
            .expect("created");
        let out = container
            .exec(Exec {
                cmd: vec!["make".into()],
                env: Vec::new(),
                stdin: None,
                collect_stdout: None,
                log: &Discard,
                timeouts: Some((Duration::from_secs(30), Duration::from_millis(50))),
                output_cap: None,
            })
            .await
            .expect("exec");
        assert_eq!(out.stopped, Some(Stopped::Idle));
        assert_eq!(out.exit_code, None);
        assert!(engine.calls().contains(&Call::Kill(container.id.clone())));
        assert!(!container.is_running().await);
        container.remove().await;
    }

    /// An exec that prints past its output cap is stopped and the container
    /// killed; the log holds what came before the cap, nothing after it.
    #[tokio::test]
    async fn output_past_the_cap_stops_the_exec() {
        let engine = FakeEngine::scripted(|_| FakeExec::Exit {
            output: vec![stderr("0123"), stdout("4567"), stderr("89")],
            code: 0,
        });
        let sandbox = Sandbox::new(engine.clone(), limits(), "r".into());
        let container = sandbox
            .create(&spec("b1", &[], &[]))
            .await
            .expect("created");
        let log = Sink::default();
        let out = container
            .exec(Exec {
                cmd: vec!["make".into()],
                env: Vec::new(),
                stdin: None,
                collect_stdout: None,
                log: &log,
                timeouts: None,
                output_cap: Some(9),
            })
            .await
            .expect("exec");
        assert_eq!(out.stopped, Some(Stopped::OutputLimit));
        assert_eq!(out.exit_code, None);
        assert_eq!(*log.0.lock().expect("log"), b"01234567");
        assert!(engine.calls().contains(&Call::Kill(container.id.clone())));
        container.remove().await;
    }

    /// Sweeps go by label: `sweep` takes this owner's containers only,
    /// `sweep_orphans` the other owners' whose builds have no live lease.
    #[tokio::test]
    async fn sweeps_select_by_owner_label() {
        let engine = FakeEngine::new();
        let a =
            Sandbox::new(engine.clone(), limits(), "replica-a".into()).with_cluster("c1".into());
        let b =
            Sandbox::new(engine.clone(), limits(), "replica-b".into()).with_cluster("c1".into());
        // Another cluster's replica and a standalone server on the same engine.
        let other =
            Sandbox::new(engine.clone(), limits(), "replica-x".into()).with_cluster("c2".into());
        let alone = Sandbox::new(engine.clone(), limits(), "standalone".into());
        let a1 = a.create(&spec("a1", &[], &[])).await.expect("a1").id;
        let a2 = a.create(&spec("a2", &[], &[])).await.expect("a2").id;
        let b1 = b.create(&spec("b1", &[], &[])).await.expect("b1").id;
        let b2 = b.create(&spec("b2", &[], &[])).await.expect("b2").id;
        let x1 = other.create(&spec("x1", &[], &[])).await.expect("x1").id;
        let s1 = alone.create(&spec("s1", &[], &[])).await.expect("s1").id;

        assert_eq!(a.sweep().await.expect("sweep"), 2);
        assert!(engine.calls().contains(&Call::List(
            LabelSelector::default()
                .has(JOB_LABEL)
                .eq(OWNER_LABEL, "replica-a")
        )));
        let left = engine.containers();
        assert!(!left.contains(&a1) && !left.contains(&a2), "{left:?}");
        assert!(left.contains(&b1) && left.contains(&b2), "{left:?}");
        let others = [x1, s1];

        // b2's build still has a live lease held by replica-b; b1's has none.
        let live = std::collections::HashSet::from([("b2".to_string(), "replica-b".to_string())]);
        // Too young: nothing removed.
        assert_eq!(
            a.sweep_orphans(&live, Duration::from_secs(3600))
                .await
                .expect("orphans"),
            0
        );
        assert_eq!(
            a.sweep_orphans(&live, Duration::ZERO)
                .await
                .expect("orphans"),
            1
        );
        let left = engine.containers();
        assert!(!left.contains(&b1) && left.contains(&b2), "{left:?}");
        // A replica never sweeps its own containers as orphans, nor another
        // cluster's or a standalone server's on the same engine.
        assert_eq!(
            b.sweep_orphans(&Default::default(), Duration::ZERO)
                .await
                .expect("orphans"),
            0
        );
        let left = engine.containers();
        assert!(
            left.contains(&b2) && others.iter().all(|c| left.contains(c)),
            "{left:?}"
        );
        assert_eq!(
            alone
                .sweep_orphans(&Default::default(), Duration::ZERO)
                .await
                .expect("orphans"),
            0,
            "a server outside any cluster sweeps no orphans"
        );
    }

    /// A closed sandbox creates no container.
    #[tokio::test]
    async fn closed_sandbox_creates_nothing() {
        let engine = FakeEngine::new();
        let sandbox = Sandbox::new(engine.clone(), limits(), "r".into());
        sandbox.close();
        let err = sandbox
            .create(&spec("b1", &[], &[]))
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, SandboxError::ShuttingDown));
        assert!(engine.calls().is_empty());
    }

    #[test]
    fn limit_counter_parsing() {
        let hit = |oom_kills, pids_refused| LimitsHit {
            oom_kills,
            pids_refused,
        };
        let v1 = b"file memory/memory.oom_control\noom_kill_disable 0\nunder_oom 0\noom_kill 1\n\
            file pids/pids.events\nmax 7\n";
        assert_eq!(LimitsHit::parse(v1), hit(1, 7));
        // v2's memory.events counts memory.max hits as `max` too: not forks.
        let v2 = b"file memory.events\nlow 0\nhigh 0\nmax 5\noom 1\noom_kill 2\nfile pids.events\nmax 0\n";
        assert_eq!(LimitsHit::parse(v2), hit(2, 0));
        assert_eq!(
            LimitsHit::parse(b"file memory.events\noom_kill 0\n"),
            hit(0, 0)
        );
    }
}
