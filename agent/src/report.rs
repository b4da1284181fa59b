//! What the agent prints: one outcome line per (module, kernel) on stdout, and
//! every error as ONE line on stderr, `kmodforge-agent: <module>/<version> on
//! <krel>: <cause>` (a failed build's log tail may follow, indented).

use std::fmt;

use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};

/// How many lines of a failed build's log are shown.
const LOG_TAIL_LINES: usize = 25;

/// A (module, version, kernel) that an outcome or error is about.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    pub name: &'a ModuleName,
    pub version: &'a ModuleVersion,
    pub kernel: &'a KernelRelease,
}

impl Subject<'_> {
    /// `name/version on krel` (error lines).
    pub fn on(&self) -> String {
        format!("{}/{} on {}", self.name, self.version, self.kernel)
    }

    /// `name/version, krel` (outcome lines, like `dkms status`).
    pub fn dkms(&self) -> String {
        format!("{}/{}, {}", self.name, self.version, self.kernel)
    }
}

/// Prints `kmodforge-agent: <subject>: <cause>` on stderr, on one line.
/// A cause that already starts with the subject (host errors name their module and
/// kernel) is not prefixed twice.
pub fn error(subject: &Subject, cause: impl fmt::Display) {
    let cause = cause.to_string();
    let prefixes = [
        format!("{} on {}: ", subject.name, subject.kernel),
        format!("{}: ", subject.kernel),
    ];
    let cause = prefixes
        .iter()
        .find_map(|p| cause.strip_prefix(p.as_str()))
        .unwrap_or(&cause);
    eprintln!("kmodforge-agent: {}: {}", subject.on(), one_line(cause));
}

/// Prints `kmodforge-agent: <cause>` on stderr, on one line.
pub fn general(cause: impl fmt::Display) {
    eprintln!("kmodforge-agent: {}", one_line(&cause.to_string()));
}

/// Prints the outcome line `name/version, krel: <what>` on stdout.
pub fn outcome(subject: &Subject, what: impl fmt::Display) {
    println!("{}: {what}", subject.dkms());
}

/// The last lines of a build log on stderr, indented under the error line.
pub fn log_tail(tail: &str) {
    let lines: Vec<&str> = tail.lines().collect();
    for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
        eprintln!("    | {line}");
    }
}

/// Newlines folded, so that an error stays one line whatever a cause contains.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_folds() {
        assert_eq!(super::one_line("a\nb\r\n\nc"), "a / b / c");
        assert_eq!(super::one_line("plain"), "plain");
    }
}
