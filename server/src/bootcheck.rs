//! Boot checks: the artifact's own kernel booted under qemu, its modules loaded.
//!
//! A verifier image per kernel (`images/verifier/`, built on demand like
//! builder images) holds the distro's `linux-image-<krel>` and qemu. The check
//! runs its `bootcheck` in a job container under the same sandbox policy as
//! builds (network none, read-only root, no capabilities, no devices: qemu's
//! TCG software emulation needs no `/dev/kvm`). `bootcheck` reads a tar of the
//! `.ko` files on stdin, makes an initramfs with them and exactly the in-kernel
//! modules they depend on, boots, loads them in dependency order, and prints one
//! JSON report read from the guest's second serial port (never from console
//! noise). Its contract is in `images/verifier/README.md`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::{BootCheck, BootModule, SignatureProbe};
use serde::Deserialize;

use crate::builds::log::LogBuffer;
use crate::flat_tar::flat_tar;
use crate::images::{ImageError, KernelImages, ReadyImage};
use crate::sandbox::{ContainerSpec, Exec, Sandbox};

/// Path of the check inside a verifier image.
const BOOTCHECK: &str = "/usr/local/lib/kmodforge/bootcheck";
/// Cap of the report on stdout (200 messages per module at most).
const MAX_REPORT: usize = 8 * 1024 * 1024;
/// Time allowed on top of the boot timeout for staging and start-up.
const PREPARE_ALLOWANCE: Duration = Duration::from_secs(120);

/// Settings of boot checks.
#[derive(Clone, Debug)]
pub struct BootCheckSettings {
    /// Check every build whose request does not say (`BuildRequest.boot_check`).
    pub default: bool,
    /// Limit of the guest's run (boot, loads, power-off).
    pub timeout: Duration,
    /// Check signed artifacts under signature enforcement (OVMF, the certificate
    /// in the UEFI db, `module.sig_enforce=1`).
    pub enforce_signed: bool,
}

/// Why a check could not run (the module is not to blame).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Image(#[from] ImageError),
    #[error("{0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("bootcheck did not finish within {0} s")]
    Stopped(u64),
    #[error("bootcheck failed (exit {code}): {reason}")]
    Tool { code: i64, reason: String },
    #[error("bootcheck's report is not valid: {0}")]
    Report(String),
    #[error("building the module tar: {0}")]
    Tar(std::io::Error),
}

impl CheckError {
    /// Whether the service failed (the engine, or building the verifier image),
    /// rather than the check itself being unable to handle these modules (its
    /// tool refused them, hung, or answered nonsense; the kernel has no image).
    pub fn is_service_fault(&self) -> bool {
        match self {
            CheckError::Sandbox(_) => true,
            CheckError::Image(e) => !matches!(
                e,
                ImageError::UnknownKernel { .. } | ImageError::UnsupportedKernel(_)
            ),
            CheckError::Stopped(_)
            | CheckError::Tool { .. }
            | CheckError::Report(_)
            | CheckError::Tar(_) => false,
        }
    }
}

/// Signature enforcement of a check: the certificate the kernel is to trust
/// (public: the private key never goes near a container) and copies of a module
/// that the kernel must refuse.
pub struct Enforcement {
    pub cert_der: Vec<u8>,
    /// The certificate's common name, as the kernel names it when it loads it.
    pub cert_cn: String,
    pub probes: Vec<Probe>,
}

/// A module copy the kernel must refuse under enforcement.
pub struct Probe {
    /// `unsigned` or `foreign`.
    pub kind: &'static str,
    pub file: String,
    pub bytes: Vec<u8>,
}

/// Runs boot checks in verifier images.
pub struct BootChecker {
    images: KernelImages,
    sandbox: Sandbox,
    settings: BootCheckSettings,
}

impl BootChecker {
    pub fn new(images: KernelImages, sandbox: Sandbox, settings: BootCheckSettings) -> Self {
        BootChecker {
            images,
            sandbox,
            settings,
        }
    }

