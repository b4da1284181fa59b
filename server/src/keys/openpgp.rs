//! The apt repository's OpenPGP key: an Ed25519 key (OpenPGP v4, algorithm 22
//! "EdDSALegacy", the form GnuPG's `gpgv` and Sequoia's `sqv`, apt's two
//! verifiers, both accept) and the signatures apt checks: `InRelease` (a
//! cleartext signature) and `Release.gpg` (a detached one).
//!
//! Only what the repository needs is written here, to RFC 4880/9580: the
//! transferable public key (key packet, user ID, positive self-certification),
//! binary and text signatures, ASCII armor. The private key is the same PKCS#8
//! Ed25519 PEM as the manifest key's and never leaves the process; the OpenPGP
//! certificate is derived from it and its creation time, so it is stable across
//! restarts and identical on every replica that shares the key files.

use base64::Engine;
use openssl::pkey::{Id, PKey, Private};
use openssl::sign::Signer;
use sha2::{Digest, Sha256};

use super::module_signing::SignError;

/// Public-key algorithm 22: EdDSA (legacy form, curve Ed25519).
const ALGO_EDDSA: u8 = 22;
/// Hash algorithm 10: SHA-512.
const HASH_SHA512: u8 = 10;
/// OID 1.3.6.1.4.1.11591.15.1 (Ed25519), as OpenPGP writes it.
const ED25519_OID: [u8; 9] = [0x2B, 0x06, 0x01, 0x04, 0x01, 0xDA, 0x47, 0x0F, 0x01];

const SIG_BINARY: u8 = 0x00;
const SIG_TEXT: u8 = 0x01;
const SIG_POSITIVE_CERT: u8 = 0x13;

const TAG_SIGNATURE: u8 = 2;
const TAG_PUBLIC_KEY: u8 = 6;
const TAG_USER_ID: u8 = 13;

/// The repository's signing key.
pub struct OpenPgpKey {
    pkey: PKey<Private>,
    /// Unix time the key was made: part of its fingerprint.
    created: u32,
    user_id: String,
    /// The v4 public-key packet's body.
    key_body: Vec<u8>,
    fingerprint: [u8; 20],
}

impl std::fmt::Debug for OpenPgpKey {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenPgpKey")
            .field("fingerprint", &self.fingerprint_hex())
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl OpenPgpKey {
    /// A new key, created now.
    pub fn generate(user_id: &str, created: u32) -> Result<Self, SignError> {
        Self::new(PKey::generate_ed25519()?, created, user_id)
    }

    /// A stored PKCS#8 PEM Ed25519 key and the time it was made.
    pub fn from_pem(pem: &[u8], created: u32, user_id: &str) -> Result<Self, SignError> {
        let pkey = PKey::private_key_from_pem(pem)?;
        if pkey.id() != Id::ED25519 {
            return Err(SignError::Key(
                "the apt repository key must be Ed25519".into(),
            ));
        }
        Self::new(pkey, created, user_id)
    }

    fn new(pkey: PKey<Private>, created: u32, user_id: &str) -> Result<Self, SignError> {
        let raw = pkey.raw_public_key()?;
        let mut key_body = vec![4];
        key_body.extend_from_slice(&created.to_be_bytes());
        key_body.push(ALGO_EDDSA);
        key_body.push(ED25519_OID.len() as u8);
        key_body.extend_from_slice(&ED25519_OID);
        // The point in native form: 0x40 then the 32 bytes (263 bits as an MPI).
        let mut point = vec![0x40];
        point.extend_from_slice(&raw);
        key_body.extend_from_slice(&mpi(&point));
        let mut h = openssl::sha::Sha1::new();
        h.update(&[0x99]);
        h.update(&(key_body.len() as u16).to_be_bytes());
        h.update(&key_body);
        let fingerprint: [u8; 20] = h.finish();
        Ok(OpenPgpKey {
            pkey,
            created,
            user_id: user_id.to_string(),
            key_body,
            fingerprint,
        })
    }

    pub fn key_pem(&self) -> Result<Vec<u8>, SignError> {
        Ok(self.pkey.private_key_to_pem_pkcs8()?)
    }

    pub fn created(&self) -> u32 {
        self.created
    }

    /// The v4 fingerprint, 40 uppercase hex digits (as `gpg --fingerprint` and
    /// `signed-by` take it).
    pub fn fingerprint_hex(&self) -> String {
        hex::encode_upper(self.fingerprint)
    }

    fn key_id(&self) -> [u8; 8] {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.fingerprint[12..]);
        id
    }

