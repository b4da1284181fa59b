//! `kmodforge-agent submit PATH --kernel KREL ...` for CI: pack a source tree,
//! upload it, build it for the listed kernels, follow the logs (stdout), and write
//! the verified artifacts to `DIR/<krel>/<file>` plus `DIR/<krel>/manifest.json`.
//!
//! An artifact whose boot check failed is not written (exit 5); with `--boot-check`
//! (or `require_boot_check`) the check is asked for and must pass.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kmodforge_agent::host::VerifiedArtifact;
use kmodforge_api::dkms::scan_declared;
use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::{BuildRequest, BuildResponse, BuildState, Manifest};

use crate::boot::{self, Refusal, Verdict};
use crate::client::{Client, ClientError};
use crate::exitcode::Exit;
use crate::outcome::BuildFailed;
use crate::report::{self, Subject};
use crate::wait::{self, Follow};

/// What `submit` was asked to do.
pub struct SubmitArgs {
    pub path: PathBuf,
    pub kernels: Vec<KernelRelease>,
    pub out: PathBuf,
    pub name: Option<ModuleName>,
    pub version: Option<ModuleVersion>,
    /// `--boot-check` (or `require_boot_check`): ask for the boot check, and fail
    /// (exit 5) unless it passed.
    pub boot_check: bool,
}

/// The refusal of `submit --boot-check` when no check came back.
const NOT_VERIFIED: &str = "artifact is not boot-verified (a boot check was required)";

