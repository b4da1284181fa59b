//! What the server signs about an artifact, and how an agent checks that it is
//! the artifact it asked for.
//!
//! The server signs a [`ManifestStatement`]'s exact JSON text with its manifest
//! key (Ed25519) and ships text, signature and public key as the manifest's
//! [`Attestation`]. An agent that pins keys verifies the signature over the text,
//! then trusts the statement (never the unsigned rest of the manifest): the
//! module, version, kernel and arch must be the ones it asked for (a statement
//! replayed for another is refused), and every file must match its size and
//! sha256. The signature itself is checked by the agent (this crate does no
//! cryptography).

use serde::{Deserialize, Serialize};

use crate::names::{Arch, ArtifactKey, KernelRelease, ModuleName, ModuleVersion, SourceDigest};
use crate::wire::{Manifest, ModuleSigning};

/// Format version of [`ManifestStatement`].
pub const STATEMENT_VERSION: u32 = 1;
/// Prefix of a public key's text form: `ed25519:<64 hex digits>`.
pub const KEY_PREFIX: &str = "ed25519:";

/// A manifest's signature: the signed text, the signature and the signer's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attestation {
    /// The [`ManifestStatement`] as JSON: exactly the bytes that were signed.
    pub statement: String,
    /// Ed25519 signature over `statement`, hex.
    pub signature: String,
    /// The signer's public key, `ed25519:<hex>`.
    pub key: String,
}

/// One file as the statement names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatementFile {
    pub file: String,
    pub dest_location: String,
    pub size: u64,
    pub sha256: String,
}

/// The boot check as the statement names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatementBootCheck {
    pub passed: bool,
    /// The kernel ran with `module.sig_enforce=1` and the server's key trusted.
    pub signature_enforced: bool,
    pub checked_at: String,
    pub kernel_package_version: Option<String>,
}

/// Everything an agent relies on, signed as one text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ManifestStatement {
    pub v: u32,
    pub key: ArtifactKey,
    pub name: ModuleName,
    pub version: ModuleVersion,
    pub kernel: KernelRelease,
    pub arch: Arch,
    pub source_digest: SourceDigest,
    pub files: Vec<StatementFile>,
    pub module_signing: ModuleSigning,
    pub boot_check: Option<StatementBootCheck>,
    pub build_id: String,
    pub built_at: String,
}

impl ManifestStatement {
    /// The statement of `m` (what the server signs).
    pub fn of(m: &Manifest) -> ManifestStatement {
        ManifestStatement {
            v: STATEMENT_VERSION,
            key: m.key.clone(),
            name: m.name.clone(),
            version: m.version.clone(),
            kernel: m.kernel.clone(),
            arch: m.arch.clone(),
            source_digest: m.source_digest.clone(),
            files: m
                .files
                .iter()
                .map(|f| StatementFile {
                    file: f.file.clone(),
                    dest_location: f.dest_location.clone(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                })
                .collect(),
            module_signing: m.module_signing.clone().unwrap_or_default(),
            boot_check: m.boot_check.as_ref().map(|c| StatementBootCheck {
                passed: c.passed,
                signature_enforced: c.signature_enforced,
                checked_at: c.checked_at.clone(),
                kernel_package_version: c.kernel_package_version.clone(),
            }),
            build_id: m.build_id.clone(),
            built_at: m.built_at.clone(),
        }
    }

    /// The signed form: compact JSON in field order.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and vectors always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(text: &str) -> Result<ManifestStatement, StatementError> {
        let s: ManifestStatement =
            serde_json::from_str(text).map_err(|e| StatementError::Malformed(e.to_string()))?;
        if s.v != STATEMENT_VERSION {
            return Err(StatementError::Malformed(format!(
                "statement version {} (this agent knows {STATEMENT_VERSION})",
                s.v
            )));
        }
        Ok(s)
    }

    /// Refuses a statement about another module, version, kernel or arch.
    pub fn check_subject(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        kernel: &KernelRelease,
        arch: &Arch,
    ) -> Result<(), StatementError> {
        let got = (&self.name, &self.version, &self.kernel, &self.arch);
        if got != (name, version, kernel, arch) {
            return Err(StatementError::OtherSubject(format!(
                "the signed manifest is for {}/{} on {} ({}), not {name}/{version} on {kernel} ({arch})",
                self.name, self.version, self.kernel, self.arch
            )));
        }
        Ok(())
    }

    /// Refuses a manifest that says anything the statement does not say otherwise
    /// (its files, the boot check, the signing facts): the rest of a manifest is
    /// not signed, so it must state nothing beyond this statement.
    pub fn check_manifest(&self, m: &Manifest) -> Result<(), StatementError> {
        let of = ManifestStatement::of(m);
        if of == *self {
            return Ok(());
        }
        let what = if of.files != self.files {
            "its files"
        } else if of.boot_check != self.boot_check {
            "its boot check"
        } else if of.module_signing != self.module_signing {
            "its module signatures"
        } else {
            "its artifact facts"
        };
        Err(StatementError::Mismatch(format!(
            "the manifest differs from its signed statement in {what}"
        )))
    }

    /// The statement's entry for `file`.
    pub fn file(&self, file: &str) -> Option<&StatementFile> {
        self.files.iter().find(|f| f.file == file)
    }
}

/// A statement that cannot be trusted for the artifact in hand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    #[error("malformed signed statement: {0}")]
    Malformed(String),
    #[error("{0}")]
    OtherSubject(String),
    #[error("{0}")]
    Mismatch(String),
}

/// The 32 raw bytes of an `ed25519:<hex>` public key.
pub fn parse_public_key(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.trim().strip_prefix(KEY_PREFIX)?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

/// A short fingerprint to compare out of band: sha256 of the raw key, first 16 bytes, hex in pairs.
pub fn fingerprint(raw: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(raw);
    digest[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_parse_strictly() {
        let k = format!("{KEY_PREFIX}{}", "ab".repeat(32));
        assert_eq!(parse_public_key(&k), Some([0xab; 32]));
        assert_eq!(parse_public_key(&k[..k.len() - 2]), None);
        assert_eq!(parse_public_key(&"ab".repeat(32)), None);
        assert_eq!(parse_public_key("ed25519:zz"), None);
        assert_eq!(fingerprint(&[0; 32]).len(), 16 * 3 - 1);
    }
}