    /// The transferable public key (binary): a keyring file for `signed-by`.
    pub fn public_keyring(&self) -> Result<Vec<u8>, SignError> {
        let uid = self.user_id.as_bytes();
        let mut prefix = vec![0x99];
        prefix.extend_from_slice(&(self.key_body.len() as u16).to_be_bytes());
        prefix.extend_from_slice(&self.key_body);
        prefix.push(0xB4);
        prefix.extend_from_slice(&(uid.len() as u32).to_be_bytes());
        prefix.extend_from_slice(uid);
        // Key flags: certify (0x01) and sign data (0x02); preferred hashes SHA-512, SHA-256.
        let extra = [subpacket(27, &[0x03]), subpacket(21, &[10, 8])];
        let sig = self.signature(SIG_POSITIVE_CERT, &prefix, self.created, &extra)?;
        let mut out = packet(TAG_PUBLIC_KEY, &self.key_body);
        out.extend_from_slice(&packet(TAG_USER_ID, uid));
        out.extend_from_slice(&packet(TAG_SIGNATURE, &sig));
        Ok(out)
    }

    /// The public key, ASCII-armored (`.asc`).
    pub fn public_armored(&self) -> Result<String, SignError> {
        Ok(armor("PGP PUBLIC KEY BLOCK", &self.public_keyring()?))
    }

    /// A detached binary signature of `data`, armored (`Release.gpg`).
    pub fn sign_detached(&self, data: &[u8], at: u32) -> Result<String, SignError> {
        let sig = self.signature(SIG_BINARY, data, at, &[])?;
        Ok(armor("PGP SIGNATURE", &packet(TAG_SIGNATURE, &sig)))
    }

    /// `text` as a cleartext-signed message (`InRelease`). The text's final line
    /// break is not part of what is signed (RFC 9580, 7.1).
    pub fn clearsign(&self, text: &str, at: u32) -> Result<String, SignError> {
        let body = text.strip_suffix('\n').unwrap_or(text);
        let canonical = body
            .split('\n')
            .map(|l| l.trim_end_matches([' ', '\t', '\r']))
            .collect::<Vec<_>>()
            .join("\r\n");
        let sig = self.signature(SIG_TEXT, canonical.as_bytes(), at, &[])?;
        let mut out = String::from("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n");
        for line in body.split('\n') {
            if line.starts_with('-') {
                out.push_str("- ");
            }
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&armor("PGP SIGNATURE", &packet(TAG_SIGNATURE, &sig)));
        Ok(out)
    }

    /// A v4 signature packet's body over `hashed_data` (what precedes the
    /// signature's own fields in the hash).
    fn signature(
        &self,
        sig_type: u8,
        hashed_data: &[u8],
        at: u32,
        extra: &[Vec<u8>],
    ) -> Result<Vec<u8>, SignError> {
        let mut fpr = vec![4];
        fpr.extend_from_slice(&self.fingerprint);
        let mut hashed = subpacket(2, &at.to_be_bytes());
        hashed.extend_from_slice(&subpacket(33, &fpr));
        for e in extra {
            hashed.extend_from_slice(e);
        }
        let mut head = vec![4, sig_type, ALGO_EDDSA, HASH_SHA512];
        head.extend_from_slice(&(hashed.len() as u16).to_be_bytes());
        head.extend_from_slice(&hashed);
        let mut h = sha2::Sha512::new();
        h.update(hashed_data);
        h.update(&head);
        h.update([4, 0xFF]);
        h.update((head.len() as u32).to_be_bytes());
        let digest = h.finalize();
        // EdDSA signs the digest itself.
        let mut signer = Signer::new_without_digest(&self.pkey)?;
        let raw = signer.sign_oneshot_to_vec(&digest)?;
        if raw.len() != 64 {
            return Err(SignError::Key(format!(
                "Ed25519 signature of {} bytes",
                raw.len()
            )));
        }
        let unhashed = subpacket(16, &self.key_id());
        let mut body = head;
        body.extend_from_slice(&(unhashed.len() as u16).to_be_bytes());
        body.extend_from_slice(&unhashed);
        body.extend_from_slice(&digest[..2]);
        body.extend_from_slice(&mpi(&raw[..32]));
        body.extend_from_slice(&mpi(&raw[32..]));
        Ok(body)
    }
}

/// A short id of the public key for logs and `GET /v1/keys`: `openpgp:<fingerprint>`.
pub fn key_label(key: &OpenPgpKey) -> String {
    format!("openpgp:{}", key.fingerprint_hex())
}

/// sha256 of the binary keyring, so clients can check what they downloaded.
pub fn keyring_sha256(keyring: &[u8]) -> String {
    hex::encode(Sha256::digest(keyring))
}

