//! HTTP wire types shared by the server and the agent.
//!
//! Every timestamp is an RFC 3339 string in UTC. Every enum is serialised in
//! `snake_case`, and those strings are part of the API contract.

use serde::{Deserialize, Serialize};

use crate::dkms::BuildPlan;
pub use crate::errors::ErrorKind;
use crate::modinfo::ModInfo;
use crate::names::{Arch, ArtifactKey, KernelRelease, ModuleName, ModuleVersion, SourceDigest};

/// What the static scan of `dkms.conf` found at upload time (no code is run).
pub use crate::dkms::Declared;

/// A registered module source (`dkms add`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModuleSource {
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub digest: SourceDigest,
    /// Package name, version and `.ko` names as `dkms.conf` declares them.
    pub declared: Declared,
    /// Regular files in the tree.
    pub files: u64,
    /// Sum of the regular files' sizes, in bytes.
    pub bytes: u64,
    pub added_at: String,
}

/// Answer to `PUT /v1/modules/{name}/{version}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddModuleResponse {
    #[serde(flatten)]
    pub module: ModuleSource,
    /// False when the same content was already registered under this name/version.
    pub created: bool,
    pub warnings: Vec<String>,
}

/// Options that change what a build produces; part of the cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildOptions {}

/// `POST /v1/builds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildRequest {
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub kernel: KernelRelease,
    /// Defaults to `x86_64`.
    #[serde(default)]
    pub arch: Option<Arch>,
    #[serde(default)]
    pub options: BuildOptions,
    /// Boot the kernel under qemu and load the built modules after a successful
    /// build (see [`BootCheck`]); `None` uses the server's default. Not part of the
    /// cache key: a cached artifact without a check is checked when one is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_check: Option<bool>,
    /// Sign the modules with the server's module-signing key; `None` uses the
    /// server's default. Part of the cache key (through the key's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<bool>,
}

/// The life cycle of a build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// `BUILD_EXCLUSIVE_*` or `OBSOLETE_BY` excludes this kernel/arch (DKMS exit 77).
    NotApplicable,
}

impl BuildState {
    /// True once the build can no longer change.
    pub fn is_final(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::NotApplicable => "not_applicable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BuildState::Queued,
            BuildState::Running,
            BuildState::Succeeded,
            BuildState::Failed,
            BuildState::NotApplicable,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Why a build did not produce modules. The strings are stable API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// make (or a PRE_BUILD/POST_BUILD script) failed: the module's own code.
    CompileError,
    /// A PATCH is missing, has a bad path, or does not apply.
    PatchFailed,
    /// make succeeded but a `BUILT_MODULE_NAME` `.ko` is not where dkms.conf says.
    MissingModule,
    /// A built `.ko` does not carry the target kernel's vermagic.
    WrongVermagic,
    /// Wall-clock or no-output timeout.
    Timeout,
    /// The build hit its memory limit (the kernel OOM-killed a process).
    OutOfMemory,
    /// The build hit its process limit (a fork bomb, or far too many parallel jobs).
    PidsLimit,
    /// The build printed more than the output cap, or built modules larger than the
    /// artifact cap.
    OutputLimit,
    /// BUILD_EXCLUSIVE_* / OBSOLETE_BY exclude this kernel (DKMS exit 77).
    NotApplicable,
    /// dkms.conf is invalid (missing required directives, holes, bad values).
    InvalidConf,
    /// No `linux-headers-<krel>` package exists for the requested kernel.
    UnknownKernel,
    /// A BUILD_DEPENDS dependency (dkms.conf or settings) is not registered or did
    /// not build, or a Debian package of the module's settings could not be installed
    /// (DKMS's exit 13, "missing BUILD_DEPENDS").
    DependencyFailed,
    /// The modules built, but booting their kernel and loading them failed
    /// (the artifact is kept, its manifest holds the failed [`BootCheck`]).
    BootCheckFailed,
    /// The modules built, but their boot check could not run (the check's own
    /// limitation, named in the message; the artifact is kept, unchecked).
    BootCheckNotRun,
    /// The service failed (Docker, disk, image build), not the module.
    Infrastructure,
    /// The modules built, but the server's store is full (ENOSPC): nothing was
    /// stored; the same request succeeds once space is freed.
    InsufficientStorage,
}

impl FailureKind {
    /// The build made its modules (the artifact is kept) but its boot check did
    /// not pass: failed, or could not run.
    pub fn keeps_artifact(self) -> bool {
        matches!(
            self,
            FailureKind::BootCheckFailed | FailureKind::BootCheckNotRun
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::CompileError => "compile_error",
            FailureKind::PatchFailed => "patch_failed",
            FailureKind::MissingModule => "missing_module",
            FailureKind::WrongVermagic => "wrong_vermagic",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::PidsLimit => "pids_limit",
            FailureKind::OutputLimit => "output_limit",
            FailureKind::NotApplicable => "not_applicable",
            FailureKind::InvalidConf => "invalid_conf",
            FailureKind::UnknownKernel => "unknown_kernel",
            FailureKind::DependencyFailed => "dependency_failed",
            FailureKind::BootCheckFailed => "boot_check_failed",
            FailureKind::BootCheckNotRun => "boot_check_not_run",
            FailureKind::Infrastructure => "infrastructure",
            FailureKind::InsufficientStorage => "insufficient_storage",
        }
    }
}

/// A failed (or not applicable) build's explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    pub kind: FailureKind,
    /// One line naming the module, kernel and cause.
    pub message: String,
    /// The last lines of the build log.
    pub log_tail: String,
}

