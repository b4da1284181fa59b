//! The apt repository: what the server built, as Debian packages a host installs
//! with plain `apt`, plus packages an administrator uploads (`kmodforge-agent`).
//!
//! ```text
//! deb [signed-by=/etc/apt/keyrings/kmodforge.gpg] http://server:8080/apt kmodforge main
//! ```
//!
//! - **One package per module version and kernel**, made from the newest artifact
//!   of each (module, version, kernel, arch), the one agents get: package
//!   `<module>-modules-<kernel>`, version `<module version>-kmf<built_at>`
//!   (so a rebuild is an upgrade), `Depends: kmod, linux-image-<kernel> |
//!   linux-image-<kernel>-unsigned`. It holds the `.ko` files exactly as stored
//!   (signed when the artifact is) at `/lib/modules/<kernel><dest_location>/`,
//!   where DKMS and the agent put them; its postinst and postrm run `depmod` for
//!   that kernel. An artifact whose boot check failed is left out.
//! - **Without a manual step**: the repository is brought up to date with the
//!   records when an index is asked for (at most every [`REFRESH`]): packages of
//!   new artifacts are made (deterministic bytes: every replica makes the same
//!   `.deb`), stored as blobs and recorded; those of artifacts no longer newest
//!   (deleted, rebuilt) are dropped, and their blobs left to retention.
//! - **Signed**: `InRelease` (cleartext) and `Release.gpg` (detached) by the
//!   server's OpenPGP key; `Date` is the hour and `Valid-Until` a week later, so a
//!   replayed old index is refused by apt after a week at most, and replicas
//!   sharing the key serve byte-identical indexes.
//! - State is behind the seams: package records in [`AptRecords`], `.deb` files
//!   in the object store's blobs.

pub mod deb;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use kmodforge_api::names::{
    is_module_file_name, is_safe_dest_location, KernelRelease, ModuleName, ModuleVersion,
};
use kmodforge_api::wire::{AptOrigin, AptPackage, Manifest};
use sha2::{Digest, Sha256};
use std::io::Write;

use crate::builds::now_rfc3339;
use crate::keys::{Keys, SignError};
use crate::store::{BlobError, RecordsError, Store};
use deb::{DebError, DebFile, DebSpec};

/// The suite (and codename) of the repository.
pub const SUITE: &str = "kmodforge";
/// Its one component.
pub const COMPONENT: &str = "main";
/// How long an index is served before the records are looked at again.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long a signed index stays valid (apt refuses it after that).
const VALID_FOR: u64 = 7 * 24 * 3600;
/// The maintainer named in generated packages.
const MAINTAINER: &str = "kmodforge <kmodforge@localhost>";
/// Names uploaded packages must start with: the repository carries kmodforge's
/// own packages, never someone's module under a module package's name.
const UPLOAD_PREFIX: &str = "kmodforge-";

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("making the package of {artifact}: {source}")]
    Deb {
        artifact: String,
        #[source]
        source: DebError,
    },
    #[error("signing the repository index: {0}")]
    Sign(#[from] SignError),
    #[error("blob {sha256} of artifact {artifact} is missing")]
    MissingBlob { sha256: String, artifact: String },
    /// An uploaded package that cannot go into the repository (422).
    #[error("{0}")]
    BadUpload(String),
}

/// The repository's current indexes, signed.
pub struct Snapshot {
    pub packages: Vec<AptPackage>,
    pub release: String,
    pub inrelease: String,
    pub release_gpg: String,
    /// `binary-<arch>` → (Packages, Packages.gz).
    pub indexes: BTreeMap<String, (Bytes, Bytes)>,
}

impl Snapshot {
    /// The package whose `.deb` is at `filename` (relative to the repository root).
    pub fn by_filename(&self, filename: &str) -> Option<&AptPackage> {
        self.packages.iter().find(|p| p.filename == filename)
    }
}

/// The repository service.
pub struct AptRepo {
    store: Store,
    keys: Arc<Keys>,
    cached: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl AptRepo {
    pub fn new(store: Store, keys: Arc<Keys>) -> Self {
        AptRepo {
            store,
            keys,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The current indexes: cached for [`REFRESH`], else brought up to date.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, AptError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, snap)) = cached.as_ref() {
            if at.elapsed() < REFRESH {
                return Ok(snap.clone());
            }
        }
        let packages = self.refresh().await?;
        let snap = Arc::new(self.index(packages)?);
        *cached = Some((Instant::now(), snap.clone()));
        Ok(snap)
    }