    pub fn default_on(&self) -> bool {
        self.settings.default
    }

    /// Whether signed artifacts are checked under signature enforcement.
    pub fn enforce_signed(&self) -> bool {
        self.settings.enforce_signed
    }

    /// The verifier image of `kernel`, built if needed (once).
    pub async fn image(&self, kernel: &KernelRelease) -> Result<ReadyImage, ImageError> {
        self.images.ensure(kernel).await
    }

    /// Forgets the verifier image resolved for `kernel` (retention removed it).
    pub fn forget(&self, kernel: &KernelRelease) {
        self.images.forget(kernel);
    }

    /// The verifier image of `kernel` if it is ready (never builds).
    pub async fn existing(&self, kernel: &KernelRelease) -> Option<ReadyImage> {
        self.images.existing(kernel).await
    }

    /// Boots `kernel` in its verifier image with `modules` (file name, contents)
    /// and returns the check's record; a module that does not load is a failed
    /// check (`passed: false`), not an error. With `enforce`, the kernel runs with
    /// `module.sig_enforce=1` and trusts only its own keys and the given certificate.
    pub async fn check(
        &self,
        job_id: &str,
        kernel: &KernelRelease,
        modules: &[(String, Vec<u8>)],
        enforce: Option<&Enforcement>,
        log: &LogBuffer,
    ) -> Result<BootCheck, CheckError> {
        let started = Instant::now();
        let image = self.image(kernel).await?;
        log.note(&format!(
            "boot check: verifier image {} ({})",
            image.image.tag, image.image.id
        ));
        let tar = input_tar(modules, enforce).map_err(CheckError::Tar)?;
        let mut env = vec![
            format!("KMF_KREL={kernel}"),
            format!("KMF_BOOT_TIMEOUT={}", self.settings.timeout.as_secs()),
        ];
        if let Some(e) = enforce {
            env.push("KMF_SIG_ENFORCE=1".into());
            env.push(format!("KMF_TRUSTED_CN={}", e.cert_cn));
            log.note(&format!(
                "boot check: module.sig_enforce=1, trusting {} (UEFI db), {} copies that must be refused",
                e.cert_cn,
                e.probes.len()
            ));
        }
        let spec = ContainerSpec {
            job_id,
            role: "check",
            image_id: &image.image.id,
            source_dirs: &[],
            ro_volumes: &[],
        };
        let container = self.sandbox.create(&spec).await?;
        let timeout = self.settings.timeout;
        let limit = timeout + PREPARE_ALLOWANCE;
        let out = container
            .exec(Exec {
                cmd: vec![BOOTCHECK.into()],
                env,
                stdin: Some(Bytes::from(tar)),
                collect_stdout: Some(MAX_REPORT),
                log,
                timeouts: Some((limit, limit)),
                output_cap: None,
            })
            .await;
        container.remove().await;
        let out = out?;
        let code = match (out.exit_code, out.stopped) {
            (_, Some(_)) | (None, _) => return Err(CheckError::Stopped(limit.as_secs())),
            (Some(c), None) => c,
        };
        let report: Report = serde_json::from_slice(&out.stdout).map_err(|e| {
            CheckError::Report(format!(
                "{e} (exit {code}, stdout {:?})",
                String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(200)])
            ))
        })?;
        if !matches!(code, 0 | 1) {
            return Err(CheckError::Tool {
                code,
                reason: report.reason.unwrap_or_else(|| "no reason given".into()),
            });
        }
        let check = report.into_check(code == 0, kernel, image, started.elapsed().as_secs_f64());
        if check.passed != check.reason.is_none() {
            return Err(CheckError::Report(format!(
                "exit {code} disagrees with reason {:?}",
                check.reason
            )));
        }
        Ok(check)
    }
}