/// A build job (`GET /v1/builds/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildRecord {
    pub id: String,
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub kernel: KernelRelease,
    pub arch: Arch,
    pub state: BuildState,
    pub source_digest: SourceDigest,
    /// Builder image ID, once resolved.
    pub image_id: Option<String>,
    /// The cache key, once dkms.conf was evaluated.
    pub artifact_key: Option<ArtifactKey>,
    pub failure: Option<Failure>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// Wall time of the whole job, in seconds.
    pub seconds: Option<f64>,
    /// Warnings from the dkms.conf evaluation (deprecated directives, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Answer to `POST /v1/builds` and `GET /v1/builds/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildResponse {
    pub build: BuildRecord,
    /// True when the answer came from the artifact cache without building.
    pub cached: bool,
    /// The artifact manifest once the build succeeded.
    pub artifact: Option<Manifest>,
}

/// One built `.ko` of an artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactFile {
    /// File name as installed: `<DEST_MODULE_NAME>.ko`.
    pub file: String,
    /// Install directory under `/lib/modules/<krel>`, e.g. `/updates/dkms`.
    pub dest_location: String,
    pub size: u64,
    /// Lowercase hex sha256 of the file; also its blob address.
    pub sha256: String,
    pub modinfo: ModInfo,
}

/// The builder image an artifact was built in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageRef {
    pub id: String,
    pub tag: String,
}

/// Everything known about one cache entry (`GET /v1/artifacts/{name}/{version}/{krel}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    pub key: ArtifactKey,
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub kernel: KernelRelease,
    pub arch: Arch,
    pub source_digest: SourceDigest,
    pub builder_image: ImageRef,
    pub files: Vec<ArtifactFile>,
    pub plan: BuildPlan,
    /// The build that produced it.
    pub build_id: String,
    pub built_at: String,
    /// Wall time of the build container's work, in seconds.
    pub build_seconds: f64,
    /// The build's `Module.symvers` (exported symbols), kept for modules that are
    /// built against this one (BUILD_DEPENDS); not installed on hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symvers: Option<BlobRef>,
    /// Debian packages installed into the builder image (the module's settings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// The BUILD_DEPENDS artifacts this build was made against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<DependencyRef>,
    /// The DKMS override files that applied (file names; texts are in the settings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// The boot check of these modules in their kernel, once one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_check: Option<BootCheck>,
    /// Whether, and by whom, the modules are signed (absent on artifacts built
    /// before signing existed: unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_signing: Option<ModuleSigning>,
    /// The server's signature over this manifest's statement (see [`crate::attest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<crate::attest::Attestation>,
}

/// The module signatures of an artifact: every `.ko` carries an appended PKCS#7
/// signature in the kernel's format, or none does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModuleSigning {
    pub signed: bool,
    /// The certificate's common name (`modinfo`'s `signer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The certificate's serial number as `modinfo` prints `sig_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `sha256` (`modinfo`'s `sig_hashalgo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_algo: Option<String>,
    /// sha256 of the certificate's DER; `GET /v1/keys` serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
}

