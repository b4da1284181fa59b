//! Why a `dkms.conf` (as evaluated in the sandbox) cannot be turned into a build plan.

/// Longest directive value quoted back in an error, in characters.
const MAX_QUOTED: usize = 120;

/// Cuts a directive value for quoting in an error message.
pub(crate) fn clip(value: &str) -> String {
    value.chars().take(MAX_QUOTED).collect()
}

/// A `dkms.conf` that DKMS would reject (exit 8 "Bad conf file", or exit 5 for a patch
/// path), or a sandbox dump that cannot be read.
///
/// Messages follow DKMS's own wording where it has one, and name the directive and the
/// record (array index). [`ConfError::kind`] gives a stable identifier for the API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    /// A required scalar directive (PACKAGE_NAME, PACKAGE_VERSION) is unset or empty.
    #[error("No '{directive}' directive specified")]
    MissingRequired {
        /// The directive name.
        directive: &'static str,
    },
    /// A per-module directive has no (or an empty) value for a record that exists.
    #[error("No '{directive}' directive specified for record #{index}")]
    Hole {
        /// `BUILT_MODULE_NAME` or `DEST_MODULE_LOCATION`.
        directive: &'static str,
        /// The record (array index).
        index: u32,
    },
    /// BUILT_MODULE_NAME / DEST_MODULE_NAME ends in `.o`/`.ko` or is not a plain file name.
    #[error("'{directive}[{index}]' {name:?} is not a valid module name: {reason}")]
    BadModuleName {
        /// `BUILT_MODULE_NAME` or `DEST_MODULE_NAME`.
        directive: &'static str,
        /// The record.
        index: u32,
        /// The (clipped) value.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// BUILT_MODULE_LOCATION escapes the build directory.
    #[error("'BUILT_MODULE_LOCATION[{index}]' {location:?} is not allowed: {reason}")]
    BadBuiltLocation {
        /// The record.
        index: u32,
        /// The (clipped) value.
        location: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// DEST_MODULE_LOCATION does not begin with `/kernel`, `/updates` or `/extra`, or has `..`.
    #[error("'DEST_MODULE_LOCATION[{index}]' {location:?} is not allowed: {reason}")]
    BadDestLocation {
        /// The record.
        index: u32,
        /// The (clipped) value.
        location: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// AUTOINSTALL, NO_WEAK_MODULES or BUILD_DEPENDS_REBUILD is neither yes nor no.
    #[error("Unsupported '{directive}' value {value:?}: must be yes or no")]
    InvalidYesNo {
        /// The directive name.
        directive: &'static str,
        /// The (clipped) value.
        value: String,
    },
    /// Two records name the same module (DKMS ≥ 3.1.7 rejects this).
    ///
    /// [`super::evaluate`] never returns it: to accept the existing corpus (built by older
    /// DKMS) it reports this as a warning in [`super::BuildPlan::warnings`] instead.
    #[error("Duplicate module {name:?} in '{directive}[{index}]'")]
    DuplicateModule {
        /// `BUILT_MODULE_NAME` or `DEST_MODULE_NAME`.
        directive: &'static str,
        /// The later of the two records.
        index: u32,
        /// The duplicated `location/name` or name.
        name: String,
    },
    /// A selected PATCH is absolute or has a `..` component (DKMS exit 5).
    #[error("Patch {path:?} in 'PATCH[{index}]' is not allowed: {reason}")]
    BadPatchPath {
        /// The record.
        index: u32,
        /// The (clipped) value.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A `*_MATCH` or `BUILD_EXCLUSIVE_{KERNEL,ARCH}` pattern is not a valid bash ERE.
    #[error("Invalid regular expression in '{directive}[{index}]': {pattern:?}")]
    InvalidRegex {
        /// The directive holding the pattern.
        directive: &'static str,
        /// The record.
        index: u32,
        /// The (clipped) pattern.
        pattern: String,
    },
    /// The sandbox's dump is malformed or inconsistent (a service fault, not the module's).
    #[error("Malformed dkms.conf dump: {reason}")]
    BadDump {
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfError {
    /// A stable `snake_case` identifier of the rule that failed, for the API and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfError::MissingRequired { .. } => "missing_required",
            ConfError::Hole { .. } => "hole",
            ConfError::BadModuleName { .. } => "bad_module_name",
            ConfError::BadBuiltLocation { .. } => "bad_built_location",
            ConfError::BadDestLocation { .. } => "bad_dest_location",
            ConfError::InvalidYesNo { .. } => "invalid_yes_no",
            ConfError::DuplicateModule { .. } => "duplicate_module",
            ConfError::BadPatchPath { .. } => "bad_patch_path",
            ConfError::InvalidRegex { .. } => "invalid_regex",
            ConfError::BadDump { .. } => "bad_dump",
        }
    }

    /// Shorthand for [`ConfError::BadDump`].
    pub(crate) fn bad_dump(reason: impl Into<String>) -> Self {
        ConfError::BadDump {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_directive_and_record() {
        let cases = [
            (
                ConfError::Hole {
                    directive: "BUILT_MODULE_NAME",
                    index: 2,
                },
                "hole",
                "No 'BUILT_MODULE_NAME' directive specified for record #2",
            ),
            (
                ConfError::MissingRequired {
                    directive: "PACKAGE_NAME",
                },
                "missing_required",
                "No 'PACKAGE_NAME' directive specified",
            ),
            (
                ConfError::InvalidYesNo {
                    directive: "AUTOINSTALL",
                    value: "maybe".into(),
                },
                "invalid_yes_no",
                "Unsupported 'AUTOINSTALL' value \"maybe\": must be yes or no",
            ),
            (
                ConfError::bad_dump("x"),
                "bad_dump",
                "Malformed dkms.conf dump: x",
            ),
        ];
        for (err, kind, text) in cases {
            assert_eq!(err.kind(), kind);
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn clip_cuts_long_values() {
        assert_eq!(clip(&"a".repeat(500)).len(), MAX_QUOTED);
        assert_eq!(clip("short"), "short");
    }
}
