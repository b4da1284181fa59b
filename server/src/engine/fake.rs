//! An in-memory [`ContainerEngine`] for unit tests: it records every call, keeps
//! containers, images and volumes in maps, and answers execs from a script.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{
    BuildEvent, ContainerConfig, ContainerEngine, ContainerSummary, EngineError, ExecOutput,
    ExecRequest, ExecSession, ImageBuild, ImageInfo, LabelSelector, Labels, ObjectKind, VolumeInfo,
};

/// One recorded engine call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Create(ContainerConfig),
    Start(String),
    Running(String),
    Kill(String),
    Remove(String),
    List(LabelSelector),
    Exec {
        container: String,
        request: ExecRequest,
    },
    ExitCode(String),
    InspectImage(String),
    ListImages(LabelSelector),
    Pull(String),
    Build(String),
    CreateVolume(String),
    RemoveVolume(String),
}

/// What a scripted exec does.
pub enum FakeExec {
    /// Prints these chunks, then exits with this code.
    Exit { output: Vec<ExecOutput>, code: i64 },
    /// Never prints nor ends (for timeouts).
    Hang,
}

type Script = Box<dyn Fn(&ExecRequest) -> FakeExec + Send + Sync>;

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// id → (config, running, created).
    containers: BTreeMap<String, (ContainerConfig, bool, i64)>,
    /// exec id → exit code.
    execs: BTreeMap<String, Option<i64>>,
    /// exec id → bytes written to its stdin.
    stdin: BTreeMap<String, Arc<Mutex<Vec<u8>>>>,
    images: BTreeMap<String, ImageInfo>,
    volumes: BTreeSet<String>,
    /// Labels of volumes created with any.
    volume_labels: BTreeMap<String, Labels>,
    next: u64,
}

/// The fake engine.
pub struct FakeEngine {
    state: Mutex<State>,
    script: Script,
}