/// The artifact's kernel, the distro's own `linux-image-<krel>`, booted under qemu
/// with a minimal initramfs holding the built modules and the in-kernel modules
/// they depend on, which were then loaded in dependency order.
///
/// A load does not prove the build targeted this kernel (with MODVERSIONS the
/// kernel ignores vermagic's release string); the server's vermagic check does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootCheck {
    /// The kernel booted, the guest finished, and every built module loaded.
    pub passed: bool,
    /// The kernel reached the initramfs's `/init`.
    pub booted: bool,
    /// Every module was tried (no hang, panic or timeout first).
    pub completed: bool,
    /// Why the check failed, in one line; `None` when it passed.
    pub reason: Option<String>,
    pub kernel: KernelRelease,
    /// The Debian `linux-image-<krel>` package version that was booted.
    #[serde(default)]
    pub kernel_package_version: Option<String>,
    /// The verifier image that ran the check.
    pub verifier_image: ImageRef,
    pub checked_at: String,
    /// Wall time of the guest, from qemu's start to its exit, in seconds.
    pub boot_seconds: f64,
    /// Wall time of the whole check (sandbox, staging, boot), in seconds.
    pub seconds: f64,
    /// Size of the initramfs handed to the kernel, in bytes.
    pub initramfs_bytes: u64,
    /// `pvh` (the uncompressed vmlinux) or `bzimage`.
    pub boot_image: String,
    /// The check's timeout fired (the guest hung).
    pub timed_out: bool,
    /// Every module loaded, in load order: in-kernel dependencies and the built ones.
    pub modules: Vec<BootModule>,
    /// The kernel ran with `module.sig_enforce=1` and the server's module-signing
    /// certificate in its trusted keys (UEFI `db`): the built modules loaded under
    /// enforcement.
    #[serde(default)]
    pub signature_enforced: bool,
    /// The kernel loaded the server's certificate into a keyring (its boot log says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_cert_loaded: Option<bool>,
    /// Under enforcement: copies of a built module, unsigned and signed with
    /// another key, that the kernel had to refuse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<SignatureProbe>,
    /// The last lines of the guest's serial console.
    pub console_tail: String,
}

/// A copy of a built module the kernel must refuse under signature enforcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignatureProbe {
    /// `unsigned` or `foreign` (signed with a key the kernel does not trust).
    pub kind: String,
    pub file: String,
    /// insmod failed with EKEYREJECTED (`Key was rejected by service`).
    pub rejected: bool,
    pub rc: Option<i32>,
    pub error: Option<String>,
    /// The kernel's messages about it (`Loading of unsigned module is rejected`).
    #[serde(default)]
    pub messages: Vec<String>,
}

/// One module loaded by a [`BootCheck`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootModule {
    /// File name (as installed, for built modules).
    pub file: String,
    /// Module name (`-` read as `_`).
    pub name: String,
    /// Built by this artifact (true) or from the kernel's own tree (false).
    pub new: bool,
    /// insmod succeeded and `/sys/module/<name>/initstate` is `live`.
    pub loaded: bool,
    /// insmod's exit status (an errno, or 128+signal); `None` if it never returned.
    pub rc: Option<i32>,
    /// insmod's own message.
    pub error: Option<String>,
    /// The kernel's messages logged while it loaded (and later ones naming it).
    pub messages: Vec<String>,
    /// `/sys/module/<name>/version`, `srcversion`, `initstate`, `taint`.
    pub version: Option<String>,
    pub srcversion: Option<String>,
    pub initstate: Option<String>,
    pub taint: Option<String>,
    /// Device nodes that appeared in `/dev` while it loaded (e.g. `video0`).
    #[serde(default)]
    pub devices: Vec<String>,
}

/// A stored blob that is not a module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

/// A dependency's artifact used by a build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DependencyRef {
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub key: ArtifactKey,
}

/// A prepared builder image (`GET /v1/kernels`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KernelInfo {
    pub kernel: KernelRelease,
    pub suite: String,
    pub image: ImageRef,
    /// `CONFIG_CC_VERSION_TEXT` of the kernel, the compiler in the image.
    pub compiler: Option<String>,
    /// The kernel's verifier image (boot checks), once it is prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<ImageRef>,
}

/// Body of every 4xx/5xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// What went wrong; stable strings (see [`ErrorKind`]).
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The scope the request needed (`unauthorized` and `forbidden` answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<crate::auth::Scope>,
}

/// What a server key signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyPurpose {
    /// Kernel modules (X.509 certificate, RSA): what hosts enrol (MOK) or trust.
    ModuleSigning,
    /// Manifests (Ed25519): what agents pin in `trusted_keys`.
    Manifest,
    /// The apt repository's `Release` files (OpenPGP, Ed25519): what `signed-by` names.
    AptRepository,
    /// A purpose this client does not know (from a newer server).
    #[serde(other)]
    Other,
}

impl KeyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::ModuleSigning => "module_signing",
            KeyPurpose::Manifest => "manifest",
            KeyPurpose::AptRepository => "apt_repository",
            KeyPurpose::Other => "other",
        }
    }
}

