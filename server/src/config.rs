//! Server configuration: command-line flags with environment equivalents.
//!
//! Every limit has its default here, with its unit in the doc comment; the
//! README's table lists the same variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::sandbox::SandboxLimits;

/// `kmodforge-server`: builds DKMS module sources in sandboxed per-kernel containers.
#[derive(Clone, Debug, Parser)]
#[command(name = "kmodforge-server", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "KMODFORGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the SQLite records, source archives, blobs and logs.
    #[arg(long, env = "KMODFORGE_DATA_DIR", default_value = "/var/lib/kmodforge")]
    pub data_dir: PathBuf,

    /// Base image of Debian builder images (`{suite}` is replaced, e.g. bookworm);
    /// created from Debian packages with `images/bootstrap-base.sh` when it is
    /// neither present nor pullable.
    #[arg(
        long,
        env = "KMODFORGE_BASE_IMAGE",
        default_value = "debian:{suite}-slim"
    )]
    pub base_image: String,

    /// Directory holding `builder/` (the builder image recipe) and `bootstrap-base.sh`.
    #[arg(long, env = "KMODFORGE_IMAGES_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../images"))]
    pub images_dir: PathBuf,

    /// Parallel make jobs per build (`make -jN`); also the container's CPU limit.
    #[arg(long, env = "KMODFORGE_JOBS", default_value_t = default_jobs())]
    pub jobs: u32,

    /// Builds running at once; more wait in a queue.
    #[arg(long, env = "KMODFORGE_MAX_BUILDS", default_value_t = 2)]
    pub max_builds: usize,

    /// A build that ends as `infrastructure` (the engine restarted under it, its
    /// container vanished) runs once more by itself, as soon as the engine answers
    /// again: this long, in seconds, the retry waits for it (0: no retry).
    #[arg(long, env = "KMODFORGE_ENGINE_RETRY_WAIT_SECS", default_value_t = 120)]
    pub engine_retry_wait_secs: u64,

    /// Memory limit of a build container, in MiB (swap is set equal: no swap).
    #[arg(long, env = "KMODFORGE_BUILD_MEMORY_MIB", default_value_t = 4096)]
    pub memory_mib: u64,

    /// Size of the build tmpfs (`/var/lib/dkms`), in MiB; counts against memory.
    #[arg(long, env = "KMODFORGE_BUILD_TMPFS_MIB", default_value_t = 3072)]
    pub tmpfs_mib: u64,

    /// Process limit of a build container.
    #[arg(long, env = "KMODFORGE_BUILD_PIDS", default_value_t = 1024)]
    pub pids: i64,

    /// Wall-clock limit of a build, in seconds.
    #[arg(long, env = "KMODFORGE_BUILD_TIMEOUT_SECS", default_value_t = 1800)]
    pub build_timeout_secs: u64,

    /// A build that prints nothing for this long is killed, in seconds.
    #[arg(long, env = "KMODFORGE_BUILD_IDLE_SECS", default_value_t = 600)]
    pub idle_timeout_secs: u64,

    /// Build log cap, in KiB; the middle of a longer log is dropped and marked.
    #[arg(long, env = "KMODFORGE_LOG_CAP_KIB", default_value_t = 4096)]
    pub log_cap_kib: usize,

    /// Output a build may print (its log before the cap's cut), in MiB; a build
    /// that prints more is stopped and fails as `output_limit`.
    #[arg(long, env = "KMODFORGE_BUILD_OUTPUT_CAP_MIB", default_value_t = 256)]
    pub build_output_cap_mib: u64,

    /// Largest module tar a build may hand back (all its `.ko` files), in MiB; it
    /// is held in memory while checked and stored. Larger fails as `output_limit`.
    #[arg(long, env = "KMODFORGE_ARTIFACT_CAP_MIB", default_value_t = 256)]
    pub artifact_cap_mib: usize,

    /// Largest accepted source upload, in MiB.
    #[arg(long, env = "KMODFORGE_MAX_UPLOAD_MIB", default_value_t = 256)]
    pub max_upload_mib: u64,

    /// How long `POST /v1/build` (curl one-shot) waits for the build, in seconds.
    #[arg(long, env = "KMODFORGE_ONESHOT_WAIT_SECS", default_value_t = 3600)]
    pub oneshot_wait_secs: u64,

    /// Mount each builder image's /usr from read-only named volumes (copied once per
    /// image): much faster on engines with the fuse-overlayfs storage driver.
    #[arg(long, env = "KMODFORGE_USR_VOLUMES", default_value_t = true, action = clap::ArgAction::Set)]
    pub usr_volumes: bool,

    /// Boot-check builds whose request does not say (`"boot_check"`): boot the
    /// kernel under qemu in its verifier image and load the built modules.
    #[arg(long, env = "KMODFORGE_BOOT_CHECK", default_value_t = false, action = clap::ArgAction::Set)]
    pub boot_check: bool,

    /// Limit of a boot check's guest (boot, module loads, power-off), in seconds;
    /// a guest that hangs fails the check after it.
    #[arg(long, env = "KMODFORGE_BOOT_TIMEOUT_SECS", default_value_t = 90)]
    pub boot_timeout_secs: u64,

    /// Answer read routes (manifests, artifacts, builds, logs, kernels) without a
    /// token. Off by default; an explicit opt-in for a trusted LAN.
    #[arg(long, env = "KMODFORGE_ANONYMOUS_READ", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub anonymous_read: bool,

    /// Serve HTTPS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, env = "KMODFORGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KMODFORGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Boot-check signed artifacts under signature enforcement: UEFI firmware
    /// (OVMF) with the module-signing certificate in its db, `module.sig_enforce=1`,
    /// and an unsigned and a foreign-signed copy that must be refused.
    #[arg(long, env = "KMODFORGE_BOOT_CHECK_ENFORCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub boot_check_enforce: bool,

    /// Sign built modules with the module-signing key when a request does not say
    /// (`"sign"`); unsigned artifacts say so in their manifest.
    #[arg(long, env = "KMODFORGE_SIGN_MODULES", default_value_t = true, action = clap::ArgAction::Set)]
    pub sign_modules: bool,

    /// The module-signing private key (PEM, RSA); with `--module-signing-cert`.
    /// Default: a key generated on first start in `<data-dir>/keys/` (0600).
    #[arg(
        long,
        env = "KMODFORGE_MODULE_SIGNING_KEY",
        requires = "module_signing_cert"
    )]
    pub module_signing_key: Option<PathBuf>,

    /// The module-signing X.509 certificate (PEM) of `--module-signing-key`.
    #[arg(
        long,
        env = "KMODFORGE_MODULE_SIGNING_CERT",
        requires = "module_signing_key"
    )]
    pub module_signing_cert: Option<PathBuf>,

    /// The manifest-signing private key (PEM PKCS#8, Ed25519;
    /// `openssl genpkey -algorithm ed25519`). Default: generated on first start.
    #[arg(long, env = "KMODFORGE_MANIFEST_SIGNING_KEY")]
    pub manifest_signing_key: Option<PathBuf>,

    /// Audit: write a copy of every container's create request and of each exec's
    /// command, environment and stdin into this directory (every source tree
    /// too; off by default). Shows that no private key ever enters a container.
    #[arg(long, env = "KMODFORGE_TRACE_CONTAINER_INPUT")]
    pub trace_container_input: Option<PathBuf>,

    /// Debian archives to watch for new kernels: `URL SUITE[,SUITE...]`, repeatable
    /// (the environment variable separates entries with `;`). The builder images
    /// install headers from these.
    #[arg(
        long = "archive",
        env = "KMODFORGE_ARCHIVES",
        value_delimiter = ';',
        default_value = "http://deb.debian.org/debian bookworm,bookworm-updates;http://deb.debian.org/debian-security bookworm-security"
    )]
    pub archives: Vec<crate::archive::ArchiveSource>,

    /// Kernel flavours to prebuild for (comma-separated): `amd64`, `cloud-amd64`, `rt-amd64`.
    #[arg(
        long,
        env = "KMODFORGE_KERNEL_FLAVOURS",
        value_delimiter = ',',
        default_value = "amd64"
    )]
    pub kernel_flavours: Vec<String>,

    /// Seconds between scans of the archives; 0 turns the watcher off.
    #[arg(long, env = "KMODFORGE_ARCHIVE_INTERVAL_SECS", default_value_t = 3600)]
    pub archive_interval_secs: u64,

    /// Modules a new kernel is prebuilt for (comma-separated names); default: every
    /// module whose dkms.conf sets AUTOINSTALL=yes, newest version of each.
    #[arg(long, env = "KMODFORGE_PREBUILD_MODULES", value_delimiter = ',')]
    pub prebuild_modules: Vec<kmodforge_api::names::ModuleName>,

    /// Where a prebuild's failure is posted (JSON), retried, never blocking builds.
    #[arg(long, env = "KMODFORGE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Image preparations (base image bootstraps, builder, verifier and package
    /// images) running at once; more wait.
    #[arg(long, env = "KMODFORGE_MAX_IMAGE_BUILDS", default_value_t = 2)]
    pub max_image_builds: usize,

    /// This replica's name in a cluster: labels its containers and owns its job
    /// leases (default: derived from the data directory). Unique per replica.
    #[arg(long, env = "KMODFORGE_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// What this replica does: `api` (answers requests, queues builds), `builder`
    /// (runs queued builds on its Docker engine), or `both`.
    #[arg(long, env = "KMODFORGE_ROLE", value_enum, default_value_t = Role::Both)]
    pub role: Role,

    /// A builder's lease on a job, in seconds: renewed while the build runs; a
    /// replica that dies loses its jobs to another builder this long after.
    #[arg(long, env = "KMODFORGE_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,

    /// PostgreSQL URL for the records (`postgres://user:password@host:5432/db`),
    /// shared by every replica; without it, SQLite in the data directory.
    #[arg(long, env = "KMODFORGE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// S3 bucket for blobs, sources and logs, shared by every replica; without it,
    /// the data directory. Credentials: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
    /// or `--s3-credentials-file`.
    #[arg(long, env = "KMODFORGE_S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// Endpoint of an S3-compatible server (`http://127.0.0.1:3900`); default AWS.
    #[arg(long, env = "KMODFORGE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// The bucket's region (Garage's default is `garage`).
    #[arg(long, env = "KMODFORGE_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// An AWS shared-credentials file (`[default]` with `aws_access_key_id` and
    /// `aws_secret_access_key`; `AWS_PROFILE` picks another section).
    #[arg(long, env = "KMODFORGE_S3_CREDENTIALS_FILE")]
    pub s3_credentials_file: Option<PathBuf>,

    /// Build records and their logs older than this are removed (`30days`, `12h`,
    /// `1s`); records an artifact's manifest names, and builds in flight, stay.
    #[arg(long, env = "KMODFORGE_RETAIN_BUILDS", default_value = "30days")]
    pub retain_builds: humantime::Duration,

    /// Builder and verifier images (and their `/usr` volumes) of kernels no build
    /// was requested for within this long are removed (`30days`; `0s`: every kernel
    /// without a build in flight).
    #[arg(
        long,
        env = "KMODFORGE_RETAIN_KERNELS_UNUSED",
        default_value = "30days"
    )]
    pub retain_kernels_unused: humantime::Duration,

    /// Seconds between garbage collections (records, logs, blobs, images,
    /// volumes); 0: only on `POST /v1/gc`.
    #[arg(long, env = "KMODFORGE_GC_INTERVAL_SECS", default_value_t = 3600)]
    pub gc_interval_secs: u64,

    /// Answer blob downloads with a redirect to a presigned object-store URL valid
    /// this many seconds (S3 only; 0: serve the bytes through the server).
    #[arg(long, env = "KMODFORGE_PRESIGN_DOWNLOADS_SECS", default_value_t = 0)]
    pub presign_downloads_secs: u64,
}

