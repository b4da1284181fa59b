//! The first compiler error of a build, found while its output streams by.
//!
//! A failed build's one-line message should name its cause, and the cause is the
//! first error gcc, clang, the linker or modpost printed, which may sit anywhere
//! in the output (the stored log keeps only its head and tail). [`FirstError`]
//! scans every byte once, line by line, holding at most one line
//! ([`MAX_LINE`] bytes) and the two lines it keeps: the first diagnostic
//! (`file:line:col: error: ...`, `fatal error:`, `ld: error: ...`,
//! `ERROR: modpost: ...`) and, as a fallback, make's first `*** ... Error N` or
//! `*** ... Stop.` line. Warnings, `-Werror=...` flags in echoed command lines and
//! files named `error.h` never match: only a diagnostic's own `error:` tag does.

use std::sync::Mutex;

use crate::sandbox::OutputSink;

/// Longest line kept while scanning; the rest of a longer line is ignored.
const MAX_LINE: usize = 4096;
/// Longest error quoted in a failure message, in characters.
const MAX_QUOTE: usize = 300;

/// Scans build output for its first error.
#[derive(Debug, Default)]
pub struct FirstError {
    line: Vec<u8>,
    /// The current line outgrew [`MAX_LINE`]: drop bytes until its end.
    overlong: bool,
    diagnostic: Option<String>,
    make: Option<String>,
}

impl FirstError {
    /// Feeds the next bytes of output.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while self.diagnostic.is_none() && !bytes.is_empty() {
            let (part, rest, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            self.overlong |= part.len() > room;
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            if ended {
                self.end_line();
            }
            bytes = rest;
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        let line = line.trim_end_matches('\r').trim();
        if is_diagnostic(line) {
            self.diagnostic = Some(line.to_string());
        } else if self.make.is_none() && is_make_error(line) {
            self.make = Some(line.to_string());
        }
        self.line.clear();
        self.overlong = false;
    }

    /// The first error seen (a compiler diagnostic before make's own line), with
    /// the build directory `build_dir` and `/usr/src/` dropped from its paths.
    pub fn quote(&self, build_dir: &str) -> Option<String> {
        let line = self.diagnostic.as_ref().or(self.make.as_ref())?;
        Some(shorten(line, build_dir))
    }
}

/// `path:line[:col]: [fatal ]error: ...`, `tool: error: ...`, `ERROR: ...`.
fn is_diagnostic(line: &str) -> bool {
    if line.starts_with("ERROR: ") {
        return true;
    }
    let Some((head, _)) = line
        .split_once(": error: ")
        .or_else(|| line.split_once(": fatal error: "))
    else {
        return false;
    };
    // The part before the tag is a location or a tool name: no spaces, no quotes
    // (an echoed command line has both), and never empty.
    !head.is_empty() && !head.contains([' ', '\'', '"', '='])
}

/// make's `make[2]: *** [Makefile:12: all] Error 2` or `make: *** No rule ... Stop.`
fn is_make_error(line: &str) -> bool {
    let Some((tool, rest)) = line.split_once(": *** ") else {
        return false;
    };
    let tool = tool.split('[').next().unwrap_or(tool);
    tool.rsplit('/').next().is_some_and(|t| t.ends_with("make"))
        && (rest.contains("Error ") || rest.ends_with("Stop."))
}

/// Drops `build_dir` (and `/usr/src/`, where kernel headers live) from every path
/// in `line`, resolves `dir/..` in its leading location, and caps its length.
fn shorten(line: &str, build_dir: &str) -> String {
    let dir = format!("{}/", build_dir.trim_end_matches('/'));
    let line = line.replace(&dir, "").replace("/usr/src/", "");
    let line = match line.split_once(':') {
        Some((path, rest)) if path.contains("..") => format!("{}:{rest}", normalize(path)),
        _ => line,
    };
    match line.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

/// `src/probes/../../include/x.h` -> `include/x.h` (lexically).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." | "" if !parts.is_empty() => {}
            ".." if parts.last().is_some_and(|p| *p != ".." && !p.is_empty()) => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// A build's log sink that also looks for the first error.
pub struct Scanned<'a, S: OutputSink> {
    pub log: &'a S,
    pub scan: Mutex<FirstError>,
}

impl<'a, S: OutputSink> Scanned<'a, S> {
    pub fn new(log: &'a S) -> Self {
        Scanned {
            log,
            scan: Mutex::default(),
        }
    }

    /// See [`FirstError::quote`].
    pub fn quote(&self, build_dir: &str) -> Option<String> {
        self.scan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quote(build_dir)
    }
}

