//! BUILD_EXCLUSIVE_* and OBSOLETE_BY: is this kernel/arch/config one the module is for?

use super::dump::Dump;
use super::error::ConfError;
use super::make::matched;
use super::plan::EvalContext;
use super::ver::ver;

/// Why DKMS would skip this build with exit 77, or None when the module applies.
///
/// Checks run in DKMS's order and the first failure is reported: KERNEL (ERE on the
/// kernel release), KERNEL_MIN and KERNEL_MAX (string comparison of [`ver`] forms;
/// OBSOLETE_BY stands in for an unset KERNEL_MAX), ARCH (ERE on the arch), then CONFIG.
/// Only the scalar (index 0) values are used.
pub(crate) fn exclusion_reason(
    dump: &Dump,
    ctx: &EvalContext,
) -> Result<Option<String>, ConfError> {
    let kernel = ctx.kernel.as_str();
    if let Some(r) = regex_check(dump, "BUILD_EXCLUSIVE_KERNEL", "kernel", kernel)? {
        return Ok(Some(r));
    }
    if let Some(r) = min_max_check(dump, kernel) {
        return Ok(Some(r));
    }
    if let Some(r) = regex_check(dump, "BUILD_EXCLUSIVE_ARCH", "arch", ctx.arch.as_str())? {
        return Ok(Some(r));
    }
    Ok(config_check(dump, kernel))
}

fn scalar<'a>(dump: &'a Dump, name: &str) -> &'a str {
    dump.directive(name, 0).unwrap_or("")
}

/// `[[ subject =~ pattern ]]` via the sandbox's `m` record.
fn regex_check(
    dump: &Dump,
    name: &'static str,
    what: &str,
    subject: &str,
) -> Result<Option<String>, ConfError> {
    let pattern = scalar(dump, name);
    if pattern.is_empty() || matched(dump, name, 0, pattern)? {
        return Ok(None);
    }
    Ok(Some(format!(
        "{name}: {what} {subject} does not match {pattern:?}"
    )))
}

fn min_max_check(dump: &Dump, kernel: &str) -> Option<String> {
    let min = scalar(dump, "BUILD_EXCLUSIVE_KERNEL_MIN");
    if !min.is_empty() && ver(kernel) < ver(min) {
        return Some(format!(
            "BUILD_EXCLUSIVE_KERNEL_MIN: kernel {kernel} is older than {min}"
        ));
    }
    let (max_name, max) = match scalar(dump, "BUILD_EXCLUSIVE_KERNEL_MAX") {
        "" => ("OBSOLETE_BY", scalar(dump, "OBSOLETE_BY")),
        max => ("BUILD_EXCLUSIVE_KERNEL_MAX", max),
    };
    if !max.is_empty() && ver(kernel) > ver(max) {
        return Some(format!("{max_name}: kernel {kernel} is newer than {max}"));
    }
    None
}

/// BUILD_EXCLUSIVE_CONFIG: `CONFIG_X` must be `y`/`m`, `!CONFIG_X` must not be.
///
/// Like DKMS's `grep "^CONFIG_X=[ym]"`, a value counts as set when it starts with `y` or
/// `m`. A token the sandbox did not look up counts as unset.
fn config_check(dump: &Dump, kernel: &str) -> Option<String> {
    let is_set = |token: &str| {
        dump.config_value(token)
            .is_some_and(|v| v.starts_with(['y', 'm']))
    };
    for token in scalar(dump, "BUILD_EXCLUSIVE_CONFIG").split_ascii_whitespace() {
        match token.strip_prefix('!') {
            Some(name) if is_set(name) => {
                let why = format!("{name} is set in kernel {kernel} (the module requires {token})");
                return Some(format!("BUILD_EXCLUSIVE_CONFIG: {why}"));
            }
            Some(_) => {}
            None if !is_set(token) => {
                return Some(format!(
                    "BUILD_EXCLUSIVE_CONFIG: {token} is not set in kernel {kernel}"
                ));
            }
            None => {}
        }
    }
    None
}
