//! `kmodforge-agent sync`: for each wanted module and kernel, ask the server for the
//! artifact (building it if needed), download and verify it, and install it with
//! DKMS's semantics (see `kmodforge_agent::host`).
//!
//! One line per (module, kernel) outcome; a failure does not stop the others; the
//! exit code is the worst outcome. With `--hook` (kernel package hooks) nothing
//! fails the caller: errors are reported and the exit code is 0.
//!
//! Boot checks (see `boot`): an artifact whose check failed is refused (exit 5), also
//! when it is already installed (it stays installed, the state records the failure);
//! with `require_boot_check` an artifact without a check is checked first.

use std::time::{Duration, Instant};

use kmodforge_agent::host::{
    Host, HostError, HostLock, InstallOptions, InstallReport, VerifiedArtifact,
};
use std::cell::RefCell;
use std::collections::HashMap;

use kmodforge_agent::host::secureboot::{self, Enrolled, SigState};
use kmodforge_api::names::{Arch, KernelRelease};
use kmodforge_api::wire::{BuildRequest, BuildState, Manifest, ModuleSigning};

use crate::boot::{self, Refusal, Verdict};
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
}

/// Everything one pair needs.
struct Ctx<'a> {
    cfg: &'a Config,
    args: &'a SyncArgs,
    host: &'a Host,
    lock: &'a HostLock,
    client: &'a Client,
    running: Option<KernelRelease>,
    /// The host's module signature enforcement (`None`: `secure_boot_check = false`).
    sig: Option<SigState>,
    /// Enrolment verdicts by certificate sha256, once per run.
    enrolment: RefCell<HashMap<String, Result<(), String>>>,
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
        sig: cfg.secure_boot_check.then(|| secureboot::read(&cfg.paths)),
        enrolment: RefCell::new(HashMap::new()),
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
                Ok(Outcome::Unchanged { verified_now }) => report::outcome(
                    &s,
                    if verified_now {
                        "unchanged (already installed; boot-verified now)"
                    } else {
                        "unchanged (already installed)"
                    },
                ),
                Ok(Outcome::Installed(r, note)) => {
                    report::outcome(&s, format!("{}{note}", describe_install(&r)))
                }
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
                    match &e {
                        SyncError::Build(b) => report::log_tail(&b.log_tail),
                        SyncError::BootCheck(r) if ctx.args.verbose => {
                            report::log_tail(&r.console_tail)
                        }
                        _ => {}
                    }
                    if e.unreachable() {
                        down = Some(format!("server {} unreachable", ctx.client.base()));
                    }
                    if e.auth_refused() {
                        down = Some(format!("server {} refused this host's token", ctx.client.base()));
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
    let required = ctx.cfg.require_boot_check;
    let (manifest, asked) = match ctx.client.manifest(&m.name, &m.version, k)? {
        Some(man) => (man, false),
        None => match build(ctx, m, k, boot::request_flag(required))? {
            Fetched::Artifact(man) => (*man, required),
            Fetched::NotApplicable(why) => return Ok(Outcome::NotApplicable(why)),
        },
    };
    // DKMS's autoinstall (its kernel hook and boot service) installs only
    // AUTOINSTALL=yes modules.
    if ctx.args.autoinstall && !manifest.plan.autoinstall {
        return Ok(Outcome::NotAutoinstall);
    }
    let manifest = match boot_checked(ctx, m, k, manifest, asked)? {
        Fetched::Artifact(man) => *man,
        Fetched::NotApplicable(why) => return Ok(Outcome::NotApplicable(why)),
    };
    let manifest_key = trusted(ctx, m, k, &manifest)?;
    loadable_here(ctx, &manifest)?;
    if !ctx.args.force && already_installed(ctx.host, m, k, &manifest)? {
        let recorded = match &manifest.boot_check {
            Some(check) => ctx.host.record_boot_check(
                ctx.lock,
                &m.name,
                &m.version,
                k,
                manifest.key.as_str(),
                check,
            )?,
            None => false,
        };
        let passed = manifest.boot_check.as_ref().is_some_and(|c| c.passed);
        return Ok(Outcome::Unchanged {
            verified_now: recorded && passed,
        });
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
    let note = boot::note(manifest.boot_check.as_ref());
    let mut verified = VerifiedArtifact::verify(manifest, files, k).map_err(|e| match e {
        // Against a verified statement a changed file is a trust failure, not a bad download.
        HostError::Sha256Mismatch { .. } if manifest_key.is_some() => {
            SyncError::Untrusted(format!("a file does not match the signed manifest: {e}"))
        }
        other => other.into(),
    })?;
    verified.manifest_key = manifest_key;
    let opts = InstallOptions {
        force: ctx.args.force,
        run_depmod: true,
        modprobe: ctx.cfg.modprobe_on_install,
        running: ctx.running.clone(),
    };
    let r = ctx.host.install(ctx.lock, &verified, &opts)?;
    Ok(if r.unchanged {
        Outcome::Unchanged {
            verified_now: false,
        }
    } else {
        Outcome::Installed(Box::new(r), note)
    })
}

/// With `trusted_keys`: the manifest is signed by one of them and is about this
/// module, version, kernel and arch; returns the key. `None` when no key is pinned.
fn trusted(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
    manifest: &Manifest,
) -> Result<Option<String>, SyncError> {
    let keys = &ctx.cfg.trusted_keys;
    if keys.is_empty() {
        return Ok(None);
    }
    keys.verify(manifest, &m.name, &m.version, k, &Arch::host_default())
        .map(|(key, _)| Some(key))
        .map_err(|e| SyncError::Untrusted(e.to_string()))
}

/// On a host that enforces module signatures: the modules must be signed by a key
/// this host has enrolled, else they would not load after the next reboot.
fn loadable_here(ctx: &Ctx, manifest: &Manifest) -> Result<(), SyncError> {
    let Some(state) = ctx.sig.as_ref().filter(|s| s.enforces()) else {
        return Ok(());
    };
    let signing = manifest.module_signing.clone().unwrap_or_default();
    let (true, Some(sha)) = (signing.signed, signing.certificate_sha256.clone()) else {
        return Err(SyncError::NotEnrolled(format!(
            "this host enforces module signatures ({}) and the artifact is unsigned: it would not load \
             (Key was rejected by service); have the server sign it (its default, or \"sign\": true)",
            state.why()
        )));
    };
    if let Some(verdict) = ctx.enrolment.borrow().get(&sha) {
        return verdict.clone().map_err(SyncError::NotEnrolled);
    }
    let verdict = enrolment(ctx, state, &signing, &sha)?;
    ctx.enrolment.borrow_mut().insert(sha, verdict.clone());
    verdict.map_err(SyncError::NotEnrolled)
}

/// Whether the certificate `sha` is enrolled (mokutil), as a verdict for every
/// artifact signed with it.
fn enrolment(
    ctx: &Ctx,
    state: &SigState,
    signing: &ModuleSigning,
    sha: &str,
) -> Result<Result<(), String>, SyncError> {
    let der = ctx.client.module_certificate(sha)?;
    if hex::encode(Sha256::digest(&der)) != sha {
        return Err(SyncError::Untrusted(format!(
            "the server's module-signing certificate {sha} does not have that sha256"
        )));
    }
    let path = secureboot::cert_path(&ctx.cfg.paths, sha);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| HostError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    std::fs::write(&path, &der).map_err(|e| HostError::Io {
        path: path.clone(),
        source: e,
    })?;
    let who = format!(
        "the server's module-signing key ({}, serial {}, certificate sha256 {sha})",
        signing.signer.as_deref().unwrap_or("?"),
        signing.key_id.as_deref().unwrap_or("?")
    );
    Ok(match secureboot::test_key(&ctx.cfg.paths.mokutil, &path) {
        Enrolled::Yes => Ok(()),
        Enrolled::No => Err(format!(
            "this host enforces module signatures ({}) and {who} is not enrolled: its modules would \
             not load (Key was rejected by service). Enrol it with `kmodforge-agent mok enroll`, then \
             reboot and confirm the enrolment in the MOK manager",
            state.why()
        )),
        Enrolled::Unknown(why) => Err(format!(
            "this host enforces module signatures ({}) and cannot tell whether {who} is enrolled ({why}); \
             enrol it with `kmodforge-agent mok enroll`, or set secure_boot_check = false if this kernel \
             trusts the key by other means",
            state.why()
        )),
    })
}

/// An artifact from the server, or why the kernel is excluded (BUILD_EXCLUSIVE).
enum Fetched {
    Artifact(Box<Manifest>),
    NotApplicable(String),
}

/// The artifact once its boot check is settled: accepted as is, or after asking the
/// server for a check (`require_boot_check`), or refused. `asked`: the manifest
/// came from a request with `boot_check: true` already.
fn boot_checked(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
    manifest: Manifest,
    asked: bool,
) -> Result<Fetched, SyncError> {
    let required = ctx.cfg.require_boot_check;
    match boot::verdict(manifest.boot_check.as_ref(), required, asked) {
        Verdict::Accept => Ok(Fetched::Artifact(Box::new(manifest))),
        Verdict::Refuse(r) => Err(refuse(ctx, m, k, Some(&manifest), r)),
        Verdict::Check => match build(ctx, m, k, Some(true))? {
            Fetched::Artifact(man) => boot_checked(ctx, m, k, *man, true),
            na @ Fetched::NotApplicable(_) => Ok(na),
        },
    }
}

/// The error refusing an artifact. A failed check of the artifact that is installed
/// is recorded in the state first (the files stay: an installed module is never
/// removed by a sync).
fn refuse(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
    manifest: Option<&Manifest>,
    mut r: Refusal,
) -> SyncError {
    if let Some((man, check)) = manifest.and_then(|man| man.boot_check.as_ref().map(|c| (man, c))) {
        let recorded =
            ctx.host
                .record_boot_check(ctx.lock, &m.name, &m.version, k, man.key.as_str(), check);
        if let Err(e) = recorded {
            r.message
                .push_str(&format!("; warning: recording it in the state failed: {e}"));
        }
    }
    SyncError::BootCheck(Box::new(r))
}

/// Builds on the server (or has the boot check run, with `boot_check: Some(true)` on
/// a cached artifact): the manifest, or why the kernel is not applicable.
fn build(
    ctx: &Ctx,
    m: &WantedModule,
    k: &KernelRelease,
    boot_check: Option<bool>,
) -> Result<Fetched, SyncError> {
    let req = BuildRequest {
        name: m.name.clone(),
        version: m.version.clone(),
        kernel: k.clone(),
        arch: None,
        options: Default::default(),
        boot_check,
        // A host that enforces signatures needs signed modules, whatever the server's default.
        sign: ctx.sig.as_ref().filter(|s| s.enforces()).map(|_| true),
    };
    let mut label = format!("{}/{} on {k}", m.name, m.version);
    if boot_check == Some(true) {
        label.push_str(" (boot check)");
    }
    let done = wait::build_and_wait(ctx.client, &req, &label, Follow::for_sync(ctx.args.verbose))?;
    if let Some(r) = boot::failed_build(&done) {
        return Err(refuse(ctx, m, k, done.artifact.as_ref(), r));
    }
    let b = done.build;
    match (b.state, done.artifact) {
        (BuildState::Succeeded, Some(man)) => Ok(Fetched::Artifact(Box::new(man))),
        (BuildState::NotApplicable, _) => Ok(Fetched::NotApplicable(
            b.failure.map(|f| f.message).unwrap_or_default(),
        )),
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

#[cfg(test)]
pub(crate) mod tests {
    //! `sync` against a fake server (plain HTTP on a local port) and a temp root with
    //! the real depmod: the boot-check decisions end to end on the agent's side.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use kmodforge_agent::host::{Host, StatusEntry};
    use kmodforge_api::wire::{BootCheck, BuildResponse, BuildState, FailureKind, Manifest};

    use super::*;
    use crate::boot::tests::{check, response};
    use crate::test_support::{add_kernel, manifest, tree, Ko, K1};

    const DEST: &str = "updates/dkms/kmf_hello.ko";

    /// A manifest (of other bytes than a real module) for tests that do not install.
    pub(crate) fn manifest_for_tests() -> Manifest {
        manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", b"not a module")])
    }

    /// What the fake server answers, and what it was asked.
    struct Fake {
        /// `GET /v1/artifacts/...` (None: 404 not_found).
        manifest: Option<Manifest>,
        /// `POST /v1/builds`; its artifact becomes the stored manifest, as the
        /// server records a check it ran.
        build: Option<BuildResponse>,
        ko: Vec<u8>,
        /// The bodies of the `POST /v1/builds` received.
        posts: Vec<serde_json::Value>,
    }

    type Shared = Arc<Mutex<Fake>>;

    fn serve(fake: Shared) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                handle(&fake, stream);
            }
        });
        format!("http://{addr}")
    }

    fn handle(fake: &Shared, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, out) = route(fake, &method, &path, &body);
        let mut stream = stream;
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            out.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&out);
    }

    fn route(fake: &Shared, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut f = fake.lock().expect("fake state");
        let not_found = (
            404,
            br#"{"error":{"kind":"not_found","message":"no such thing"}}"#.to_vec(),
        );
        match method {
            "GET" if path.contains("/files/") => (200, f.ko.clone()),
            "GET" if path.starts_with("/v1/artifacts/") => match &f.manifest {
                Some(m) => (200, json(m)),
                None => not_found,
            },
            "POST" if path == "/v1/builds" => {
                f.posts
                    .push(serde_json::from_slice(body).expect("a JSON build request"));
                match f.build.clone() {
                    Some(resp) => {
                        if let Some(m) = &resp.artifact {
                            f.manifest = Some(m.clone());
                        }
                        (200, json(&resp))
                    }
                    None => not_found,
                }
            }
            _ => not_found,
        }
    }

    fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).expect("serialise")
    }

    /// A temp root with kernel K1, the fake server, and the config.
    struct World {
        root: tempfile::TempDir,
        fake: Shared,
        url: String,
        ko: Vec<u8>,
    }

    impl World {
        fn new() -> World {
            let root = tempfile::tempdir().expect("temp dir");
            add_kernel(root.path(), K1);
            let ko = Ko::new("kmf_hello", "1.0", "ABC", K1).build();
            let fake = Arc::new(Mutex::new(Fake {
                manifest: None,
                build: None,
                ko: ko.clone(),
                posts: Vec::new(),
            }));
            let url = serve(fake.clone());
            World {
                root,
                fake,
                url,
                ko,
            }
        }

        /// The real module's manifest, with `boot`.
        fn manifest(&self, boot: Option<BootCheck>) -> Manifest {
            let mut m = manifest("kmf_hello", "1.0", K1, &[("kmf_hello.ko", &self.ko)]);
            m.boot_check = boot;
            m
        }

        fn set(&self, stored: Option<Manifest>, build: Option<BuildResponse>) {
            let mut f = self.fake.lock().expect("fake state");
            f.manifest = stored;
            f.build = build;
        }

        fn posts(&self) -> Vec<serde_json::Value> {
            std::mem::take(&mut self.fake.lock().expect("fake state").posts)
        }

        fn sync(&self, require: bool) -> Exit {
            let text = format!(
                "server = \"{}\"\nroot = \"{}\"\nrunning_kernel = \"{K1}\"\nretries = 0\n\
                 require_boot_check = {require}\n[[module]]\nname = \"kmf_hello\"\nversion = \"1.0\"\n",
                self.url,
                self.root.path().display()
            );
            let cfg = Config::parse(Path::new("agent.toml"), &text).expect("config");
            run_inner(&cfg, &SyncArgs::default())
        }

        fn status(&self) -> Vec<StatusEntry> {
            Host::new(kmodforge_agent::host::HostPaths::under(self.root.path()))
                .status(None)
                .expect("status")
        }

        fn ko_path(&self) -> PathBuf {
            tree(self.root.path(), K1).join(DEST)
        }
    }

    fn succeeded(m: Manifest) -> BuildResponse {
        response(BuildState::Succeeded, None, Some(m))
    }

    fn check_failed(m: Manifest) -> BuildResponse {
        response(
            BuildState::Failed,
            Some((
                FailureKind::BootCheckFailed,
                "kmf_hello/1.0 on 6.1.0-47-amd64: boot check failed: kmf_hello.ko did not load",
            )),
            Some(m),
        )
    }

    fn mtime(p: &Path) -> std::time::SystemTime {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .expect("mtime")
    }

    #[test]
    fn required_without_a_check_asks_for_one_then_installs_and_records_it() {
        let w = World::new();
        w.set(
            Some(w.manifest(None)),
            Some(succeeded(w.manifest(Some(check(true, None))))),
        );
        assert_eq!(w.sync(true), Exit::Ok);
        let posts = w.posts();
        assert_eq!(posts.len(), 1, "{posts:?}");
        assert_eq!(posts[0]["boot_check"], true);
        assert!(w.ko_path().is_file());
        let st = w.status();
        assert!(st[0].boot_verified, "{st:?}");
        assert_eq!(
            st[0].boot_check.as_ref().map(|c| c.checked_at.as_str()),
            Some("2026-01-02T03:04:05Z")
        );
        // Verified now: the next sync asks for nothing.
        assert_eq!(w.sync(true), Exit::Ok);
        assert!(w.posts().is_empty());
    }

    #[test]
    fn a_missing_artifact_is_built_with_the_check_when_required_and_the_default_otherwise() {
        let w = World::new();
        w.set(None, Some(succeeded(w.manifest(None))));
        assert_eq!(w.sync(false), Exit::Ok);
        let posts = w.posts();
        assert_eq!(posts.len(), 1);
        assert!(posts[0].get("boot_check").is_none(), "{posts:?}");
        let st = w.status();
        assert!(!st[0].boot_verified && st[0].boot_check.is_none());

        let w = World::new();
        w.set(None, Some(succeeded(w.manifest(Some(check(true, None))))));
        assert_eq!(w.sync(true), Exit::Ok);
        let posts = w.posts();
        assert_eq!(posts.len(), 1, "one request builds and checks: {posts:?}");
        assert_eq!(posts[0]["boot_check"], true);
        assert!(w.status()[0].boot_verified);
    }

    #[test]
    fn a_failed_check_is_refused_whatever_the_config_and_installs_nothing() {
        for require in [false, true] {
            let w = World::new();
            w.set(Some(w.manifest(Some(check(false, Some("panic"))))), None);
            assert_eq!(w.sync(require), Exit::Verification);
            assert!(w.posts().is_empty(), "a failed check is not asked again");
            assert!(!w.ko_path().exists());
            assert!(w.status().is_empty());
        }
        // A build that fails its check: exit 5, not 4.
        for require in [false, true] {
            let w = World::new();
            w.set(
                None,
                Some(check_failed(w.manifest(Some(check(false, Some("x")))))),
            );
            assert_eq!(w.sync(require), Exit::Verification);
            assert!(!w.ko_path().exists());
            assert!(w.status().is_empty());
        }
    }

    #[test]
    fn required_but_the_server_gives_no_check_is_refused() {
        let w = World::new();
        w.set(Some(w.manifest(None)), Some(succeeded(w.manifest(None))));
        assert_eq!(w.sync(true), Exit::Verification);
        assert_eq!(w.posts().len(), 1, "asked once, not in a loop");
        assert!(!w.ko_path().exists());
        // Not required: installed as is.
        assert_eq!(w.sync(false), Exit::Ok);
        assert!(w.posts().is_empty());
        assert!(w.ko_path().is_file());
    }

    #[test]
    fn an_installed_module_gets_verified_without_being_rewritten() {
        let w = World::new();
        w.set(Some(w.manifest(None)), None);
        assert_eq!(w.sync(false), Exit::Ok);
        assert!(!w.status()[0].boot_verified);
        let dep = tree(w.root.path(), K1).join("modules.dep");
        let before = (mtime(&w.ko_path()), mtime(&dep));

        w.set(
            Some(w.manifest(None)),
            Some(succeeded(w.manifest(Some(check(true, None))))),
        );
        assert_eq!(w.sync(true), Exit::Ok);
        assert_eq!(w.posts().len(), 1);
        assert!(w.status()[0].boot_verified);
        assert_eq!((mtime(&w.ko_path()), mtime(&dep)), before);
        assert_eq!(w.sync(true), Exit::Ok);
        assert!(w.posts().is_empty());
    }

    #[test]
    fn an_installed_module_whose_check_fails_stays_installed_with_exit_5() {
        let w = World::new();
        w.set(Some(w.manifest(None)), None);
        assert_eq!(w.sync(false), Exit::Ok);
        w.set(
            Some(w.manifest(None)),
            Some(check_failed(w.manifest(Some(check(false, Some("oops")))))),
        );
        assert_eq!(w.sync(true), Exit::Verification);
        assert!(w.ko_path().is_file(), "a sync never uninstalls");
        let st = w.status();
        assert!(!st[0].boot_verified);
        assert_eq!(
            st[0].boot_check.as_ref().and_then(|c| c.reason.as_deref()),
            Some("oops")
        );
        // The failure is now on the manifest: refused without require too.
        assert_eq!(w.sync(false), Exit::Verification);
        assert!(w.ko_path().is_file());
    }
}