impl<S: OutputSink> OutputSink for Scanned<'_, S> {
    fn append(&self, bytes: &[u8]) {
        self.scan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .feed(bytes);
        self.log.append(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: &str = "/var/lib/dkms/lttng-modules/2.13.9/build";

    fn first(output: &str) -> Option<String> {
        let mut scan = FirstError::default();
        scan.feed(output.as_bytes());
        scan.quote(BUILD)
    }

    #[test]
    fn finds_the_first_error_of_each_tool() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "  CC [M]  /var/lib/dkms/lttng-modules/2.13.9/build/src/probes/lttng-probe-timer.o\n\
                 In file included from /var/lib/dkms/lttng-modules/2.13.9/build/src/probes/../../include/lttng/tracepoint-event.h:10,\n\
                 /var/lib/dkms/lttng-modules/2.13.9/build/src/probes/../../include/lttng/tracepoint-event-impl.h:133:6: error: conflicting types for 'trace_hrtimer_start'; have 'void(struct hrtimer *)'\n\
                 /var/lib/dkms/lttng-modules/2.13.9/build/src/x.c:1:2: error: second\n\
                 make[2]: *** [scripts/Makefile.build:250: x.o] Error 1\n",
                Some("include/lttng/tracepoint-event-impl.h:133:6: error: conflicting types for 'trace_hrtimer_start'; have 'void(struct hrtimer *)'"),
            ),
            (
                "kmf_broken.c:5:9: warning: unused variable 'x' [-Wunused-variable]\n\
                 gcc -Werror=implicit-function-declaration -c error.c -o error.o\n\
                 /usr/src/linux-headers-6.1.0-47-common/include/linux/error.h:3:1: note: in expansion\n\
                 /var/lib/dkms/lttng-modules/2.13.9/build/kmf_broken.c:7:12: error: 'kmf_this_symbol_does_not_exist' undeclared (first use in this function)\n",
                Some("kmf_broken.c:7:12: error: 'kmf_this_symbol_does_not_exist' undeclared (first use in this function)"),
            ),
            (
                "foo.c:1:10: fatal error: missing.h: No such file or directory\n",
                Some("foo.c:1:10: fatal error: missing.h: No such file or directory"),
            ),
            (
                "ERROR: modpost: \"kmf_missing\" [/var/lib/dkms/lttng-modules/2.13.9/build/kmf.ko] undefined!\n",
                Some("ERROR: modpost: \"kmf_missing\" [kmf.ko] undefined!"),
            ),
            (
                "ld: error: undefined symbol: foo\n",
                Some("ld: error: undefined symbol: foo"),
            ),
            // make's own line only when no compiler diagnostic came at all.
            (
                "make[1]: Entering directory '/usr/src/linux-headers-6.1.0-47-amd64'\n\
                 /bin/sh: 1: 3: Bad file descriptor\n\
                 make: *** [Makefile:2: all] Error 2\n",
                Some("make: *** [Makefile:2: all] Error 2"),
            ),
            (
                "make: *** No rule to make target 'modules'.  Stop.\n",
                Some("make: *** No rule to make target 'modules'.  Stop."),
            ),
            (
                "cc1: some warnings being treated as errors\n\
                 x.c:3:1: warning: no previous prototype [-Werror=missing-prototypes]\n\
                 echo 'x: error: y'\n",
                None,
            ),
        ];
        for (output, want) in cases {
            assert_eq!(first(output).as_deref(), *want, "output:\n{output}");
        }
    }

    /// Chunk boundaries anywhere, CRLF, and an endless line: memory stays bounded.
    #[test]
    fn streams_with_bounded_memory() {
        let output = "a.c:1:1: warning: w\r\nb.c:2:3: error: e\r\n";
        for cut in 0..output.len() {
            let mut scan = FirstError::default();
            scan.feed(&output.as_bytes()[..cut]);
            scan.feed(&output.as_bytes()[cut..]);
            assert_eq!(scan.quote(BUILD).as_deref(), Some("b.c:2:3: error: e"));
        }
        let mut scan = FirstError::default();
        for _ in 0..1000 {
            scan.feed(&[b'x'; 8192]);
        }
        assert!(scan.line.len() <= MAX_LINE);
        scan.feed(b"\nc.c:1:1: error: after a long line\n");
        assert_eq!(
            scan.quote(BUILD).as_deref(),
            Some("c.c:1:1: error: after a long line")
        );
    }

    #[test]
    fn quotes_are_capped() {
        let long = format!("x.c:1:1: error: {}\n", "y".repeat(1000));
        let quote = first(&long).expect("found");
        assert_eq!(quote.chars().count(), MAX_QUOTE + 3);
        assert!(quote.ends_with("..."));
    }
}
