//! The real `kmodforge-agent` binary run as a subprocess against a temporary root:
//! kernel trees that the real `depmod -b ROOT` indexes, a config file, and a tiny
//! HTTP server for answers the real server never gives (a wrong sha256).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// The agent binary (built when missing or stale; `KMODFORGE_AGENT_BIN` overrides it).
pub fn agent_binary() -> Result<PathBuf> {
    crate::bins::AGENT.path()
}

/// What one agent run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Fails unless the exit code is `code`, showing both streams.
    pub fn expect(self, code: i32) -> Result<Run> {
        if self.code != code {
            bail!("agent exited {} (expected {code}):\n{self}", self.code);
        }
        Ok(self)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// A temporary host root: `lib/modules/<krel>` trees, a config file, the agent.
pub struct AgentRoot {
    dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl AgentRoot {
    /// A root with a minimal tree (with `modules.dep`) for each of `kernels`.
    pub fn new(kernels: &[&str]) -> Result<AgentRoot> {
        let dir = tempfile::Builder::new()
            .prefix("kmodforge-agent-root-")
            .tempdir()
            .context("creating the agent root")?;
        let config = dir.path().join("etc/kmodforge/agent.toml");
        let root = AgentRoot { dir, config };
        for k in kernels {
            root.add_kernel(k)?;
        }
        Ok(root)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `lib/modules/<krel>` with empty `modules.dep`, `modules.order`, `modules.builtin`
    /// and `modules.builtin.modinfo`: enough for `depmod -b ROOT -a KREL`.
    pub fn add_kernel(&self, krel: &str) -> Result<()> {
        let tree = self.tree(krel);
        std::fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
        for f in [
            "modules.dep",
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            std::fs::write(tree.join(f), "").with_context(|| format!("writing {f}"))?;
        }
        Ok(())
    }

    /// `<root>/lib/modules/<krel>`.
    pub fn tree(&self, krel: &str) -> PathBuf {
        self.path().join("lib/modules").join(krel)
    }

    /// `modules.dep` of `krel` (empty when missing).
    pub fn modules_dep(&self, krel: &str) -> String {
        std::fs::read_to_string(self.tree(krel).join("modules.dep")).unwrap_or_default()
    }

    /// Writes the config: `server`, this root, `running_kernel`, the modules (and
    /// `token_file` when the target has a token).
    pub fn write_config(
        &self,
        server: impl AgentTarget,
        running: &str,
        modules: &[(&str, &str)],
    ) -> Result<()> {
        self.write_config_with(server, running, modules, "")
    }

    /// [`AgentRoot::write_config`] with more top-level keys (`extra`: TOML lines; a
    /// key of the defaults given there replaces the default).
    pub fn write_config_with(
        &self,
        server: impl AgentTarget,
        running: &str,
        modules: &[(&str, &str)],
        extra: &str,
    ) -> Result<()> {
        let url = server.url();
        let defaults = format!(
            "server = \"{url}\"\nroot = \"{}\"\nrunning_kernel = \"{running}\"\n\
             connect_timeout_secs = 2\nrequest_timeout_secs = 60\nbuild_wait_secs = 1200\nretries = 1\n",
            self.path().display()
        );
        let overridden = |line: &str| {
            let key = line.split('=').next().unwrap_or_default().trim();
            extra
                .lines()
                .any(|l| l.split('=').next().unwrap_or_default().trim() == key)
        };
        let mut text: String = defaults
            .lines()
            .filter(|l| !overridden(l))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(extra);
        if !extra.is_empty() && !extra.ends_with('\n') {
            text.push('\n');
        }
        if let Some(token) = server.token() {
            let file = self.write_token(&token)?;
            text = format!("token_file = \"{}\"\n{text}", file.display());
        }
        for (name, version) in modules {
            text.push_str(&format!(
                "\n[[module]]\nname = \"{name}\"\nversion = \"{version}\"\n"
            ));
        }
        if let Some(dir) = self.config.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.config, text).context("writing the agent config")
    }

    /// Writes `token` to `<root>/etc/kmodforge/token` (mode 0600); returns the path.
    pub fn write_token(&self, token: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let file = self.path().join("etc/kmodforge/token");
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, format!("{token}\n")).context("writing the token file")?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }

    /// `status --json`: its `modules` entries and its `boot` decision.
    pub async fn status_json(&self) -> Result<(Vec<serde_json::Value>, serde_json::Value)> {
        let run = self.run(&["status", "--json"]).await?.expect(0)?;
        let v: serde_json::Value =
            serde_json::from_str(&run.stdout).with_context(|| format!("status --json:\n{run}"))?;
        let modules = v["modules"]
            .as_array()
            .cloned()
            .context("status --json has modules")?;
        Ok((modules, v["boot"].clone()))
    }

    /// Runs `kmodforge-agent --config CONFIG ARGS...` to completion.
    pub async fn run(&self, args: &[&str]) -> Result<Run> {
        let mut all = vec!["--config".to_string(), self.config.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        run_agent(all).await
    }

    /// Runs the hook script `rel` (under root) with `args`, as the kernel package would.
    pub async fn run_hook(&self, rel: &str, args: &[&str]) -> Result<Run> {
        let script = self.path().join(rel);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("sh")
                .arg(&script)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            let run = Run::from(out);
            eprintln!("$ sh {} {}\n{run}", script.display(), args.join(" "));
            Ok(run)
        })
        .await?
    }
}