/// An MPI: bit count (big-endian u16) then the bytes without leading zeros.
fn mpi(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let b = &bytes[start..];
    let bits = match b.first() {
        None => 0,
        Some(first) => (b.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    };
    let mut out = (bits as u16).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

/// A signature subpacket (all ours are shorter than 192 bytes).
fn subpacket(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![(data.len() + 1) as u8, kind];
    out.extend_from_slice(data);
    out
}

/// A packet in the new format with its length.
fn packet(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xC0 | tag];
    let n = body.len();
    if n < 192 {
        out.push(n as u8);
    } else if n < 8384 {
        let m = n - 192;
        out.push(((m >> 8) + 192) as u8);
        out.push((m & 0xFF) as u8);
    } else {
        out.push(0xFF);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// ASCII armor with its CRC-24 checksum.
fn armor(kind: &str, data: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = format!("-----BEGIN {kind}-----\n\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    let crc = crc24(data).to_be_bytes();
    out.push('=');
    out.push_str(&base64::engine::general_purpose::STANDARD.encode(&crc[1..]));
    out.push('\n');
    out.push_str(&format!("-----END {kind}-----\n"));
    out
}

fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xB7_04CE;
    for b in data {
        crc ^= (*b as u32) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4CFB;
            }
        }
    }
    crc & 0xFF_FFFF
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::process::Command;

    const UID: &str = "kmodforge test repository <apt@kmodforge.invalid>";

    fn gpgv(keyring: &[u8], args: &[&std::path::Path]) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        let ring = dir.path().join("ring.gpg");
        std::fs::write(&ring, keyring).unwrap();
        Command::new("gpgv")
            .arg("--keyring")
            .arg(&ring)
            .args(args)
            .output()
            .expect("gpgv is installed (apt depends on it); this test never skips")
    }

    #[test]
    fn crc24_of_the_rfc_example() {
        // Empty input keeps the initial value.
        assert_eq!(crc24(b""), 0xB704CE);
        assert_eq!(
            mpi(&[0x00, 0x01]),
            vec![0, 1, 1],
            "leading zeros are dropped"
        );
        assert_eq!(mpi(&[0x40, 0]), vec![0, 15, 0x40, 0]);
    }

    #[test]
    fn gpgv_accepts_the_detached_and_the_cleartext_signature() {
        let key = OpenPgpKey::generate(UID, 1_765_000_000).unwrap();
        let ring = key.public_keyring().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = "Origin: kmodforge\nSuite: kmodforge\nSHA256:\n a 1 main/x\n-dash line\n";
        let data = dir.path().join("Release");
        std::fs::write(&data, text).unwrap();
        let sig = dir.path().join("Release.gpg");
        std::fs::write(
            &sig,
            key.sign_detached(text.as_bytes(), 1_765_000_100).unwrap(),
        )
        .unwrap();
        let out = gpgv(&ring, &[&sig, &data]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&key.fingerprint_hex()[24..]), "{stderr}");

        let inrelease = dir.path().join("InRelease");
        let signed = key.clearsign(text, 1_765_000_100).unwrap();
        std::fs::write(&inrelease, &signed).unwrap();
        let out = gpgv(&ring, &[&inrelease]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // One changed byte anywhere, and gpgv refuses.
        std::fs::write(&data, text.replace("a 1", "a 2")).unwrap();
        assert!(!gpgv(&ring, &[&sig, &data]).status.success());
        std::fs::write(&inrelease, signed.replace("a 1", "a 2")).unwrap();
        assert!(!gpgv(&ring, &[&inrelease]).status.success());
        // Another key's keyring does not verify this key's signature.
        let other = OpenPgpKey::generate(UID, 1_765_000_000).unwrap();
        std::fs::write(&data, text).unwrap();
        assert!(!gpgv(&other.public_keyring().unwrap(), &[&sig, &data])
            .status
            .success());
    }

    #[test]
    fn the_certificate_is_stable_and_gpg_reads_it() {
        let key = OpenPgpKey::generate(UID, 1_765_000_000).unwrap();
        let again = OpenPgpKey::from_pem(&key.key_pem().unwrap(), 1_765_000_000, UID).unwrap();
        assert_eq!(key.fingerprint_hex(), again.fingerprint_hex());
        assert_eq!(
            key.public_keyring().unwrap(),
            again.public_keyring().unwrap()
        );
        let home = tempfile::tempdir().unwrap();
        let asc = home.path().join("key.asc");
        std::fs::write(&asc, key.public_armored().unwrap()).unwrap();
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--with-colons", "--show-keys"])
            .arg(&asc)
            .output()
            .expect("gpg is installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!("fpr:::::::::{}:", key.fingerprint_hex())),
            "{text}"
        );
        assert!(text.contains("ed25519"), "{text}");
        assert!(text.contains(UID), "{text}");
    }
}
