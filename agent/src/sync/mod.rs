//! `kmodforge-agent sync`: for each wanted module and kernel, ask the server for the
//! artifact (building it if needed), download and verify it, and install it with
//! DKMS's semantics (see `kmodforge_agent::host`).
//!
//! One line per (module, kernel) outcome; a failure does not stop the others; the
//! exit code is the worst outcome. With `--hook` (kernel package hooks) nothing
//! fails the caller: errors are reported and the exit code is 0.
//!
//! Two phases. First, without the host lock, every pair is fetched, waited for,
//! checked and verified into memory (`fetch`, `checks`): a build wait may take an
//! hour, and neither a kernel hook nor a killed agent must depend on it. Then the
//! lock is taken (waited for, bounded) only to install what was verified and to
//! record boot checks; a kernel removed in between is skipped, so its modules and
//! state are never left behind.
//!
//! Boot checks (see `boot`): an artifact whose check failed is refused (exit 5), also
//! when it is already installed (it stays installed, the state records the failure);
//! with `require_boot_check` an artifact without a check is checked first.

mod checks;
mod fetch;
#[cfg(test)]
pub(crate) mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use kmodforge_agent::host::secureboot::{self, SigState};
use kmodforge_agent::host::{
    Host, HostError, HostLock, InstallOptions, InstallReport, VerifiedArtifact,
};
use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::Manifest;

use crate::boot::Refusal;
use crate::client::{Client, ClientError};
use crate::config::{Config, WantedModule};
use crate::exitcode::Exit;
use crate::outcome::{describe_install, host_exit, not_applicable, BuildFailed};
use crate::report::{self, Subject};
use crate::wait::WaitError;

/// How long a hook waits, at least, for another agent run to release the lock.
const HOOK_LOCK_WAIT: Duration = Duration::from_secs(300);

/// What `sync` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct SyncArgs {
    /// `--kernel`: exactly these kernels.
    pub kernels: Vec<KernelRelease>,
    /// `--all-kernels`: every kernel directory under the modules dir, too.
    pub all_kernels: bool,
    pub force: bool,
    pub verbose: bool,
    /// Run from a kernel hook: never fail.
    pub hook: bool,
    /// Skip modules without `AUTOINSTALL=yes` (DKMS's autoinstall).
    pub autoinstall: bool,
}

/// Why one (module, kernel) was not synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Wait(#[from] WaitError),
    #[error("{0}")]
    Build(Box<BuildFailed>),
    #[error("downloading {file}: {source}")]
    Download { file: String, source: ClientError },
    #[error("{0}")]
    Host(Box<HostError>),
    #[error("{0}")]
    Skipped(String),
    /// The artifact's boot check failed, or none passed while one is required.
    #[error("{0}")]
    BootCheck(Box<Refusal>),
    /// With `trusted_keys` pinned: the manifest or a file cannot be trusted.
    #[error("untrusted: {0}")]
    Untrusted(String),
    /// This host enforces module signatures and would refuse these modules.
    #[error("{0}")]
    NotEnrolled(String),
}

impl From<HostError> for SyncError {
    fn from(e: HostError) -> Self {
        SyncError::Host(Box::new(e))
    }
}

impl SyncError {
    pub fn exit(&self) -> Exit {
        match self {
            SyncError::Client(e) | SyncError::Download { source: e, .. } => e.exit(),
            SyncError::Wait(e) => e.exit(),
            SyncError::Build(_) => Exit::BuildFailed,
            SyncError::Host(e) => host_exit(e),
            SyncError::Skipped(_) => Exit::Unreachable,
            SyncError::BootCheck(_) => Exit::Verification,
            SyncError::Untrusted(_) => Exit::Untrusted,
            SyncError::NotEnrolled(_) => Exit::NotEnrolled,
        }
    }

    fn client_error(&self) -> Option<&ClientError> {
        match self {
            SyncError::Client(e) | SyncError::Download { source: e, .. } => Some(e),
            SyncError::Wait(WaitError::Client(e)) => Some(e),
            _ => None,
        }
    }

