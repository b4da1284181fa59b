//! A static (no execution) scan of `dkms.conf` for the upload response.
//!
//! It understands just enough bash to read the common case: a list of assignments
//! `NAME=value` / `NAME[i]=value`, quoted or not, with comments, CRLF line ends and
//! `$VAR` / `${VAR}` references to variables assigned earlier in the file. Anything else
//! (commands, control flow, `&&`, subshells, command substitution, references to
//! DKMS's own variables such as `$kernelver`) makes the answer kernel-dependent, which
//! it reports with `dynamic = true` instead of guessing.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::scan_lex::{lex, Seg, Word};

/// What `dkms.conf` declares, read statically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Declared {
    /// PACKAGE_NAME, if it has a static value.
    pub package_name: Option<String>,
    /// PACKAGE_VERSION, if it has a static value.
    pub package_version: Option<String>,
    /// Static BUILT_MODULE_NAME values in index order; PACKAGE_NAME when there are none.
    pub modules: Vec<String>,
    /// True when the real values depend on the kernel or on code run at evaluation time.
    pub dynamic: bool,
    /// AUTOINSTALL as assigned statically (absent: DKMS's default, no); `None` when
    /// its value is computed. Decides which modules a new kernel is prebuilt for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoinstall: Option<bool>,
}

/// Scans `dkms.conf` text without running it. See the module documentation.
pub fn scan_declared(dkms_conf_text: &str) -> Declared {
    let text = dkms_conf_text.replace("\r\n", "\n");
    let lexed = lex(&text);
    let mut scanner = Scanner {
        dynamic: lexed.control,
        ..Scanner::default()
    };
    for statement in &lexed.statements {
        scanner.statement(statement);
    }
    scanner.finish()
}

/// True for a value that an install script is meant to fill in, not a real one:
/// `#MODULE_VERSION#` (vendor drivers' `sed` targets) or `@VERSION@` (autoconf,
/// CMake's `configure_file`).
pub fn is_placeholder(value: &str) -> bool {
    let inner = |open: char| {
        value
            .strip_prefix(open)
            .and_then(|v| v.strip_suffix(open))
            .is_some_and(|v| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
    };
    inner('#') || inner('@')
}

/// The names whose values the scan reports.
const REPORTED: [&str; 4] = [
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "BUILT_MODULE_NAME",
    "AUTOINSTALL",
];

/// An assignment's target and operator.
struct Target<'a> {
    name: &'a str,
    index: u32,
    append: bool,
}

#[derive(Default)]
struct Scanner {
    /// Scalar (index 0) values seen so far; None when the value is not static.
    env: HashMap<String, Option<String>>,
    /// Reported directives after DKMS's second expansion: name → index → value.
    reported: BTreeMap<&'static str, BTreeMap<u32, Option<String>>>,
    dynamic: bool,
}

impl Scanner {
    /// A statement of assignments only is recorded (also inside `then`/`else`/`do`
    /// branches, so conditional modules are listed too); anything else is code.
    fn statement(&mut self, words: &[Word]) {
        let body = match words.split_first() {
            Some((first, rest)) if is_branch_keyword(first) => {
                self.dynamic = true;
                rest
            }
            _ => words,
        };
        let parsed: Option<Vec<_>> = body.iter().map(assignment).collect();
        match parsed {
            Some(assignments) => assignments
                .into_iter()
                .for_each(|(t, v)| self.assign(&t, &v)),
            None => self.dynamic = true,
        }
    }

    fn assign(&mut self, target: &Target<'_>, value: &[Seg]) {
        let mut first = self.expand(value);
        if target.append {
            first = self
                .old_value(target.name, target.index)
                .zip(first)
                .map(|(old, new)| old + &new);
        }
        if let Some(name) = REPORTED.iter().find(|n| **n == target.name) {
            let second = first.as_deref().and_then(|v| self.second_expansion(v));
            self.dynamic |= second.is_none();
            self.reported
                .entry(name)
                .or_default()
                .insert(target.index, second);
        }
        if target.index == 0 {
            self.env.insert(target.name.to_owned(), first);
        }
    }

