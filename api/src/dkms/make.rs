//! MAKE/MAKE_MATCH and PATCH/PATCH_MATCH selection, and the `make` rewrite of `do_build`.

use super::dump::{Dump, MatchResult};
use super::error::{clip, ConfError};
use super::plan::EvalContext;

/// Whether `name[index]`'s pattern matched, from the sandbox's `m` record.
///
/// DKMS treats an invalid ERE as "no match"; here it is [`ConfError::InvalidRegex`], so
/// the author learns about it. A missing record for a non-empty pattern is a bad dump.
pub(crate) fn matched(
    dump: &Dump,
    name: &'static str,
    index: u32,
    pattern: &str,
) -> Result<bool, ConfError> {
    match dump.match_result(name, index) {
        Some(MatchResult::Matched) => Ok(true),
        Some(MatchResult::NoMatch) => Ok(false),
        Some(MatchResult::InvalidRegex) => Err(ConfError::InvalidRegex {
            directive: name,
            index,
            pattern: clip(pattern),
        }),
        None => Err(ConfError::bad_dump(format!(
            "no match result for {name}[{index}]"
        ))),
    }
}

/// The final make command: selection, default, then the leading-`make` rewrite.
///
/// As in DKMS: `MAKE[0]` is the default when `MAKE_MATCH[0]` is empty; every `MAKE[i]` whose
/// `MAKE_MATCH[i]` matches the kernel then replaces it (the last one wins); with no
/// command the kbuild default `make -C <kernel_source_dir> M=<dkms_tree>/<m>/<v>/build`
/// is used. DKMS loops `i` over `0..${#MAKE[@]}`, the number of *set* elements, so in
/// a sparse array the highest entries are never looked at; that is reproduced, with a
/// warning. DKMS's `LLVM=1` suffix for clang-built kernels is not applied here.
pub(crate) fn make_command(
    dump: &Dump,
    ctx: &EvalContext,
    warnings: &mut Vec<String>,
) -> Result<String, ConfError> {
    let get = |name, i| dump.directive(name, i).unwrap_or("");
    let set = count_u32(dump.elements("MAKE").count());
    let mut command = if get("MAKE_MATCH", 0).is_empty() {
        get("MAKE", 0)
    } else {
        ""
    };
    for index in 0..set {
        let (make, pattern) = (get("MAKE", index), get("MAKE_MATCH", index));
        if !make.is_empty() && !pattern.is_empty() && matched(dump, "MAKE_MATCH", index, pattern)? {
            command = make;
        }
    }
    warn_unreached("MAKE", dump, set, warnings);
    let command = match command {
        "" => default_make(ctx),
        c => c.to_owned(),
    };
    Ok(rewrite_leading_make(
        &command,
        ctx.parallel_jobs,
        ctx.kernel.as_str(),
    ))
}

/// DKMS's command when dkms.conf has no MAKE.
fn default_make(ctx: &EvalContext) -> String {
    format!(
        "make -C {} M={}/{}/{}/build",
        ctx.kernel_source_dir, ctx.dkms_tree, ctx.module, ctx.module_version
    )
}

/// Replaces a leading bare word `make` by `make -j<N> KERNELRELEASE=<kver>`.
///
/// DKMS does `${make_command/#make/…}`, a plain prefix substitution; here the word must
/// be exactly `make` (followed by the end or a blank or shell operator), so that
/// `make.sh` or `makeself` are left alone. `'make'`, `(make …)` and `VAR=… make` are
/// not rewritten, as in DKMS. `parallel_jobs == 0` gives a bare `-j` (unlimited).
pub(crate) fn rewrite_leading_make(command: &str, parallel_jobs: u32, kver: &str) -> String {
    let is_word_end =
        |c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '<' | '>' | '(' | ')');
    match command.strip_prefix("make") {
        Some(rest) if rest.is_empty() || rest.starts_with(is_word_end) => {
            let jobs = if parallel_jobs == 0 {
                String::new()
            } else {
                parallel_jobs.to_string()
            };
            format!("make -j{jobs} KERNELRELEASE={kver}{rest}")
        }
        _ => command.to_owned(),
    }
}

