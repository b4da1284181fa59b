//! The sandbox's dump of an evaluated `dkms.conf`, and its parser.
//!
//! The sandbox sources `dkms.conf` with bash exactly as DKMS does and prints a flat
//! sequence of NUL-terminated fields, grouped in records of four:
//! `KIND\0NAME\0INDEX\0VALUE\0`. See [`Dump::parse`] for the kinds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{clip, ConfError};
use super::DIRECTIVE_NAMES;

/// The outcome of one bash `[[ subject =~ pattern ]]` test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchResult {
    /// Exit status 0.
    Matched,
    /// Exit status 1.
    NoMatch,
    /// Exit status 2: the pattern is not a valid ERE.
    InvalidRegex,
}

/// A parsed sandbox dump: what DKMS would hold after `read_conf` for one kernel and arch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    /// Whitelisted directives after the double expansion: name → index → value.
    /// Only set elements appear (bash arrays are sparse); a scalar is index 0.
    pub directives: BTreeMap<String, BTreeMap<u32, String>>,
    /// `=~` results: directive name (`MAKE_MATCH`, …) → index → result.
    pub matches: BTreeMap<String, BTreeMap<u32, MatchResult>>,
    /// Kernel config lookups for BUILD_EXCLUSIVE_CONFIG: `CONFIG_X` → value (`""` if unset).
    pub config: BTreeMap<String, String>,
    /// Context variables as the sandbox saw them (`kernelver`, `arch`, …). Informational.
    pub vars: BTreeMap<String, String>,
}

/// One `KIND NAME INDEX VALUE` record, borrowed from the input.
struct Record<'a> {
    kind: &'a str,
    name: &'a str,
    index: u32,
    value: &'a str,
}

impl Dump {
    /// Parses the sandbox's stdout.
    ///
    /// Kinds: `d` directive element, `m` regex match (`1` matched, `0` no match, `2`
    /// invalid regex), `c` kernel config value, `v` context variable. Unknown kinds and
    /// directive names outside the DKMS whitelist are skipped, for forward compatibility.
    ///
    /// The whole dump must be UTF-8 (values included: a value is later run as a command,
    /// so a lossy conversion would silently change it). A field count that is not a
    /// multiple of 4, an unterminated last field, an index that is not a plain decimal
    /// `u32`, a match value other than 0/1/2 or a record repeated with a different value is
    /// [`ConfError::BadDump`] (an identical repeat, e.g. a config token named twice, is fine).
    pub fn parse(bytes: &[u8]) -> Result<Dump, ConfError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ConfError::bad_dump(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
        let mut dump = Dump::default();
        for record in records(text)? {
            dump.insert(record)?;
        }
        Ok(dump)
    }

    /// The value of directive element `name[idx]`, if set.
    pub fn directive(&self, name: &str, idx: u32) -> Option<&str> {
        self.directives.get(name)?.get(&idx).map(String::as_str)
    }

    /// All set elements of directive `name`, in index order.
    pub fn elements(&self, name: &str) -> impl Iterator<Item = (u32, &str)> {
        self.directives
            .get(name)
            .into_iter()
            .flatten()
            .map(|(i, v)| (*i, v.as_str()))
    }

    /// The `=~` result recorded for `name[idx]`, if any.
    pub fn match_result(&self, name: &str, idx: u32) -> Option<MatchResult> {
        self.matches.get(name)?.get(&idx).copied()
    }

    /// The kernel config value of `CONFIG_X` as looked up by the sandbox, if it was.
    pub fn config_value(&self, token: &str) -> Option<&str> {
        self.config.get(token).map(String::as_str)
    }

    /// A context variable the sandbox reported, if any.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn insert(&mut self, r: Record<'_>) -> Result<(), ConfError> {
        let consistent = match r.kind {
            "d" if DIRECTIVE_NAMES.contains(&r.name) => {
                insert_at(&mut self.directives, r.name, r.index, r.value.to_owned())
            }
            "m" => insert_at(&mut self.matches, r.name, r.index, parse_match(&r)?),
            "c" => {
                let old = self.config.insert(r.name.to_owned(), r.value.to_owned());
                same_or_new(old.as_deref(), &r.value)
            }
            "v" => {
                let old = self.vars.insert(r.name.to_owned(), r.value.to_owned());
                same_or_new(old.as_deref(), &r.value)
            }
            _ => true,
        };
        if consistent {
            return Ok(());
        }
        let (kind, name, index) = (r.kind, clip(r.name), r.index);
        Err(ConfError::bad_dump(format!(
            "conflicting records {kind} {name}[{index}]"
        )))
    }
}

/// True if nothing was replaced, or the replaced value equals the new one.
fn same_or_new<T: PartialEq>(old: Option<T>, new: &T) -> bool {
    old.is_none_or(|old| old == *new)
}

/// Inserts into a two-level map; false if the slot held a different value.
fn insert_at<T: PartialEq + Clone>(
    map: &mut BTreeMap<String, BTreeMap<u32, T>>,
    name: &str,
    index: u32,
    value: T,
) -> bool {
    let old = map
        .entry(name.to_owned())
        .or_default()
        .insert(index, value.clone());
    same_or_new(old, &value)
}

/// Splits the text into records of four fields.
fn records(text: &str) -> Result<Vec<Record<'_>>, ConfError> {
    let body = match text.strip_suffix('\0') {
        Some(body) => body,
        None if text.is_empty() => return Ok(Vec::new()),
        None => return Err(ConfError::bad_dump("last field is not NUL-terminated")),
    };
    let fields: Vec<&str> = body.split('\0').collect();
    if fields.len() % 4 != 0 {
        return Err(ConfError::bad_dump(format!(
            "{} fields, not a multiple of 4",
            fields.len()
        )));
    }
    fields.chunks_exact(4).map(record).collect()
}