/// Why a submission (or one kernel of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what} has no static value in dkms.conf; pass --{flag}")]
    Undeclared {
        path: PathBuf,
        what: &'static str,
        flag: &'static str,
    },
    #[error("{path}: dkms.conf's {what}: {reason}")]
    BadName {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Pack(#[from] crate::pack::PackError),
    #[error("uploading the source: {0}")]
    Upload(ClientError),
    #[error(transparent)]
    Wait(#[from] wait::WaitError),
    #[error("{0}")]
    Build(Box<BuildFailed>),
    #[error("downloading {file}: {source}")]
    Download { file: String, source: ClientError },
    #[error("{0}")]
    BootCheck(Box<Refusal>),
    #[error("verifying the download: {0}")]
    Verify(Box<kmodforge_agent::host::HostError>),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SubmitError {
    pub fn exit(&self) -> Exit {
        match self {
            SubmitError::Read { .. }
            | SubmitError::Undeclared { .. }
            | SubmitError::BadName { .. }
            | SubmitError::Pack(_) => Exit::Usage,
            SubmitError::Upload(e) | SubmitError::Download { source: e, .. } => e.exit(),
            SubmitError::Wait(e) => e.exit(),
            SubmitError::Build(_) => Exit::BuildFailed,
            SubmitError::Verify(_) | SubmitError::BootCheck(_) => Exit::Verification,
            SubmitError::Write { .. } => Exit::Internal,
        }
    }
}

/// Runs a submission; prints one line per kernel and returns the worst outcome.
pub fn run(client: &Client, args: &SubmitArgs) -> Exit {
    let (name, version) = match identify(args) {
        Ok(id) => id,
        Err(e) => {
            report::general(format!("submit {}: {e}", args.path.display()));
            return e.exit();
        }
    };
    if let Err(e) = upload(client, args, &name, &version) {
        report::general(format!("{name}/{version}: {e}"));
        return e.exit();
    }
    // Ask for every kernel first, so the server builds them side by side.
    let started: Vec<_> = args
        .kernels
        .iter()
        .map(|k| (k, start(client, &name, &version, k, args.boot_check)))
        .collect();
    let mut worst = Exit::Ok;
    for (kernel, first) in started {
        let subject = Subject {
            name: &name,
            version: &version,
            kernel,
        };
        // The log of a build followed live is on stdout already; only a build that
        // was final at once (e.g. failed before) gets its tail shown.
        let followed = first.as_ref().is_ok_and(|f| !f.build.state.is_final());
        let result = first
            .map_err(|e| SubmitError::Wait(e.into()))
            .and_then(|first| {
                let done = follow(client, &subject, first, args.boot_check)?;
                collect(client, args, &subject, done)
            });
        match result {
            Ok(line) => report::outcome(&subject, line),
            Err(e) => {
                report::error(&subject, &e);
                match (&e, followed) {
                    (SubmitError::Build(b), false) => report::log_tail(&b.log_tail),
                    (SubmitError::BootCheck(r), _) => report::log_tail(&r.console_tail),
                    _ => {}
                }
                worst = worst.worst(e.exit());
            }
        }
    }
    worst
}

/// Name and version: the flags, else dkms.conf's static PACKAGE_NAME/PACKAGE_VERSION.
fn identify(args: &SubmitArgs) -> Result<(ModuleName, ModuleVersion), SubmitError> {
    let conf = args.path.join("dkms.conf");
    let text = std::fs::read_to_string(&conf).map_err(|source| SubmitError::Read {
        path: conf.clone(),
        source,
    })?;
    let declared = scan_declared(&text);
    let undeclared = |what, flag| SubmitError::Undeclared {
        path: conf.clone(),
        what,
        flag,
    };
    let bad = |what, e: kmodforge_api::names::NameError| SubmitError::BadName {
        path: conf.clone(),
        what,
        reason: e.to_string(),
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => {
            let n = declared
                .package_name
                .ok_or_else(|| undeclared("PACKAGE_NAME", "name"))?;
            ModuleName::parse(&n).map_err(|e| bad("PACKAGE_NAME", e))?
        }
    };
    let version = match &args.version {
        Some(v) => v.clone(),
        None => {
            let v = declared
                .package_version
                .ok_or_else(|| undeclared("PACKAGE_VERSION", "version"))?;
            ModuleVersion::parse(&v).map_err(|e| bad("PACKAGE_VERSION", e))?
        }
    };
    Ok((name, version))
}

fn upload(
    client: &Client,
    args: &SubmitArgs,
    name: &ModuleName,
    version: &ModuleVersion,
) -> Result<(), SubmitError> {
    let body = crate::pack::tar_gz_dir(&args.path)?;
    let added = client
        .put_module(name, version, &body)
        .map_err(SubmitError::Upload)?;
    let what = if added.created {
        "uploaded"
    } else {
        "unchanged"
    };
    eprintln!(
        "{name}/{version}: source {what} ({} files, {} bytes, digest {})",
        added.module.files, added.module.bytes, added.module.digest
    );
    for w in &added.warnings {
        eprintln!("{name}/{version}: warning: {w}");
    }
    Ok(())
}

fn start(
    client: &Client,
    name: &ModuleName,
    version: &ModuleVersion,
    kernel: &KernelRelease,
    boot_check: bool,
) -> Result<BuildResponse, ClientError> {
    client.submit_build(&BuildRequest {
        name: name.clone(),
        version: version.clone(),
        kernel: kernel.clone(),
        arch: None,
        options: Default::default(),
        boot_check: boot::request_flag(boot_check),
        sign: None,
    })
}

/// Follows a started build's log on stdout until it is final.
fn follow(
    client: &Client,
    s: &Subject,
    first: BuildResponse,
    boot_check: bool,
) -> Result<BuildResponse, SubmitError> {
    if first.build.state.is_final() {
        return Ok(first);
    }
    println!("==> {}: build {}", s.on(), first.build.id);
    let req = BuildRequest {
        name: s.name.clone(),
        version: s.version.clone(),
        kernel: s.kernel.clone(),
        arch: None,
        options: Default::default(),
        boot_check: boot::request_flag(boot_check),
        sign: None,
    };
    // Asking again joins the same build (single-flight) and follows it.
    let out: Box<dyn Write> = Box::new(std::io::stdout());
    Ok(wait::build_and_wait(
        client,
        &req,
        &s.on(),
        Follow::Log(out),
    )?)
}

/// Downloads, verifies and writes a succeeded build; a line saying what happened.
fn collect(
    client: &Client,
    args: &SubmitArgs,
    s: &Subject,
    done: BuildResponse,
) -> Result<String, SubmitError> {
    if let Some(r) = boot::failed_build(&done) {
        return Err(SubmitError::BootCheck(Box::new(r)));
    }
    let b = &done.build;
    match (b.state, done.artifact) {
        (BuildState::Succeeded, Some(m)) => {
            let required = args.boot_check;
            match boot::verdict_with(m.boot_check.as_ref(), required, required, NOT_VERIFIED) {
                Verdict::Accept => {}
                Verdict::Refuse(r) => return Err(SubmitError::BootCheck(Box::new(r))),
                // Not reached: the check was asked for whenever it is required.
                Verdict::Check => {
                    return Err(SubmitError::BootCheck(Box::new(Refusal::not_verified(
                        NOT_VERIFIED,
                    ))))
                }
            }
            let dir = args.out.join(s.kernel.as_str());
            write_artifact(client, s, &m, &dir)?;
            let how = if done.cached { "cached" } else { "built" };
            let files: Vec<&str> = m.files.iter().map(|f| f.file.as_str()).collect();
            Ok(format!(
                "{how} (build {}): {} in {}{}",
                b.id,
                files.join(" "),
                dir.display(),
                boot::note(m.boot_check.as_ref())
            ))
        }
        (BuildState::NotApplicable, _) => Ok(format!(
            "skipped: not applicable to this kernel ({})",
            b.failure
                .as_ref()
                .map(|f| f.message.as_str())
                .unwrap_or("BUILD_EXCLUSIVE")
        )),
        _ => Err(SubmitError::Build(Box::new(BuildFailed::from_record(
            b.clone(),
        )))),
    }
}

fn write_artifact(
    client: &Client,
    s: &Subject,
    m: &Manifest,
    dir: &Path,
) -> Result<(), SubmitError> {
    let mut files = Vec::new();
    for f in &m.files {
        let bytes = client
            .file(s.name, s.version, s.kernel, &f.file)
            .map_err(|source| SubmitError::Download {
                file: f.file.clone(),
                source,
            })?;
        files.push((f.file.clone(), bytes));
    }
    VerifiedArtifact::verify(m.clone(), files.clone(), s.kernel)
        .map_err(|e| SubmitError::Verify(Box::new(e)))?;
    let json = serde_json::to_vec_pretty(m).map_err(|e| SubmitError::Write {
        path: dir.join("manifest.json"),
        source: std::io::Error::other(e),
    })?;
    files.push(("manifest.json".into(), json));
    for (name, bytes) in files {
        write_atomic(&dir.join(name), &bytes)?;
    }
    Ok(())
}

/// Temp file in the same directory, then rename: a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SubmitError> {
    let err = |source| SubmitError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    // tempfile creates 0600; artifacts are for others to read.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