    fn unreachable(&self) -> bool {
        self.client_error().is_some_and(ClientError::is_unreachable)
    }

    fn auth_refused(&self) -> bool {
        self.client_error().is_some_and(ClientError::is_auth)
    }
}

/// What a successful (module, kernel) sync did.
enum Outcome {
    /// Already installed and intact; `verified_now` when the state has just recorded
    /// a passed boot check for it.
    Unchanged {
        verified_now: bool,
    },
    /// Installed; the note says whether it is boot-verified.
    Installed(Box<InstallReport>, &'static str),
    NotApplicable(String),
    /// With `--autoinstall`: dkms.conf does not set `AUTOINSTALL=yes`.
    NotAutoinstall,
    /// The kernel's module tree went away while the artifact was fetched (the
    /// kernel was removed): nothing installed.
    KernelGone,
}

/// What phase 1 settled for one pair; phase 2 carries it out under the lock.
enum Prepared {
    /// Verified in memory, to install; the note says whether it is boot-verified.
    Install(Box<VerifiedArtifact>, &'static str),
    /// This very artifact is installed and intact; its boot check may need recording.
    Unchanged(Box<Manifest>),
    NotApplicable(String),
    NotAutoinstall,
    /// The kernel went away (removed) since the run picked it.
    KernelGone,
    /// Refused for its boot check; an installed copy gets the failure recorded.
    Refused(Option<Box<Manifest>>, Box<Refusal>),
}

impl Prepared {
    /// True when phase 2 writes the host (and so needs the lock).
    fn needs_lock(&self) -> bool {
        match self {
            Prepared::Install(..) => true,
            Prepared::Unchanged(m) => m.boot_check.is_some(),
            Prepared::Refused(m, _) => m.as_ref().is_some_and(|m| m.boot_check.is_some()),
            Prepared::NotApplicable(_) | Prepared::NotAutoinstall | Prepared::KernelGone => false,
        }
    }
}

/// Everything one pair needs (no lock: see the module's doc).
struct Ctx<'a> {
    cfg: &'a Config,
    args: &'a SyncArgs,
    host: &'a Host,
    client: &'a Client,
    running: Option<KernelRelease>,
    /// The host's module signature enforcement (`None`: `secure_boot_check = false`).
    sig: Option<SigState>,
    /// Enrolment verdicts by certificate sha256, once per run.
    enrolment: RefCell<HashMap<String, Result<(), String>>>,
}

/// Runs `sync`; returns the exit status.
pub fn run(cfg: &Config, args: &SyncArgs) -> Exit {
    let started = Instant::now();
    let exit = run_inner(cfg, args);
    crate::textfile::after_sync(cfg, started, exit);
    if args.hook && exit != Exit::Ok {
        report::general(format!(
            "kernel hook: not failing the kernel package (exit {} ignored); whatever was installed \
             is kept, and kmodforge-agent-sync.service retries at the next boot",
            exit.code()
        ));
        return Exit::Ok;
    }
    exit
}

fn run_inner(cfg: &Config, args: &SyncArgs) -> Exit {
    let host = Host::new(cfg.paths.clone());
    let running = crate::running_kernel(cfg);
    let kernels = pick_kernels(&host, args, running.as_ref());
    if cfg.modules.is_empty() || kernels.is_empty() {
        report::general(format!(
            "sync: nothing to do ({} module(s) in {}, {} kernel(s) found under {})",
            cfg.modules.len(),
            cfg.source.display(),
            kernels.len(),
            cfg.paths.modules_dir.display()
        ));
        return Exit::Ok;
    }
    // A kernel hook waits for a build at most hook_wait_secs, then leaves the boot
    // guard in charge (the boot unit retries later).
    let mut http = cfg.http.clone();
    if args.hook {
        http.build_wait = http.build_wait.min(cfg.hook_wait);
    }
    let client = match cfg
        .server()
        .map_err(|e| e.to_string())
        .and_then(|s| Client::new(s, &http).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            report::general(format!("sync: {e}"));
            return Exit::Usage;
        }
    };
    let ctx = Ctx {
        cfg,
        args,
        host: &host,
        client: &client,
        running,
        sig: cfg.secure_boot_check.then(|| secureboot::read(&cfg.paths)),
        enrolment: RefCell::new(HashMap::new()),
    };
    sync_all(&ctx, &kernels)
}