fn fail(op: &'static str, kind: ObjectKind, object: &str, why: &str) -> EngineError {
    EngineError::Call {
        engine: "Fake",
        op,
        kind,
        object: object.to_string(),
        source: why.into(),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

impl FakeEngine {
    /// Every exec exits 0 without output.
    pub fn new() -> Arc<Self> {
        Self::scripted(|_| FakeExec::Exit {
            output: Vec::new(),
            code: 0,
        })
    }

    /// Execs do what `script` says.
    pub fn scripted(
        script: impl Fn(&ExecRequest) -> FakeExec + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(FakeEngine {
            state: Mutex::new(State::default()),
            script: Box::new(script),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, call: Call) {
        self.state().calls.push(call);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Ids of the containers that exist.
    pub fn containers(&self) -> Vec<String> {
        self.state().containers.keys().cloned().collect()
    }

    /// Whether the container exists and runs.
    pub fn is_running(&self, id: &str) -> bool {
        self.state().containers.get(id).is_some_and(|c| c.1)
    }

    /// What was written to the stdin of the `n`th exec.
    pub fn stdin_of(&self, n: usize) -> Vec<u8> {
        let s = self.state();
        let id = format!("exec-{n}");
        s.stdin
            .get(&id)
            .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Adds an image.
    pub fn add_image(&self, reference: &str, info: ImageInfo) {
        self.state().images.insert(reference.to_string(), info);
    }

    pub fn volumes(&self) -> Vec<String> {
        self.state().volumes.iter().cloned().collect()
    }
}

/// An exec's stdin: keeps what is written, tells when it is closed.
struct Recorder(
    Arc<Mutex<Vec<u8>>>,
    Option<tokio::sync::oneshot::Sender<()>>,
);

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(closed) = self.1.take() {
            let _ = closed.send(());
        }
        Poll::Ready(Ok(()))
    }
}

#[async_trait::async_trait]
impl ContainerEngine for FakeEngine {
    fn name(&self) -> &'static str {
        "Fake"
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn create_container(&self, config: &ContainerConfig) -> Result<String, EngineError> {
        self.record(Call::Create(config.clone()));
        let mut s = self.state();
        if s.containers.values().any(|c| c.0.name == config.name) {
            return Err(fail(
                "create",
                ObjectKind::Container,
                &config.name,
                "name in use",
            ));
        }
        s.next += 1;
        let id = format!("c{}", s.next);
        s.containers
            .insert(id.clone(), (config.clone(), false, now()));
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), EngineError> {
        self.record(Call::Start(id.to_string()));
        match self.state().containers.get_mut(id) {
            Some(c) => {
                c.1 = true;
                Ok(())
            }
            None => Err(fail(
                "start",
                ObjectKind::Container,
                id,
                "no such container",
            )),
        }
    }

    async fn container_running(&self, id: &str) -> Result<bool, EngineError> {
        self.record(Call::Running(id.to_string()));
        match self.state().containers.get(id) {
            Some(c) => Ok(c.1),
            None => Err(fail(
                "inspect",
                ObjectKind::Container,
                id,
                "no such container",
            )),
        }
    }

    async fn kill_container(&self, id: &str) -> Result<(), EngineError> {
        self.record(Call::Kill(id.to_string()));
        match self.state().containers.get_mut(id) {
            Some(c) => {
                c.1 = false;
                Ok(())
            }
            None => Err(fail("kill", ObjectKind::Container, id, "no such container")),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        self.record(Call::Remove(id.to_string()));
        match self.state().containers.remove(id) {
            Some(_) => Ok(()),
            None => Err(fail(
                "remove",
                ObjectKind::Container,
                id,
                "no such container",
            )),
        }
    }

    async fn list_containers(
        &self,
        selector: &LabelSelector,
    ) -> Result<Vec<ContainerSummary>, EngineError> {
        self.record(Call::List(selector.clone()));
        Ok(self
            .state()
            .containers
            .iter()
            .filter(|(_, c)| selector.matches(&c.0.labels))
            .map(|(id, c)| ContainerSummary {
                id: id.clone(),
                created: Some(c.2),
                labels: c.0.labels.clone(),
            })
            .collect())
    }

    async fn exec(
        &self,
        container: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, EngineError> {
        self.record(Call::Exec {
            container: container.to_string(),
            request: request.clone(),
        });
        if !self.is_running(container) {
            return Err(fail(
                "exec create",
                ObjectKind::Container,
                container,
                "not running",
            ));
        }
        let request_stdin = request.stdin;
        let mut s = self.state();
        let id = format!("exec-{}", s.execs.len());
        let input = Arc::new(Mutex::new(Vec::new()));
        s.stdin.insert(id.clone(), input.clone());
        // Like a process that reads all its stdin before it answers.
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let stdin_read = futures_util::stream::once(async move {
            if request_stdin {
                let _ = closed_rx.await;
            }
        })
        .filter_map(|()| std::future::ready(None));
        let output = match (self.script)(request) {
            FakeExec::Exit { output, code } => {
                s.execs.insert(id.clone(), Some(code));
                stdin_read
                    .chain(futures_util::stream::iter(output.into_iter().map(Ok)))
                    .boxed()
            }
            FakeExec::Hang => {
                s.execs.insert(id.clone(), None);
                stdin_read.chain(futures_util::stream::pending()).boxed()
            }
        };
        Ok(ExecSession {
            id,
            output,
            stdin: request
                .stdin
                .then(|| Box::pin(Recorder(input, Some(closed_tx))) as super::ExecStdin),
        })
    }

    async fn exec_exit_code(
        &self,
        container: &str,
        exec: &str,
    ) -> Result<Option<i64>, EngineError> {
        self.record(Call::ExitCode(exec.to_string()));
        self.state().execs.get(exec).copied().ok_or_else(|| {
            fail(
                "exec inspect",
                ObjectKind::Container,
                container,
                "no such exec",
            )
        })
    }

    async fn inspect_image(&self, reference: &str) -> Result<ImageInfo, EngineError> {
        self.record(Call::InspectImage(reference.to_string()));
        let s = self.state();
        s.images
            .get(reference)
            .or_else(|| s.images.values().find(|i| i.id == reference))
            .cloned()
            .ok_or_else(|| fail("inspect", ObjectKind::Image, reference, "no such image"))
    }

    async fn list_images(&self, selector: &LabelSelector) -> Result<Vec<ImageInfo>, EngineError> {
        self.record(Call::ListImages(selector.clone()));
        Ok(self
            .state()
            .images
            .values()
            .filter(|i| selector.matches(&i.labels))
            .cloned()
            .collect())
    }

    async fn pull_image(&self, reference: &str) -> Result<(), EngineError> {
        self.record(Call::Pull(reference.to_string()));
        Err(fail("pull", ObjectKind::Image, reference, "no registry"))
    }

    fn build_image(&self, build: ImageBuild) -> BoxStream<'_, Result<BuildEvent, EngineError>> {
        self.record(Call::Build(build.tag.clone()));
        let id = format!("sha256:{}", hex::encode(build.tag.as_bytes()));
        self.add_image(
            &build.tag,
            ImageInfo {
                id,
                labels: build.labels,
            },
        );
        futures_util::stream::iter([Ok(BuildEvent::Log(format!(
            "Successfully tagged {}\n",
            build.tag
        )))])
        .boxed()
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<(), EngineError> {
        self.record(Call::CreateVolume(name.to_string()));
        let mut s = self.state();
        s.volumes.insert(name.to_string());
        s.volume_labels.insert(name.to_string(), labels.clone());
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        self.record(Call::RemoveVolume(name.to_string()));
        self.state().volumes.remove(name);
        Ok(())
    }

    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        let mut s = self.state();
        let before = s.images.len();
        s.images
            .retain(|tag, i| tag != reference && i.id != reference);
        if s.images.len() == before {
            return Err(fail(
                "remove",
                ObjectKind::Image,
                reference,
                "no such image",
            ));
        }
        Ok(())
    }

    async fn list_volumes(&self, selector: &LabelSelector) -> Result<Vec<VolumeInfo>, EngineError> {
        let s = self.state();
        Ok(s.volumes
            .iter()
            .map(|name| VolumeInfo {
                name: name.clone(),
                labels: s.volume_labels.get(name).cloned().unwrap_or_default(),
            })
            .filter(|v| selector.matches(&v.labels))
            .collect())
    }
}

/// `ExecOutput::Stdout` of a string.
pub fn stdout(text: &str) -> ExecOutput {
    ExecOutput::Stdout(Bytes::from(text.to_string()))
}

/// `ExecOutput::Stderr` of a string.
pub fn stderr(text: &str) -> ExecOutput {
    ExecOutput::Stderr(Bytes::from(text.to_string()))
}
