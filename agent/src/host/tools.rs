//! The external tools: `depmod`, `modprobe` and `modinfo`, always run by the absolute
//! path configured in [`HostPaths`], never looked up in `$PATH`.

use std::path::Path;
use std::process::{Command, Output};

use kmodforge_api::names::KernelRelease;
use serde::Serialize;

use super::{HostError, HostPaths};

/// How many characters of a tool's stderr are kept for reports.
const STDERR_TAIL_CHARS: usize = 2000;

/// What happened to the depmod step of an install or uninstall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DepmodOutcome {
    /// `depmod -a KREL` ran and succeeded.
    Ran,
    /// depmod was not run; `reason` says why (DKMS prints a note too).
    Skipped { reason: String },
    /// depmod exited non-zero (only reported by uninstall; install rolls back instead).
    Failed { status: String, stderr_tail: String },
}

/// What happened to the optional `modprobe` after an install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ModprobeOutcome {
    /// Not asked for, or the kernel is not the running one.
    NotRun,
    /// `modprobe -a` loaded the modules.
    Loaded { modules: Vec<String> },
    /// modprobe failed: a warning, the install itself stands.
    Failed { status: String, stderr_tail: String },
}

/// Runs `depmod -a [-b ROOT] [-F System.map] KREL` if the kernel has a `modules.dep`.
///
/// DKMS skips depmod when `modules.dep` is absent: the kernel image is not installed,
/// and its package will run depmod when it is.
pub(crate) fn depmod(
    paths: &HostPaths,
    kernel: &KernelRelease,
) -> Result<DepmodOutcome, HostError> {
    let tree = paths.kernel_tree(kernel);
    if !tree.is_dir() {
        return Ok(skipped("no modules tree"));
    }
    if !tree.join("modules.dep").is_file() {
        return Ok(skipped("no modules.dep: the kernel image is not installed"));
    }
    let mut cmd = Command::new(&paths.depmod);
    cmd.arg("-a");
    if !paths.is_system_root() {
        cmd.arg("-b").arg(&paths.root);
    }
    let system_map = paths.boot_dir.join(format!("System.map-{kernel}"));
    if system_map.is_file() {
        cmd.arg("-F").arg(system_map);
    }
    cmd.arg(kernel.as_str());
    let out = run(&mut cmd, &paths.depmod)?;
    Ok(if out.status.success() {
        DepmodOutcome::Ran
    } else {
        DepmodOutcome::Failed {
            status: out.status.to_string(),
            stderr_tail: stderr_tail(&out),
        }
    })
}

fn skipped(reason: &str) -> DepmodOutcome {
    DepmodOutcome::Skipped {
        reason: reason.to_owned(),
    }
}

/// Runs `modprobe -a [-d ROOT] NAME...`.
pub(crate) fn modprobe(
    paths: &HostPaths,
    modules: Vec<String>,
) -> Result<ModprobeOutcome, HostError> {
    let mut cmd = Command::new(&paths.modprobe);
    cmd.arg("-a");
    if !paths.is_system_root() {
        cmd.arg("-d").arg(&paths.root);
    }
    cmd.args(&modules);
    let out = run(&mut cmd, &paths.modprobe)?;
    Ok(if out.status.success() {
        ModprobeOutcome::Loaded { modules }
    } else {
        ModprobeOutcome::Failed {
            status: out.status.to_string(),
            stderr_tail: stderr_tail(&out),
        }
    })
}

/// `modinfo -F FIELD FILE`: the field's value, `None` when the tool fails or prints nothing.
///
/// Used only for compressed modules, which `parse_modinfo` cannot read.
pub(crate) fn modinfo_field(
    paths: &HostPaths,
    field: &str,
    file: &Path,
) -> Result<Option<String>, HostError> {
    let mut cmd = Command::new(&paths.modinfo);
    cmd.arg("-F").arg(field).arg(file);
    let out = run(&mut cmd, &paths.modinfo)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = text.lines().next().unwrap_or("").trim();
    Ok((out.status.success() && !value.is_empty()).then(|| value.to_owned()))
}

/// Runs a command to completion; failing to start it is an IO error on the binary.
fn run(cmd: &mut Command, binary: &Path) -> Result<Output, HostError> {
    cmd.env("LC_ALL", "C")
        .output()
        .map_err(HostError::io(binary))
}

/// The last [`STDERR_TAIL_CHARS`] characters of stderr, trimmed.
fn stderr_tail(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.trim();
    let skip = text.chars().count().saturating_sub(STDERR_TAIL_CHARS);
    text.chars().skip(skip).collect()
}