/// Phase 1 for every pair, then phase 2 under one lock for those that need it.
fn sync_all(ctx: &Ctx, kernels: &[KernelRelease]) -> Exit {
    let mut worst = Exit::Ok;
    let mut prepared: Vec<(&WantedModule, &KernelRelease, Prepared)> = Vec::new();
    // Once the server did not answer, the other pairs are not tried (each would wait
    // out its own timeouts and retries).
    let mut down: Option<String> = None;
    for m in &ctx.cfg.modules {
        for k in kernels {
            let result = match &down {
                Some(why) => Err(SyncError::Skipped(format!("not synced: {why}"))),
                None => fetch::prepare(ctx, m, k),
            };
            match result {
                Ok(p) if p.needs_lock() => prepared.push((m, k, p)),
                Ok(p) => worst = worst.worst(conclude(ctx, m, k, carry_out(ctx, None, m, k, p))),
                Err(e) => {
                    if e.unreachable() {
                        down = Some(format!("server {} unreachable", ctx.client.base()));
                    }
                    if e.auth_refused() {
                        down = Some(format!(
                            "server {} refused this host's token",
                            ctx.client.base()
                        ));
                    }
                    worst = worst.worst(conclude(ctx, m, k, Err(e)));
                }
            }
        }
    }
    let guard = ctx.cfg.boot_guard && ctx.cfg.modules.iter().any(|m| m.required);
    if prepared.is_empty() && !guard {
        return worst;
    }
    let lock = match acquire(ctx.host, ctx.cfg, ctx.args.hook) {
        Ok(l) => l,
        Err(e) => {
            report::general(format!("sync: {e}"));
            return worst.worst(host_exit(&e));
        }
    };
    if let Some(r) = lock.recovered() {
        eprintln!(
            "kmodforge-agent: an interrupted run left a transaction for {} on {}: {:?}",
            r.module, r.kernel, r.action
        );
    }
    for (m, k, p) in prepared {
        worst = worst.worst(conclude(ctx, m, k, carry_out(ctx, Some(&lock), m, k, p)));
    }
    if guard {
        crate::guard::report(crate::guard::apply(ctx.cfg, ctx.host, &lock));
    }
    worst
}

/// Phase 2 of one pair: install, or record a boot check, under `lock`.
fn carry_out(
    ctx: &Ctx,
    lock: Option<&HostLock>,
    m: &WantedModule,
    k: &KernelRelease,
    p: Prepared,
) -> Result<Outcome, SyncError> {
    match (p, lock) {
        (Prepared::NotApplicable(why), _) => Ok(Outcome::NotApplicable(why)),
        (Prepared::NotAutoinstall, _) => Ok(Outcome::NotAutoinstall),
        (Prepared::KernelGone, _) => Ok(Outcome::KernelGone),
        (Prepared::Refused(manifest, mut r), lock) => {
            // A failed check of the installed artifact is recorded (the files stay: a
            // sync never removes an installed module).
            let to_record = manifest
                .as_ref()
                .and_then(|man| man.boot_check.as_ref().map(|c| (man, c)));
            if let (Some((man, check)), Some(lock)) = (to_record, lock) {
                let recorded = ctx.host.record_boot_check(
                    lock,
                    &m.name,
                    &m.version,
                    k,
                    man.key.as_str(),
                    check,
                );
                if let Err(e) = recorded {
                    r.message
                        .push_str(&format!("; warning: recording it in the state failed: {e}"));
                }
            }
            Err(SyncError::BootCheck(r))
        }
        (Prepared::Unchanged(manifest), lock) => {
            let recorded = match (&manifest.boot_check, lock) {
                (Some(check), Some(lock)) => ctx.host.record_boot_check(
                    lock,
                    &m.name,
                    &m.version,
                    k,
                    manifest.key.as_str(),
                    check,
                )?,
                _ => false,
            };
            let passed = manifest.boot_check.as_ref().is_some_and(|c| c.passed);
            Ok(Outcome::Unchanged {
                verified_now: recorded && passed,
            })
        }
        (Prepared::Install(..), None) => {
            unreachable!("an install is carried out under the lock (needs_lock)")
        }
        (Prepared::Install(verified, note), Some(lock)) => {
            if !ctx.host.has_kernel_tree(k) {
                return Ok(Outcome::KernelGone);
            }
            let opts = InstallOptions {
                force: ctx.args.force,
                run_depmod: true,
                modprobe: ctx.cfg.modprobe_on_install,
                running: ctx.running.clone(),
            };
            let r = ctx.host.install(lock, &verified, &opts)?;
            Ok(if r.unchanged {
                Outcome::Unchanged {
                    verified_now: false,
                }
            } else {
                Outcome::Installed(Box::new(r), note)
            })
        }
    }
}

