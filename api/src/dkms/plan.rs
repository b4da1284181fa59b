//! From a dump to a build plan: the evaluation context, the plan types and [`evaluate`].

use serde::{Deserialize, Serialize};

use super::dump::Dump;
use super::error::{clip, ConfError};
use super::{exclusive, make, modules};
use crate::names::{Arch, KernelRelease, ModuleName, ModuleVersion};

/// The distribution family, which decides the DEST_MODULE_LOCATION override.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Distro {
    /// `debian*`: modules go to `/updates/dkms`.
    Debian,
    /// `ubuntu*`: `/updates/dkms`.
    Ubuntu,
    /// `arch*`: `/updates/dkms`.
    Arch,
    /// `fedora*`: `/extra`.
    Fedora,
    /// `rhel*`, `ovm*`: `/extra`.
    Rhel,
    /// `sles*`, `suse*`, `opensuse*`: `/updates`.
    Suse,
    /// Anything else: DEST_MODULE_LOCATION as written.
    Other,
}

impl Distro {
    /// Classifies the string DKMS derives from os-release (`ID` if it is `ubuntu`, else
    /// `ID_LIKE`, else `ID`) by its prefix, as DKMS's `override_dest_module_location` does.
    pub fn from_dkms_name(name: &str) -> Distro {
        const PREFIXES: [(&str, Distro); 9] = [
            ("debian", Distro::Debian),
            ("ubuntu", Distro::Ubuntu),
            ("arch", Distro::Arch),
            ("fedora", Distro::Fedora),
            ("rhel", Distro::Rhel),
            ("ovm", Distro::Rhel),
            ("sles", Distro::Suse),
            ("suse", Distro::Suse),
            ("opensuse", Distro::Suse),
        ];
        PREFIXES
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .map_or(Distro::Other, |(_, d)| *d)
    }

    /// The location that replaces every DEST_MODULE_LOCATION, if this distro has one.
    pub fn dest_override(self) -> Option<&'static str> {
        match self {
            Distro::Debian | Distro::Ubuntu | Distro::Arch => Some("/updates/dkms"),
            Distro::Fedora | Distro::Rhel => Some("/extra"),
            Distro::Suse => Some("/updates"),
            Distro::Other => None,
        }
    }
}

/// What `dkms.conf` was evaluated for: DKMS's variables at `read_conf` time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalContext {
    /// Target kernel (`$kernelver`).
    pub kernel: KernelRelease,
    /// Target architecture (`$arch`).
    pub arch: Arch,
    /// The `-m` name (`$module`).
    pub module: ModuleName,
    /// The `-v` version (`$module_version`).
    pub module_version: ModuleVersion,
    /// `make -j` value; 0 means a bare `-j` (no limit).
    pub parallel_jobs: u32,
    /// Decides the DEST_MODULE_LOCATION override.
    pub distro: Distro,
    /// `$kernel_source_dir`, normally `/lib/modules/<kernel>/build`.
    pub kernel_source_dir: String,
    /// `$dkms_tree`, normally `/var/lib/dkms`.
    pub dkms_tree: String,
}

impl EvalContext {
    /// A Debian context with DKMS's standard paths.
    pub fn new(
        kernel: KernelRelease,
        arch: Arch,
        module: ModuleName,
        module_version: ModuleVersion,
        parallel_jobs: u32,
    ) -> Self {
        let kernel_source_dir = format!("/lib/modules/{kernel}/build");
        EvalContext {
            kernel,
            arch,
            module,
            module_version,
            parallel_jobs,
            distro: Distro::Debian,
            kernel_source_dir,
            dkms_tree: "/var/lib/dkms".to_owned(),
        }
    }
}

/// One module to build and install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModuleSpec {
    /// BUILT_MODULE_NAME, without `.ko`.
    pub built_name: String,
    /// BUILT_MODULE_LOCATION relative to the build directory: `""` or ending in `/`.
    pub built_location: String,
    /// DEST_MODULE_NAME (defaults to `built_name`), without `.ko`. Unique within a plan.
    pub dest_name: String,
    /// The effective install directory under `/lib/modules/<kernel>`, e.g. `/updates/dkms`.
    pub dest_location: String,
    /// Whether to `strip -g` the module.
    pub strip: bool,
}

/// Everything needed to run the build of one module version for one kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildPlan {
    /// PACKAGE_NAME.
    pub package_name: String,
    /// PACKAGE_VERSION.
    pub package_version: String,
    /// The module records, in index order.
    pub modules: Vec<ModuleSpec>,
    /// The final make command (see [`evaluate`]), run with `eval` in the build directory.
    pub make: String,
    /// PATCH entries selected by PATCH_MATCH, in index order, relative to `patches/`.
    pub patches: Vec<String>,
    /// PRE_BUILD script (path relative to the package root, may carry arguments).
    pub pre_build: Option<String>,
    /// POST_BUILD script.
    pub post_build: Option<String>,
    /// BUILD_DEPENDS module names, in index order.
    pub build_depends: Vec<String>,
    /// AUTOINSTALL=yes.
    pub autoinstall: bool,
    /// NO_WEAK_MODULES=yes.
    pub no_weak_modules: bool,
    /// OBSOLETE_BY kernel version.
    pub obsolete_by: Option<String>,
    /// Things DKMS would warn about (deprecated directives, duplicates, …).
    pub warnings: Vec<String>,
}

