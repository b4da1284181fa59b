//! The server's keys: the module-signing key (RSA + X.509, the kernel's format)
//! and the manifest key (Ed25519). Both live in this process only: no container
//! ever gets a private key (builds and boot checks get modules that are already
//! signed, and the certificate, which is public).
//!
//! Keys are imported (PEM files named in the configuration, used in place) or
//! generated on first start under `<data-dir>/keys/` (directory 0700, private keys
//! 0600). Their public parts are records (`GET /v1/keys` lists every one ever
//! used, so old artifacts stay verifiable), and a key that was not used before is
//! an audited change.

pub mod manifest_signing;
pub mod module_signing;
pub mod openpgp;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use kmodforge_api::attest::ManifestStatement;
use kmodforge_api::wire::{KeyPurpose, Manifest, ModuleSigning, PublicKey};

use crate::auth::{Audit, Caller};
use crate::builds::now_rfc3339;
use crate::store::{write_secret, Records, RecordsError};
pub use manifest_signing::ManifestSigningKey;
pub use module_signing::{split_signature, CertInfo, ModuleSigningKey, SignError};
pub use openpgp::OpenPgpKey;

/// Common name of a generated module-signing certificate.
const MODULE_CN: &str = "kmodforge module signing key";
/// User ID of the apt repository's OpenPGP key.
const APT_UID: &str = "kmodforge apt repository signing key";

/// Where keys come from.
#[derive(Clone, Debug, Default)]
pub struct KeySettings {
    /// PEM private key and certificate of module signing (both or neither).
    pub module_key: Option<PathBuf>,
    pub module_cert: Option<PathBuf>,
    /// PEM (PKCS#8) Ed25519 key of manifest signing.
    pub manifest_key: Option<PathBuf>,
    /// Sign modules when a request does not say.
    pub sign_default: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Key {
        what: String,
        #[source]
        source: SignError,
    },
    #[error("--module-signing-key and --module-signing-cert go together")]
    Half,
    #[error(transparent)]
    Records(#[from] RecordsError),
}

/// Why a module-signing certificate cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("no module-signing certificate {0} is on record")]
    Unknown(String),
    #[error("certificate {sha256} on record: {source}")]
    Unreadable {
        sha256: String,
        source: openssl::error::ErrorStack,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
}

/// The server's signing keys.
pub struct Keys {
    module: ModuleSigningKey,
    module_cert_der: Vec<u8>,
    module_cert_pem: Vec<u8>,
    manifest: ManifestSigningKey,
    /// Signs the apt repository's `Release` (OpenPGP).
    apt: OpenPgpKey,
    sign_default: bool,
    /// A key no kernel trusts, for the boot check's "signed by another key" probe.
    foreign: OnceLock<ModuleSigningKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("module", self.module.info())
            .field("manifest", &self.manifest.public())
            .finish_non_exhaustive()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KeyError {
    let what = what.into();
    move |source| KeyError::Io { what, source }
}

fn bad_key(what: impl Into<String>) -> impl FnOnce(SignError) -> KeyError {
    let what = what.into();
    move |source| KeyError::Key { what, source }
}

impl Keys {
    /// Loads or makes both keys and records their public parts.
    pub async fn open(
        data_dir: &Path,
        s: &KeySettings,
        records: Arc<dyn Records>,
    ) -> Result<Arc<Keys>, KeyError> {
        let dir = data_dir.join("keys");
        make_private_dir(&dir)?;
        let (module, module_origin) = module_key(&dir, s)?;
        let (manifest, manifest_origin) = manifest_key(&dir, s)?;
        let (apt, apt_origin) = apt_key(&dir)?;
        let keys = Keys {
            module_cert_der: module
                .cert_der()
                .map_err(bad_key("module-signing certificate"))?,
            module_cert_pem: module
                .cert_pem()
                .map_err(bad_key("module-signing certificate"))?,
            module,
            manifest,
            apt,
            sign_default: s.sign_default,
            foreign: OnceLock::new(),
        };
        keys.record_public(records, &module_origin, &manifest_origin, &apt_origin)
            .await?;
        Ok(Arc::new(keys))
    }