/// Reports one pair's outcome; returns its exit status.
fn conclude(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
    result: Result<Outcome, SyncError>,
) -> Exit {
    let s = Subject {
        name: &m.name,
        version: &m.version,
        kernel: k,
    };
    match result {
        Ok(Outcome::Unchanged { verified_now }) => report::outcome(
            &s,
            if verified_now {
                "unchanged (already installed; boot-verified now)"
            } else {
                "unchanged (already installed)"
            },
        ),
        Ok(Outcome::Installed(r, note)) => report::outcome(&s, format!("{}{note}", describe_install(&r))),
        Ok(Outcome::NotApplicable(why)) => report::outcome(&s, not_applicable(&why)),
        Ok(Outcome::NotAutoinstall) => report::outcome(
            &s,
            format!(
                "skipped: dkms.conf does not set AUTOINSTALL=yes, so kernel hooks and the boot \
                 unit leave it alone as DKMS's autoinstall does (`kmodforge-agent sync --kernel {k}` \
                 installs it)"
            ),
        ),
        Ok(Outcome::KernelGone) => report::outcome(
            &s,
            "not installed: the kernel was removed while its modules were fetched",
        ),
        Err(e) => {
            if e.exit() == Exit::NotNewer {
                report::error(&s, format!("{e} (--force installs it anyway)"));
            } else {
                report::error(&s, &e);
            }
            match &e {
                SyncError::Build(b) => report::log_tail(&b.log_tail),
                SyncError::BootCheck(r) if ctx.args.verbose => report::log_tail(&r.console_tail),
                _ => {}
            }
            return e.exit();
        }
    }
    Exit::Ok
}

/// The lock, waited for: `lock_wait_secs` (default 30 s; runs hold it only while
/// installing), a hook at least 5 minutes.
pub(crate) fn acquire(host: &Host, cfg: &Config, hook: bool) -> Result<HostLock, HostError> {
    let wait = if hook {
        cfg.lock_wait.max(HOOK_LOCK_WAIT)
    } else {
        cfg.lock_wait
    };
    let deadline = Instant::now() + wait;
    loop {
        match host.lock() {
            Err(HostError::LockHeld { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// `--kernel`s, else the running kernel and the installed ones; `--all-kernels` adds
/// every kernel directory under the modules dir (no `modules.dep` or image needed).
fn pick_kernels(
    host: &Host,
    args: &SyncArgs,
    running: Option<&KernelRelease>,
) -> Vec<KernelRelease> {
    if !args.kernels.is_empty() {
        let mut k = args.kernels.clone();
        k.dedup();
        return k;
    }
    let mut kernels = host.default_kernels(running);
    if args.all_kernels {
        let dirs = std::fs::read_dir(&host.paths.modules_dir)
            .into_iter()
            .flatten();
        for entry in dirs.flatten() {
            let name = entry.file_name();
            if let Ok(k) = KernelRelease::parse(&name.to_string_lossy()) {
                if entry.path().is_dir() && !kernels.contains(&k) {
                    kernels.push(k);
                }
            }
        }
    }
    kernels
}