    /// Forgets the cached indexes (after an upload or a delete).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// Makes the packages of new artifacts, drops those of replaced ones; returns
    /// every package.
    async fn refresh(&self) -> Result<Vec<AptPackage>, AptError> {
        let records = &self.store.records;
        let latest = records.latest_artifacts().await?;
        let mut existing = records.list_apt_packages().await?;
        let mut wanted_keys = BTreeSet::new();
        let mut taken: HashMap<(String, String, String), String> = existing
            .iter()
            .filter(|p| !matches!(p.origin, AptOrigin::Artifact { .. }))
            .map(|p| {
                let id = (p.package.clone(), p.version.clone(), p.architecture.clone());
                (id, "an uploaded package".to_string())
            })
            .collect();
        // What is packaged already: (artifact key, package, version).
        let packaged: HashSet<(String, String, String)> = existing
            .iter()
            .filter_map(|p| match &p.origin {
                AptOrigin::Artifact { key, .. } => {
                    Some((key.to_string(), p.package.clone(), p.version.clone()))
                }
                AptOrigin::Upload { .. } => None,
            })
            .collect();
        let have: HashSet<(&str, &str, &str)> = packaged
            .iter()
            .map(|(k, p, v)| (k.as_str(), p.as_str(), v.as_str()))
            .collect();
        let mut made = Vec::new();
        for m in &latest {
            let Some(id) = module_package_id(m) else {
                continue;
            };
            if m.boot_check.as_ref().is_some_and(|b| !b.passed) {
                continue;
            }
            // The paths go into the package and onto hosts: only what an agent would install.
            let unsafe_file = m.files.iter().find(|f| {
                !is_module_file_name(&f.file) || !is_safe_dest_location(&f.dest_location)
            });
            if let Some(f) = unsafe_file {
                tracing::warn!(artifact = %m.key, file = ?f.file, dest = ?f.dest_location,
                    "apt: a file name or location a host would refuse; left out");
                continue;
            }
            if let Some(other) = taken.get(&id) {
                tracing::warn!(artifact = %m.key, package = %id.0, version = %id.1,
                    "apt: the package name and version are {other}'s already; left out");
                continue;
            }
            taken.insert(id.clone(), m.key.to_string());
            wanted_keys.insert(m.key.to_string());
            if have.contains(&(m.key.as_str(), id.0.as_str(), id.1.as_str())) {
                continue;
            }
            let p = self.package_artifact(m, &id).await?;
            tracing::info!(package = %p.package, version = %p.version,
                artifact = %m.key, "apt: package made");
            records.put_apt_package(&p).await?;
            made.push(p);
        }
        existing.extend(made);
        let mut kept = Vec::with_capacity(existing.len());
        for p in existing {
            if let AptOrigin::Artifact { key, .. } = &p.origin {
                if !wanted_keys.contains(key.as_str()) {
                    records
                        .delete_apt_package(&p.package, &p.version, &p.architecture)
                        .await?;
                    tracing::info!(package = %p.package, version = %p.version,
                        "apt: package dropped (its artifact is no longer the newest)");
                    continue;
                }
            }
            kept.push(p);
        }
        kept.sort_by(|a, b| {
            (&a.package, &a.version, &a.architecture).cmp(&(
                &b.package,
                &b.version,
                &b.architecture,
            ))
        });
        Ok(kept)
    }

