//! `kmodforge-agent sync`: for each wanted module and kernel, ask the server for the
//! artifact (building it if needed), download and verify it, and install it with
//! DKMS's semantics (see `kmodforge_agent::host`).
//!
//! One line per (module, kernel) outcome; a failure does not stop the others; the
//! exit code is the worst outcome. With `--hook` (kernel package hooks) nothing
//! fails the caller: errors are reported and the exit code is 0.

use std::time::{Duration, Instant};

use kmodforge_agent::host::{
    Host, HostError, HostLock, InstallOptions, InstallReport, VerifiedArtifact,
};
use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::{BuildRequest, BuildState, Manifest};
use sha2::{Digest, Sha256};

use crate::client::{Client, ClientError};
use crate::config::{Config, WantedModule};
use crate::exitcode::Exit;
use crate::outcome::{describe_install, host_exit, not_applicable, BuildFailed};
use crate::report::{self, Subject};
use crate::wait::{self, Follow, WaitError};

/// How long a hook waits for another agent run to release the lock.
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
        }
    }

    fn unreachable(&self) -> bool {
        match self {
            SyncError::Client(e) | SyncError::Download { source: e, .. } => e.is_unreachable(),
            SyncError::Wait(WaitError::Client(e)) => e.is_unreachable(),
            _ => false,
        }
    }
}

/// What a successful (module, kernel) sync did.
enum Outcome {
    Unchanged,
    Installed(Box<InstallReport>),
    NotApplicable(String),
    /// With `--autoinstall`: dkms.conf does not set `AUTOINSTALL=yes`.
    NotAutoinstall,
}

/// Everything one pair needs.
struct Ctx<'a> {
    cfg: &'a Config,
    args: &'a SyncArgs,
    host: &'a Host,
    lock: &'a HostLock,
    client: &'a Client,
    running: Option<KernelRelease>,
}

/// Runs `sync`; returns the exit status.
pub fn run(cfg: &Config, args: &SyncArgs) -> Exit {
    let exit = run_inner(cfg, args);
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
    let lock = match acquire(&host, args.hook) {
        Ok(l) => l,
        Err(e) => {
            report::general(format!("sync: {e}"));
            return host_exit(&e);
        }
    };
    if let Some(r) = lock.recovered() {
        eprintln!(
            "kmodforge-agent: an interrupted run left a transaction for {} on {}: {:?}",
            r.module, r.kernel, r.action
        );
    }
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
    let client = match cfg
        .server()
        .map_err(|e| e.to_string())
        .and_then(|s| Client::new(s, &cfg.http).map_err(|e| e.to_string()))
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
        lock: &lock,
        client: &client,
        running,
    };
    sync_all(&ctx, &kernels)
}

fn sync_all(ctx: &Ctx, kernels: &[KernelRelease]) -> Exit {
    let mut worst = Exit::Ok;
    // Once the server did not answer, the other pairs are not tried (each would wait
    // out its own timeouts and retries).
    let mut down: Option<String> = None;
    for m in &ctx.cfg.modules {
        for k in kernels {
            let s = Subject {
                name: &m.name,
                version: &m.version,
                kernel: k,
            };
            let result = match &down {
                Some(why) => Err(SyncError::Skipped(format!("not synced: {why}"))),
                None => sync_one(ctx, m, k),
            };
            match result {
                Ok(Outcome::Unchanged) => report::outcome(&s, "unchanged (already installed)"),
                Ok(Outcome::Installed(r)) => report::outcome(&s, describe_install(&r)),
                Ok(Outcome::NotApplicable(why)) => report::outcome(&s, not_applicable(&why)),
                Ok(Outcome::NotAutoinstall) => report::outcome(
                    &s,
                    format!(
                        "skipped: dkms.conf does not set AUTOINSTALL=yes, so kernel hooks and the boot \
                         unit leave it alone as DKMS's autoinstall does (`kmodforge-agent sync --kernel {k}` \
                         installs it)"
                    ),
                ),
                Err(e) => {
                    if e.exit() == Exit::NotNewer {
                        report::error(&s, format!("{e} (--force installs it anyway)"));
                    } else {
                        report::error(&s, &e);
                    }
                    if let SyncError::Build(b) = &e {
                        report::log_tail(&b.log_tail);
                    }
                    if e.unreachable() {
                        down = Some(format!("server {} unreachable", ctx.client.base()));
                    }
                    worst = worst.worst(e.exit());
                }
            }
        }
    }
    worst
}