    /// Records the public parts; a key not seen before is audited.
    async fn record_public(
        &self,
        records: Arc<dyn Records>,
        module_origin: &str,
        manifest_origin: &str,
        apt_origin: &str,
    ) -> Result<(), KeyError> {
        let audit = Audit::new(records.clone());
        let server = Caller::local("server".into());
        let info = self.module.info();
        let module = PublicKey {
            purpose: KeyPurpose::ModuleSigning,
            id: info.cert_sha256.clone(),
            public: String::from_utf8_lossy(&self.module_cert_pem).into_owned(),
            signer: Some(info.signer.clone()),
            key_id: Some(info.key_id.clone()),
            first_used: now_rfc3339(),
            current: true,
        };
        if records.put_public_key(&module).await? {
            let detail = format!(
                "module-signing key {module_origin}: {} (serial {}, certificate sha256 {})",
                info.signer, info.key_id, info.cert_sha256
            );
            tracing::info!(%detail, "new module-signing key");
            audit.key(&server, &info.cert_sha256, detail).await?;
        }
        let manifest = PublicKey {
            purpose: KeyPurpose::Manifest,
            id: self.manifest.public().to_string(),
            public: self.manifest.public().to_string(),
            signer: None,
            key_id: None,
            first_used: now_rfc3339(),
            current: true,
        };
        if records.put_public_key(&manifest).await? {
            let detail = format!("manifest key {manifest_origin}: {}", self.manifest.public());
            tracing::info!(%detail, "new manifest key");
            audit.key(&server, self.manifest.public(), detail).await?;
        }
        let armored = self
            .apt
            .public_armored()
            .map_err(bad_key("apt repository key"))?;
        let apt = PublicKey {
            purpose: KeyPurpose::AptRepository,
            id: self.apt.fingerprint_hex(),
            public: armored,
            signer: None,
            key_id: None,
            first_used: now_rfc3339(),
            current: true,
        };
        if records.put_public_key(&apt).await? {
            let detail = format!(
                "apt repository key {apt_origin}: OpenPGP {}",
                self.apt.fingerprint_hex()
            );
            tracing::info!(%detail, "new apt repository key");
            audit
                .key(&server, &self.apt.fingerprint_hex(), detail)
                .await?;
        }
        Ok(())
    }

    /// The apt repository's OpenPGP key.
    pub fn apt(&self) -> &OpenPgpKey {
        &self.apt
    }

    /// The key `sign` (the request's choice, else the default) asks for, if any.
    pub fn module_signer(&self, sign: Option<bool>) -> Option<&ModuleSigningKey> {
        sign.unwrap_or(self.sign_default).then_some(&self.module)
    }

    /// The manifest's signing facts for modules signed by `signer` (or unsigned).
    pub fn signing_facts(signer: Option<&ModuleSigningKey>) -> ModuleSigning {
        match signer {
            None => ModuleSigning::default(),
            Some(k) => {
                let info = k.info();
                ModuleSigning {
                    signed: true,
                    signer: Some(info.signer.clone()),
                    key_id: Some(info.key_id.clone()),
                    hash_algo: Some("sha256".into()),
                    certificate_sha256: Some(info.cert_sha256.clone()),
                }
            }
        }
    }

    pub fn module_cert_der(&self) -> &[u8] {
        &self.module_cert_der
    }

    pub fn module_cert_pem(&self) -> &[u8] {
        &self.module_cert_pem
    }

    pub fn module_info(&self) -> &CertInfo {
        self.module.info()
    }

    /// `ed25519:<hex>`.
    pub fn manifest_public(&self) -> &str {
        self.manifest.public()
    }

    /// Signs `m`'s statement (after any change to what it states).
    pub fn attest(&self, m: &mut Manifest) -> Result<(), SignError> {
        m.attestation = Some(self.manifest.attest(&ManifestStatement::of(m))?);
        Ok(())
    }

    /// The DER and common name of the module-signing certificate whose sha256 is
    /// `sha256`: the current one, or an earlier one from the records.
    pub async fn certificate(
        &self,
        sha256: &str,
        records: &dyn Records,
    ) -> Result<(Vec<u8>, String), CertificateError> {
        let info = self.module.info();
        if info.cert_sha256 == sha256 {
            return Ok((self.module_cert_der.clone(), info.signer.clone()));
        }
        let keys = records.list_public_keys().await?;
        let found = keys
            .iter()
            .find(|k| k.purpose == KeyPurpose::ModuleSigning && k.id == sha256)
            .ok_or_else(|| CertificateError::Unknown(sha256.to_string()))?;
        let der = openssl::x509::X509::from_pem(found.public.as_bytes())
            .and_then(|c| c.to_der())
            .map_err(|source| CertificateError::Unreadable {
                sha256: sha256.to_string(),
                source,
            })?;
        Ok((der, found.signer.clone().unwrap_or_default()))
    }