    fn old_value(&self, name: &str, index: u32) -> Option<String> {
        match REPORTED.iter().find(|n| **n == name) {
            Some(n) => self
                .reported
                .get(n)
                .and_then(|m| m.get(&index))
                .cloned()
                .unwrap_or(Some(String::new())),
            None if index == 0 => self.env.get(name).cloned().unwrap_or(Some(String::new())),
            None => None,
        }
    }

    /// The value of a word in the first pass: every expansion must be a variable
    /// assigned a static value earlier in the file.
    fn expand(&self, segs: &[Seg]) -> Option<String> {
        expand_with(segs, |name| self.env.get(name).cloned().flatten())
    }

    /// DKMS re-emits directives as `NAME[i]="value"` and sources that again, in its own
    /// shell: only directives (re-emitted in whitelist order, PACKAGE_NAME and
    /// PACKAGE_VERSION first) are known there, not the file's helper variables.
    fn second_expansion(&self, value: &str) -> Option<String> {
        if value.contains('"') {
            return None;
        }
        let lexed = lex(&format!("\"{value}\""));
        let directive = |name: &str| match name {
            "PACKAGE_NAME" | "PACKAGE_VERSION" => self
                .reported
                .get(name)
                .and_then(|m| m.get(&0))
                .cloned()
                .flatten(),
            _ => None,
        };
        match lexed.statements.as_slice() {
            [words] if words.len() == 1 && !lexed.control => expand_with(&words[0], directive),
            _ => None,
        }
    }

    fn finish(self) -> Declared {
        let value = |name| {
            self.reported
                .get(name)
                .and_then(|m| m.get(&0))
                .cloned()
                .flatten()
        };
        let (package_name, package_version) = (value("PACKAGE_NAME"), value("PACKAGE_VERSION"));
        let built = self.reported.get("BUILT_MODULE_NAME");
        let mut modules: Vec<String> = built
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .collect();
        // DKMS defaults an empty BUILT_MODULE_NAME to PACKAGE_NAME (for a single record).
        let any_dynamic = built.is_some_and(|m| m.values().any(Option::is_none));
        if modules.is_empty() && !any_dynamic {
            modules.extend(package_name.clone());
        }
        let autoinstall = match self.reported.get("AUTOINSTALL").and_then(|m| m.get(&0)) {
            None => Some(false),
            Some(None) => None,
            Some(Some(v)) => Some(v.eq_ignore_ascii_case("yes")),
        };
        Declared {
            package_name,
            package_version,
            modules,
            dynamic: self.dynamic,
            autoinstall,
        }
    }
}

/// `then`, `else`, `do` or `{` as an unquoted word.
fn is_branch_keyword(word: &Word) -> bool {
    match word.as_slice() {
        [Seg::Lit {
            text,
            quoted: false,
        }] => matches!(text.as_str(), "then" | "else" | "do" | "{"),
        _ => false,
    }
}

/// Concatenates a word's segments, resolving `$NAME` / `${NAME}` with `lookup`; None
/// if any expansion is something else or unresolved.
fn expand_with(segs: &[Seg], lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    segs.iter().try_fold(String::new(), |mut out, seg| {
        match seg {
            Seg::Lit { text, .. } => out.push_str(text),
            Seg::Expand(raw) => out.push_str(&lookup(plain_variable(raw)?)?),
        }
        Some(out)
    })
}

