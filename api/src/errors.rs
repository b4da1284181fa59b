//! The one vocabulary of error kinds: the `kind` of every 4xx/5xx answer's
//! `{"error": {"kind": ..., "message": ...}}`.
//!
//! The strings are stable API (clients match on them). Build failure kinds
//! ([`FailureKind`]) and source archive kinds ([`ArchiveError::kind`]) are part of
//! it: a one-shot build that fails answers with its failure kind, a rejected upload
//! with its archive kind.

use serde::{Deserialize, Serialize};

use crate::archive::ArchiveError;
use crate::wire::FailureKind;

/// Declares [`ErrorKind`] with its variants' wire strings, once.
macro_rules! error_kinds {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal,)*) => {
        /// What went wrong, as the `kind` of an error answer. Serialised in `snake_case`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorKind {
            $($(#[$doc])* $variant,)*
            /// A kind this client does not know (sent by a newer server); never sent.
            #[serde(other, skip_serializing)]
            Other,
        }

        impl ErrorKind {
            /// Every kind a server sends.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant,)*];

            /// The wire string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $wire,)*
                    ErrorKind::Other => "other",
                }
            }
        }
    };
}

error_kinds! {
    // The request itself.
    /// Malformed input: a body, query string or path that does not parse, or a value out of range.
    InvalidRequest = "invalid_request",
    /// A module name or version, or a kernel release, that is not valid.
    InvalidName = "invalid_name",
    /// Module settings that do not validate (the message names the field).
    InvalidSettings = "invalid_settings",
    /// An uploaded Debian package the apt repository cannot take (the message says why).
    InvalidPackage = "invalid_package",
    /// No such route, build, artifact, token or blob.
    NotFound = "not_found",
    /// The route exists, not with this method.
    MethodNotAllowed = "method_not_allowed",
    /// A body that is not JSON where JSON is expected (`Content-Type`).
    UnsupportedMediaType = "unsupported_media_type",
    /// The body is over the server's upload limit, or the archive unpacks to too much.
    TooLarge = "too_large",
    /// No valid token (401).
    Unauthorized = "unauthorized",
    /// The token lacks the scope or the module (403; `scope` names what was needed).
    Forbidden = "forbidden",
    // Modules and builds.
    /// The module version is not registered.
    UnknownModule = "unknown_module",
    /// The architecture is not one the server builds for.
    UnsupportedArch = "unsupported_arch",
    /// The kernel release is not one the server can build for (its distribution).
    UnsupportedKernel = "unsupported_kernel",
    /// The name is taken by other content, or a token name exists.
    Conflict = "conflict",
    /// The version was built from other content; it needs a new version.
    ImmutableVersion = "immutable_version",
    /// A build of the module is in progress.
    Busy = "busy",
    /// The one-shot endpoint stopped waiting; the build goes on (`build_id`).
    WaitTimeout = "wait_timeout",
    /// dkms.conf's PACKAGE_VERSION (or PACKAGE_NAME) is a placeholder an install script fills
    /// in (`#MODULE_VERSION#`): the message says how to pass the real one.
    Placeholder = "placeholder",
    // The service.
    /// An upstream (the Debian archive) failed.
    Upstream = "upstream",
    /// The database or the object store cannot be reached: retry later.
    StoreUnavailable = "store_unavailable",
    /// A fault of the server (the log has the cause).
    Internal = "internal",
    /// The data directory's (or the object store's) disk is full: nothing was stored (507).
    InsufficientStorage = "insufficient_storage",
    // Build failures (one-shot answers; the same strings as `FailureKind`).
    CompileError = "compile_error",
    PatchFailed = "patch_failed",
    MissingModule = "missing_module",
    WrongVermagic = "wrong_vermagic",
    Timeout = "timeout",
    OutOfMemory = "out_of_memory",
    PidsLimit = "pids_limit",
    OutputLimit = "output_limit",
    NotApplicable = "not_applicable",
    InvalidConf = "invalid_conf",
    UnknownKernel = "unknown_kernel",
    DependencyFailed = "dependency_failed",
    BootCheckFailed = "boot_check_failed",
    BootCheckNotRun = "boot_check_not_run",
    /// The service failed (Docker, disk, image build), not the module.
    Infrastructure = "infrastructure",
    // Source archives (uploads); `too_large` above covers their size limits.
    TooManyEntries = "too_many_entries",
    GzipBomb = "gzip_bomb",
    BadGzip = "bad_gzip",
    NotATar = "not_a_tar",
    Truncated = "truncated",
    EmptyArchive = "empty_archive",
    InvalidPath = "invalid_path",
    AbsolutePath = "absolute_path",
    ParentDir = "parent_dir",
    PathTooLong = "path_too_long",
    SpecialFile = "special_file",
    UnsupportedEntry = "unsupported_entry",
    LinkEscapes = "link_escapes",
    LinkLoop = "link_loop",
    BadHardLink = "bad_hard_link",
    DuplicateEntry = "duplicate_entry",
    PathConflict = "path_conflict",
    NoDkmsConf = "no_dkms_conf",
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<FailureKind> for ErrorKind {
    fn from(k: FailureKind) -> Self {
        use ErrorKind as E;
        use FailureKind as F;
        match k {
            F::CompileError => E::CompileError,
            F::PatchFailed => E::PatchFailed,
            F::MissingModule => E::MissingModule,
            F::WrongVermagic => E::WrongVermagic,
            F::Timeout => E::Timeout,
            F::OutOfMemory => E::OutOfMemory,
            F::PidsLimit => E::PidsLimit,
            F::OutputLimit => E::OutputLimit,
            F::NotApplicable => E::NotApplicable,
            F::InvalidConf => E::InvalidConf,
            F::UnknownKernel => E::UnknownKernel,
            F::DependencyFailed => E::DependencyFailed,
            F::BootCheckFailed => E::BootCheckFailed,
            F::BootCheckNotRun => E::BootCheckNotRun,
            F::Infrastructure => E::Infrastructure,
            F::InsufficientStorage => E::InsufficientStorage,
        }
    }
}

impl From<&ArchiveError> for ErrorKind {
    fn from(e: &ArchiveError) -> Self {
        use ArchiveError as A;
        use ErrorKind as E;
        match e {
            A::InputTooLarge { .. } | A::UnpackedTooLarge { .. } | A::StreamTooLarge { .. } => {
                E::TooLarge
            }
            A::TooManyEntries { .. } => E::TooManyEntries,
            A::GzipBomb { .. } => E::GzipBomb,
            A::BadGzip { .. } => E::BadGzip,
            A::NotATar { .. } => E::NotATar,
            A::Truncated { .. } => E::Truncated,
            A::Empty => E::EmptyArchive,
            A::InvalidPath { .. } => E::InvalidPath,
            A::AbsolutePath { .. } => E::AbsolutePath,
            A::ParentDir { .. } => E::ParentDir,
            A::PathTooLong { .. } => E::PathTooLong,
            A::SpecialFile { .. } => E::SpecialFile,
            A::UnsupportedEntry { .. } => E::UnsupportedEntry,
            A::LinkEscapes { .. } => E::LinkEscapes,
            A::LinkLoop { .. } => E::LinkLoop,
            A::BadHardLink { .. } => E::BadHardLink,
            A::DuplicateEntry { .. } => E::DuplicateEntry,
            A::PathConflict { .. } => E::PathConflict,
            A::NoDkmsConf { .. } => E::NoDkmsConf,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_serdes_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for &k in ErrorKind::ALL {
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, k.as_str(), "{k:?}");
            assert_eq!(serde_json::from_value::<ErrorKind>(json).unwrap(), k);
            assert!(seen.insert(k.as_str()), "{k:?} twice");
        }
    }

    #[test]
    fn failure_kinds_keep_their_strings() {
        let all = [
            FailureKind::CompileError,
            FailureKind::PatchFailed,
            FailureKind::MissingModule,
            FailureKind::WrongVermagic,
            FailureKind::Timeout,
            FailureKind::OutOfMemory,
            FailureKind::PidsLimit,
            FailureKind::OutputLimit,
            FailureKind::NotApplicable,
            FailureKind::InvalidConf,
            FailureKind::UnknownKernel,
            FailureKind::DependencyFailed,
            FailureKind::BootCheckFailed,
            FailureKind::BootCheckNotRun,
            FailureKind::Infrastructure,
            FailureKind::InsufficientStorage,
        ];
        for f in all {
            assert_eq!(ErrorKind::from(f).as_str(), f.as_str());
        }
    }

    #[test]
    fn an_unknown_kind_reads_as_other_and_is_never_sent() {
        let k: ErrorKind = serde_json::from_str("\"kind_of_tomorrow\"").unwrap();
        assert_eq!(k, ErrorKind::Other);
        assert!(serde_json::to_string(&ErrorKind::Other).is_err());
        assert!(!ErrorKind::ALL.contains(&ErrorKind::Other));
    }
}
