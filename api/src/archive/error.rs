//! The one error type of archive ingestion, with stable `kind()` strings.

/// Longest entry path or link target quoted in an error message, in bytes.
///
/// Paths come from the untrusted archive and may be up to the stream limit long;
/// errors end up in HTTP bodies and logs, so they are cut.
const SHOWN_PATH_BYTES: usize = 256;

/// Why an uploaded source archive was rejected.
///
/// Every variant is the uploader's fault (a 4xx): ingestion does no IO that can fail
/// for the service's own reasons. Paths are quoted with `{:?}`, so control
/// characters in hostile names cannot forge log lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// The request body is over [`ArchiveLimits::max_input_bytes`](super::ArchiveLimits).
    #[error("archive is {size} bytes, over the {limit}-byte upload limit")]
    InputTooLarge { size: u64, limit: u64 },
    /// The regular files (hard-link copies included) add up to more than
    /// [`ArchiveLimits::max_unpacked_bytes`](super::ArchiveLimits).
    #[error("archive entry {path:?} takes the unpacked size over the {limit}-byte limit")]
    UnpackedTooLarge { path: String, limit: u64 },
    /// The (decompressed) tar stream is longer than the file budget plus per-entry
    /// header overhead allows: padding, pax records or long names used as filler.
    #[error("archive tar stream is longer than its {limit}-byte limit")]
    StreamTooLarge { limit: u64 },
    /// More entries than [`ArchiveLimits::max_entries`](super::ArchiveLimits), in
    /// the archive or in the normalized tree (implicit parent directories count).
    #[error("archive entry {path:?} is over the limit of {limit} entries")]
    TooManyEntries { path: String, limit: u64 },
    /// The gzip stream expands more than [`ArchiveLimits::max_gzip_ratio`](super::ArchiveLimits) times.
    #[error("gzip stream expands {unpacked} bytes from {compressed} compressed bytes, over the {limit}x ratio limit")]
    GzipBomb {
        unpacked: u64,
        compressed: u64,
        limit: u64,
    },
    /// The body starts like gzip but does not decompress.
    #[error("archive is not valid gzip: {reason}")]
    BadGzip { reason: String },
    /// The (decompressed) body is not a tar archive, or its headers are corrupt.
    #[error("archive is not a valid tar: {reason}")]
    NotATar { reason: String },
    /// An entry's data ends before the size its header announced.
    #[error("archive entry {path:?} is truncated: its header announces {size} bytes")]
    Truncated { path: String, size: u64 },
    /// The archive holds no entry at all (besides the root directory and pax headers).
    #[error("archive is empty")]
    Empty,
    /// An entry path or link target that is not valid UTF-8, names the root as a
    /// file, or cannot be written back to a tar header.
    #[error("archive entry {path:?} has an invalid path: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// An entry path starting with `/`.
    #[error("archive entry {path:?} has an absolute path")]
    AbsolutePath { path: String },
    /// An entry path with a `..` component.
    #[error("archive entry {path:?} leaves the source tree")]
    ParentDir { path: String },
    /// An entry path or link target longer than [`ArchiveLimits::max_path_bytes`](super::ArchiveLimits).
    #[error("archive entry {path:?} has a path or link target of {len} bytes, over the {limit}-byte limit")]
    PathTooLong {
        path: String,
        len: usize,
        limit: usize,
    },
    /// A character device, block device or fifo.
    #[error("archive entry {path:?} is a {what}, only files, directories and links are allowed")]
    SpecialFile { path: String, what: &'static str },
    /// Any other tar entry type (GNU sparse, volume label, unknown).
    #[error("archive entry {path:?} has unsupported tar entry type {entry_type:?}")]
    UnsupportedEntry { path: String, entry_type: char },
    /// A symlink or hard link whose target is absolute or resolves outside the tree.
    #[error("archive {link} {path:?} -> {target:?} points outside the source tree")]
    LinkEscapes {
        path: String,
        target: String,
        link: &'static str,
    },
    /// A symlink that takes more than `limit` nested links (or a cycle) to resolve,
    /// so it cannot be shown to stay inside the tree.
    #[error(
        "archive symlink {path:?} -> {target:?} needs more than {limit} nested links to resolve"
    )]
    LinkLoop {
        path: String,
        target: String,
        limit: u32,
    },
    /// A hard link whose target is not an earlier regular file of the archive.
    #[error("archive hard link {path:?} -> {target:?} does not name an earlier regular file")]
    BadHardLink { path: String, target: String },
    /// The same path twice (a repeated directory entry is allowed).
    #[error("archive entry {path:?} appears more than once")]
    DuplicateEntry { path: String },
    /// An entry below something that is not a directory (a file or a symlink).
    #[error("archive entry {path:?} lies below {parent:?}, which is not a directory")]
    PathConflict { path: String, parent: String },
    /// No regular file `dkms.conf` at the root nor inside a single top-level folder.
    #[error("archive has no dkms.conf at its root or inside its only top-level folder ({top_level} top-level entries)")]
    NoDkmsConf { top_level: usize },
}

impl ArchiveError {
    /// A stable snake_case name for the failure, used in API error bodies and metrics
    /// (its [`ErrorKind`](crate::errors::ErrorKind)'s string).
    pub fn kind(&self) -> &'static str {
        crate::errors::ErrorKind::from(self).as_str()
    }
}

/// An untrusted path for an error message: lossy UTF-8, cut to [`SHOWN_PATH_BYTES`].
pub(super) fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.len() <= SHOWN_PATH_BYTES {
        return text.into_owned();
    }
    let mut end = SHOWN_PATH_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A library's error text for a message: it may quote header bytes, so control
/// characters are escaped and the length is cut like a path's.
pub(super) fn reason(error: &dyn std::fmt::Display) -> String {
    shown(error.to_string().escape_debug().to_string().as_bytes())
}
