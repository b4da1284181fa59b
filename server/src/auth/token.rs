//! The token string: `kmf_<id>_<secret>`.
//!
//! The id (8 random bytes, hex) is public: it finds the record without scanning.
//! The secret (32 random bytes from the OS, hex) is never stored; the record holds
//! the sha256 of the whole string, compared in constant time. A fast hash is the
//! right one here: the input has 256 bits of entropy, so there is nothing for a
//! slow password hash to protect against. The `kmf_` prefix lets secret scanners
//! (and people) recognise a leaked token.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "kmf_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A freshly minted token: the string to hand out once, and what is stored.
pub struct Minted {
    pub token: String,
    pub id: String,
    pub hash: String,
}

/// The OS random generator failed (no entropy source): no token can be made.
#[derive(Debug, thiserror::Error)]
#[error("the system's random generator failed: {0}")]
pub struct NoEntropy(String);

pub fn mint() -> Result<Minted, NoEntropy> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id).map_err(|e| NoEntropy(e.to_string()))?;
    getrandom::fill(&mut secret).map_err(|e| NoEntropy(e.to_string()))?;
    let id = hex::encode(id);
    let token = format!("{PREFIX}{id}_{}", hex::encode(secret));
    let hash = hash(&token);
    Ok(Minted { token, id, hash })
}

/// The lowercase hex sha256 of a token string.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The public id of a well-formed token, `None` for anything else.
pub fn id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_BYTES) && hex_of(secret, SECRET_BYTES)).then_some(id)
}

/// Constant-time comparison of a presented token with a stored hash.
pub fn matches(token: &str, stored_hash: &str) -> bool {
    hash(token).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// True when `s` looks like one of our tokens (for refusing them in query strings).
pub fn looks_like_token(s: &str) -> bool {
    s.contains(PREFIX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_match_only_themselves() {
        let a = mint().unwrap();
        let b = mint().unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(id_of(&a.token), Some(a.id.as_str()));
        assert!(matches(&a.token, &a.hash));
        assert!(!matches(&b.token, &a.hash));
        assert!(!a.hash.contains(&a.token[a.token.len() - 64..]));
        assert_eq!(a.token.len(), 4 + 16 + 1 + 64);
    }

    #[test]
    fn malformed_tokens_have_no_id() {
        let t = mint().unwrap().token;
        for bad in [
            "",
            "kmf_",
            "Bearer x",
            &t[..t.len() - 1],
            &t.replace("kmf_", "kmg_"),
            &format!("{t}0"),
            &t.replacen('_', "-", 2),
        ] {
            assert_eq!(id_of(bad), None, "{bad:?}");
        }
    }
}
