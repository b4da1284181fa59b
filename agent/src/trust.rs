//! Signed manifests: with `trusted_keys` pinned, a manifest is accepted only when
//! its statement is signed by one of those keys (Ed25519), is about the module,
//! version, kernel and arch asked for (a statement replayed for another is
//! refused), and says exactly what the rest of the manifest says. The downloaded
//! files are then checked against it (size, sha256).
//!
//! Without pinned keys nothing is verified here (and `status` says so).

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use kmodforge_api::attest::{fingerprint, parse_public_key, ManifestStatement};
use kmodforge_api::names::{Arch, KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::Manifest;

/// The pinned manifest keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<(String, [u8; 32])>,
}

/// Why a manifest is not trusted. Each is refused with exit 9, nothing installed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("the manifest is not signed, and trusted_keys requires a signed one")]
    Unsigned,
    #[error(
        "the manifest is signed by {key} (fingerprint {fingerprint}), which is not in trusted_keys"
    )]
    UnknownKey { key: String, fingerprint: String },
    #[error("the manifest's signature does not verify with its key {0}: the manifest was changed after signing")]
    BadSignature(String),
    #[error("{0}")]
    Statement(String),
    #[error("{file} does not match the signed manifest: {what}")]
    File { file: String, what: String },
}

impl TrustedKeys {
    /// Parses `ed25519:<hex>` entries; the error names the bad entry.
    pub fn parse(entries: &[String]) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let raw = parse_public_key(e)
                .ok_or_else(|| format!("entry {i} ({e:?}) is not ed25519:<64 hex digits>"))?;
            keys.push((e.trim().to_string(), raw));
        }
        Ok(TrustedKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `m` for the artifact asked for; returns the signing key's text
    /// form and the statement.
    pub fn verify(
        &self,
        m: &Manifest,
        name: &ModuleName,
        version: &ModuleVersion,
        kernel: &KernelRelease,
        arch: &Arch,
    ) -> Result<(String, ManifestStatement), TrustError> {
        let att = m.attestation.as_ref().ok_or(TrustError::Unsigned)?;
        let Some((text, raw)) = self
            .keys
            .iter()
            .find(|(_, raw)| Some(*raw) == parse_public_key(&att.key))
        else {
            let fingerprint = parse_public_key(&att.key)
                .map(|r| fingerprint(&r))
                .unwrap_or_else(|| "malformed".into());
            return Err(TrustError::UnknownKey {
                key: att.key.clone(),
                fingerprint,
            });
        };
        let sig =
            hex::decode(&att.signature).map_err(|_| TrustError::BadSignature(text.clone()))?;
        UnparsedPublicKey::new(&ED25519, raw)
            .verify(att.statement.as_bytes(), &sig)
            .map_err(|_| TrustError::BadSignature(text.clone()))?;
        let statement = ManifestStatement::parse(&att.statement)
            .map_err(|e| TrustError::Statement(e.to_string()))?;
        statement
            .check_subject(name, version, kernel, arch)
            .map_err(|e| TrustError::Statement(e.to_string()))?;
        statement
            .check_manifest(m)
            .map_err(|e| TrustError::Statement(e.to_string()))?;
        Ok((text.clone(), statement))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::test_support::{krel, manifest};
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use kmodforge_api::attest::{Attestation, KEY_PREFIX};

    struct Signer(Ed25519KeyPair);

    impl Signer {
        fn new() -> Signer {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
            Signer(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key"))
        }
        fn public(&self) -> String {
            format!("{KEY_PREFIX}{}", hex::encode(self.0.public_key().as_ref()))
        }
        fn attest(&self, m: &mut Manifest) {
            let statement = ManifestStatement::of(m).to_json();
            let signature = hex::encode(self.0.sign(statement.as_bytes()).as_ref());
            m.attestation = Some(Attestation {
                statement,
                signature,
                key: self.public(),
            });
        }
    }

    fn subject() -> (ModuleName, ModuleVersion, KernelRelease, Arch) {
        (
            ModuleName::parse("kmf-hello").expect("name"),
            ModuleVersion::parse("1.0").expect("version"),
            krel("6.1.0-47-amd64"),
            Arch::host_default(),
        )
    }

    fn check(keys: &TrustedKeys, m: &Manifest) -> Result<(String, ManifestStatement), TrustError> {
        let (n, v, k, a) = subject();
        keys.verify(m, &n, &v, &k, &a)
    }

    #[test]
    fn each_untrusted_manifest_is_refused() {
        let (ours, theirs) = (Signer::new(), Signer::new());
        let keys = TrustedKeys::parse(&[ours.public()]).expect("keys");
        let mut good = manifest(
            "kmf-hello",
            "1.0",
            "6.1.0-47-amd64",
            &[("kmf_hello.ko", b"ko")],
        );
        ours.attest(&mut good);
        assert_eq!(check(&keys, &good).expect("trusted").0, ours.public());

        let mut unsigned = good.clone();
        unsigned.attestation = None;
        assert_eq!(check(&keys, &unsigned), Err(TrustError::Unsigned));

        let mut foreign = good.clone();
        theirs.attest(&mut foreign);
        assert!(matches!(
            check(&keys, &foreign),
            Err(TrustError::UnknownKey { .. })
        ));

        // The outer manifest changed after signing.
        let mut tampered = good.clone();
        tampered.files[0].sha256 = "0".repeat(64);
        let err = check(&keys, &tampered).expect_err("tampered");
        assert!(err.to_string().contains("its files"), "{err}");

        // The statement itself changed: the signature no longer verifies.
        let mut forged = good.clone();
        if let Some(a) = forged.attestation.as_mut() {
            a.statement = a.statement.replace("kmf_hello.ko", "evil.ko");
        }
        assert!(matches!(
            check(&keys, &forged),
            Err(TrustError::BadSignature(_))
        ));

        // A genuine manifest of another kernel, replayed.
        let mut other = manifest(
            "kmf-hello",
            "1.0",
            "6.1.0-56-amd64",
            &[("kmf_hello.ko", b"ko")],
        );
        ours.attest(&mut other);
        let err = check(&keys, &other).expect_err("replayed");
        assert!(err.to_string().contains("6.1.0-56-amd64"), "{err}");

        // Rotation: either of two pinned keys.
        let both = TrustedKeys::parse(&[theirs.public(), ours.public()]).expect("keys");
        assert!(check(&both, &good).is_ok() && check(&both, &foreign).is_ok());
    }

    #[test]
    fn pinned_keys_parse_strictly() {
        assert!(TrustedKeys::parse(&["ed25519:00".into()]).is_err());
        assert!(TrustedKeys::parse(&[format!("rsa:{}", "00".repeat(32))]).is_err());
        assert!(TrustedKeys::parse(&[]).expect("empty").is_empty());
    }
}
