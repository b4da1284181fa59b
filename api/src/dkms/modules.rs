//! The per-module records: BUILT_MODULE_*, DEST_MODULE_* and STRIP (DKMS `read_conf`).

use std::collections::HashSet;

use super::dump::Dump;
use super::error::{clip, ConfError};
use super::plan::{Distro, ModuleSpec};

const BUILT_NAME: &str = "BUILT_MODULE_NAME";
const BUILT_LOCATION: &str = "BUILT_MODULE_LOCATION";
const DEST_NAME: &str = "DEST_MODULE_NAME";
const DEST_LOCATION: &str = "DEST_MODULE_LOCATION";

/// The prefixes DKMS accepts for DEST_MODULE_LOCATION (checked before the distro override).
const DEST_PREFIXES: [&str; 3] = ["/kernel", "/updates", "/extra"];

/// Builds the module records of a dump, DKMS-style, and appends warnings.
///
/// The record count is the maximum index + 1 over the four name/location arrays (they
/// are sparse). Errors stop at the first bad record, so a huge index with nothing else
/// set costs one iteration, not billions. Duplicates are warnings (DKMS < 3.1.7
/// behaviour); when two records share a DEST_MODULE_NAME only the later one is kept,
/// because in DKMS's flat `module/` directory its file overwrites the earlier one. So
/// `dest_name` is unique in the result.
pub(crate) fn module_specs(
    dump: &Dump,
    distro: Distro,
    package_name: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<ModuleSpec>, ConfError> {
    let Some(max_index) = max_index(dump) else {
        warnings.push("Zero modules specified".to_owned());
        return Ok(Vec::new());
    };
    let strip0 = strip_default(dump, warnings);
    let ctx = RecordCtx {
        dump,
        distro,
        package_name,
        single: max_index == 0,
        strip0,
    };
    let mut specs = Vec::new();
    for index in 0..=max_index {
        specs.push(ctx.record(index, warnings)?);
    }
    warn_built_duplicates(&specs, warnings);
    Ok(keep_last_dest(specs, warnings))
}

/// The highest index set in any of the four arrays; None when there are no records.
fn max_index(dump: &Dump) -> Option<u32> {
    [BUILT_NAME, BUILT_LOCATION, DEST_NAME, DEST_LOCATION]
        .iter()
        .filter_map(|name| dump.elements(name).map(|(i, _)| i).last())
        .max()
}

/// What every record needs besides its index.
struct RecordCtx<'a> {
    dump: &'a Dump,
    distro: Distro,
    package_name: &'a str,
    /// Exactly one record: BUILT_MODULE_NAME then defaults to PACKAGE_NAME.
    single: bool,
    strip0: bool,
}

impl RecordCtx<'_> {
    /// One record, with DKMS's defaults and checks, in DKMS's order.
    fn record(&self, index: u32, warnings: &mut Vec<String>) -> Result<ModuleSpec, ConfError> {
        let get = |name| self.dump.directive(name, index).unwrap_or("");
        let mut built_name = get(BUILT_NAME);
        if built_name.is_empty() && self.single {
            built_name = self.package_name;
        }
        if built_name.is_empty() {
            return Err(ConfError::Hole {
                directive: BUILT_NAME,
                index,
            });
        }
        check_file_name(BUILT_NAME, index, built_name)?;
        let dest_name = match get(DEST_NAME) {
            "" => built_name,
            name => name,
        };
        check_file_name(DEST_NAME, index, dest_name)?;
        let dest_location = dest_location(index, get(DEST_LOCATION), self.distro)?;
        Ok(ModuleSpec {
            built_name: built_name.to_owned(),
            built_location: built_location(index, get(BUILT_LOCATION))?,
            dest_name: dest_name.to_owned(),
            dest_location,
            strip: self.strip(index, warnings),
        })
    }

    /// `STRIP[index]`: `y*`/`n*`; empty or unset inherits `STRIP[0]`; anything else strips.
    fn strip(&self, index: u32, warnings: &mut Vec<String>) -> bool {
        if index == 0 {
            return self.strip0;
        }
        let value = self.dump.directive("STRIP", index).unwrap_or("");
        strip_value(index, value, warnings).unwrap_or(self.strip0)
    }
}

/// `STRIP[0]`, which also is the default of every empty `STRIP[i]`; yes when unset.
fn strip_default(dump: &Dump, warnings: &mut Vec<String>) -> bool {
    strip_value(0, dump.directive("STRIP", 0).unwrap_or(""), warnings).unwrap_or(true)
}

