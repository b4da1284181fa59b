//! Validated names: kernel releases, architectures, module names and versions, digests.
//!
//! Every type here is a `String` newtype whose only constructor is `parse`, so a value in
//! hand is always valid. These strings end up in file paths, Docker image tags, shell
//! command lines and URLs, which is why the character sets are closed (allow-lists) and
//! why `/` and `..` never pass. Serde goes through the same validation
//! (`#[serde(try_from = "String")]`), so a bad name in a request body is rejected at
//! deserialisation time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest value quoted back in a [`NameError`], in characters.
const MAX_QUOTED: usize = 80;

/// A string that is not a valid name of the given kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    /// Which kind of name, e.g. `"kernel release"`.
    pub kind: &'static str,
    /// The rejected input, cut to 80 characters.
    pub value: String,
    /// Why it was rejected, e.g. `"must start with a digit"`.
    pub reason: &'static str,
}

impl NameError {
    fn new(kind: &'static str, value: &str, reason: &'static str) -> Self {
        let value = value.chars().take(MAX_QUOTED).collect();
        NameError {
            kind,
            value,
            reason,
        }
    }
}

/// The rules one kind of name is checked against.
struct Rule {
    kind: &'static str,
    min: usize,
    max: usize,
    allowed: fn(char) -> bool,
    allowed_text: &'static str,
    first: fn(char) -> bool,
    first_text: &'static str,
}

impl Rule {
    fn check(&self, s: &str) -> Result<(), NameError> {
        let err = |reason| Err(NameError::new(self.kind, s, reason));
        let len = s.chars().count();
        if len < self.min {
            return err(if self.min == 1 {
                "must not be empty"
            } else {
                "is too short"
            });
        }
        if len > self.max {
            return err("is too long");
        }
        match s.chars().next() {
            Some(c) if !(self.first)(c) => err(self.first_text),
            _ if !s.chars().all(self.allowed) => err(self.allowed_text),
            _ => Ok(()),
        }
    }
}

fn any_char(_: char) -> bool {
    true
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn digit(c: char) -> bool {
    c.is_ascii_digit()
}

fn lower_hex(c: char) -> bool {
    matches!(c, '0'..='9' | 'a'..='f')
}

/// Declares a validated `String` newtype with the shared trait impls; `$pattern` is
/// its rule as a regular expression, for the OpenAPI document (the rule's `check`
/// stays the authority: `KernelRelease` also refuses `..`).
macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $check:expr, $pattern:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(
            feature = "openapi",
            derive(utoipa::ToSchema),
            schema(value_type = String, pattern = $pattern)
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(s)?;
                Ok($name(s.to_owned()))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $name::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

const KERNEL_RULE: Rule = Rule {
    kind: "kernel release",
    min: 1,
    max: 64,
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '~' | '-'),
    allowed_text: "only A-Z a-z 0-9 . _ + ~ - are allowed",
    first: digit,
    first_text: "must start with a digit",
};

/// The character set already excludes `/`; `..` is refused on top.
fn check_kernel(s: &str) -> Result<(), NameError> {
    KERNEL_RULE.check(s)?;
    if s.contains("..") {
        return Err(NameError::new(KERNEL_RULE.kind, s, "must not contain '..'"));
    }
    Ok(())
}

name_type!(
    /// A kernel release as `uname -r` prints it, e.g. `6.1.0-47-amd64`.
    ///
    /// 1 to 64 characters of `[A-Za-z0-9._+~-]`, starting with a digit, without `..`.
    KernelRelease,
    check_kernel,
    "^[0-9][A-Za-z0-9._+~-]{0,63}$"
);

impl KernelRelease {
    /// The Debian release whose archive ships this kernel ABI, if it looks like a Debian one.
    ///
    /// `6.1.0-<abi>-<flavour>` is bookworm, `5.10.0-…` bullseye, `4.19.0-…` buster, and any
    /// `6.12.*` (Debian 13 names kernels `6.12.<n>+deb13-<flavour>`) is trixie. Note that a
    /// bookworm-backports `6.12.*+bpo` kernel also maps to trixie.
    pub fn debian_suite(&self) -> Option<&'static str> {
        const ABI_SUITES: [(&str, &str); 3] = [
            ("6.1.0-", "bookworm"),
            ("5.10.0-", "bullseye"),
            ("4.19.0-", "buster"),
        ];
        let s = self.as_str();
        if s.starts_with("6.12.") {
            return Some("trixie");
        }
        ABI_SUITES
            .iter()
            .find(|(prefix, _)| s.strip_prefix(prefix).is_some_and(has_abi_and_flavour))
            .map(|(_, suite)| *suite)
    }

    /// The Debian/Ubuntu package holding this kernel's headers: `linux-headers-<release>`.
    pub fn headers_package(&self) -> String {
        format!("linux-headers-{}", self.0)
    }
}

/// True for `<digits>-<non-empty flavour>`, the tail of a Debian ABI name.
fn has_abi_and_flavour(rest: &str) -> bool {
    match rest.split_once('-') {
        Some((abi, flavour)) => !abi.is_empty() && abi.chars().all(digit) && !flavour.is_empty(),
        None => false,
    }
}

const ARCH_RULE: Rule = Rule {
    kind: "architecture",
    min: 1,
    max: 32,
    allowed: |c| matches!(c, 'a'..='z' | '0'..='9' | '_'),
    allowed_text: "only a-z 0-9 _ are allowed",
    first: any_char,
    first_text: "",
};

name_type!(
    /// A kernel architecture as `uname -m` prints it, e.g. `x86_64`, `aarch64`.
    ///
    /// 1 to 32 characters of `[a-z0-9_]`.
    Arch,
    |s| ARCH_RULE.check(s),
    "^[a-z0-9_]{1,32}$"
);