    /// Makes, stores and describes the package of one artifact.
    async fn package_artifact(
        &self,
        m: &Manifest,
        id: &(String, String, String),
    ) -> Result<AptPackage, AptError> {
        let mut files = Vec::with_capacity(m.files.len());
        for f in &m.files {
            let data = self
                .store
                .objects
                .get_blob(&f.sha256)
                .await?
                .ok_or_else(|| AptError::MissingBlob {
                    sha256: f.sha256.clone(),
                    artifact: m.key.to_string(),
                })?;
            let dest = f.dest_location.trim_matches('/');
            files.push(DebFile {
                path: format!("lib/modules/{}/{dest}/{}", m.kernel, f.file),
                mode: 0o644,
                data,
            });
        }
        let spec = DebSpec {
            control: module_control(m, id),
            files,
            scripts: vec![
                ("postinst", postinst(&m.kernel)),
                ("postrm", postrm(&m.kernel)),
            ],
            mtime: rfc3339_unix(&m.built_at).unwrap_or(0),
        };
        let (bytes, installed) = deb::build(&spec).map_err(|source| AptError::Deb {
            artifact: m.key.to_string(),
            source,
        })?;
        let sha256 = self.store.objects.put_blob(&bytes).await?;
        let control = format!("{}\nInstalled-Size: {installed}\n", spec.control.trim_end());
        Ok(AptPackage {
            filename: pool_path(&id.0, &id.1, &id.2),
            package: id.0.clone(),
            version: id.1.clone(),
            architecture: id.2.clone(),
            sha256,
            size: bytes.len() as u64,
            control,
            origin: AptOrigin::Artifact {
                key: m.key.clone(),
                name: m.name.clone(),
                version: m.version.clone(),
                kernel: m.kernel.clone(),
                arch: m.arch.clone(),
            },
            added_at: now_rfc3339(),
        })
    }

    /// Adds an uploaded `.deb` (admin): its control file says what it is.
    pub async fn upload(&self, deb: Bytes, by: &str) -> Result<AptPackage, AptError> {
        let control = deb::read_control(&deb).map_err(|e| AptError::BadUpload(e.to_string()))?;
        check_control(&control)?;
        let fields = deb::parse_stanza(&control);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| AptError::BadUpload(format!("its control file has no {name} field")))
        };
        let package = field("Package")?;
        let version = field("Version")?;
        let arch = field("Architecture")?;
        if !package.starts_with(UPLOAD_PREFIX) || !valid_package_name(&package) {
            return Err(AptError::BadUpload(format!(
                "package {package:?}: only kmodforge's own packages ({UPLOAD_PREFIX}*) can be uploaded; module packages are made from builds"
            )));
        }
        if !valid_version(&version) {
            return Err(AptError::BadUpload(format!(
                "version {version:?} is not a Debian version"
            )));
        }
        if !matches!(arch.as_str(), "amd64" | "arm64" | "all") {
            return Err(AptError::BadUpload(format!(
                "architecture {arch:?}: amd64, arm64 or all"
            )));
        }
        let sha256 = self.store.objects.put_blob(&deb).await?;
        let p = AptPackage {
            filename: pool_path(&package, &version, &arch),
            package,
            version,
            architecture: arch,
            sha256,
            size: deb.len() as u64,
            control: format!("{}\n", control.trim_end()),
            origin: AptOrigin::Upload { by: by.to_string() },
            added_at: now_rfc3339(),
        };
        self.store.records.put_apt_package(&p).await?;
        self.invalidate().await;
        Ok(p)
    }

    /// Removes an uploaded package; a module package goes with its artifact.
    pub async fn delete(
        &self,
        package: &str,
        version: &str,
        arch: &str,
    ) -> Result<Option<AptPackage>, AptError> {
        let found = self
            .store
            .records
            .list_apt_packages()
            .await?
            .into_iter()
            .find(|p| p.package == package && p.version == version && p.architecture == arch);
        let Some(p) = found else {
            return Ok(None);
        };
        if matches!(p.origin, AptOrigin::Artifact { .. }) {
            return Err(AptError::BadUpload(format!(
                "{package} {version} is made from an artifact: delete the module version (DELETE /v1/modules/...) instead"
            )));
        }
        self.store
            .records
            .delete_apt_package(package, version, arch)
            .await?;
        self.invalidate().await;
        Ok(Some(p))
    }

    /// The Packages files, Release, and its two signatures.
    fn index(&self, packages: Vec<AptPackage>) -> Result<Snapshot, AptError> {
        let mut arches: BTreeSet<String> = packages
            .iter()
            .map(|p| p.architecture.clone())
            .filter(|a| a != "all")
            .collect();
        if arches.is_empty() {
            arches.insert("amd64".into());
        }
        let mut indexes = BTreeMap::new();
        for arch in &arches {
            let mut text = String::new();
            for p in packages
                .iter()
                .filter(|p| &p.architecture == arch || p.architecture == "all")
            {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(p.control.trim_end());
                text.push_str(&format!(
                    "\nFilename: {}\nSize: {}\nSHA256: {}\n",
                    p.filename, p.size, p.sha256
                ));
            }
            let plain = Bytes::from(text.into_bytes());
            let mut gz = GzEncoder::new(Vec::new(), Compression::default());
            gz.write_all(&plain)
                .and_then(|_| gz.try_finish())
                .map_err(|e| AptError::Deb {
                    artifact: "the Packages index".into(),
                    source: DebError::Io(e),
                })?;
            let gz = Bytes::from(gz.get_ref().clone());
            indexes.insert(format!("binary-{arch}"), (plain, gz));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // The hour (identical on every replica), but never before the key was made:
        // a signature older than its key has no binding signature at its time, and
        // Sequoia's sqv (apt 3) refuses it.
        let key = self.keys.apt();
        let date = (now - now % 3600).max(u64::from(key.created()));
        let mut release = format!(
            "Origin: kmodforge\nLabel: kmodforge\nSuite: {SUITE}\nCodename: {SUITE}\n\
             Date: {}\nValid-Until: {}\nArchitectures: {}\nComponents: {COMPONENT}\n\
             Description: kernel modules prebuilt by kmodforge, and kmodforge's own packages\n\
             SHA256:\n",
            rfc2822(date),
            rfc2822(date + VALID_FOR),
            arches.iter().cloned().collect::<Vec<_>>().join(" "),
        );
        for (dir, (plain, gz)) in &indexes {
            for (name, data) in [("Packages", plain), ("Packages.gz", gz)] {
                release.push_str(&format!(
                    " {} {:>8} {COMPONENT}/{dir}/{name}\n",
                    hex::encode(Sha256::digest(data)),
                    data.len()
                ));
            }
        }
        let at = date as u32;
        Ok(Snapshot {
            inrelease: key.clearsign(&release, at)?,
            release_gpg: key.sign_detached(release.as_bytes(), at)?,
            release,
            indexes,
            packages,
        })
    }
}

