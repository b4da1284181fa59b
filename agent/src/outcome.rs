//! Turning host results into outcome lines and exit codes.

use kmodforge_agent::host::{
    DepmodOutcome, HostError, InstallReport, ModprobeOutcome, UninstallReport,
};

use kmodforge_api::wire::BuildRecord;

use crate::exitcode::Exit;

/// A build that ended `failed` (or gave no artifact), as the server explained it.
#[derive(Debug, thiserror::Error)]
#[error("build {id} failed ({kind}): {message}")]
pub struct BuildFailed {
    pub id: String,
    pub kind: &'static str,
    /// The server's one-line message, without its `name/version for krel: ` prefix.
    pub message: String,
    pub log_tail: String,
}

impl BuildFailed {
    pub fn from_record(b: BuildRecord) -> BuildFailed {
        let prefix = format!("{}/{} for {}: ", b.name, b.version, b.kernel);
        let (kind, message, log_tail) = match b.failure {
            Some(f) => {
                let message = f
                    .message
                    .strip_prefix(&prefix)
                    .unwrap_or(&f.message)
                    .to_string();
                (f.kind.as_str(), message, f.log_tail)
            }
            None => (
                "failed",
                format!("ended {} without an artifact", b.state.as_str()),
                String::new(),
            ),
        };
        BuildFailed {
            id: b.id,
            kind,
            message,
            log_tail,
        }
    }
}

/// The exit code of a host failure.
pub fn host_exit(e: &HostError) -> Exit {
    match e {
        HostError::LockHeld { .. } => Exit::LockHeld,
        HostError::NotNewer { .. } | HostError::AlreadyInstalled { .. } => Exit::NotNewer,
        e if e.is_verification() => Exit::Verification,
        _ => Exit::InstallFailed,
    }
}

/// DKMS's wording for a BUILD_EXCLUSIVE mismatch (its exit 77: a skip, not an error).
pub fn not_applicable(server_message: &str) -> String {
    let mut s = String::from(
        "skipped: dkms.conf's BUILD_EXCLUSIVE directive does not match this kernel/arch/config; \
         it should not be built",
    );
    if !server_message.is_empty() {
        s.push_str(&format!(" ({server_message})"));
    }
    s
}

/// `installed (a.ko b.ko); original modules kept: ...; depmod ...`.
pub fn describe_install(r: &InstallReport) -> String {
    let mut s = format!("installed ({})", r.installed.join(" "));
    if let Some(v) = &r.replaced_version {
        s.push_str(&format!("; replaced version {v}"));
    }
    for (file, why) in &r.skipped {
        s.push_str(&format!("; skipped {file}: {why}"));
    }
    if !r.originals.is_empty() {
        let paths: Vec<String> = r
            .originals
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        s.push_str(&format!(
            "; original modules kept (updates/ takes priority): {}",
            paths.join(" ")
        ));
    }
    s.push_str(&depmod_note(&r.depmod));
    match &r.modprobe {
        ModprobeOutcome::NotRun => {}
        ModprobeOutcome::Loaded { modules } => {
            s.push_str(&format!("; loaded {}", modules.join(" ")))
        }
        ModprobeOutcome::Failed {
            status,
            stderr_tail,
        } => s.push_str(&format!(
            "; warning: modprobe failed ({status}): {stderr_tail}"
        )),
    }
    for w in &r.warnings {
        s.push_str(&format!("; warning: {w}"));
    }
    crate::report::one_line(&s)
}

/// `uninstalled (removed ...); depmod ...`.
pub fn describe_uninstall(r: &UninstallReport) -> String {
    let paths: Vec<String> = r.removed.iter().map(|p| p.display().to_string()).collect();
    let mut s = if paths.is_empty() {
        "uninstalled (its files were already gone)".to_string()
    } else {
        format!("uninstalled (removed {})", paths.join(" "))
    };
    s.push_str(&depmod_note(&r.depmod));
    crate::report::one_line(&s)
}

fn depmod_note(d: &DepmodOutcome) -> String {
    match d {
        DepmodOutcome::Ran => "; depmod done".into(),
        DepmodOutcome::Skipped { reason } => format!("; depmod skipped: {reason}"),
        DepmodOutcome::Failed {
            status,
            stderr_tail,
        } => {
            format!("; warning: depmod failed ({status}): {stderr_tail}")
        }
    }
}