impl Arch {
    /// The architecture assumed when a request names none: always `x86_64`, whatever
    /// machine this runs on.
    pub fn host_default() -> Self {
        Arch("x86_64".to_owned())
    }

    /// The Debian architecture name: `x86_64` → `amd64`, `aarch64` → `arm64`.
    pub fn debian_arch(&self) -> Option<&'static str> {
        match self.as_str() {
            "x86_64" => Some("amd64"),
            "aarch64" => Some("arm64"),
            _ => None,
        }
    }
}

const MODULE_NAME_RULE: Rule = Rule {
    kind: "module name",
    min: 1,
    max: 64,
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'),
    allowed_text: "only A-Z a-z 0-9 . _ + - are allowed",
    first: alnum,
    first_text: "must start with a letter or digit",
};

name_type!(
    /// A DKMS module (package) name, the `-m` argument, e.g. `acpi-call`.
    ///
    /// 1 to 64 characters of `[A-Za-z0-9._+-]`, starting with a letter or digit.
    ModuleName,
    |s| MODULE_NAME_RULE.check(s),
    "^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
);

const MODULE_VERSION_RULE: Rule = Rule {
    kind: "module version",
    min: 1,
    max: 128,
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '~' | ':' | '-'),
    allowed_text: "only A-Z a-z 0-9 . _ + ~ : - are allowed",
    first: alnum,
    first_text: "must start with a letter or digit",
};

name_type!(
    /// A DKMS module version, the `-v` argument, e.g. `0~20220829+git` or `0.3.0-1`.
    ///
    /// 1 to 128 characters of `[A-Za-z0-9._+~:-]`, starting with a letter or digit.
    ModuleVersion,
    |s| MODULE_VERSION_RULE.check(s),
    "^[A-Za-z0-9][A-Za-z0-9._+~:-]{0,127}$"
);

const TOKEN_NAME_RULE: Rule = Rule {
    kind: "token name",
    min: 1,
    max: 64,
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
    allowed_text: "only A-Z a-z 0-9 . _ - are allowed",
    first: alnum,
    first_text: "must start with a letter or digit",
};

name_type!(
    /// The name of an API token, e.g. `ci-realtek` or `fleet-read`: what lists,
    /// revocations and the audit log call it (the secret itself is never shown again).
    ///
    /// 1 to 64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
    TokenName,
    |s| TOKEN_NAME_RULE.check(s),
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
);

const MODULE_PATTERN_RULE: Rule = Rule {
    kind: "module pattern",
    min: 1,
    max: 64,
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-' | '*'),
    allowed_text: "only A-Z a-z 0-9 . _ + - and the wildcard * are allowed",
    first: |c| c.is_ascii_alphanumeric() || c == '*',
    first_text: "must start with a letter, digit or *",
};

name_type!(
    /// A module name pattern that limits a token: a [`ModuleName`] in which `*` stands
    /// for any run of characters (`r8152`, `realtek-*`, `*`).
    ModulePattern,
    |s| MODULE_PATTERN_RULE.check(s),
    "^[A-Za-z0-9*][A-Za-z0-9._+*-]{0,63}$"
);

impl ModulePattern {
    /// True when `name` matches the whole pattern (case-sensitive, `*` = any run).
    pub fn matches(&self, name: &ModuleName) -> bool {
        glob_match(self.as_str().as_bytes(), name.as_str().as_bytes())
    }
}

/// `*`-only glob matching, iterative with one backtrack point (linear in practice,
/// never exponential).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A sha256 in lowercase hex; `kind` names it in error messages.
const fn sha256_rule(kind: &'static str) -> Rule {
    Rule {
        kind,
        min: 64,
        max: 64,
        allowed: lower_hex,
        allowed_text: "must be 64 lowercase hex digits",
        first: any_char,
        first_text: "",
    }
}

const SOURCE_DIGEST_RULE: Rule = sha256_rule("source digest");

name_type!(
    /// The sha256 of a module source archive: exactly 64 lowercase hex digits.
    SourceDigest,
    |s| SOURCE_DIGEST_RULE.check(s),
    "^[0-9a-f]{64}$"
);

impl SourceDigest {
    /// Wraps a raw sha256 value.
    pub fn from_sha256(bytes: [u8; 32]) -> Self {
        SourceDigest(hex::encode(bytes))
    }
}

const ARTIFACT_KEY_RULE: Rule = sha256_rule("artifact key");

name_type!(
    /// The cache key of a build result (see [`crate::cachekey`]): 64 lowercase hex digits.
    ArtifactKey,
    |s| ARTIFACT_KEY_RULE.check(s),
    "^[0-9a-f]{64}$"
);

impl ArtifactKey {
    /// Wraps a raw sha256 value.
    pub fn from_sha256(bytes: [u8; 32]) -> Self {
        ArtifactKey(hex::encode(bytes))
    }
}

/// A module file as installed: `<name>.ko`, the name `[A-Za-z0-9_+-][A-Za-z0-9._+-]*`
/// (no path, no leading dot or dash). Hosts install nothing else.
pub fn is_module_file_name(file: &str) -> bool {
    let Some(stem) = file.strip_suffix(".ko") else {
        return false;
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.');
    !stem.is_empty() && !stem.starts_with(['.', '-']) && stem.chars().all(ok)
}

/// `/dir[/dir…]` of plain names: no `.`/`..`, no empty components, no odd characters.
pub fn is_safe_dest_location(dest: &str) -> bool {
    let Some(rest) = dest.strip_prefix('/') else {
        return false;
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.');
    rest.split('/')
        .all(|part| !part.is_empty() && part != "." && part != ".." && part.chars().all(ok))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
