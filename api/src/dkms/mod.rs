//! The DKMS directive model: what a `dkms.conf` means for one kernel and arch.
//!
//! `dkms.conf` is bash, so it is never interpreted here. The build sandbox sources it
//! exactly as DKMS 3.x does (DKMS's variables in scope, every whitelisted array element
//! re-emitted as `NAME[i]="value"` with a trailing CR stripped and sourced again, which is
//! DKMS's double expansion) and prints a NUL-separated [`Dump`]. This module turns a
//! dump into a [`BuildPlan`] or a reason not to build ([`evaluate`]), applying DKMS's
//! defaults and validity rules, which are documented on each item.
//!
//! Deliberate differences from DKMS, each in the direction of catching mistakes or
//! accepting the existing corpus: duplicate module records are warnings (DKMS ≥ 3.1.7
//! rejects them); an invalid regex is an error (DKMS treats it as "no match"); module
//! names, locations and patch paths must not escape their directories; only a bare
//! leading word `make` is rewritten (DKMS's prefix substitution also hits `makeself`).
//!
//! [`scan_declared`] is the static, no-execution scan used when a source is uploaded.

mod dump;
mod error;
mod exclusive;
mod make;
mod modules;
mod plan;
mod scan;
mod scan_lex;
mod ver;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use dump::{Dump, MatchResult};
pub use error::ConfError;
pub use plan::{evaluate, BuildPlan, Distro, EvalContext, Evaluation, ModuleSpec};
pub use scan::{is_placeholder, scan_declared, Declared};
pub use ver::{ver, version_cmp};

/// The directive names DKMS accepts from `dkms.conf` (its `dkms_conf_variables`, minus
/// its lowercase internal arrays), including the deprecated CLEAN, REMAKE_INITRD and
/// MODULES_CONF*. The sandbox re-emits exactly these; other `d` records are ignored.
pub const DIRECTIVE_NAMES: &[&str] = &[
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "POST_ADD",
    "POST_BUILD",
    "POST_INSTALL",
    "POST_REMOVE",
    "PRE_BUILD",
    "PRE_INSTALL",
    "BUILD_DEPENDS",
    "BUILD_DEPENDS_REBUILD",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "OBSOLETE_BY",
    "MAKE",
    "MAKE_MATCH",
    "PATCH",
    "PATCH_MATCH",
    "BUILT_MODULE_NAME",
    "BUILT_MODULE_LOCATION",
    "DEST_MODULE_NAME",
    "DEST_MODULE_LOCATION",
    "STRIP",
    "AUTOINSTALL",
    "NO_WEAK_MODULES",
    "CLEAN",
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_OBSOLETE_ONLY",
];