/// `NAME` from `$NAME` or `${NAME}`; None for any other expansion.
fn plain_variable(raw: &str) -> Option<&str> {
    let name = raw
        .strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .or_else(|| raw.strip_prefix('$'))?;
    is_identifier(name).then_some(name)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits `NAME=…`, `NAME[3]=…` or `NAME+=…` off the front of a word.
///
/// The target must be an unquoted literal with a literal decimal index; otherwise the
/// word is not an assignment (so `NAME[$i]=…` counts as code).
fn assignment(word: &Word) -> Option<(Target<'_>, Vec<Seg>)> {
    let Some(Seg::Lit {
        text,
        quoted: false,
    }) = word.first()
    else {
        return None;
    };
    let eq = text.find('=')?;
    let (head, rest) = (&text[..eq], &text[eq + 1..]);
    let (head, append) = match head.strip_suffix('+') {
        Some(h) => (h, true),
        None => (head, false),
    };
    let (name, index) = split_index(head)?;
    let mut value = vec![Seg::Lit {
        text: rest.to_owned(),
        quoted: false,
    }];
    value.extend(word[1..].iter().cloned());
    Some((
        Target {
            name,
            index,
            append,
        },
        value,
    ))
}

/// `NAME` → (NAME, 0); `NAME[12]` → (NAME, 12); None if not an identifier or index.
fn split_index(head: &str) -> Option<(&str, u32)> {
    let (name, index) = match head.strip_suffix(']').and_then(|h| h.split_once('[')) {
        Some((name, idx)) if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) => {
            (name, idx.parse().ok()?)
        }
        Some(_) => return None,
        None => (head, 0),
    };
    is_identifier(name).then_some((name, index))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn declared(
        name: Option<&str>,
        version: Option<&str>,
        modules: &[&str],
        dynamic: bool,
    ) -> Declared {
        Declared {
            package_name: name.map(str::to_owned),
            package_version: version.map(str::to_owned),
            modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            dynamic,
            autoinstall: Some(false),
        }
    }

    #[test]
    fn static_files() {
        let acpi = "PACKAGE_NAME=\"acpi-call\"\nPACKAGE_VERSION=\"1.2.2\"\n\
            MAKE[0]=\"make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build\"\n\
            CLEAN=\"make clean\"\nBUILT_MODULE_NAME[0]=\"acpi_call\"\nDEST_MODULE_LOCATION[0]=\"/updates\"\nAUTOINSTALL=\"yes\"\n";
        let cases = [
            (
                acpi,
                Declared {
                    autoinstall: Some(true),
                    ..declared(Some("acpi-call"), Some("1.2.2"), &["acpi_call"], false)
                },
            ),
            (
                "PACKAGE_NAME=a\nAUTOINSTALL=\"$X\"\n",
                Declared {
                    autoinstall: None,
                    ..declared(Some("a"), None, &["a"], true)
                },
            ),
            (
                "# c\r\nPACKAGE_NAME=vpoll\r\nPACKAGE_VERSION='0.1'  # trailing\r\nBUILT_MODULE_NAME[0]=\"$PACKAGE_NAME\"\r\n",
                declared(Some("vpoll"), Some("0.1"), &["vpoll"], false),
            ),
            ("PACKAGE_NAME=xtrx\nPACKAGE_VERSION=0.0.1\nDEST_MODULE_LOCATION=/extra\n", declared(Some("xtrx"), Some("0.0.1"), &["xtrx"], false)),
            (
                "PACKAGE_NAME=x; PACKAGE_VERSION=1\nBUILT_MODULE_NAME[1]=b\nBUILT_MODULE_NAME[0]=${PACKAGE_NAME}_core\n",
                declared(Some("x"), Some("1"), &["x_core", "b"], false),
            ),
            ("N=foo\nPACKAGE_NAME=p PACKAGE_VERSION=2\nBUILT_MODULE_NAME[0]=$N\n", declared(Some("p"), Some("2"), &["foo"], false)),
            (
                "PACKAGE_NAME=jool\nPACKAGE_VERSION=4\nMAKE=\"make -C a \\\n  && make b\"\nBUILT_MODULE_NAME[0]=m\n",
                declared(Some("jool"), Some("4"), &["m"], false),
            ),
            ("PACKAGE_NAME=acpi\nBUILT_MODULE_NAME[0]='$PACKAGE_NAME'\n", declared(Some("acpi"), None, &["acpi"], false)),
            ("PACKAGE_NAME=p\nPACKAGE_VERSION=1\nPACKAGE_VERSION+=\".2\"\n", declared(Some("p"), Some("1.2"), &["p"], false)),
            (
                "PACKAGE_NAME=r\nPACKAGE_VERSION=1\nMAKE=\"make RTPENGINE_VERSION=\\\"${PACKAGE_VERSION}\\\"\"\n",
                declared(Some("r"), Some("1"), &["r"], false),
            ),
            ("PACKAGE_NAME=e\nBUILT_MODULE_NAME=\"\"\n", declared(Some("e"), None, &["e"], false)),
            // A placeholder an install script fills in is read as it stands.
            ("PACKAGE_NAME=p\nPACKAGE_VERSION=#MODULE_VERSION#\n", declared(Some("p"), Some("#MODULE_VERSION#"), &["p"], false)),
            ("PACKAGE_NAME=\"p\"\nPACKAGE_VERSION=\"#MODULE_VERSION#\"\n", declared(Some("p"), Some("#MODULE_VERSION#"), &["p"], false)),
            ("", declared(None, None, &[], false)),
        ];
        for (text, expected) in cases {
            assert_eq!(scan_declared(text), expected, "{text:?}");
        }
    }

    #[test]
    fn dynamic_files() {
        let cases = [
            ("PACKAGE_NAME=p\nBUILT_MODULE_NAME[0]=\"foo_$kernelver\"\n", declared(Some("p"), None, &[], true)),
            ("PACKAGE_NAME=p\nBUILT_MODULE_NAME[0]=a\nif [ -f x ]; then BUILT_MODULE_NAME[1]=b; fi\n", declared(Some("p"), None, &["a", "b"], true)),
            ("PACKAGE_NAME=p\nBUILT_MODULE_NAME[0]=a\n[ -e x ] && BUILT_MODULE_NAME[1]=c\n", declared(Some("p"), None, &["a", "c"], true)),
            ("PACKAGE_NAME=p\nPACKAGE_VERSION=`cat VERSION`\n", declared(Some("p"), None, &["p"], true)),
            ("PACKAGE_NAME=p\nPACKAGE_VERSION=$(cat VERSION)\n", declared(Some("p"), None, &["p"], true)),
            ("PACKAGE_NAME=lttng\ni=0\nBUILT_MODULE_NAME[$i]=x\ni=$((i+1))\n", declared(Some("lttng"), None, &["lttng"], true)),
            ("PACKAGE_NAME=p\nBUILT_MODULE_NAME[0]=\"\\$kernelver\"\n", declared(Some("p"), None, &[], true)),
            ("PACKAGE_NAME=p\n. /etc/other.conf\n", declared(Some("p"), None, &["p"], true)),
            ("PACKAGE_NAME=p\ncase $arch in x) ;; esac\n", declared(Some("p"), None, &["p"], true)),
            ("PACKAGE_NAME=\"${kernelver%%-*}\"\n", declared(None, None, &[], true)),
        ];
        for (text, expected) in cases {
            assert_eq!(scan_declared(text), expected, "{text:?}");
        }
    }

    #[test]
    fn placeholders() {
        for v in ["#MODULE_VERSION#", "@VERSION@", "#V2_X#"] {
            assert!(is_placeholder(v), "{v}");
        }
        for v in ["1.0", "#", "##", "#1.0", "#version#", "@a@", "1#X#"] {
            assert!(!is_placeholder(v), "{v}");
        }
    }

    #[test]
    fn serialises_as_an_object() {
        let json =
            serde_json::to_value(scan_declared("PACKAGE_NAME=p\nPACKAGE_VERSION=1\n")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"package_name": "p", "package_version": "1", "modules": ["p"], "dynamic": false, "autoinstall": false})
        );
    }
}
