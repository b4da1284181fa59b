//! [`ContainerEngine`] on a Docker engine, through bollard: the only module that
//! knows Docker's API.

use std::collections::HashMap;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptions, RemoveVolumeOptions, StatsOptionsBuilder,
};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{
    BuildEvent, ContainerConfig, ContainerEngine, ContainerSummary, EngineError, ExecOutput,
    ExecRequest, ExecSession, ImageBuild, ImageInfo, LabelSelector, Labels, ObjectKind, PidsUsage,
    Tmpfs, VolumeInfo,
};

const ENGINE: &str = "Docker";

/// The local Docker engine (`DOCKER_HOST` honoured).
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
}

fn call(
    op: &'static str,
    kind: ObjectKind,
    object: &str,
    e: bollard::errors::Error,
) -> EngineError {
    EngineError::Call {
        engine: ENGINE,
        op,
        kind,
        object: object.to_string(),
        source: Box::new(e),
    }
}

fn container_err<'a>(
    op: &'static str,
    id: &'a str,
) -> impl FnOnce(bollard::errors::Error) -> EngineError + 'a {
    move |e| call(op, ObjectKind::Container, id, e)
}

fn image_err<'a>(
    op: &'static str,
    reference: &'a str,
) -> impl FnOnce(bollard::errors::Error) -> EngineError + 'a {
    move |e| call(op, ObjectKind::Image, reference, e)
}

fn volume_err<'a>(
    op: &'static str,
    name: &'a str,
) -> impl FnOnce(bollard::errors::Error) -> EngineError + 'a {
    move |e| call(op, ObjectKind::Volume, name, e)
}

fn connect_err(e: bollard::errors::Error) -> EngineError {
    EngineError::Connect {
        engine: ENGINE,
        source: Box::new(e),
    }
}

impl DockerEngine {
    /// Connects to the local engine (`DOCKER_HOST` honoured), negotiates the API
    /// version and pings it.
    pub async fn connect() -> Result<Self, EngineError> {
        let docker = Docker::connect_with_defaults().map_err(connect_err)?;
        let docker = docker.negotiate_version().await.map_err(connect_err)?;
        let engine = DockerEngine { docker };
        engine.ping().await?;
        Ok(engine)
    }

    /// The engine's storage driver (`docker info`'s `Driver`), for the start-up hint
    /// about fuse-overlayfs (see [`fuse_overlayfs_hint`]).
    pub async fn storage_driver(&self) -> Result<Option<String>, EngineError> {
        let info = self.docker.info().await.map_err(connect_err)?;
        Ok(info.driver)
    }

    /// A client from the environment without contacting the engine (tests).
    #[cfg(test)]
    fn offline() -> Self {
        DockerEngine {
            docker: Docker::connect_with_defaults().expect("client from the environment"),
        }
    }
}

/// What the server says at start-up about an engine whose storage driver is
/// fuse-overlayfs (rootless and some VM setups): each process a build starts costs
/// requests to that driver's single-threaded daemon, most of them POSIX ACL
/// look-ups that its `noacl` mount option removes (README, "Engines with
/// fuse-overlayfs"; docs/BUILD-PROFILE.md, "Phase 3"). `None` for every other driver.
pub fn fuse_overlayfs_hint(driver: &str) -> Option<&'static str> {
    (driver == "fuse-overlayfs").then_some(
        "the Docker engine's storage driver is fuse-overlayfs: every file a build opens outside \
         the /usr and /etc volumes waits for its single-threaded daemon, mostly for POSIX ACL \
         look-ups unless the engine mounts it with -o noacl (small builds 12 to 30 % faster \
         where measured; README, \"Engines with fuse-overlayfs\")",
    )
}

fn hash_map(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn labels_of(map: Option<HashMap<String, String>>) -> Labels {
    map.unwrap_or_default().into_iter().collect()
}

fn label_filters(selector: &LabelSelector) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), selector.to_terms())])
}

/// Docker's tmpfs options: `rw,exec,nosuid,nodev,size=N[,uid=U,gid=G],mode=0755`.
fn tmpfs_options(t: &Tmpfs) -> String {
    let owner = t
        .owner
        .map(|o| format!(",uid={},gid={}", o.uid, o.gid))
        .unwrap_or_default();
    format!(
        "rw,exec,nosuid,nodev,size={}{owner},mode={:04o}",
        t.size_bytes, t.mode
    )
}

