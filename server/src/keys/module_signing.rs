//! Module signatures in the kernel's own format, made in this process with OpenSSL
//! (the library the kernel's `scripts/sign-file` uses), never in a container.
//!
//! A signed module is the module's bytes, then a detached PKCS#7 (CMS) signature
//! over them (sha256, no signed attributes, no certificates, the signer named by
//! issuer and serial: exactly sign-file's defaults), then `struct
//! module_signature` (12 bytes, the signature's length big-endian at the end) and
//! the marker `~Module signature appended~\n`.

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509};
use sha2::{Digest, Sha256};

/// The marker the kernel looks for at the end of a signed module.
pub const MARKER: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len.
const SIG_STRUCT_LEN: usize = 12;
/// `id_type` of a PKCS#7 signature.
const PKEY_ID_PKCS7: u8 = 2;
/// RSA key size of a generated key, in bits.
pub const GENERATED_RSA_BITS: u32 = 3072;
/// Validity of a generated certificate (DKMS's `generate_mok` uses 36500 days).
const GENERATED_DAYS: u32 = 36500;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("OpenSSL: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("the module is already signed")]
    AlreadySigned,
    #[error("module signing key: {0}")]
    Key(String),
}

/// Public facts about a signing certificate, as manifests and `modinfo` name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (`modinfo`'s `signer`).
    pub signer: String,
    /// The serial number as `modinfo` prints `sig_key` (`2B:10:...`).
    pub key_id: String,
    /// sha256 of the certificate's DER: its identity in cache keys and manifests.
    pub cert_sha256: String,
}

/// A module-signing key and its X.509 certificate (RSA, code signing).
pub struct ModuleSigningKey {
    pkey: PKey<Private>,
    cert: X509,
    info: CertInfo,
}

impl std::fmt::Debug for ModuleSigningKey {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleSigningKey")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl ModuleSigningKey {
    /// A new RSA key and a self-signed certificate with the code-signing extended
    /// key usage, like DKMS's `generate_mok`.
    pub fn generate(common_name: &str) -> Result<Self, SignError> {
        let pkey = PKey::from_rsa(Rsa::generate(GENERATED_RSA_BITS)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(159, MsbOption::MAYBE_ZERO, false)?;
        let mut b = X509::builder()?;
        b.set_version(2)?;
        let serial = Asn1Integer::from_bn(&serial)?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&pkey)?;
        let (from, until) = (
            Asn1Time::days_from_now(0)?,
            Asn1Time::days_from_now(GENERATED_DAYS)?,
        );
        b.set_not_before(&from)?;
        b.set_not_after(&until)?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
        b.append_extension(ExtendedKeyUsage::new().code_signing().build()?)?;
        let skid = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
        b.append_extension(skid)?;
        b.sign(&pkey, MessageDigest::sha256())?;
        Self::new(pkey, b.build())
    }

    /// A key and certificate given as PEM (the operator's own): the key must be
    /// RSA (Debian's kernels verify RSA only) and match the certificate.
    pub fn from_pem(key_pem: &[u8], cert_pem: &[u8]) -> Result<Self, SignError> {
        let pkey = PKey::private_key_from_pem(key_pem)?;
        let cert = X509::from_pem(cert_pem)?;
        if pkey.rsa().is_err() {
            return Err(SignError::Key(
                "the key is not RSA (Debian's kernels verify RSA module signatures only)".into(),
            ));
        }
        if !cert.public_key()?.public_eq(&pkey) {
            return Err(SignError::Key(
                "the key does not match the certificate".into(),
            ));
        }
        Self::new(pkey, cert)
    }

    fn new(pkey: PKey<Private>, cert: X509) -> Result<Self, SignError> {
        let signer = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok())
            .unwrap_or_default();
        let serial = cert.serial_number().to_bn()?.to_vec();
        let key_id = serial
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let cert_sha256 = hex::encode(Sha256::digest(cert.to_der()?));
        Ok(ModuleSigningKey {
            pkey,
            cert,
            info: CertInfo {
                signer,
                key_id,
                cert_sha256,
            },
        })
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    pub fn cert_der(&self) -> Result<Vec<u8>, SignError> {
        Ok(self.cert.to_der()?)
    }