/// A public key the server signs (or signed) with (`GET /v1/keys`, no token needed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublicKey {
    pub purpose: KeyPurpose,
    /// The certificate's sha256 (module signing), `ed25519:<hex>` (manifests) or the
    /// OpenPGP fingerprint (apt repository).
    pub id: String,
    /// The certificate as PEM, the `ed25519:<hex>` key, or the ASCII-armored OpenPGP key.
    pub public: String,
    /// Module signing: the certificate's common name and serial (`modinfo`'s
    /// `signer` and `sig_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When the server first used it.
    pub first_used: String,
    /// The key the server signs with now (older ones stay listed for old artifacts).
    pub current: bool,
}

/// A kernel the server knows of: published in a watched archive, asked for by a
/// build request, or prebuilt (`GET /v1/matrix` lists them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KnownKernel {
    pub kernel: KernelRelease,
    /// The archive suite that publishes it (`bookworm`, `bookworm-security`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// The `linux-headers-<krel>` package version seen in the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_version: Option<String>,
    /// Seen in a watched archive index.
    #[serde(default)]
    pub published: bool,
    /// A build was requested for it.
    #[serde(default)]
    pub requested: bool,
    /// When the server first saw it.
    pub first_seen: String,
    /// When a build was last requested for it (RFC 3339, refreshed at most once a
    /// minute); retention removes the images of kernels unused for long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_requested: Option<String>,
    /// When a prebuild of its modules started, and the builds it submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prebuild: Option<Prebuild>,
}

/// The prebuild of a kernel's modules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prebuild {
    pub started_at: String,
    /// Why: `published` (the archive watcher) or `requested` (`POST .../prebuild`).
    pub trigger: String,
    /// Build ids, one per module version.
    pub builds: Vec<String>,
    /// A step before the builds failed (the builder image): one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Readiness of every module version on every known kernel (`GET /v1/matrix`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Matrix {
    pub generated_at: String,
    /// Kernels, newest first.
    pub kernels: Vec<KnownKernel>,
    pub modules: Vec<MatrixModule>,
    /// One per (kernel, module version), in the order of `kernels` then `modules`.
    pub cells: Vec<MatrixCell>,
}

/// A registered module version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MatrixModule {
    pub name: ModuleName,
    pub version: ModuleVersion,
    /// AUTOINSTALL as dkms.conf states it (prebuilds build those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoinstall: Option<bool>,
}

/// Where a module version stands on a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    /// Built (see `boot_check` for whether it was booted and loaded).
    Ready,
    /// Queued or running.
    Building,
    Failed,
    /// BUILD_EXCLUSIVE / OBSOLETE_BY exclude this kernel.
    NotApplicable,
    /// Never built for this kernel.
    Missing,
}

impl CellState {
    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Ready => "ready",
            CellState::Building => "building",
            CellState::Failed => "failed",
            CellState::NotApplicable => "not_applicable",
            CellState::Missing => "missing",
        }
    }
}

/// One cell of the matrix: the newest build of a module version for a kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MatrixCell {
    pub kernel: KernelRelease,
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub state: CellState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The failure's kind and one line (failed and not applicable cells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<CellFailure>,
    /// The artifact's boot check: `None` when it was not booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_check: Option<CellCheck>,
    /// The artifact's modules are signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<bool>,
}

/// A failed cell's cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CellFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// A ready cell's boot check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CellCheck {
    pub passed: bool,
    pub signature_enforced: bool,
}

/// A package of the server's apt repository (`GET /v1/apt/packages`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AptPackage {
    /// The Debian package name, e.g. `r8152-modules-6.1.0-47-amd64`.
    pub package: String,
    /// The Debian version, e.g. `2.17.1-kmf20261207072233`.
    pub version: String,
    /// The Debian architecture, e.g. `amd64`.
    pub architecture: String,
    /// Path of the `.deb` under the repository root (`pool/main/...`).
    pub filename: String,
    /// sha256 of the `.deb`; also its blob address.
    pub sha256: String,
    pub size: u64,
    /// The package's control stanza, as in the `.deb`.
    pub control: String,
    pub origin: AptOrigin,
    pub added_at: String,
}

/// Where an apt package came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AptOrigin {
    /// Made by the server from an artifact (the newest of its module, version, kernel).
    Artifact {
        key: ArtifactKey,
        name: ModuleName,
        version: ModuleVersion,
        kernel: KernelRelease,
        arch: Arch,
    },
    /// Uploaded by an administrator (`PUT /v1/apt/packages`), e.g. `kmodforge-agent`.
    Upload { by: String },
}