    /// A key that no kernel trusts, made once per process: the boot check shows
    /// that a module signed by it is refused.
    pub fn foreign(&self) -> Result<&ModuleSigningKey, SignError> {
        if let Some(k) = self.foreign.get() {
            return Ok(k);
        }
        let k = ModuleSigningKey::generate("kmodforge boot-check probe key (trusted by nothing)")?;
        Ok(self.foreign.get_or_init(|| k))
    }
}

/// Creates `dir` with mode 0700 (and makes an existing one 0700).
fn make_private_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod 0700 {}", dir.display())))
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(io(format!("reading {}", path.display())))
}

/// The module-signing key: imported, stored, or generated now (and stored).
fn module_key(dir: &Path, s: &KeySettings) -> Result<(ModuleSigningKey, String), KeyError> {
    match (&s.module_key, &s.module_cert) {
        (Some(k), Some(c)) => {
            let what = format!("module-signing key {} / {}", k.display(), c.display());
            let key = ModuleSigningKey::from_pem(&read(k)?, &read(c)?).map_err(bad_key(what))?;
            Ok((key, format!("imported from {}", c.display())))
        }
        (None, None) => {
            let (kp, cp) = (
                dir.join("module-signing.key"),
                dir.join("module-signing.crt"),
            );
            if kp.exists() || cp.exists() {
                let what = format!("stored module-signing key {}", kp.display());
                let key =
                    ModuleSigningKey::from_pem(&read(&kp)?, &read(&cp)?).map_err(bad_key(what))?;
                return Ok((key, "stored".into()));
            }
            let key = ModuleSigningKey::generate(MODULE_CN)
                .map_err(bad_key("generating a module-signing key"))?;
            let pem = key.key_pem().map_err(bad_key("module-signing key"))?;
            // Certificate first: a key file without its certificate is never left behind alone
            // by a crash, and the key is what makes the pair "stored".
            let cert = key
                .cert_pem()
                .map_err(bad_key("module-signing certificate"))?;
            std::fs::write(&cp, cert).map_err(io(format!("writing {}", cp.display())))?;
            write_secret(&kp, &pem).map_err(io(format!("writing {}", kp.display())))?;
            Ok((key, format!("generated in {}", dir.display())))
        }
        _ => Err(KeyError::Half),
    }
}

/// The apt repository key: stored (`apt-signing.key`, PKCS#8 Ed25519, and
/// `apt-signing.created`, the Unix time that is part of its OpenPGP fingerprint),
/// or generated now and stored.
fn apt_key(dir: &Path) -> Result<(OpenPgpKey, String), KeyError> {
    let kp = dir.join("apt-signing.key");
    let cp = dir.join("apt-signing.created");
    if kp.exists() {
        let text = String::from_utf8_lossy(&read(&cp)?).trim().to_string();
        let created: u32 = text.parse().map_err(|_| KeyError::Key {
            what: format!("stored apt repository key {}", cp.display()),
            source: SignError::Key(format!("{text:?} is not a Unix time")),
        })?;
        let key = OpenPgpKey::from_pem(&read(&kp)?, created, APT_UID).map_err(bad_key(format!(
            "stored apt repository key {}",
            kp.display()
        )))?;
        return Ok((key, "stored".into()));
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    let key = OpenPgpKey::generate(APT_UID, created)
        .map_err(bad_key("generating the apt repository key"))?;
    let pem = key.key_pem().map_err(bad_key("apt repository key"))?;
    // The creation time first: the key file is what makes the pair "stored".
    std::fs::write(&cp, format!("{created}\n")).map_err(io(format!("writing {}", cp.display())))?;
    write_secret(&kp, &pem).map_err(io(format!("writing {}", kp.display())))?;
    Ok((key, format!("generated in {}", dir.display())))
}

/// The manifest key: imported, stored, or generated now (and stored).
fn manifest_key(dir: &Path, s: &KeySettings) -> Result<(ManifestSigningKey, String), KeyError> {
    if let Some(k) = &s.manifest_key {
        let key = ManifestSigningKey::from_pem(&read(k)?)
            .map_err(bad_key(format!("manifest key {}", k.display())))?;
        return Ok((key, format!("imported from {}", k.display())));
    }
    let kp = dir.join("manifest-signing.key");
    if kp.exists() {
        let key = ManifestSigningKey::from_pem(&read(&kp)?)
            .map_err(bad_key(format!("stored manifest key {}", kp.display())))?;
        return Ok((key, "stored".into()));
    }
    let key = ManifestSigningKey::generate().map_err(bad_key("generating a manifest key"))?;
    let pem = key.key_pem().map_err(bad_key("manifest key"))?;
    write_secret(&kp, &pem).map_err(io(format!("writing {}", kp.display())))?;
    Ok((key, format!("generated in {}", dir.display())))
}
