//! A Debian host in a container, for tests that run the real `apt`, `dpkg`,
//! `depmod` and `modinfo` against the server: an image made from
//! `debian:bookworm-slim` with Debian's packages (built once through the engine,
//! tagged by the hash of its Dockerfile, then cached), and a container of it on
//! the host's network, so that it reaches the server on 127.0.0.1.

use std::io::Write;
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

/// Builds (once) an image from `dockerfile` (no context), tagged
/// `<name>:<hash of the Dockerfile>`; returns the tag.
pub fn image(name: &str, dockerfile: &str) -> Result<String> {
    let tag = format!(
        "{name}:{}",
        &hex::encode(Sha256::digest(dockerfile.as_bytes()))[..16]
    );
    if docker(&["image", "inspect", &tag])?.status.success() {
        return Ok(tag);
    }
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
        let out = docker(&[
            "run",
            "-d",
            "--network",
            "host",
            "--label",
            "kmodforge.test=debhost",
            "--entrypoint",
            "sleep",
            image,
            "infinity",
        ])?;
        ensure!(
            out.status.success(),
            "docker run {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(DebHost {
            id: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }

    /// Runs `script` with `sh -c` as root in the container.
    pub fn sh(&self, script: &str) -> Result<Ran> {
        let out = docker(&["exec", &self.id, "sh", "-c", script])?;
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