/// A replica's part in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Api,
    Builder,
    Both,
}

impl Role {
    pub fn builds(self) -> bool {
        matches!(self, Role::Builder | Role::Both)
    }
}

fn default_jobs() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
}

/// A setting that is invalid, with the one line that says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl From<String> for ConfigError {
    fn from(message: String) -> Self {
        ConfigError(message)
    }
}

impl From<&str> for ConfigError {
    fn from(message: &str) -> Self {
        ConfigError(message.to_string())
    }
}

impl Config {
    /// What the archive watcher looks at and how often.
    pub fn watch_settings(&self) -> crate::archive::WatchSettings {
        crate::archive::WatchSettings {
            sources: self.archives.clone(),
            flavours: self.kernel_flavours.clone(),
            interval: (self.archive_interval_secs > 0)
                .then(|| Duration::from_secs(self.archive_interval_secs)),
        }
    }

    /// Where the signing keys come from.
    pub fn key_settings(&self) -> crate::keys::KeySettings {
        crate::keys::KeySettings {
            module_key: self.module_signing_key.clone(),
            module_cert: self.module_signing_cert.clone(),
            manifest_key: self.manifest_signing_key.clone(),
            sign_default: self.sign_modules,
        }
    }

    /// The sandbox limits these settings describe.
    pub fn sandbox_limits(&self) -> SandboxLimits {
        SandboxLimits {
            jobs: self.jobs.max(1),
            memory_bytes: self.memory_mib * 1024 * 1024,
            tmpfs_bytes: self.tmpfs_mib * 1024 * 1024,
            pids: self.pids,
            wall_clock: Duration::from_secs(self.build_timeout_secs),
            idle: Duration::from_secs(self.idle_timeout_secs),
            log_cap_bytes: self.log_cap_kib * 1024,
            output_cap_bytes: self.build_output_cap_mib * 1024 * 1024,
            artifact_cap_bytes: self.artifact_cap_mib * 1024 * 1024,
        }
    }

