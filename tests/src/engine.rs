//! A private Docker engine for tests that stop and start one: a second `dockerd`
//! with its own socket, data root, exec root (its own containerd) and pid file,
//! so that restarting it never disturbs the shared engine other tests use.
//!
//! The engine has a bridge of its own (`kmfbr-<name>`, made here with an address
//! of 10.254.0.0/16, removed when the engine is dropped) and touches no iptables
//! rules (job containers run with network `none` anyway), and uses the shared
//! engine's storage driver. Not `--bridge none`: a dockerd started so deletes the
//! host's `docker0` (moby removes "the default bridge interface" when the bridge is
//! disabled), which cut the shared engine's image builds off the network; the
//! engine checks at every start that `docker0` is still there.
//! Its data root is kept under `/tmp/kmf-dockerd-<name>/data` between runs, so the
//! images loaded into it (see [`PrivateEngine::load_from`]) are loaded once; its
//! exec root and socket are removed when it stops.
//!
//! Needs root (dockerd) and the `docker` CLI (for `docker save | docker load`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bollard::Docker;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::DockerProbe;

/// How long a starting engine may take to answer a ping.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a terminated engine may take to exit (it stops its containers first,
/// each with Docker's 10 s stop timeout).
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// A `dockerd` of this test process's own.
pub struct PrivateEngine {
    dir: PathBuf,
    storage_driver: String,
    /// The engine's own bridge interface.
    bridge: String,
    child: Option<Child>,
}

/// Whether the host has network interface `name`.
fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip (iproute2)")?;
    ensure!(status.success(), "ip {} failed ({status})", args.join(" "));
    Ok(())
}

/// Makes bridge `name` with address `10.254.<n>.1/24` unless it exists.
fn make_bridge(name: &str, n: u8) -> Result<()> {
    if link_exists(name) {
        return Ok(());
    }
    ip(&["link", "add", name, "type", "bridge"])?;
    ip(&["addr", "add", &format!("10.254.{n}.1/24"), "dev", name])?;
    ip(&["link", "set", name, "up"])
}

impl PrivateEngine {
    /// Starts an engine under `/tmp/kmf-dockerd-<name>` with the storage driver of
    /// the engine `main` is connected to.
    pub async fn start(name: &str, main: &DockerProbe) -> Result<PrivateEngine> {
        let info = main.docker().info().await.context("docker info")?;
        let storage_driver = info.driver.unwrap_or_else(|| "vfs".into());
        let dir = PathBuf::from(format!("/tmp/kmf-dockerd-{name}"));
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        // An empty config file: /etc/docker/daemon.json may set data-root, which
        // dockerd refuses to see both there and as a flag.
        std::fs::write(dir.join("daemon.json"), "{}\n")?;
        // An interface name has at most 15 bytes.
        let bridge: String = format!("kmfbr-{name}").chars().take(15).collect();
        let subnet = name
            .bytes()
            .fold(7u8, |h, b| h.wrapping_mul(31).wrapping_add(b));
        make_bridge(&bridge, subnet)?;
        let mut engine = PrivateEngine {
            dir,
            storage_driver,
            bridge,
            child: None,
        };
        engine.start_again().await?;
        Ok(engine)
    }

    /// `unix://<dir>/docker.sock`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// A client of this engine.
    pub fn client(&self) -> Result<Docker> {
        let socket = self.socket();
        let path = socket.to_str().context("socket path")?;
        Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            .context("connecting to the private engine")
    }

    /// A probe (container listings) of this engine.
    pub fn probe(&self) -> Result<DockerProbe> {
        Ok(DockerProbe::with(self.client()?))
    }

    /// Starts the (stopped) engine and waits until it answers.
    pub async fn start_again(&mut self) -> Result<()> {
        ensure!(
            self.child.is_none(),
            "the private engine is running already"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))?;
        let arg = |p: &str| self.dir.join(p);
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(arg("daemon.json"))
            .arg("--host")
            .arg(self.host())
            .arg("--data-root")
            .arg(arg("data"))
            .arg("--exec-root")
            .arg(arg("exec"))
            .arg("--pidfile")
            .arg(arg("docker.pid"))
            .args([
                "--bridge",
                &self.bridge,
                "--iptables=false",
                "--ip6tables=false",
            ])
            .args(["--ip-masq=false", "--storage-driver", &self.storage_driver])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning dockerd (the private engine needs root and dockerd)")?;
        self.child = Some(child);
        let had_docker0 = link_exists("docker0");
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "the private dockerd exited at start-up ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            // The client refuses a socket that does not exist yet.
            if let Ok(docker) = self.client() {
                if docker.ping().await.is_ok() {
                    ensure!(
                        !had_docker0 || link_exists("docker0"),
                        "starting the private dockerd removed the host's docker0"
                    );
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the private dockerd did not answer within {START_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, as `systemctl stop docker` does, and waits until dockerd exited
    /// (SIGKILL after [`STOP_TIMEOUT`]).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the private dockerd did not stop within {STOP_TIMEOUT:?} of SIGTERM")
    }

    /// Loads `image` from the engine `main` is connected to, unless this engine has
    /// it (same id) already: `docker save | docker load`.
    pub async fn load_from(&self, main: &DockerProbe, image: &str) -> Result<()> {
        let want = main
            .docker()
            .inspect_image(image)
            .await
            .with_context(|| format!("{image} is not in the shared engine"))?
            .id;
        let have = self
            .client()?
            .inspect_image(image)
            .await
            .ok()
            .and_then(|i| i.id);
        if have.is_some() && have == want {
            return Ok(());
        }
        let host = self.host();
        let image = image.to_string();
        tokio::task::spawn_blocking(move || pipe_image(&image, &host))
            .await
            .context("joining docker save | docker load")?
    }

    /// The last lines of the engine's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivateEngine {
    /// Stops the engine (its containers with it), removes its exec root and its bridge.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let started = Instant::now();
            while started.elapsed() < STOP_TIMEOUT {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(self.dir.join("exec"));
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// `docker save IMAGE | DOCKER_HOST=HOST docker load`.
fn pipe_image(image: &str, host: &str) -> Result<()> {
    let mut save = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning docker save")?;
    let out = save.stdout.take().context("docker save's stdout")?;
    let load = Command::new("docker")
        .arg("load")
        .env("DOCKER_HOST", host)
        .stdin(out)
        .output()
        .context("running docker load")?;
    let saved = save.wait()?;
    ensure!(
        saved.success() && load.status.success(),
        "docker save {image} ({saved}) | docker load ({}): {}",
        load.status,
        String::from_utf8_lossy(&load.stderr)
    );
    Ok(())
}
