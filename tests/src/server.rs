//! The real `kmodforge-server` process: started on a free loopback port with its own
//! data directory, stopped on drop.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::client::Client;

/// How long a starting server may take to answer `/healthz` (it connects to Docker
/// and sweeps leftover containers first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a terminated server may take to exit before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Lines of the server log printed when a server drops (shown for failed tests).
const LOG_TAIL_LINES: usize = 80;

/// A temporary directory holding a server's data (`data/`) and its logs; shared by
/// the servers of a restart test, removed when the last handle drops.
#[derive(Clone)]
pub struct DataDir(Arc<tempfile::TempDir>);

impl DataDir {
    /// A fresh directory; kept after the test when `KMODFORGE_E2E_KEEP=1`.
    pub fn new() -> Result<Self> {
        let keep = std::env::var_os("KMODFORGE_E2E_KEEP").is_some_and(|v| v == "1");
        let dir = tempfile::Builder::new()
            .prefix("kmodforge-e2e-")
            .disable_cleanup(keep)
            .tempdir()
            .context("creating the server's temp dir")?;
        Ok(DataDir(Arc::new(dir)))
    }

    /// What the server gets as `--data-dir`.
    pub fn data(&self) -> PathBuf {
        self.0.path().join("data")
    }

    fn root(&self) -> &Path {
        self.0.path()
    }
}

/// How a server is stopped when its [`Server`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM (graceful shutdown), SIGKILL after 10 s.
    Terminate,
    /// SIGKILL at once: a crash.
    Kill,
}

/// How to start a server.
#[derive(Clone)]
pub struct ServerOpts {
    env: Vec<(String, String)>,
    data_dir: Option<DataDir>,
    stop: StopMode,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            env: Vec::new(),
            data_dir: None,
            stop: StopMode::Terminate,
        }
    }
}

impl ServerOpts {
    /// Sets a `KMODFORGE_*` variable (others from the test's environment are removed).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Uses an existing data directory (restart tests).
    pub fn data_dir(mut self, dir: DataDir) -> Self {
        self.data_dir = Some(dir);
        self
    }

    pub fn stop_mode(mut self, stop: StopMode) -> Self {
        self.stop = stop;
        self
    }
}

/// A running `kmodforge-server`.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    dir: DataDir,
    log: PathBuf,
    stop: StopMode,
}

impl Server {
    /// Starts the binary and waits until `/healthz` answers.
    pub async fn start(opts: ServerOpts) -> Result<Server> {
        let bin = server_binary()?;
        let dir = match opts.data_dir.clone() {
            Some(d) => d,
            None => DataDir::new()?,
        };
        // A port picked by the kernel can be taken again before the server binds it:
        // retry with a new one when the server exits at start-up.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(&bin, &dir, &opts).await {
                Ok(s) => return Ok(s),
                Err(e) if attempt < 3 && format!("{e:#}").contains("cannot listen on") => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_start(bin: &Path, dir: &DataDir, opts: &ServerOpts) -> Result<Server> {
        let addr = free_port()?;
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let log = dir.root().join(format!("server-{stamp}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.data())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, _) in std::env::vars() {
            if k.starts_with("KMODFORGE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("KMODFORGE_LOG", "info").env("NO_COLOR", "1");
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut server = Server {
            child: Some(child),
            addr,
            dir: dir.clone(),
            log,
            stop: opts.stop,
        };
        server.wait_healthy().await?;
        eprintln!(
            "kmodforge-server on {} (data {}, log {})",
            server.addr,
            server.dir.data().display(),
            server.log.display()
        );
        Ok(server)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let client = self.client();
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "kmodforge-server exited at start-up ({status}); its log:\n{}",
                        self.log_text()
                    );
                }
            }
            if client.healthz().await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "kmodforge-server did not answer /healthz on {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.addr,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(self.base_url())
    }

    /// The data directory, to hand to a second server.
    pub fn data_dir(&self) -> DataDir {
        self.dir.clone()
    }

    /// The server's stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, now: the server gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server as its [`StopMode`] says.
    pub fn stop(&mut self) {
        match self.stop {
            StopMode::Kill => self.kill9(),
            StopMode::Terminate => self.terminate(),
        }
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = i32::try_from(child.id()).map(Pid::from_raw);
        if let Ok(pid) = pid {
            let _ = kill(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    /// Stops the server and prints the end of its log: the test harness captures it
    /// and shows it only for a failed test.
    fn drop(&mut self) {
        self.stop();
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        eprintln!(
            "---- kmodforge-server {} log ({}), last {} lines ----\n{}",
            self.addr,
            self.log.display(),
            tail.len(),
            tail.join("\n")
        );
    }
}

fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// The server binary next to this test executable (`target/<profile>/`), built with
/// cargo when it is missing or older than the server's or api's sources.
/// `KMODFORGE_SERVER_BIN` overrides the path (no build then).
fn server_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("KMODFORGE_SERVER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| locate_and_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate_and_build() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/kmodforge-server
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not in target/<profile>/deps")?;
    let bin = profile_dir.join("kmodforge-server");
    if bin.exists() && !is_stale(&bin) {
        return Ok(bin);
    }
    let workspace = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("-p")
        .arg("kmodforge-server")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .context("running cargo build -p kmodforge-server")?;
    if !status.success() || !bin.exists() {
        bail!(
            "cargo build -p kmodforge-server failed ({status}) or did not produce {}",
            bin.display()
        );
    }
    Ok(bin)
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// True when a source file of the server or api crate is newer than the binary.
fn is_stale(bin: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    ["server", "api"].iter().any(|krate| {
        let dir = root.join(krate);
        newest_mtime(&dir.join("src")).max(newest_mtime(&dir.join("Cargo.toml"))) > Some(built)
    })
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}