/// (package, version, architecture) of an artifact's package, if it has one.
fn module_package_id(m: &Manifest) -> Option<(String, String, String)> {
    let arch = m.arch.debian_arch()?;
    let name = module_package_name(&m.name, &m.kernel)?;
    Some((
        name,
        module_deb_version(&m.version, &m.built_at),
        arch.to_string(),
    ))
}

/// Fields the repository writes into `Packages` itself.
const INDEX_FIELDS: [&str; 7] = [
    "Filename",
    "Size",
    "MD5sum",
    "SHA1",
    "SHA256",
    "SHA512",
    "Description-md5",
];

/// An uploaded control file goes into `Packages` as it is, so it must be one
/// well-formed stanza: no blank line (which would start a stanza of its own, a
/// package the upload did not name), field names as Debian policy 5.1 has them,
/// each once, none that the index writes itself (a forged checksum or file).
fn check_control(control: &str) -> Result<(), AptError> {
    let bad = |why: String| Err(AptError::BadUpload(format!("its control file: {why}")));
    let mut seen = HashSet::new();
    for line in control.trim_end().lines() {
        if line.trim().is_empty() {
            return bad("a blank line inside it (one stanza only)".into());
        }
        if line.starts_with([' ', '\t']) {
            if seen.is_empty() {
                return bad("a continuation line before any field".into());
            }
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return bad(format!("{line:?} is not a field"));
        };
        let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return bad(format!("{name:?} is not a field name"));
        }
        if INDEX_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            return bad(format!("{name} is the repository's to write"));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return bad(format!("{name} twice"));
        }
    }
    Ok(())
}

/// `<module>-modules-<kernel>`, lowercased, `_` and `~` as `-`.
pub fn module_package_name(name: &ModuleName, kernel: &KernelRelease) -> Option<String> {
    let raw = format!("{}-modules-{}", name.as_str(), kernel.as_str()).to_ascii_lowercase();
    let mapped: String = raw
        .chars()
        .map(|c| if matches!(c, '_' | '~') { '-' } else { c })
        .collect();
    valid_package_name(&mapped).then_some(mapped)
}