/// The result of evaluating a dump for one kernel and arch.
// Made once per build and matched right away: boxing the plan would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evaluation {
    /// Build with this plan.
    Build(BuildPlan),
    /// DKMS would skip the build with exit 77 (BUILD_EXCLUSIVE_* or OBSOLETE_BY).
    NotApplicable {
        /// A DKMS-like one-line reason, e.g.
        /// `BUILD_EXCLUSIVE_CONFIG: CONFIG_ACPI is not set in kernel 6.1.0-47-amd64`.
        reason: String,
    },
}

/// Applies DKMS 3.x's `read_conf_strict` rules and the build-exclusive checks to a dump.
///
/// Order, as in DKMS: conf errors first (required directives, module records, yes/no
/// values, MAKE and PATCH selection), then BUILD_EXCLUSIVE (→ [`Evaluation::NotApplicable`]),
/// then the patch path check of `do_build`. The make command is MAKE selected by
/// MAKE_MATCH (or DKMS's kbuild default) with a leading bare `make` rewritten to
/// `make -j<N> KERNELRELEASE=<kernel>`.
///
/// The dump's `v` records must agree with `ctx` (kernel, arch, module, version, paths)
/// where present, else it is [`ConfError::BadDump`]: values in it were expanded with them.
pub fn evaluate(dump: &Dump, ctx: &EvalContext) -> Result<Evaluation, ConfError> {
    check_vars(dump, ctx)?;
    let package_name = required(dump, "PACKAGE_NAME")?;
    let package_version = required(dump, "PACKAGE_VERSION")?;
    let mut warnings = deprecation_warnings(dump);
    let modules = modules::module_specs(dump, ctx.distro, &package_name, &mut warnings)?;
    let autoinstall = yes_no(dump, "AUTOINSTALL")?;
    yes_no(dump, "BUILD_DEPENDS_REBUILD")?;
    let no_weak_modules = yes_no(dump, "NO_WEAK_MODULES")?;
    let make = make::make_command(dump, ctx, &mut warnings)?;
    let patches = make::selected_patches(dump, &mut warnings)?;
    if let Some(reason) = exclusive::exclusion_reason(dump, ctx)? {
        return Ok(Evaluation::NotApplicable { reason });
    }
    make::check_patch_paths(&patches)?;
    Ok(Evaluation::Build(BuildPlan {
        package_name,
        package_version,
        modules,
        make,
        patches: patches.into_iter().map(|(_, p)| p).collect(),
        pre_build: optional(dump, "PRE_BUILD"),
        post_build: optional(dump, "POST_BUILD"),
        build_depends: dump
            .elements("BUILD_DEPENDS")
            .filter(|(_, v)| !v.is_empty())
            .map(|(_, v)| v.to_owned())
            .collect(),
        autoinstall,
        no_weak_modules,
        obsolete_by: optional(dump, "OBSOLETE_BY"),
        warnings,
    }))
}

/// Element 0 if non-empty.
fn optional(dump: &Dump, name: &str) -> Option<String> {
    dump.directive(name, 0)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn required(dump: &Dump, name: &'static str) -> Result<String, ConfError> {
    optional(dump, name).ok_or(ConfError::MissingRequired { directive: name })
}

/// `yes`/`no` in any case, or empty (= no); anything else makes the conf invalid.
fn yes_no(dump: &Dump, name: &'static str) -> Result<bool, ConfError> {
    let value = dump.directive(name, 0).unwrap_or("");
    if value.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if value.is_empty() || value.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(ConfError::InvalidYesNo {
            directive: name,
            value: clip(value),
        })
    }
}

/// DKMS's "Deprecated feature" warnings, one per directive.
fn deprecation_warnings(dump: &Dump) -> Vec<String> {
    const DEPRECATED: [&str; 5] = [
        "REMAKE_INITRD",
        "MODULES_CONF",
        "MODULES_CONF_OBSOLETES",
        "MODULES_CONF_ALIAS_TYPE",
        "MODULES_CONF_OBSOLETE_ONLY",
    ];
    let is_set = |name: &str| dump.elements(name).next().is_some();
    let clean = dump.directive("CLEAN", 0).unwrap_or("");
    let clean_noop = matches!(clean, "true" | "/bin/true" | "/usr/bin/true");
    let clean_warned = (is_set("CLEAN") && !clean_noop).then_some("CLEAN");
    clean_warned
        .into_iter()
        .chain(DEPRECATED.into_iter().filter(|name| is_set(name)))
        .map(|name| format!("Deprecated feature: {name}"))
        .collect()
}

/// The sandbox's `v` records against the context the plan is made for.
fn check_vars(dump: &Dump, ctx: &EvalContext) -> Result<(), ConfError> {
    let expected = [
        ("kernelver", ctx.kernel.as_str()),
        ("arch", ctx.arch.as_str()),
        ("module", ctx.module.as_str()),
        ("module_version", ctx.module_version.as_str()),
        ("kernel_source_dir", ctx.kernel_source_dir.as_str()),
        ("dkms_tree", ctx.dkms_tree.as_str()),
    ];
    for (name, want) in expected {
        match dump.var(name) {
            Some(got) if got != want => {
                return Err(ConfError::bad_dump(format!(
                    "evaluated with {name}={:?}, expected {want:?}",
                    clip(got)
                )));
            }
            _ => {}
        }
    }
    Ok(())
}
