//! The one canonical encoding of every key the service hashes: the cache key, the identity
//! of a request (single-flight and the cluster's job rows) and of a dkms.conf evaluation.
//!
//! A key is sha256(domain ‖ canonical JSON). The domain names the key's purpose and version
//! (`"kmodforge-cache-key-v2\n"`), so keys of different purposes or encodings never collide;
//! canonical JSON has object keys sorted at every level and no insignificant whitespace,
//! whatever order the fields were declared or inserted in (and independent of serde_json's
//! `preserve_order` feature). Strings and numbers are written as serde_json writes them.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// sha256(`domain` ‖ canonical JSON of `value`).
pub fn digest<T: Serialize + ?Sized>(domain: &str, value: &T) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(domain.as_bytes());
    hasher.update(to_string(value).as_bytes());
    hasher.finalize().into()
}

/// [`digest`] in lowercase hex.
pub fn hex_digest<T: Serialize + ?Sized>(domain: &str, value: &T) -> String {
    hex::encode(digest(domain, value))
}

/// The canonical JSON text of `value`.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    // The keys' inputs are plain data (string-keyed maps, no custom serialisers that fail);
    // a value that cannot be a JSON value is a programming error, not an input error.
    let value = serde_json::to_value(value).expect("a hashed key's inputs serialise to JSON");
    let mut out = String::new();
    write(&value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorted_and_compact() {
        let v = json!({"b": [1, {"d": null, "c": "x\"y"}], "a": true});
        assert_eq!(to_string(&v), r#"{"a":true,"b":[1,{"c":"x\"y","d":null}]}"#);
    }

    #[test]
    fn field_order_does_not_matter_but_domain_does() {
        #[derive(Serialize)]
        struct Ab {
            a: u32,
            b: &'static str,
        }
        #[derive(Serialize)]
        struct Ba {
            b: &'static str,
            a: u32,
        }
        let ab = digest("d1\n", &Ab { a: 1, b: "x" });
        assert_eq!(ab, digest("d1\n", &Ba { b: "x", a: 1 }));
        assert_eq!(ab, digest("d1\n", &json!({"b": "x", "a": 1})));
        assert_ne!(ab, digest("d2\n", &Ab { a: 1, b: "x" }));
        assert_eq!(hex_digest("d1\n", &Ab { a: 1, b: "x" }), hex::encode(ab));
    }
}