fn record<'a>(f: &[&'a str]) -> Result<Record<'a>, ConfError> {
    let [kind, name, index, value] = [f[0], f[1], f[2], f[3]];
    Ok(Record {
        kind,
        name,
        index: parse_index(index)?,
        value,
    })
}

/// A plain decimal `u32`: no sign, no spaces, not empty.
fn parse_index(s: &str) -> Result<u32, ConfError> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| s.parse::<u32>().ok())
        .flatten()
        .ok_or_else(|| ConfError::bad_dump(format!("bad index {:?}", clip(s))))
}

fn parse_match(r: &Record<'_>) -> Result<MatchResult, ConfError> {
    match r.value {
        "1" => Ok(MatchResult::Matched),
        "0" => Ok(MatchResult::NoMatch),
        "2" => Ok(MatchResult::InvalidRegex),
        other => Err(ConfError::bad_dump(format!(
            "match value {:?} for {}[{}]",
            clip(other),
            clip(r.name),
            r.index
        ))),
    }
}

/// Builds dump bytes from `(kind, name, index, value)` tuples (tests only).
#[cfg(test)]
pub(crate) fn encode(records: &[(&str, &str, u32, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, name, index, value) in records {
        for field in [*kind, *name, &index.to_string(), *value] {
            out.extend_from_slice(field.as_bytes());
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_kinds() {
        let bytes = encode(&[
            ("d", "PACKAGE_NAME", 0, "acpi-call"),
            ("d", "BUILT_MODULE_NAME", 3, "x"),
            ("d", "MAKE", 0, "make \"A=1\""),
            ("m", "MAKE_MATCH", 1, "1"),
            ("m", "PATCH_MATCH", 0, "0"),
            ("m", "BUILD_EXCLUSIVE_KERNEL", 0, "2"),
            ("c", "CONFIG_ACPI", 0, "y"),
            ("v", "kernelver", 0, "6.1.0-47-amd64"),
            ("z", "FUTURE", 0, "ignored"),
            ("d", "NOT_A_DIRECTIVE", 0, "ignored"),
        ]);
        let d = Dump::parse(&bytes).unwrap();
        assert_eq!(d.directive("PACKAGE_NAME", 0), Some("acpi-call"));
        assert_eq!(d.directive("BUILT_MODULE_NAME", 0), None);
        assert_eq!(d.directive("BUILT_MODULE_NAME", 3), Some("x"));
        assert_eq!(d.directive("MAKE", 0), Some("make \"A=1\""));
        assert_eq!(d.directive("NOT_A_DIRECTIVE", 0), None);
        assert_eq!(d.match_result("MAKE_MATCH", 1), Some(MatchResult::Matched));
        assert_eq!(d.match_result("PATCH_MATCH", 0), Some(MatchResult::NoMatch));
        assert_eq!(
            d.match_result("BUILD_EXCLUSIVE_KERNEL", 0),
            Some(MatchResult::InvalidRegex)
        );
        assert_eq!(d.config_value("CONFIG_ACPI"), Some("y"));
        assert_eq!(d.var("kernelver"), Some("6.1.0-47-amd64"));
        assert_eq!(
            d.elements("BUILT_MODULE_NAME").collect::<Vec<_>>(),
            vec![(3, "x")]
        );
    }

    #[test]
    fn identical_repeats_are_accepted() {
        let bytes = encode(&[
            ("c", "CONFIG_A", 0, "y"),
            ("c", "CONFIG_A", 0, "y"),
            ("d", "MAKE", 0, "make"),
            ("d", "MAKE", 0, "make"),
        ]);
        let d = Dump::parse(&bytes).unwrap();
        assert_eq!(d.config_value("CONFIG_A"), Some("y"));
        let conflict = encode(&[("c", "CONFIG_A", 0, "y"), ("c", "CONFIG_A", 0, "m")]);
        assert_eq!(Dump::parse(&conflict).unwrap_err().kind(), "bad_dump");
    }

    #[test]
    fn empty_dump_is_empty() {
        assert_eq!(Dump::parse(b"").unwrap(), Dump::default());
    }

    #[test]
    fn values_may_be_empty_and_multiline() {
        let d = Dump::parse(&encode(&[
            ("d", "CLEAN", 0, ""),
            ("d", "MAKE", 0, "make \\\n a"),
        ]))
        .unwrap();
        assert_eq!(d.directive("CLEAN", 0), Some(""));
        assert_eq!(d.directive("MAKE", 0), Some("make \\\n a"));
    }

    #[test]
    fn malformed_dumps_are_rejected() {
        let cases: [(&[u8], &str); 9] = [
            (b"d\0PACKAGE_NAME\x000\0", "3 fields"),
            (b"d\0PACKAGE_NAME\x000\0x", "not NUL-terminated"),
            (b"d\0PACKAGE_NAME\0x\0v\0", "bad index"),
            (b"d\0PACKAGE_NAME\0-1\0v\0", "bad index"),
            (b"d\0PACKAGE_NAME\0+1\0v\0", "bad index"),
            (b"d\0PACKAGE_NAME\099999999999\0v\0", "bad index"),
            (b"d\0PACKAGE_NAME\x000\0\xff\0", "not UTF-8"),
            (b"m\0MAKE_MATCH\x000\0yes\0", "match value"),
            (b"d\0MAKE\x000\0a\0d\0MAKE\x000\0b\0", "conflicting records"),
        ];
        for (bytes, needle) in cases {
            let err = Dump::parse(bytes).unwrap_err();
            assert_eq!(err.kind(), "bad_dump");
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }
}