/// The tar `bootcheck` reads: the modules at the top, and under enforcement the
/// certificate (`kmf-trust/`) and the probes (`kmf-probe/<kind>/`).
fn input_tar(
    modules: &[(String, Vec<u8>)],
    enforce: Option<&Enforcement>,
) -> std::io::Result<Vec<u8>> {
    let mut entries: Vec<(String, &[u8])> = modules
        .iter()
        .map(|(f, b)| (f.clone(), b.as_slice()))
        .collect();
    if let Some(e) = enforce {
        entries.push(("kmf-trust/module-signing.der".into(), &e.cert_der));
        for p in &e.probes {
            entries.push((format!("kmf-probe/{}/{}", p.kind, p.file), &p.bytes));
        }
    }
    flat_tar(entries.iter().map(|(f, b)| (f.as_str(), 0o644, *b)))
}

/// `bootcheck`'s stdout (images/verifier/README.md); extra keys are ignored.
#[derive(Debug, Deserialize)]
struct Report {
    #[serde(default)]
    kernel_package_version: Option<String>,
    booted: bool,
    completed: bool,
    #[serde(default)]
    seconds: Option<f64>,
    #[serde(default)]
    initramfs_bytes: Option<u64>,
    /// The wire type itself: bootcheck's per-module keys are its fields (extra
    /// keys such as `path` or `depmod` are ignored).
    #[serde(default)]
    modules: Vec<BootModule>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    console_tail: String,
    #[serde(default)]
    timed_out: bool,
    #[serde(default)]
    boot_image: Option<String>,
    #[serde(default)]
    signature_enforced: bool,
    #[serde(default)]
    trusted_cert_loaded: Option<bool>,
    #[serde(default)]
    probes: Vec<SignatureProbe>,
}

impl Report {
    fn into_check(
        self,
        passed: bool,
        kernel: &KernelRelease,
        image: ReadyImage,
        seconds: f64,
    ) -> BootCheck {
        BootCheck {
            passed,
            booted: self.booted,
            completed: self.completed,
            reason: self.reason,
            kernel: kernel.clone(),
            kernel_package_version: self.kernel_package_version,
            verifier_image: image.image,
            checked_at: crate::builds::now_rfc3339(),
            boot_seconds: self.seconds.unwrap_or(0.0),
            seconds: (seconds * 100.0).round() / 100.0,
            initramfs_bytes: self.initramfs_bytes.unwrap_or(0),
            boot_image: self.boot_image.unwrap_or_default(),
            timed_out: self.timed_out,
            modules: self.modules,
            console_tail: self.console_tail,
            signature_enforced: self.signature_enforced,
            trusted_cert_loaded: self.trusted_cert_loaded,
            probes: self.probes,
        }
    }
}