/// The lock; a hook waits for another run to finish instead of giving up.
fn acquire(host: &Host, hook: bool) -> Result<HostLock, HostError> {
    let deadline = Instant::now() + if hook { HOOK_LOCK_WAIT } else { Duration::ZERO };
    loop {
        match host.lock() {
            Err(HostError::LockHeld { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
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

fn sync_one(ctx: &Ctx, m: &WantedModule, k: &KernelRelease) -> Result<Outcome, SyncError> {
    if !ctx.host.has_kernel_tree(k) {
        return Err(HostError::NoKernelTree {
            kernel: k.clone(),
            path: ctx.host.paths.kernel_tree(k),
        }
        .into());
    }
    let manifest = match ctx.client.manifest(&m.name, &m.version, k)? {
        Some(man) => man,
        None => match build(ctx, m, k)? {
            Ok(man) => man,
            Err(why) => return Ok(Outcome::NotApplicable(why)),
        },
    };
    // DKMS's autoinstall (its kernel hook and boot service) installs only
    // AUTOINSTALL=yes modules.
    if ctx.args.autoinstall && !manifest.plan.autoinstall {
        return Ok(Outcome::NotAutoinstall);
    }
    if !ctx.args.force && already_installed(ctx.host, m, k, &manifest)? {
        return Ok(Outcome::Unchanged);
    }
    let mut files = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let bytes = ctx
            .client
            .file(&m.name, &m.version, k, &f.file)
            .map_err(|source| SyncError::Download {
                file: f.file.clone(),
                source,
            })?;
        files.push((f.file.clone(), bytes));
    }
    let verified = VerifiedArtifact::verify(manifest, files, k)?;
    let opts = InstallOptions {
        force: ctx.args.force,
        run_depmod: true,
        modprobe: ctx.cfg.modprobe_on_install,
        running: ctx.running.clone(),
    };
    let r = ctx.host.install(ctx.lock, &verified, &opts)?;
    Ok(if r.unchanged {
        Outcome::Unchanged
    } else {
        Outcome::Installed(Box::new(r))
    })
}

/// Builds on the server: the manifest, or `Err(message)` when not applicable.
fn build(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
) -> Result<Result<Manifest, String>, SyncError> {
    let req = BuildRequest {
        name: m.name.clone(),
        version: m.version.clone(),
        kernel: k.clone(),
        arch: None,
        options: Default::default(),
    };
    let label = format!("{}/{} on {k}", m.name, m.version);
    let done = wait::build_and_wait(ctx.client, &req, &label, Follow::for_sync(ctx.args.verbose))?;
    let b = done.build;
    match (b.state, done.artifact) {
        (BuildState::Succeeded, Some(man)) => Ok(Ok(man)),
        (BuildState::NotApplicable, _) => Ok(Err(b.failure.map(|f| f.message).unwrap_or_default())),
        _ => Err(SyncError::Build(Box::new(BuildFailed::from_record(b)))),
    }
}

/// True when the state records this very artifact and every file is on disk with
/// its recorded sha256 (nothing to download).
fn already_installed(
    host: &Host,
    m: &WantedModule,
    k: &KernelRelease,
    manifest: &Manifest,
) -> Result<bool, SyncError> {
    let Some(rec) = host.installed(&m.name, &m.version, k)? else {
        return Ok(false);
    };
    if rec.artifact_key != manifest.key.as_str() {
        return Ok(false);
    }
    Ok(rec.files.iter().all(|(_, sha, path)| {
        std::fs::read(path).is_ok_and(|bytes| hex::encode(Sha256::digest(&bytes)) == *sha)
    }))
}