/// Runs the agent with `args` (no config added), off the async workers.
pub async fn run_agent(args: Vec<String>) -> Result<Run> {
    let bin = agent_binary()?;
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&bin)
            .args(&args)
            .env_remove("KMODFORGE_AGENT_CONFIG")
            .env_remove("KMODFORGE_SERVER")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let run = Run::from(out);
        eprintln!("$ kmodforge-agent {}\n{run}", args.join(" "));
        Ok(run)
    })
    .await?
}

/// Where an agent config points: a URL, and the token it sends, if any.
pub trait AgentTarget {
    fn url(&self) -> String;
    fn token(&self) -> Option<String>;
}

impl AgentTarget for &str {
    fn url(&self) -> String {
        self.to_string()
    }
    fn token(&self) -> Option<String> {
        None
    }
}

impl AgentTarget for &String {
    fn url(&self) -> String {
        self.to_string()
    }
    fn token(&self) -> Option<String> {
        None
    }
}

/// The real server, with its admin token.
impl AgentTarget for &crate::Server {
    fn url(&self) -> String {
        self.base_url()
    }
    fn token(&self) -> Option<String> {
        self.admin_token().ok()
    }
}

/// A URL and an explicit token.
impl AgentTarget for (&str, &str) {
    fn url(&self) -> String {
        self.0.to_string()
    }
    fn token(&self) -> Option<String> {
        Some(self.1.to_string())
    }
}

/// A canned answer of [`FakeServer`].
#[derive(Clone)]
pub struct Canned {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A tiny HTTP/1.1 server answering GETs from a fixed map (anything else: 404 JSON).
/// It runs on a thread until the process ends.
pub struct FakeServer {
    addr: SocketAddr,
}

impl FakeServer {
    pub fn start(routes: HashMap<String, Canned>) -> Result<FakeServer> {
        let addr = crate::minihttp::serve(move |r| match routes.get(&r.path) {
            Some(c) => (c.status, c.body.clone()),
            None => (
                404,
                br#"{"error":{"kind":"not_found","message":"fake server: no such route"}}"#
                    .to_vec(),
            ),
        })
        .context("starting the fake server")?;
        Ok(FakeServer { addr })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Builds kmf-hello 1.0 for `krel` on the real server: its manifest and `.ko`.
pub async fn built_hello(
    env: &crate::Env,
    krel: &str,
) -> Result<(kmodforge_api::wire::Manifest, Vec<u8>)> {
    let (_, first) = env
        .client
        .build(&crate::request("kmf-hello", "1.0", krel)?)
        .await?;
    let done = env.client.wait(&first.build.id).await?;
    anyhow::ensure!(
        done.build.state == kmodforge_api::wire::BuildState::Succeeded,
        "{:?}",
        done.build
    );
    let m = done.artifact.context("manifest")?;
    let ko = env
        .client
        .download("kmf-hello", "1.0", krel, "kmf_hello.ko")
        .await?;
    Ok((m, ko))
}

/// A fake server answering for kmf-hello/1.0 on `krel` with `manifest` and `ko`.
pub fn serve_hello(
    krel: &str,
    manifest: &kmodforge_api::wire::Manifest,
    ko: Vec<u8>,
) -> Result<FakeServer> {
    let base = format!("/v1/artifacts/kmf-hello/1.0/{krel}");
    let mut routes = HashMap::new();
    routes.insert(
        base.clone(),
        Canned {
            status: 200,
            body: serde_json::to_vec(manifest)?,
        },
    );
    routes.insert(
        format!("{base}/files/kmf_hello.ko"),
        Canned {
            status: 200,
            body: ko,
        },
    );
    FakeServer::start(routes)
}