    pub fn cert_pem(&self) -> Result<Vec<u8>, SignError> {
        Ok(self.cert.to_pem()?)
    }

    /// The private key as PKCS#8 PEM, for the 0600 file under the data directory.
    pub fn key_pem(&self) -> Result<Vec<u8>, SignError> {
        Ok(self.pkey.private_key_to_pem_pkcs8()?)
    }

    /// The module with its signature appended (`module` must be unsigned and
    /// already stripped: nothing may change a signed file).
    pub fn sign(&self, module: &[u8]) -> Result<Vec<u8>, SignError> {
        if module.ends_with(MARKER) {
            return Err(SignError::AlreadySigned);
        }
        let flags = CMSOptions::DETACHED
            | CMSOptions::BINARY
            | CMSOptions::NOATTR
            | CMSOptions::NOSMIMECAP
            | CMSOptions::CMS_NOCERTS;
        let cms = CmsContentInfo::sign(
            Some(&self.cert),
            Some(&self.pkey),
            None,
            Some(module),
            flags,
        )?;
        let sig = cms.to_der()?;
        let sig_len =
            u32::try_from(sig.len()).map_err(|_| SignError::Key("signature too long".into()))?;
        let mut out = Vec::with_capacity(module.len() + sig.len() + SIG_STRUCT_LEN + MARKER.len());
        out.extend_from_slice(module);
        out.extend_from_slice(&sig);
        out.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&sig_len.to_be_bytes());
        out.extend_from_slice(MARKER);
        Ok(out)
    }
}

/// A signed module split into the module and its PKCS#7 signature (DER); `None`
/// when there is no well-formed appended signature.
pub fn split_signature(signed: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = signed.strip_suffix(MARKER)?;
    let at = body.len().checked_sub(SIG_STRUCT_LEN)?;
    let sig_struct = &body[at..];
    if sig_struct[2] != PKEY_ID_PKCS7 {
        return None;
    }
    let len = u32::from_be_bytes([sig_struct[8], sig_struct[9], sig_struct[10], sig_struct[11]]);
    let sig_start = at.checked_sub(usize::try_from(len).ok()?)?;
    Some((&body[..sig_start], &body[sig_start..at]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_verify_against_the_certificate() {
        let key = ModuleSigningKey::generate("kmodforge test").unwrap();
        let module = b"\x7fELF not really a module, but bytes".to_vec();
        let signed = key.sign(&module).unwrap();
        assert!(signed.ends_with(MARKER));
        let (body, sig) = split_signature(&signed).unwrap();
        assert_eq!(body, &module[..]);
        let mut cms = CmsContentInfo::from_der(sig).unwrap();
        let mut certs = openssl::stack::Stack::new().unwrap();
        certs
            .push(X509::from_der(&key.cert_der().unwrap()).unwrap())
            .unwrap();
        cms.verify(
            Some(&certs),
            None,
            Some(body),
            None,
            CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::BINARY,
        )
        .unwrap();
        let mut tampered = body.to_vec();
        tampered[1] ^= 1;
        let mut cms = CmsContentInfo::from_der(sig).unwrap();
        assert!(cms
            .verify(
                Some(&certs),
                None,
                Some(&tampered),
                None,
                CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::BINARY
            )
            .is_err());
        assert!(matches!(key.sign(&signed), Err(SignError::AlreadySigned)));
        assert_eq!(split_signature(&module), None);
    }

    #[test]
    fn imported_keys_must_be_rsa_and_match() {
        let a = ModuleSigningKey::generate("a").unwrap();
        let b = ModuleSigningKey::generate("b").unwrap();
        let same =
            ModuleSigningKey::from_pem(&a.key_pem().unwrap(), &a.cert_pem().unwrap()).unwrap();
        assert_eq!(same.info(), a.info());
        let err =
            ModuleSigningKey::from_pem(&a.key_pem().unwrap(), &b.cert_pem().unwrap()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let ec = PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let err = ModuleSigningKey::from_pem(
            &ec.private_key_to_pem_pkcs8().unwrap(),
            &a.cert_pem().unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not RSA"), "{err}");
        assert_eq!(a.info().signer, "a");
        assert_eq!(a.info().cert_sha256.len(), 64);
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