/// `<version>-kmf<built_at digits>`: the module version made a Debian upstream
/// version (`_` and `:` as `.`, `0~` before one that does not start with a digit),
/// the build time as the revision, so that a rebuild sorts after what it replaces.
pub fn module_deb_version(version: &ModuleVersion, built_at: &str) -> String {
    let mut upstream: String = version
        .as_str()
        .chars()
        .map(|c| if matches!(c, '_' | ':') { '.' } else { c })
        .collect();
    if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
        upstream = format!("0~{upstream}");
    }
    let stamp: String = built_at
        .chars()
        .take_while(|c| *c != '.' && *c != 'Z' && *c != '+')
        .filter(|c| c.is_ascii_digit())
        .collect();
    format!("{upstream}-kmf{stamp}")
}

/// Debian policy 5.6.1: `[a-z0-9][a-z0-9+.-]+`.
fn valid_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.len() <= 200
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'))
}

/// Debian policy 5.6.12, without an epoch: `[0-9][A-Za-z0-9.+~-]*` (a `-` only
/// with a revision after it).
fn valid_version(s: &str) -> bool {
    let (upstream, revision) = match s.rsplit_once('-') {
        Some((u, r)) => (u, Some(r)),
        None => (s, None),
    };
    let upstream_ok = upstream.starts_with(|c: char| c.is_ascii_digit())
        && upstream.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '.' | '+' | '~')
                || (c == '-' && revision.is_some())
        });
    let revision_ok = revision.is_none_or(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~'))
    });
    s.len() <= 200 && upstream_ok && revision_ok
}

/// `pool/main/<first letter>/<package>/<package>_<version>_<arch>.deb`.
fn pool_path(package: &str, version: &str, arch: &str) -> String {
    let letter = &package[..1];
    format!("pool/{COMPONENT}/{letter}/{package}/{package}_{version}_{arch}.deb")
}

fn module_control(m: &Manifest, id: &(String, String, String)) -> String {
    let k = m.kernel.as_str();
    let files: Vec<&str> = m.files.iter().map(|f| f.file.as_str()).collect();
    let dirs: BTreeSet<String> = m
        .files
        .iter()
        .map(|f| format!("/lib/modules/{k}{}", f.dest_location))
        .collect();
    let signing = match &m.module_signing {
        Some(s) if s.signed => format!(
            "Signed by {} (key {}).",
            s.signer.as_deref().unwrap_or("the server's key"),
            s.key_id.as_deref().unwrap_or("?")
        ),
        _ => "Not signed.".to_string(),
    };
    let boot = match &m.boot_check {
        Some(b) if b.passed => "Boot-checked: loaded in this kernel under qemu.",
        _ => "Not boot-checked.",
    };
    format!(
        "Package: {}\nSource: kmodforge-{}\nVersion: {}\nArchitecture: {}\nMaintainer: {MAINTAINER}\n\
         Depends: kmod, linux-image-{k} | linux-image-{k}-unsigned\n\
         Section: kernel\nPriority: optional\n\
         Description: {} {} kernel modules for Linux {k}\n \
         Prebuilt by kmodforge from the DKMS source {} {} (source {}), for kernel {k}\n \
         ({}): {}, installed in {}.\n \
         {signing} {boot}\n",
        id.0,
        id.0.split("-modules-").next().unwrap_or(&id.0),
        id.1,
        id.2,
        m.name,
        m.version,
        m.name,
        m.version,
        m.source_digest,
        m.arch,
        files.join(", "),
        dirs.into_iter().collect::<Vec<_>>().join(", "),
    )
}

fn postinst(kernel: &KernelRelease) -> String {
    format!(
        "#!/bin/sh\n# Made by kmodforge: the modules are in place; let depmod see them.\nset -e\n\
         if [ \"$1\" = configure ] && command -v depmod >/dev/null 2>&1; then\n\
         \x20   depmod -a {kernel}\nfi\n"
    )
}

fn postrm(kernel: &KernelRelease) -> String {
    format!(
        "#!/bin/sh\n# Made by kmodforge: the modules are gone; let depmod forget them.\nset -e\n\
         case \"$1\" in\n\
         \x20   remove|purge)\n\
         \x20       if [ -d /lib/modules/{kernel} ] && command -v depmod >/dev/null 2>&1; then\n\
         \x20           depmod -a {kernel} || true\n\
         \x20       fi ;;\n\
         esac\n"
    )
}

/// Seconds since the epoch of an RFC 3339 time, if it parses.
fn rfc3339_unix(s: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// `Mon, 07 Dec 2026 07:00:00 UTC` (the date form of Release files).
fn rfc2822(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} UTC",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
