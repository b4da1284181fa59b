//! A Debian host in a container, for tests that run the real `apt`, `dpkg`,
//! `depmod`, `modinfo` and `systemd-analyze`: an image made from
//! `debian:bookworm-slim` with Debian's packages (built once through the engine,
//! tagged by the hash of its Dockerfile, then cached), a container of it (by
//! default on the host's network, so that it reaches the server on 127.0.0.1),
//! and kmodforge's own packages made by `scripts/package.sh`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};

/// Runs the docker CLI; the output, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<std::process::Output> {
    Command::new("docker")
        .args(args)
        .output()
        .context("running the docker CLI (is Docker installed and running? these tests never skip)")
}

/// Makes `debian:<suite>-slim` from Debian's packages when the engine lacks it
/// (`images/bootstrap-base.sh`; nothing can be pulled here).
pub fn base(suite: &str) -> Result<String> {
    let tag = format!("debian:{suite}-slim");
    if docker(&["image", "inspect", &tag])?.status.success() {
        return Ok(tag);
    }
    let script = crate::bins::workspace_root().join("images/bootstrap-base.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([suite, &tag])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} {suite}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(tag)
}

/// Builds (once) an image from `dockerfile` (no context; `FROM debian:bookworm-slim`),
/// tagged `<name>:<hash of the Dockerfile>`; returns the tag.
pub fn image(name: &str, dockerfile: &str) -> Result<String> {
    let tag = format!(
        "{name}:{}",
        &hex::encode(Sha256::digest(dockerfile.as_bytes()))[..16]
    );
    if docker(&["image", "inspect", &tag])?.status.success() {
        return Ok(tag);
    }
    base("bookworm")?;
    let mut child = Command::new("docker")
        .args(["build", "--force-rm", "-t", &tag, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running docker build")?;
    child
        .stdin
        .take()
        .context("docker build's stdin")?
        .write_all(dockerfile.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "docker build of {tag} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(tag)
}

/// A running container, removed when dropped.
pub struct DebHost {
    pub id: String,
}

/// What a command in the container did.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    /// Both streams, for messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl DebHost {
    /// Starts a container of `image` on the host's network, idle until removed.
    pub fn start(image: &str) -> Result<DebHost> {
        Self::start_with(image, &["--network", "host"])
    }

    /// Starts a container of `image` with more `docker run` arguments (network,
    /// mounts), idle until removed.
    pub fn start_with(image: &str, run_args: &[&str]) -> Result<DebHost> {
        let mut args = vec!["run", "-d", "--label", "kmodforge.test=debhost"];
        args.extend_from_slice(run_args);
        args.extend_from_slice(&["--entrypoint", "sleep", image, "infinity"]);
        let out = docker(&args)?;
        ensure!(
            out.status.success(),
            "docker run {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(DebHost {
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }

    /// Runs `script` with `bash -c` as root in the container (no debconf questions).
    pub fn sh(&self, script: &str) -> Result<Ran> {
        let out = docker(&[
            "exec",
            "-e",
            "DEBIAN_FRONTEND=noninteractive",
            &self.id,
            "bash",
            "-c",
            script,
        ])?;
        Ok(Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `script` and fails unless it exits 0.
    pub fn must(&self, script: &str) -> Result<Ran> {
        let ran = self.sh(script)?;
        ensure!(ran.ok(), "`{script}` failed: {ran}");
        Ok(ran)
    }

    /// Runs `script`, fails unless it exits 0; answers stdout and stderr together.
    pub fn ok(&self, script: &str) -> Result<String> {
        Ok(self.must(script)?.text())
    }

    /// True when `path` exists in the container (a dangling symlink too).
    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self
            .sh(&format!("test -e '{path}' || test -L '{path}'"))?
            .ok())
    }

    /// Writes `bytes` to `path` in the container (mode `mode`).
    pub fn put(&self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let mut child = Command::new("docker")
            .args([
                "exec",
                "-i",
                &self.id,
                "sh",
                "-c",
                &format!(
                    "mkdir -p \"$(dirname '{path}')\" && cat > '{path}' && chmod {mode:o} '{path}'"
                ),
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("docker exec")?;
        child
            .stdin
            .take()
            .context("docker exec's stdin")?
            .write_all(bytes)?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "writing {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for DebHost {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

/// `scripts/package.sh` on the workspace's binaries (those the other tests run):
/// `kmodforge-server_<version>_amd64.deb` and `kmodforge-agent_<version>_amd64.deb` in `out`.
pub fn kmodforge_debs(version: &str, out: &Path) -> Result<()> {
    let server = crate::bins::SERVER.path()?;
    let agent = crate::bins::AGENT.path()?;
    let dir = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&server, dir.path().join("kmodforge-server"))?;
    std::os::unix::fs::symlink(&agent, dir.path().join("kmodforge-agent"))?;
    let script = crate::bins::workspace_root().join("scripts/package.sh");
    let ran = Command::new(&script)
        .args(["--fast", "--deb-version", version, "--bins"])
        .arg(dir.path())
        .arg("--out")
        .arg(out)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        ran.status.success(),
        "scripts/package.sh --deb-version {version}: {}\n{}",
        ran.status,
        String::from_utf8_lossy(&ran.stderr)
    );
    for p in ["kmodforge-server", "kmodforge-agent"] {
        let deb = out.join(format!("{p}_{version}_amd64.deb"));
        ensure!(deb.is_file(), "{} was not made", deb.display());
    }
    Ok(())
}