/// Some(flag) for `y*`/`n*` (any case) and for other non-empty values (DKMS then
/// strips, with a warning here); None for an empty value.
fn strip_value(index: u32, value: &str, warnings: &mut Vec<String>) -> Option<bool> {
    match value.chars().next() {
        None => None,
        Some('n' | 'N') => Some(false),
        Some('y' | 'Y') => Some(true),
        Some(_) => {
            warnings.push(format!(
                "'STRIP[{index}]' value {:?} is neither yes nor no; the module is stripped",
                clip(value)
            ));
            Some(true)
        }
    }
}

/// A module file name: `[A-Za-z0-9._+-]`, not starting with `.` or `-`, no `.o`/`.ko` suffix.
///
/// DKMS itself only checks the suffix. The rest keeps names safe in paths and commands.
fn check_file_name(directive: &'static str, index: u32, name: &str) -> Result<(), ConfError> {
    let reason = if name.ends_with(".o") || name.ends_with(".ko") {
        Some("must not end in '.o' or '.ko'")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
    {
        Some("only A-Z a-z 0-9 . _ + - are allowed")
    } else if name.starts_with(['.', '-']) {
        Some("must not start with '.' or '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfError::BadModuleName {
            directive,
            index,
            name: clip(name),
            reason,
        }),
        None => Ok(()),
    }
}

/// BUILT_MODULE_LOCATION: relative to the build directory, `""` or ending in `/`.
fn built_location(index: u32, value: &str) -> Result<String, ConfError> {
    let err = |reason| {
        Err(ConfError::BadBuiltLocation {
            index,
            location: clip(value),
            reason,
        })
    };
    if value.starts_with('/') {
        return err("must be relative to the build directory");
    }
    if has_dotdot(value) {
        return err("must not contain a '..' component");
    }
    if value.chars().any(char::is_control) {
        return err("must not contain control characters");
    }
    match value {
        "" => Ok(String::new()),
        v if v.ends_with('/') => Ok(v.to_owned()),
        v => Ok(format!("{v}/")),
    }
}

/// DEST_MODULE_LOCATION: required, checked as given, then overridden by distro.
fn dest_location(index: u32, value: &str, distro: Distro) -> Result<String, ConfError> {
    let err = |reason| {
        Err(ConfError::BadDestLocation {
            index,
            location: clip(value),
            reason,
        })
    };
    if value.is_empty() {
        return Err(ConfError::Hole {
            directive: DEST_LOCATION,
            index,
        });
    }
    if !DEST_PREFIXES.iter().any(|p| value.starts_with(p)) {
        return err("must begin with '/kernel', '/updates' or '/extra'");
    }
    if has_dotdot(value) {
        return err("must not contain a '..' component");
    }
    if value.chars().any(char::is_control) {
        return err("must not contain control characters");
    }
    Ok(distro.dest_override().unwrap_or(value).to_owned())
}

fn has_dotdot(path: &str) -> bool {
    path.split('/').any(|c| c == "..")
}

/// Warns about records building the same `location/name` (DKMS ≥ 3.1.7 rejects them).
fn warn_built_duplicates(specs: &[ModuleSpec], warnings: &mut Vec<String>) {
    let mut seen = HashSet::new();
    for (index, spec) in specs.iter().enumerate() {
        let path = format!("{}{}", spec.built_location, spec.built_name);
        if !seen.insert(path.clone()) {
            let err = ConfError::DuplicateModule {
                directive: BUILT_NAME,
                index: index_u32(index),
                name: path,
            };
            warnings.push(format!("{err} (accepted, as DKMS before 3.1.7 did)"));
        }
    }
}

/// Drops every record whose DEST_MODULE_NAME reappears later, with a warning.
fn keep_last_dest(specs: Vec<ModuleSpec>, warnings: &mut Vec<String>) -> Vec<ModuleSpec> {
    let mut seen = HashSet::new();
    for (index, spec) in specs.iter().enumerate() {
        if !seen.insert(spec.dest_name.as_str()) {
            let err = ConfError::DuplicateModule {
                directive: DEST_NAME,
                index: index_u32(index),
                name: spec.dest_name.clone(),
            };
            warnings.push(format!(
                "{err} (accepted, as DKMS before 3.1.7 did; the later record wins)"
            ));
        }
    }
    let mut later = HashSet::new();
    let mut kept: Vec<ModuleSpec> = specs
        .into_iter()
        .rev()
        .filter(|s| later.insert(s.dest_name.clone()))
        .collect();
    kept.reverse();
    kept
}

/// Record positions come from a `u32` index range, so this never saturates in practice.
fn index_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}
