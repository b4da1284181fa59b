//! Per-module settings (`PUT /v1/modules/{name}/settings`): what DKMS users put in
//! `/etc/dkms/<m>*.conf` and install with apt beside the package, set through the API.
//!
//! - `overrides`: DKMS's override files. DKMS sources them after the package's
//!   `dkms.conf`, most general first: `<m>.conf`, `<m>-<v>.conf`, `<m>-<v>-<kver>.conf`,
//!   `<m>-<v>-<kver>-<arch>.conf`, `<m>--<kver>.conf`, `<m>--<kver>-<arch>.conf`. An
//!   override names its scope with `version`, `kernel` and `arch`; only those six
//!   combinations exist, as in DKMS.
//! - `packages`: Debian packages a build needs (a package's plain `Depends:`, e.g.
//!   `libxtables-dev`), installed into a builder image derived from the kernel's.
//! - `build_depends`: other registered modules, by DKMS name, that this one is built
//!   against (DKMS's `BUILD_DEPENDS`, added to whatever dkms.conf itself declares): each
//!   is built first for the same kernel, and its source and build are put where DKMS
//!   keeps them (`/usr/src/<d>-<v>`, `/var/lib/dkms/<d>/<v>/…`).
//!
//! Settings apply to every version of the module and are part of the cache key.

use serde::{Deserialize, Serialize};

use crate::names::{Arch, KernelRelease, ModuleName, ModuleVersion};

/// Most Debian packages in one module's settings.
pub const MAX_PACKAGES: usize = 64;
/// Most `build_depends` entries.
pub const MAX_BUILD_DEPENDS: usize = 16;
/// Most override files (six scopes per version and kernel, many kernels).
pub const MAX_OVERRIDES: usize = 64;
/// Largest text of one override file, in bytes.
pub const MAX_OVERRIDE_BYTES: usize = 64 * 1024;
/// Largest total of the override texts, in bytes.
pub const MAX_OVERRIDES_TOTAL: usize = 256 * 1024;

/// The settings of one module (all fields optional in requests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ModuleSettings {
    /// Debian packages installed into the builder image for this module's builds.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Registered modules (DKMS names) built first and placed beside this one.
    #[serde(default)]
    pub build_depends: Vec<ModuleName>,
    /// DKMS override files, applied in DKMS's order.
    #[serde(default)]
    pub overrides: Vec<ConfOverride>,
}

/// One `/etc/dkms/…conf` override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConfOverride {
    #[serde(default)]
    pub version: Option<ModuleVersion>,
    #[serde(default)]
    pub kernel: Option<KernelRelease>,
    #[serde(default)]
    pub arch: Option<Arch>,
    /// Shell text sourced like dkms.conf (bash, with DKMS's variables set).
    pub conf: String,
}

