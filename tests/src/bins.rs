//! The workspace binaries the end-to-end tests run as real processes: found next to
//! the test executable (`target/<profile>/`), and built with cargo once per test
//! process when missing or older than their sources (people edit the server while
//! tests run). An environment variable overrides each path (no build then).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

/// A binary of the workspace.
pub struct Bin {
    /// Cargo package and binary name.
    name: &'static str,
    /// Variable holding an explicit path.
    env: &'static str,
    /// Sources (relative to the workspace) whose change makes the binary stale.
    sources: &'static [&'static str],
    built: OnceLock<Result<PathBuf, String>>,
}

pub static SERVER: Bin = Bin {
    name: "kmodforge-server",
    env: "KMODFORGE_SERVER_BIN",
    sources: &[
        "server/src",
        "server/Cargo.toml",
        "api/src",
        "api/Cargo.toml",
    ],
    built: OnceLock::new(),
};

pub static AGENT: Bin = Bin {
    name: "kmodforge-agent",
    env: "KMODFORGE_AGENT_BIN",
    sources: &["agent/src", "agent/Cargo.toml", "api/src", "api/Cargo.toml"],
    built: OnceLock::new(),
};

impl Bin {
    /// The binary's path, building it first when needed.
    pub fn path(&self) -> Result<PathBuf> {
        if let Some(bin) = std::env::var_os(self.env) {
            return Ok(PathBuf::from(bin));
        }
        self.built
            .get_or_init(|| self.locate_and_build().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn locate_and_build(&self) -> Result<PathBuf> {
        let exe = std::env::current_exe().context("locating the test executable")?;
        // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .context("test executable is not in target/<profile>/deps")?;
        let bin = profile_dir.join(self.name);
        if bin.exists() && !self.is_stale(&bin) {
            return Ok(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", self.name, "--bin", self.name])
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .with_context(|| format!("running cargo build -p {}", self.name))?;
        if !status.success() || !bin.exists() {
            bail!(
                "cargo build -p {} failed ({status}) or did not produce {}",
                self.name,
                bin.display()
            );
        }
        Ok(bin)
    }

    /// True when a source file is newer than the binary.
    fn is_stale(&self, bin: &Path) -> bool {
        let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
            return true;
        };
        let root = workspace_root();
        self.sources
            .iter()
            .any(|p| newest_mtime(&root.join(p)) > Some(built))
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
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
