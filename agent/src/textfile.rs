//! The metrics textfile for node_exporter's textfile collector (`metrics_textfile`):
//! written after every sync, in the Prometheus text format (version 0.0.4), so that
//! a fleet's dashboards and alerts see each host's last sync and what it has
//! installed without a daemon on the host.
//!
//! The file is replaced atomically (a temp file in the same directory, fsynced, then
//! renamed over it): the collector reads one whole sync's file or the next, never a
//! half-written one. The temp file's name does not end in `.prom`, so the collector
//! never reads it either.

use std::io::Write;
use std::path::Path;
use std::time::{Instant, SystemTime};

use kmodforge_agent::host::{Host, StatusEntry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::exitcode::Exit;
use crate::guard::BootDecision;

/// How the last sync went.
#[derive(Clone, Copy, Debug)]
pub struct LastSync {
    pub exit: Exit,
    /// When it ended.
    pub finished: SystemTime,
    pub seconds: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabels {
    kernel: String,
    module: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KernelLabel {
    kernel: String,
}

/// Writes the textfile after a sync that began at `started` and ended with `exit`,
/// when `metrics_textfile` is set. A failure to write is reported on one line and
/// does not change the sync's exit status.
pub fn after_sync(cfg: &Config, started: Instant, exit: Exit) {
    let Some(path) = &cfg.metrics_textfile else {
        return;
    };
    let host = Host::new(cfg.paths.clone());
    let last = LastSync {
        exit,
        finished: SystemTime::now(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let running = crate::running_kernel(cfg);
    let modules = match host.status(running.as_ref()) {
        Ok(m) => m,
        Err(e) => {
            crate::report::general(format!("metrics_textfile: reading the state: {e}"));
            Vec::new()
        }
    };
    let boot = crate::guard::decide(cfg, &host);
    let text = render(&last, &modules, &boot);
    if let Err(e) = write_atomic(path, text.as_bytes()) {
        crate::report::general(format!("metrics_textfile {}: {e}", path.display()));
    }
}

/// The textfile's text.
pub fn render(last: &LastSync, modules: &[StatusEntry], boot: &BootDecision) -> String {
    let mut reg = Registry::with_prefix("kmodforge_agent");
    let gauge = |reg: &mut Registry, name: &str, help: &str, value: i64| {
        let g: Gauge = Gauge::default();
        g.set(value);
        reg.register(name, help, g);
    };
    let float = |reg: &mut Registry, name: &str, help: &str, value: f64| {
        let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        g.set(value);
        reg.register(name, help, g);
    };
    gauge(
        &mut reg,
        "last_sync_success",
        "1 when the last sync installed (or found installed) everything it was asked for, else 0",
        i64::from(last.exit == Exit::Ok),
    );
    gauge(
        &mut reg,
        "last_sync_exit_code",
        "The last sync's exit status (agent/README.md lists them)",
        i64::from(last.exit.code()),
    );
    let unix = last
        .finished
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    float(
        &mut reg,
        "last_sync_timestamp_seconds",
        "When the last sync ended, in seconds since the Unix epoch",
        unix.floor(),
    );
    float(
        &mut reg,
        "last_sync_duration_seconds",
        "How long the last sync took",
        last.seconds,
    );
    register_modules(&mut reg, modules);
    register_boot(&mut reg, boot);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &reg);
    text
}

fn register_modules(reg: &mut Registry, modules: &[StatusEntry]) {
    let installed = Family::<ModuleLabels, Gauge>::default();
    let intact = Family::<ModuleLabels, Gauge>::default();
    let verified = Family::<ModuleLabels, Gauge>::default();
    for m in modules {
        let labels = ModuleLabels {
            kernel: m.kernel.to_string(),
            module: m.name.to_string(),
            version: m.version.to_string(),
        };
        installed.get_or_create(&labels).set(1);
        intact
            .get_or_create(&labels)
            .set(i64::from(!m.files_missing && !m.differs));
        verified
            .get_or_create(&labels)
            .set(i64::from(m.boot_verified));
    }
    reg.register(
        "module_installed",
        "1 for each module (DKMS package) the agent has installed on a kernel",
        installed,
    );
    reg.register(
        "module_intact",
        "1 when every installed file of the module is on disk with the sha256 it was installed with",
        intact,
    );
    reg.register(
        "module_boot_verified",
        "1 when the server's boot check of the installed artifact passed",
        verified,
    );
}

fn register_boot(reg: &mut Registry, boot: &BootDecision) {
    let active: Gauge = Gauge::default();
    active.set(i64::from(boot.active));
    reg.register(
        "boot_guard_active",
        "1 when the boot guard is on and a module is marked required",
        active,
    );
    let held: Gauge = Gauge::default();
    held.set(i64::from(boot.active && boot.held));
    reg.register(
        "boot_guard_held",
        "1 when the boot guard holds the boot default on an older kernel because the newest lacks a required module",
        held,
    );
    let missing = Family::<KernelLabel, Gauge>::default();
    for (kernel, lacks) in &boot.missing {
        let label = KernelLabel {
            kernel: kernel.to_string(),
        };
        missing
            .get_or_create(&label)
            .set(i64::try_from(lacks.len()).unwrap_or(i64::MAX));
    }
    reg.register(
        "kernel_required_modules_missing",
        "Required modules an installed kernel lacks (the boot guard will not boot it)",
        missing,
    );
}

/// Replaces `path` with `data`: a temp file beside it, fsynced, mode 0644, renamed.
/// The temp file is removed when any step fails.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests;
