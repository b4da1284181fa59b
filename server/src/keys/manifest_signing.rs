//! The manifest key (Ed25519, separate from the module-signing key): it signs each
//! manifest's statement, which agents verify against the keys they pin.
//!
//! A public key is written `ed25519:<64 hex digits>`, in the agent's
//! `trusted_keys` and in every attestation.

use kmodforge_api::attest::{Attestation, ManifestStatement, KEY_PREFIX};
use openssl::pkey::{Id, PKey, Private};
use openssl::sign::Signer;

use super::module_signing::SignError;

/// An Ed25519 private key and its public form.
pub struct ManifestSigningKey {
    pkey: PKey<Private>,
    public: String,
}

impl std::fmt::Debug for ManifestSigningKey {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestSigningKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl ManifestSigningKey {
    pub fn generate() -> Result<Self, SignError> {
        Self::new(PKey::generate_ed25519()?)
    }

    /// A PKCS#8 PEM Ed25519 key (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, SignError> {
        let pkey = PKey::private_key_from_pem(pem)?;
        if pkey.id() != Id::ED25519 {
            return Err(SignError::Key("the manifest key must be Ed25519".into()));
        }
        Self::new(pkey)
    }

    fn new(pkey: PKey<Private>) -> Result<Self, SignError> {
        let public = format!("{KEY_PREFIX}{}", hex::encode(pkey.raw_public_key()?));
        Ok(ManifestSigningKey { pkey, public })
    }

    /// `ed25519:<hex>`.
    pub fn public(&self) -> &str {
        &self.public
    }

    pub fn key_pem(&self) -> Result<Vec<u8>, SignError> {
        Ok(self.pkey.private_key_to_pem_pkcs8()?)
    }

    /// Signs the statement's exact JSON bytes.
    pub fn attest(&self, statement: &ManifestStatement) -> Result<Attestation, SignError> {
        let text = statement.to_json();
        let mut signer = Signer::new_without_digest(&self.pkey)?;
        let signature = signer.sign_oneshot_to_vec(text.as_bytes())?;
        Ok(Attestation {
            statement: text,
            signature: hex::encode(signature),
            key: self.public.clone(),
        })
    }
}