/// The PATCH entries selected for this kernel, with their index, in index order.
///
/// `PATCH[i]` is used when it is non-empty and `PATCH_MATCH[i]` is empty or matches. As for
/// MAKE, only indices below the number of set PATCH elements are looked at.
pub(crate) fn selected_patches(
    dump: &Dump,
    warnings: &mut Vec<String>,
) -> Result<Vec<(u32, String)>, ConfError> {
    let get = |name, i| dump.directive(name, i).unwrap_or("");
    let set = count_u32(dump.elements("PATCH").count());
    let mut patches = Vec::new();
    for index in 0..set {
        let (patch, pattern) = (get("PATCH", index), get("PATCH_MATCH", index));
        if !patch.is_empty()
            && (pattern.is_empty() || matched(dump, "PATCH_MATCH", index, pattern)?)
        {
            patches.push((index, patch.to_owned()));
        }
    }
    warn_unreached("PATCH", dump, set, warnings);
    Ok(patches)
}

/// Rejects absolute patch paths and `..` components (DKMS exit 5 for `/../`).
pub(crate) fn check_patch_paths(patches: &[(u32, String)]) -> Result<(), ConfError> {
    for (index, path) in patches {
        let err = |reason| ConfError::BadPatchPath {
            index: *index,
            path: clip(path),
            reason,
        };
        if path.starts_with('/') {
            return Err(err("must be relative to the patches/ directory"));
        }
        if path.split('/').any(|c| c == "..") {
            return Err(err("contains a '..' path component"));
        }
    }
    Ok(())
}

/// Warns about non-empty elements at or past `set`, which DKMS's loop never reaches.
fn warn_unreached(name: &str, dump: &Dump, set: u32, warnings: &mut Vec<String>) {
    for (index, value) in dump
        .elements(name)
        .filter(|(i, v)| *i >= set && !v.is_empty())
    {
        let value = clip(value);
        warnings.push(format!(
            "'{name}[{index}]' {value:?} is ignored: DKMS only looks at indices \
             below the number of {name} entries ({set})"
        ));
    }
}

/// Element counts come from a map keyed by `u32`, so they fit in a `u32` in practice.
fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_table() {
        let k = "6.1.0-47-amd64";
        let cases = [
            ("make", 2, "make -j2 KERNELRELEASE=6.1.0-47-amd64"),
            (
                "make -C /x M=/y",
                2,
                "make -j2 KERNELRELEASE=6.1.0-47-amd64 -C /x M=/y",
            ),
            (
                "make ipt_NETFLOW.ko",
                2,
                "make -j2 KERNELRELEASE=6.1.0-47-amd64 ipt_NETFLOW.ko",
            ),
            (
                "make -C /x M=/y",
                0,
                "make -j KERNELRELEASE=6.1.0-47-amd64 -C /x M=/y",
            ),
            (
                "make&&true",
                4,
                "make -j4 KERNELRELEASE=6.1.0-47-amd64&&true",
            ),
            ("'make' all", 2, "'make' all"),
            ("(make modules; make)", 2, "(make modules; make)"),
            ("KERNELDIR=/k make driver", 2, "KERNELDIR=/k make driver"),
            ("makeself x", 2, "makeself x"),
            ("make.sh", 2, "make.sh"),
            (" make", 2, " make"),
        ];
        for (input, jobs, expected) in cases {
            assert_eq!(rewrite_leading_make(input, jobs, k), expected, "{input:?}");
        }
    }

    #[test]
    fn patch_path_table() {
        let ok = ["fix.patch", "sub/fix.patch", "a..b.patch", "..fix"];
        for p in ok {
            assert!(check_patch_paths(&[(0, p.to_owned())]).is_ok(), "{p}");
        }
        let bad = ["/etc/passwd", "../x.patch", "a/../../x", "a/.."];
        for p in bad {
            let err = check_patch_paths(&[(3, p.to_owned())]).unwrap_err();
            assert_eq!(err.kind(), "bad_patch_path", "{p}");
            assert!(err.to_string().contains("PATCH[3]"), "{err}");
        }
    }
}