    /// What retention keeps, and how often it collects.
    pub fn gc_settings(&self) -> crate::gc::GcSettings {
        crate::gc::GcSettings {
            retain_builds: *self.retain_builds,
            retain_kernels_unused: *self.retain_kernels_unused,
            interval: (self.gc_interval_secs > 0)
                .then(|| Duration::from_secs(self.gc_interval_secs)),
            grace: crate::gc::DEFAULT_GRACE,
        }
    }

    /// Where the records live.
    pub fn records_config(&self) -> crate::store::RecordsConfig {
        match &self.database_url {
            Some(url) => crate::store::RecordsConfig::Postgres(url.clone()),
            None => crate::store::RecordsConfig::Sqlite,
        }
    }

    /// Where the objects live; reads the S3 credentials.
    pub fn objects_config(&self) -> Result<crate::store::ObjectsConfig, ConfigError> {
        let Some(bucket) = &self.s3_bucket else {
            return Ok(crate::store::ObjectsConfig::Local(self.data_dir.clone()));
        };
        let (access_key_id, secret_access_key) = match &self.s3_credentials_file {
            Some(path) => {
                let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("KMODFORGE_S3_CREDENTIALS_FILE {}: {e}", path.display()))?;
                aws_credentials(&text, &profile).ok_or_else(|| {
                    format!(
                        "KMODFORGE_S3_CREDENTIALS_FILE {}: no aws_access_key_id and aws_secret_access_key in [{profile}]",
                        path.display()
                    )
                })?
            }
            None => match (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Ok(id), Ok(secret)) if !id.is_empty() && !secret.is_empty() => (id, secret),
                _ => {
                    return Err(ConfigError::from("KMODFORGE_S3_BUCKET needs credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or KMODFORGE_S3_CREDENTIALS_FILE"))
                }
            },
        };
        Ok(crate::store::ObjectsConfig::S3(crate::store::S3Config {
            bucket: bucket.clone(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id,
            secret_access_key,
        }))
    }

    /// Checks values that clap's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jobs == 0 || self.jobs > 256 {
            return Err(ConfigError::from(format!(
                "KMODFORGE_JOBS must be 1..=256, got {}",
                self.jobs
            )));
        }
        if let Some(url) = &self.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::from(format!(
                    "KMODFORGE_WEBHOOK_URL must be an http(s) URL, got {url:?}"
                )));
            }
        }
        if self
            .kernel_flavours
            .iter()
            .any(|f| f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(ConfigError::from(format!(
                "KMODFORGE_KERNEL_FLAVOURS must be names like amd64,cloud-amd64, got {:?}",
                self.kernel_flavours
            )));
        }
        if self.max_image_builds == 0 {
            return Err(ConfigError::from(
                "KMODFORGE_MAX_IMAGE_BUILDS must be at least 1",
            ));
        }
        if self.max_builds == 0 {
            return Err(ConfigError::from("KMODFORGE_MAX_BUILDS must be at least 1"));
        }
        if self.memory_mib < 256 {
            return Err(ConfigError::from(format!(
                "KMODFORGE_BUILD_MEMORY_MIB must be at least 256, got {}",
                self.memory_mib
            )));
        }
        if !(5..=3600).contains(&self.boot_timeout_secs) {
            return Err(ConfigError::from(format!(
                "KMODFORGE_BOOT_TIMEOUT_SECS must be 5..=3600, got {}",
                self.boot_timeout_secs
            )));
        }
        if self.memory_mib < 1024 && self.boot_check {
            return Err(ConfigError::from("KMODFORGE_BOOT_CHECK needs KMODFORGE_BUILD_MEMORY_MIB of at least 1024 (the guest has 512 MiB)"));
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::from(
                    "KMODFORGE_DATABASE_URL must be a postgres:// URL",
                ));
            }
        }
        if let Some(endpoint) = &self.s3_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::from(format!(
                    "KMODFORGE_S3_ENDPOINT must be an http(s) URL, got {endpoint:?}"
                )));
            }
        }
        if let Some(id) = &self.replica_id {
            let ok = !id.is_empty()
                && id.len() <= 63
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(ConfigError::from(format!(
                    "KMODFORGE_REPLICA_ID must be 1-63 of [A-Za-z0-9_-], got {id:?}"
                )));
            }
        }
        if !(5..=3600).contains(&self.lease_secs) {
            return Err(ConfigError::from(format!(
                "KMODFORGE_LEASE_SECS must be 5..=3600, got {}",
                self.lease_secs
            )));
        }
        if self.role != Role::Both && self.database_url.is_none() {
            return Err(ConfigError::from(
                "KMODFORGE_ROLE api or builder needs KMODFORGE_DATABASE_URL (the shared job queue)",
            ));
        }
        if self.presign_downloads_secs > 0 && self.s3_bucket.is_none() {
            return Err(ConfigError::from("KMODFORGE_PRESIGN_DOWNLOADS_SECS needs KMODFORGE_S3_BUCKET (a local directory cannot presign)"));
        }
        if self.presign_downloads_secs > 7 * 24 * 3600 {
            return Err(ConfigError::from(
                "KMODFORGE_PRESIGN_DOWNLOADS_SECS must be at most 604800 (7 days, S3's limit)",
            ));
        }
        if self.tmpfs_mib >= self.memory_mib {
            return Err(ConfigError::from("KMODFORGE_BUILD_TMPFS_MIB must be below KMODFORGE_BUILD_MEMORY_MIB (tmpfs counts as memory)"));
        }
        Ok(())
    }
}

/// The key pair of `profile` in an AWS shared-credentials file.
fn aws_credentials(text: &str, profile: &str) -> Option<(String, String)> {
    let mut in_profile = false;
    let (mut id, mut secret) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            in_profile = line[1..line.len() - 1].trim() == profile;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if in_profile {
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    Some((id?, secret?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod credentials_tests {
    #[test]
    fn reads_the_named_profile() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n[ci]\naws_access_key_id=C\naws_secret_access_key=D\n";
        assert_eq!(
            super::aws_credentials(text, "default").unwrap(),
            ("A".into(), "B".into())
        );
        assert_eq!(
            super::aws_credentials(text, "ci").unwrap(),
            ("C".into(), "D".into())
        );
        assert!(super::aws_credentials(text, "none").is_none());
        assert!(super::aws_credentials("[default]\naws_access_key_id = A\n", "default").is_none());
    }
}