/// The stored settings of a module (`GET /v1/modules/{name}/settings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SettingsRecord {
    pub name: ModuleName,
    #[serde(flatten)]
    pub settings: ModuleSettings,
    /// RFC 3339; absent when nothing was ever set.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// Why settings were refused; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingsError {
    /// The offending field, e.g. `packages[2]` or `overrides[0].arch`.
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Debian Policy 5.6.1: lowercase letters, digits, `+ - .`, at least two characters,
/// starting with an alphanumeric.
pub fn valid_debian_package(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && name.len() >= 2
        && name.len() <= 100
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// The position of a scope in DKMS's sourcing order, or `None` for a scope DKMS has
/// no file for (an arch without a kernel).
fn scope_rank(o: &ConfOverride) -> Option<u8> {
    match (o.version.is_some(), o.kernel.is_some(), o.arch.is_some()) {
        (false, false, false) => Some(0),
        (true, false, false) => Some(1),
        (true, true, false) => Some(2),
        (true, true, true) => Some(3),
        (false, true, false) => Some(4),
        (false, true, true) => Some(5),
        (_, false, true) => None,
    }
}

impl ConfOverride {
    /// The DKMS file name this override stands for, e.g. `m-1.0-6.1.0-47-amd64.conf`.
    pub fn file_name(&self, module: &ModuleName) -> String {
        let mut name = module.to_string();
        match &self.version {
            Some(v) => {
                name.push('-');
                name.push_str(v.as_str());
            }
            None if self.kernel.is_some() => name.push('-'),
            None => {}
        }
        if let Some(k) = &self.kernel {
            name.push('-');
            name.push_str(k.as_str());
        }
        if let Some(a) = &self.arch {
            name.push('-');
            name.push_str(a.as_str());
        }
        name.push_str(".conf");
        name
    }

    fn applies(&self, version: &ModuleVersion, kernel: &KernelRelease, arch: &Arch) -> bool {
        self.version.as_ref().is_none_or(|v| v == version)
            && self.kernel.as_ref().is_none_or(|k| k == kernel)
            && self.arch.as_ref().is_none_or(|a| a == arch)
    }
}

impl ModuleSettings {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.build_depends.is_empty() && self.overrides.is_empty()
    }

    /// Checks the settings of `module` and returns them in canonical form: packages
    /// sorted and deduplicated, `build_depends` deduplicated (order kept), overrides
    /// in DKMS's sourcing order.
    pub fn validated(mut self, module: &ModuleName) -> Result<Self, SettingsError> {
        if self.packages.len() > MAX_PACKAGES {
            return Err(err("packages", format!("at most {MAX_PACKAGES} entries")));
        }
        for (i, p) in self.packages.iter().enumerate() {
            if !valid_debian_package(p) {
                return Err(err(
                    format!("packages[{i}]"),
                    format!(
                        "{:?} is not a Debian package name (lowercase letters, digits, + - .; no version constraints)",
                        p.chars().take(80).collect::<String>()
                    ),
                ));
            }
        }
        self.packages.sort();
        self.packages.dedup();

        if self.build_depends.len() > MAX_BUILD_DEPENDS {
            return Err(err(
                "build_depends",
                format!("at most {MAX_BUILD_DEPENDS} entries"),
            ));
        }
        if let Some(i) = self.build_depends.iter().position(|d| d == module) {
            return Err(err(
                format!("build_depends[{i}]"),
                format!("{module} cannot depend on itself"),
            ));
        }
        let mut kept = std::collections::HashSet::new();
        self.build_depends.retain(|d| kept.insert(d.clone()));

        if self.overrides.len() > MAX_OVERRIDES {
            return Err(err("overrides", format!("at most {MAX_OVERRIDES} entries")));
        }
        let mut total = 0;
        let mut files = std::collections::HashSet::new();
        for (i, o) in self.overrides.iter().enumerate() {
            if scope_rank(o).is_none() {
                return Err(err(
                    format!("overrides[{i}].arch"),
                    "an arch needs a kernel: DKMS override files are <m>[-<v>[-<kver>[-<arch>]]].conf or <m>--<kver>[-<arch>].conf",
                ));
            }
            if o.conf.len() > MAX_OVERRIDE_BYTES {
                return Err(err(
                    format!("overrides[{i}].conf"),
                    format!("longer than {MAX_OVERRIDE_BYTES} bytes"),
                ));
            }
            if o.conf.contains('\0') {
                return Err(err(format!("overrides[{i}].conf"), "contains a NUL byte"));
            }
            total += o.conf.len();
            if !files.insert(o.file_name(module)) {
                return Err(err(
                    format!("overrides[{i}]"),
                    format!("a second override for {}", o.file_name(module)),
                ));
            }
        }
        if total > MAX_OVERRIDES_TOTAL {
            return Err(err(
                "overrides",
                format!("more than {MAX_OVERRIDES_TOTAL} bytes in all"),
            ));
        }
        self.overrides
            .sort_by_key(|o| (scope_rank(o), o.file_name(module)));
        Ok(self)
    }

    /// The overrides that apply to one build, as (DKMS file name, text), in the
    /// order DKMS sources them.
    pub fn overrides_for(
        &self,
        module: &ModuleName,
        version: &ModuleVersion,
        kernel: &KernelRelease,
        arch: &Arch,
    ) -> Vec<(String, String)> {
        let mut applicable: Vec<&ConfOverride> = self
            .overrides
            .iter()
            .filter(|o| o.applies(version, kernel, arch))
            .collect();
        applicable.sort_by_key(|o| scope_rank(o));
        applicable
            .into_iter()
            .map(|o| (o.file_name(module), o.conf.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ModuleName {
        ModuleName::parse(s).expect("valid test input")
    }

    fn ov(v: Option<&str>, k: Option<&str>, a: Option<&str>) -> ConfOverride {
        ConfOverride {
            version: v.map(|v| ModuleVersion::parse(v).expect("valid test input")),
            kernel: k.map(|k| KernelRelease::parse(k).expect("valid test input")),
            arch: a.map(|a| Arch::parse(a).expect("valid test input")),
            conf: format!("# {v:?} {k:?} {a:?}"),
        }
    }

    #[test]
    fn overrides_follow_dkms_file_names_and_order() {
        let m = name("foo");
        let k = "6.1.0-47-amd64";
        let s = ModuleSettings {
            overrides: vec![
                ov(None, Some(k), Some("x86_64")),
                ov(Some("1.0"), Some(k), Some("x86_64")),
                ov(None, Some(k), None),
                ov(Some("1.0"), Some(k), None),
                ov(Some("1.0"), None, None),
                ov(None, None, None),
                ov(Some("2.0"), None, None),
                ov(None, Some("6.1.0-56-amd64"), None),
            ],
            ..Default::default()
        }
        .validated(&m)
        .expect("valid test input");
        let files: Vec<String> = s
            .overrides_for(
                &m,
                &ModuleVersion::parse("1.0").expect("valid test input"),
                &KernelRelease::parse(k).expect("valid test input"),
                &Arch::parse("x86_64").expect("valid test input"),
            )
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            files,
            [
                "foo.conf",
                "foo-1.0.conf",
                "foo-1.0-6.1.0-47-amd64.conf",
                "foo-1.0-6.1.0-47-amd64-x86_64.conf",
                "foo--6.1.0-47-amd64.conf",
                "foo--6.1.0-47-amd64-x86_64.conf",
            ]
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let m = name("foo");
        let cases: Vec<(ModuleSettings, &str)> = vec![
            (
                ModuleSettings {
                    packages: vec!["gawk".into(), "libfoo-dev (>= 1)".into()],
                    ..Default::default()
                },
                "packages[1]",
            ),
            (
                ModuleSettings {
                    build_depends: vec![name("foo")],
                    ..Default::default()
                },
                "build_depends[0]",
            ),
            (
                ModuleSettings {
                    overrides: vec![ov(Some("1.0"), None, Some("x86_64"))],
                    ..Default::default()
                },
                "overrides[0].arch",
            ),
            (
                ModuleSettings {
                    overrides: vec![ov(None, None, None), ov(None, None, None)],
                    ..Default::default()
                },
                "overrides[1]",
            ),
        ];
        for (s, field) in cases {
            let e = s.validated(&m).expect_err("must be refused");
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn canonical_form_sorts_and_dedups() {
        let s = ModuleSettings {
            packages: vec!["libxtables-dev".into(), "gawk".into(), "gawk".into()],
            build_depends: vec![name("b"), name("a"), name("b")],
            overrides: vec![],
        }
        .validated(&name("foo"))
        .expect("valid test input");
        assert_eq!(s.packages, ["gawk", "libxtables-dev"]);
        assert_eq!(s.build_depends, [name("b"), name("a")]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<ModuleSettings>(r#"{"pakages":["x"]}"#)
            .expect_err("must be refused");
        assert!(e.to_string().contains("pakages"), "{e}");
    }

    #[test]
    fn debian_package_names() {
        for ok in ["gawk", "libxtables-dev", "g++", "libstdc++6", "perl"] {
            assert!(valid_debian_package(ok), "{ok}");
        }
        for bad in ["", "a", "Gawk", "perl:any", "-x", "a b", "foo|bar"] {
            assert!(!valid_debian_package(bad), "{bad}");
        }
    }
}
