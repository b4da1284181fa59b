//! The real `kmodforge-server` process: started on a free loopback port with its own
//! data directory, stopped on drop.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::client::Client;

/// How long a starting server may take to answer `/healthz` (it connects to Docker
/// and sweeps leftover containers first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a terminated server may take to exit before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(30);
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
    /// SIGTERM (graceful shutdown: connections drained, job containers removed), SIGKILL after 30 s.
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
    tls: Option<crate::tls::TestPki>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            env: Vec::new(),
            data_dir: None,
            stop: StopMode::Terminate,
            tls: None,
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

    /// Serves HTTPS with the certificate of `pki` (for 127.0.0.1).
    pub fn tls(mut self, pki: crate::tls::TestPki) -> Self {
        self.tls = Some(pki);
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
    /// `https` when the server was given a certificate.
    scheme: &'static str,
    /// The CA that signed the server's certificate (PEM), for HTTPS clients.
    ca_pem: Option<Vec<u8>>,
}

impl Server {
    /// Starts the binary and waits until `/healthz` answers.
    pub async fn start(opts: ServerOpts) -> Result<Server> {
        let bin = crate::bins::SERVER.path()?;
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
        // No archive watcher unless a test asks for one (it would fetch Debian's indexes).
        cmd.env("KMODFORGE_ARCHIVE_INTERVAL_SECS", "0");
        if let Some(pki) = &opts.tls {
            cmd.env("KMODFORGE_TLS_CERT", &pki.server_cert)
                .env("KMODFORGE_TLS_KEY", &pki.server_key);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let ca_pem = match &opts.tls {
            Some(pki) => Some(std::fs::read(&pki.ca_cert).context("reading the test CA")?),
            None => None,
        };
        let mut server = Server {
            child: Some(child),
            addr,
            dir: dir.clone(),
            log,
            stop: opts.stop,
            scheme: if opts.tls.is_some() { "https" } else { "http" },
            ca_pem,
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
        let client = self.client_with(None)?;
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

    /// The server process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The server's peak resident memory so far (`VmHWM` of `/proc/<pid>/status`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("the server is not running")?;
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The admin token the server wrote on its first start (`<data>/admin.token`).
    pub fn admin_token(&self) -> Result<String> {
        let path = self.dir.data().join("admin.token");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().to_string())
    }

    /// A client with the admin token.
    pub fn client(&self) -> Client {
        let token = self.admin_token().ok();
        self.client_with(token.as_deref())
            .unwrap_or_else(|e| panic!("building the test client: {e:#}"))
    }

    /// A client sending `token` (none: no Authorization header).
    pub fn client_with(&self, token: Option<&str>) -> Result<Client> {
        Client::with_token(self.base_url(), token, self.ca_pem.as_deref())
    }

    /// Creates a token through the API (as admin) and returns its secret.
    pub async fn token(&self, name: &str, scope: &str, modules: &[&str]) -> Result<String> {
        let body = serde_json::json!({"name": name, "scope": scope, "modules": modules});
        let resp = self
            .client()
            .http()
            .post(self.client().url("/v1/tokens"))
            .json(&body)
            .send()
            .await?;
        let resp = crate::client::expect_status(resp, &[reqwest::StatusCode::CREATED]).await?;
        let created: serde_json::Value = resp.json().await?;
        created["token"]
            .as_str()
            .map(str::to_string)
            .context("no token in the answer")
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
            StopMode::Terminate => {
                self.terminate();
            }
        }
    }

    /// SIGTERM, then SIGKILL if the server has not exited within 30 s. Returns the exit
    /// status when the server exited by itself, `None` when it had to be killed (or
    /// was not running).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = i32::try_from(child.id()).map(Pid::from_raw);
        if let Ok(pid) = pid {
            let _ = kill(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
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