/// The create request of a container.
fn container_body(c: &ContainerConfig) -> ContainerCreateBody {
    let iso = &c.isolation;
    let memory = c.limits.memory_bytes as i64;
    let host_config = HostConfig {
        network_mode: iso.no_network.then(|| "none".into()),
        readonly_rootfs: Some(iso.read_only_root),
        cap_drop: iso.drop_all_capabilities.then(|| vec!["ALL".into()]),
        security_opt: iso
            .no_new_privileges
            .then(|| vec!["no-new-privileges".into()]),
        pids_limit: Some(c.limits.pids),
        memory: Some(memory),
        // Swap equal to memory: no swap.
        memory_swap: Some(memory),
        // 0: no quota (only KMODFORGE_EXPERIMENT_NO_CPU_QUOTA=1 sets it).
        nano_cpus: (c.limits.cpus > 0).then(|| i64::from(c.limits.cpus) * 1_000_000_000),
        tmpfs: Some(
            c.tmpfs
                .iter()
                .map(|t| (t.target.clone(), tmpfs_options(t)))
                .collect(),
        ),
        mounts: Some(
            c.volumes
                .iter()
                .map(|v| Mount {
                    target: Some(v.target.clone()),
                    // An empty name: an anonymous volume.
                    source: (!v.volume.is_empty()).then(|| v.volume.clone()),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(v.read_only),
                    ..Default::default()
                })
                .collect(),
        ),
        auto_remove: Some(false),
        runtime: c.runtime.clone(),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(c.image.clone()),
        cmd: Some(c.cmd.clone()),
        user: Some(format!("{}:{}", c.user.uid, c.user.gid)),
        working_dir: Some(c.working_dir.clone()),
        network_disabled: iso.no_network.then_some(true),
        labels: Some(hash_map(&c.labels)),
        host_config: Some(host_config),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl ContainerEngine for DockerEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await.map_err(connect_err)?;
        Ok(())
    }

    async fn create_container(&self, config: &ContainerConfig) -> Result<String, EngineError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&config.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), container_body(config))
            .await
            .map_err(container_err("create", &config.name))?;
        Ok(created.id)
    }

    fn create_request_json(&self, config: &ContainerConfig) -> Vec<u8> {
        serde_json::to_vec_pretty(&container_body(config)).unwrap_or_default()
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(container_err("start", id))
    }

    async fn container_running(&self, id: &str) -> Result<bool, EngineError> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(container_err("inspect", id))?;
        Ok(c.state.and_then(|s| s.running).unwrap_or(false))
    }

    async fn pids_usage(&self, id: &str) -> Result<Option<PidsUsage>, EngineError> {
        // One sample (`one-shot`: no second reading for CPU rates, so no 1 s wait).
        let options = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stats = self.docker.stats(id, Some(options));
        let Some(sample) = stats.next().await else {
            return Ok(None);
        };
        let pids = sample.map_err(container_err("stats", id))?.pids_stats;
        Ok(pids.and_then(|p| {
            Some(PidsUsage {
                current: p.current?,
                limit: p.limit.unwrap_or(0),
            })
        }))
    }

    async fn kill_container(&self, id: &str) -> Result<(), EngineError> {
        let options = KillContainerOptionsBuilder::default()
            .signal("KILL")
            .build();
        self.docker
            .kill_container(id, Some(options))
            .await
            .map_err(container_err("kill", id))
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        self.docker
            .remove_container(id, Some(options))
            .await
            .map_err(container_err("remove", id))
    }

    async fn list_containers(
        &self,
        selector: &LabelSelector,
    ) -> Result<Vec<ContainerSummary>, EngineError> {
        let filters = label_filters(selector);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(container_err("list", "*"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(ContainerSummary {
                    id: c.id?,
                    created: c.created,
                    labels: labels_of(c.labels),
                })
            })
            .collect())
    }

    async fn exec(
        &self,
        container: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, EngineError> {
        let options = CreateExecOptions {
            cmd: Some(request.cmd.clone()),
            env: Some(request.env.clone()),
            attach_stdin: Some(request.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(container, options)
            .await
            .map_err(container_err("exec create", container))?;
        let started = self
            .docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(container_err("exec start", container))?;
        let StartExecResults::Attached { output, input } = started else {
            unreachable!("start_exec without detach always attaches")
        };
        let id = container.to_string();
        let output = output
            .filter_map(move |item| {
                let item = match item {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        Some(Ok(ExecOutput::Stdout(message)))
                    }
                    Ok(LogOutput::StdErr { message }) => Some(Ok(ExecOutput::Stderr(message))),
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(call("exec output", ObjectKind::Container, &id, e))),
                };
                std::future::ready(item)
            })
            .boxed();
        Ok(ExecSession {
            id: created.id,
            output,
            stdin: request.stdin.then_some(input),
        })
    }

    async fn exec_exit_code(
        &self,
        container: &str,
        exec: &str,
    ) -> Result<Option<i64>, EngineError> {
        let inspect = self
            .docker
            .inspect_exec(exec)
            .await
            .map_err(container_err("exec inspect", container))?;
        Ok(inspect.exit_code)
    }

    async fn inspect_image(&self, reference: &str) -> Result<ImageInfo, EngineError> {
        let img = self
            .docker
            .inspect_image(reference)
            .await
            .map_err(image_err("inspect", reference))?;
        Ok(ImageInfo {
            id: img.id.unwrap_or_default(),
            labels: labels_of(img.config.and_then(|c| c.labels)),
        })
    }

    async fn list_images(&self, selector: &LabelSelector) -> Result<Vec<ImageInfo>, EngineError> {
        let filters = label_filters(selector);
        let options = ListImagesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(image_err("list", "*"))?;
        Ok(list
            .into_iter()
            .map(|img| ImageInfo {
                id: img.id,
                labels: img.labels.into_iter().collect(),
            })
            .collect())
    }

    async fn pull_image(&self, reference: &str) -> Result<(), EngineError> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(reference)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            item.map_err(image_err("pull", reference))?;
        }
        Ok(())
    }

    fn build_image(&self, build: ImageBuild) -> BoxStream<'_, Result<BuildEvent, EngineError>> {
        let args: HashMap<String, String> = build.args.into_iter().collect();
        let labels = hash_map(&build.labels);
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(&build.dockerfile)
            .t(&build.tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels);
        if !args.is_empty() {
            options = options.buildargs(&args);
        }
        let tag = build.tag;
        let stream = self.docker.build_image(
            options.build(),
            None,
            Some(bollard::body_full(build.context.into())),
        );
        stream
            .flat_map(move |item| {
                let events: Vec<Result<BuildEvent, EngineError>> = match item {
                    // A step failed, reported as an error of the stream.
                    Err(bollard::errors::Error::DockerStreamError { error }) => {
                        vec![Ok(BuildEvent::Failed {
                            message: error,
                            code: None,
                        })]
                    }
                    Err(e) => vec![Err(call("build", ObjectKind::Image, &tag, e))],
                    Ok(info) => {
                        let mut events = Vec::new();
                        if let Some(s) = &info.stream {
                            // The classic builder wraps RUN's stderr in ANSI red; keep the text only.
                            let plain = s.replace("\u{1b}[91m", "").replace("\u{1b}[0m", "");
                            events.push(Ok(BuildEvent::Log(plain)));
                        }
                        if let Some(detail) = info.error_detail {
                            events.push(Ok(BuildEvent::Failed {
                                message: detail.message.unwrap_or_default(),
                                code: detail.code,
                            }));
                        }
                        events
                    }
                };
                futures_util::stream::iter(events)
            })
            .boxed()
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<(), EngineError> {
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(hash_map(labels)),
                ..Default::default()
            })
            .await
            .map_err(volume_err("create", name))?;
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        self.docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
            .map_err(volume_err("remove", name))
    }

    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        self.docker
            .remove_image(reference, None::<RemoveImageOptions>, None)
            .await
            .map_err(image_err("remove", reference))?;
        Ok(())
    }

    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeInfo>, EngineError> {
        let options = bollard::query_parameters::ListVolumesOptions {
            filters: Some(label_filters(selector)),
        };
        let list = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(volume_err("list", "*"))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| VolumeInfo {
                name: v.name,
                labels: v.labels.into_iter().collect(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_fuse_overlayfs_gets_the_hint() {
        assert!(super::fuse_overlayfs_hint("fuse-overlayfs").is_some_and(|h| h.contains("noacl")));
        for other in ["overlay2", "btrfs", "zfs", "vfs", ""] {
            assert_eq!(super::fuse_overlayfs_hint(other), None, "{other}");
        }
    }

    use super::*;
    use crate::engine::{Isolation, ResourceLimits, UserId, VolumeMount};

    fn config() -> ContainerConfig {
        ContainerConfig {
            name: "kmodforge-job-b1".into(),
            image: "sha256:abc".into(),
            cmd: vec!["sleep".into(), "infinity".into()],
            user: UserId {
                uid: 1000,
                gid: 1000,
            },
            working_dir: "/tmp".into(),
            labels: Labels::from([("kmodforge".to_string(), "1".to_string())]),
            tmpfs: vec![
                Tmpfs {
                    target: "/var/lib/dkms".into(),
                    size_bytes: 1024,
                    mode: 0o755,
                    owner: Some(UserId {
                        uid: 1000,
                        gid: 1000,
                    }),
                },
                Tmpfs {
                    target: "/tmp".into(),
                    size_bytes: 536870912,
                    mode: 0o1777,
                    owner: None,
                },
            ],
            volumes: vec![VolumeMount {
                volume: "kmodforge-usr-x-usr-lib".into(),
                target: "/usr/lib".into(),
                read_only: true,
            }],
            limits: ResourceLimits {
                memory_bytes: 4 << 30,
                pids: 4096,
                cpus: 2,
            },
            isolation: Isolation {
                no_network: true,
                read_only_root: true,
                drop_all_capabilities: true,
                no_new_privileges: true,
            },
            runtime: None,
        }
    }

    /// The Docker request is the one the sandbox always sent.
    #[test]
    fn container_body_renders_the_policy() {
        let body = container_body(&config());
        let h = body.host_config.clone().expect("host config");
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(body.network_disabled, Some(true));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(h.pids_limit, Some(4096));
        assert_eq!(h.memory, Some(4 << 30));
        assert_eq!(h.memory_swap, Some(4 << 30));
        assert_eq!(h.nano_cpus, Some(2_000_000_000));
        assert_eq!(h.auto_remove, Some(false));
        let tmpfs = h.tmpfs.expect("tmpfs");
        assert_eq!(
            tmpfs["/var/lib/dkms"],
            "rw,exec,nosuid,nodev,size=1024,uid=1000,gid=1000,mode=0755"
        );
        assert_eq!(
            tmpfs["/tmp"],
            "rw,exec,nosuid,nodev,size=536870912,mode=1777"
        );
        let mounts = h.mounts.expect("mounts");
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].source.as_deref(), Some("kmodforge-usr-x-usr-lib"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(body.image.as_deref(), Some("sha256:abc"));
        assert_eq!(
            body.labels
                .as_ref()
                .and_then(|l| l.get("kmodforge"))
                .map(String::as_str),
            Some("1")
        );
        let json = String::from_utf8(DockerEngine::offline().create_request_json(&config()))
            .expect("utf-8");
        assert!(json.contains("\"NetworkMode\": \"none\""), "{json}");
    }

    /// The experiment switches' encodings: cpus 0 is no quota, an empty volume
    /// name an anonymous volume (never the defaults).
    #[test]
    fn no_quota_and_anonymous_volume() {
        let mut c = config();
        c.limits.cpus = 0;
        c.volumes.push(VolumeMount {
            volume: String::new(),
            target: "/var/lib/dkms".into(),
            read_only: false,
        });
        let h = container_body(&c).host_config.expect("host config");
        assert_eq!(h.nano_cpus, None);
        assert_eq!(h.memory, Some(4 << 30));
        let mounts = h.mounts.expect("mounts");
        assert_eq!(mounts[1].source, None);
        assert_eq!(mounts[1].read_only, Some(false));
        assert_eq!(mounts[1].typ, Some(MountType::VOLUME));
        assert_eq!(h.runtime, None);
        c.runtime = Some("kmf-kernel-overlay".into());
        let h = container_body(&c).host_config.expect("host config");
        assert_eq!(h.runtime.as_deref(), Some("kmf-kernel-overlay"));
    }

    #[test]
    fn label_filters_use_docker_syntax() {
        let s = LabelSelector::default()
            .has("kmodforge.job")
            .eq("kmodforge.owner", "r1");
        assert_eq!(
            label_filters(&s)["label"],
            vec![
                "kmodforge.job".to_string(),
                "kmodforge.owner=r1".to_string()
            ]
        );
    }
}
