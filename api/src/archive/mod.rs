//! Ingestion of untrusted DKMS source archives (`PUT /v1/modules/{name}/{version}`).
//!
//! [`ingest`] takes the request body, a tar or a gzip-compressed tar (recognised by
//! the magic bytes `1f 8b`), and returns a [`SourceTree`]: the normalized tree as a
//! deterministic tar, its text `dkms.conf`, and a digest of its content.
//!
//! # Security
//!
//! The body is hostile until proven otherwise. Ingestion:
//! - enforces every [`ArchiveLimits`] while streaming: bytes are counted as they are
//!   decompressed and read, and no buffer is sized from a header's claim;
//! - rejects absolute paths, `..` components, non-UTF-8 paths, device and fifo
//!   entries, duplicate paths, entries below a file or symlink, symlink cycles, and
//!   hard links to anything but an earlier regular file (valid ones become copies);
//! - drops, and reports in [`SourceTree::dropped_links`], every symlink that leads
//!   outside the tree (absolute, or climbing out lexically or by following other
//!   symlinks): real packages ship dangling ones (`README.gz -> ../../share/doc/…`),
//!   and DKMS would copy them as they are;
//! - keeps no owner, time or permission beyond the exec bit.
//!
//! The output tar is therefore safe to extract with any tar, and the same source
//! tree always gives the same bytes and the same [`SourceDigest`], however it was
//! packed (order, metadata, compression, name of the top-level folder).
//!
//! # Layout
//!
//! `stream` (gzip and byte limits) feeds `collect` (per-entry rules), then `tree`
//! (find `dkms.conf`, strip the folder, explicit parents), `links` (symlink
//! containment) and `encode` (digest and tar).

mod collect;
mod encode;
mod error;
mod links;
mod stream;
mod tree;

use std::fmt;

pub use error::ArchiveError;
pub use links::DroppedLink;

use crate::names::SourceDigest;
use stream::LimitedStream;
use tree::{Node, DKMS_CONF};

/// Size limits for one uploaded archive. All are enforced while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Largest request body, compressed or not, in bytes. Default 256 MiB.
    pub max_input_bytes: u64,
    /// Largest sum of regular file sizes (hard-link copies included), in bytes.
    /// Default 1 GiB. The decompressed tar stream may be this plus 4 KiB of headers
    /// per entry (plus 64 KiB), which also bounds pax records and long names.
    pub max_unpacked_bytes: u64,
    /// Most archive entries (pax headers included), and most entries of the
    /// normalized tree (implicit parent directories included). Default 50 000.
    pub max_entries: u64,
    /// Largest ratio of decompressed tar stream bytes to compressed bytes consumed,
    /// checked once the stream has passed 16 MiB. Default 200.
    pub max_gzip_ratio: u64,
    /// Longest normalized entry path and longest symlink target, in bytes. Default 1024.
    pub max_path_bytes: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_input_bytes: 256 * 1024 * 1024,
            max_unpacked_bytes: 1024 * 1024 * 1024,
            max_entries: 50_000,
            max_gzip_ratio: 200,
            max_path_bytes: 1024,
        }
    }
}

/// A validated, normalized module source tree.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceTree {
    /// The content digest (see the module docs); the stripped folder is not part of it.
    pub digest: SourceDigest,
    /// The tree as a deterministic tar: sorted by path, every parent directory
    /// explicit, uid/gid 0, no owner names, mtime 0, modes 0644/0755/0777.
    pub normalized_tar: Vec<u8>,
    /// The text of the root `dkms.conf` (invalid UTF-8 replaced).
    pub dkms_conf: String,
    /// Regular files in the tree.
    pub files: u64,
    /// Total bytes of the regular files.
    pub bytes: u64,
    /// The top-level folder that held `dkms.conf` and was removed, if any.
    pub stripped_prefix: Option<String>,
    /// Symlinks that pointed outside the tree and were left out of it.
    pub dropped_links: Vec<DroppedLink>,
}

/// Prints sizes instead of the (large) tar bytes and `dkms.conf` text.
impl fmt::Debug for SourceTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceTree")
            .field("digest", &self.digest)
            .field("normalized_tar_bytes", &self.normalized_tar.len())
            .field("dkms_conf_bytes", &self.dkms_conf.len())
            .field("files", &self.files)
            .field("bytes", &self.bytes)
            .field("stripped_prefix", &self.stripped_prefix)
            .field("dropped_links", &self.dropped_links)
            .finish()
    }
}

/// Validates an uploaded tar or tar.gz and normalizes it; see the module docs.
pub fn ingest(input: &[u8], limits: &ArchiveLimits) -> Result<SourceTree, ArchiveError> {
    let size = input.len() as u64;
    if size > limits.max_input_bytes {
        return Err(ArchiveError::InputTooLarge {
            size,
            limit: limits.max_input_bytes,
        });
    }
    let mut archive = tar::Archive::new(LimitedStream::new(input, limits)?);
    let collected = collect::collect(&mut archive, limits);
    // A tripped stream limit surfaces as some tar read error: report the limit.
    if let Some(fault) = archive.into_inner().into_fault() {
        return Err(fault);
    }
    let mut tree = collected?;
    let stripped_prefix = tree::locate_root(&tree)?;
    if let Some(prefix) = &stripped_prefix {
        tree = tree::strip(tree, prefix);
    }
    tree::add_parents(&mut tree, limits.max_entries)?;
    let dropped_links = links::drop_escaping(&mut tree)?;
    summarize(&tree, stripped_prefix, dropped_links)
}

fn summarize(
    tree: &tree::Tree,
    stripped_prefix: Option<String>,
    dropped_links: Vec<DroppedLink>,
) -> Result<SourceTree, ArchiveError> {
    let dkms_conf = match tree.get(DKMS_CONF) {
        Some(Node::File { data, .. }) => String::from_utf8_lossy(data).into_owned(),
        _ => return Err(ArchiveError::NoDkmsConf { top_level: 0 }),
    };
    let sizes = tree.values().filter_map(|node| match node {
        Node::File { data, .. } => Some(data.len() as u64),
        _ => None,
    });
    let (files, bytes) = sizes.fold((0, 0), |(files, bytes), size| (files + 1, bytes + size));
    Ok(SourceTree {
        digest: encode::digest(tree),
        normalized_tar: encode::normalized_tar(tree)?,
        dkms_conf,
        files,
        bytes,
        stripped_prefix,
        dropped_links,
    })
}