/// One line for the build log: what loaded.
pub fn summary(check: &BootCheck) -> String {
    let new: Vec<&str> = check
        .modules
        .iter()
        .filter(|m| m.new)
        .map(|m| m.name.as_str())
        .collect();
    let deps: Vec<&str> = check
        .modules
        .iter()
        .filter(|m| !m.new)
        .map(|m| m.name.as_str())
        .collect();
    let from_kernel = if deps.is_empty() {
        String::new()
    } else {
        format!(" (with {} from the kernel's tree)", deps.join(", "))
    };
    match &check.reason {
        None => format!(
            "boot check passed: {} loaded{from_kernel} in {} booted for {:.2} s",
            new.join(", "),
            check.kernel,
            check.boot_seconds
        ),
        Some(r) => format!("boot check failed in {}: {r}", check.kernel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmodforge_api::wire::ImageRef;

    fn image() -> ReadyImage {
        ReadyImage {
            kernel: KernelRelease::parse("6.1.0-47-amd64").expect("valid"),
            suite: "bookworm".into(),
            image: ImageRef {
                id: "sha256:1".into(),
                tag: "kmodforge-verifier:debian-bookworm-6.1.0-47-amd64".into(),
            },
        }
    }

    /// A report as bootcheck prints it (abridged from a real v4l2loopback run).
    const PASSED: &str = r#"{"kernel":"6.1.0-47-amd64","kernel_package_version":"6.1.170-3","booted":true,
      "completed":true,"seconds":1.71,"initramfs_bytes":3526144,"modules":[
      {"file":"mc.ko","name":"mc","new":false,"loaded":true,"rc":0,"messages":[],"version":null,
       "srcversion":null,"path":"kernel/drivers/media/mc/mc.ko","attempted":true,"initstate":"live",
       "taint":"","refcnt":1,"error":null,"devices":[],"depmod":[]},
      {"file":"v4l2loopback.ko","name":"v4l2loopback","new":true,"loaded":true,"rc":0,
       "messages":["v4l2loopback driver version 0.12.7 loaded"],"version":null,"srcversion":null,
       "initstate":"live","taint":"OE","refcnt":0,"error":null,"devices":["video0"],"depmod":[]}],
      "reason":null,"console_tail":"...","timed_out":false,"qemu_exit":0,"prepare_seconds":0.31,
      "boot_image":"pvh"}"#;

    #[test]
    fn report_becomes_the_manifest_record() {
        let r: Report = serde_json::from_str(PASSED).expect("parses");
        let k = KernelRelease::parse("6.1.0-47-amd64").expect("valid");
        let c = r.into_check(true, &k, image(), 2.345);
        assert!(c.passed && c.booted && c.completed && c.reason.is_none());
        assert_eq!(c.kernel_package_version.as_deref(), Some("6.1.170-3"));
        assert_eq!(c.boot_seconds, 1.71);
        assert_eq!(c.seconds, 2.35);
        assert_eq!(c.modules.len(), 2);
        assert!(!c.modules[0].new);
        assert_eq!(c.modules[1].devices, vec!["video0".to_string()]);
        assert_eq!(c.boot_image, "pvh");
        assert_eq!(
            summary(&c),
            "boot check passed: v4l2loopback loaded (with mc from the kernel's tree) in 6.1.0-47-amd64 booted for 1.71 s"
        );
    }

    /// The service's trouble is `infrastructure`; the check's own is not.
    #[test]
    fn check_errors_blame_the_service_or_the_check() {
        let engine = || crate::engine::EngineError::Connect {
            engine: "Docker",
            source: "connection refused".into(),
        };
        let cases: Vec<(CheckError, bool)> = vec![
            (CheckError::Sandbox(engine().into()), true),
            (CheckError::Image(ImageError::Engine(engine())), true),
            (
                CheckError::Image(ImageError::Build {
                    role: "verifier",
                    kernel: "6.1.0-47-amd64".into(),
                    message: "apt-get failed".into(),
                    log_tail: String::new(),
                }),
                true,
            ),
            (
                CheckError::Image(ImageError::UnsupportedKernel("5.10.0-1-amd64".into())),
                false,
            ),
            (
                CheckError::Tool {
                    code: 2,
                    reason: "modprobe --show-depends foo failed".into(),
                },
                false,
            ),
            (CheckError::Report("eof".into()), false),
            (CheckError::Stopped(210), false),
        ];
        for (e, service) in cases {
            assert_eq!(e.is_service_fault(), service, "{e}");
        }
    }

    #[test]
    fn usage_error_report_parses() {
        // bootcheck's exit-2 report has only the contract's keys.
        let text = r#"{"kernel":null,"booted":false,"completed":false,"seconds":null,
            "initramfs_bytes":null,"modules":[],"reason":"KMF_KREL is not set","console_tail":""}"#;
        let r: Report = serde_json::from_str(text).expect("parses");
        assert_eq!(r.reason.as_deref(), Some("KMF_KREL is not set"));
        assert!(r.modules.is_empty());
    }
}
