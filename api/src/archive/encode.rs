//! The two canonical forms of a normalized tree: its digest and its tar.

use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

use super::tree::{Node, Tree};
use super::ArchiveError;
use crate::names::SourceDigest;

/// First bytes of the digest input; a new encoding gets a new version.
const DIGEST_DOMAIN: &[u8] = b"kmodforge-source-v1\n";

/// The sha256 of the tree's canonical encoding, which depends on paths, contents,
/// the exec bit and link targets only (never on tar metadata, order or compression):
/// the domain line, then per entry in path order a type byte (`f`, `d`, `l`), the
/// path and a NUL; files add `x` or `-`, the 8-byte big-endian length and the bytes;
/// links add the target and a NUL.
pub(super) fn digest(tree: &Tree) -> SourceDigest {
    let mut hasher = Sha256::new();
    hasher.update(DIGEST_DOMAIN);
    for (path, node) in tree {
        let kind: &[u8] = match node {
            Node::Dir => b"d",
            Node::File { .. } => b"f",
            Node::Symlink { .. } => b"l",
        };
        hasher.update(kind);
        hasher.update(path.as_bytes());
        hasher.update([0]);
        match node {
            Node::Dir => {}
            Node::File { exec, data } => {
                hasher.update(if *exec { b"x" } else { b"-" });
                hasher.update((data.len() as u64).to_be_bytes());
                hasher.update(data);
            }
            Node::Symlink { target } => {
                hasher.update(target.as_bytes());
                hasher.update([0]);
            }
        }
    }
    SourceDigest::from_sha256(hasher.finalize().into())
}

/// The tree as a GNU tar: entries in path order, uid/gid 0, no user or group
/// names, mtime 0, files 0644 or 0755, directories 0755, symlinks 0777. Paths over
/// 100 bytes use GNU long-name records. The same tree gives the same bytes.
pub(super) fn normalized_tar(tree: &Tree) -> Result<Vec<u8>, ArchiveError> {
    let mut builder = Builder::new(Vec::new());
    for (path, node) in tree {
        append(&mut builder, path, node).map_err(|_| ArchiveError::InvalidPath {
            path: path.clone(),
            reason: "cannot be written to a tar header",
        })?;
    }
    builder.into_inner().map_err(|_| ArchiveError::InvalidPath {
        path: String::new(),
        reason: "cannot be written to a tar header",
    })
}

fn append(builder: &mut Builder<Vec<u8>>, path: &str, node: &Node) -> std::io::Result<()> {
    let mut header = Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    match node {
        Node::Dir => {
            header.set_entry_type(EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, format!("{path}/"), std::io::empty())
        }
        Node::File { exec, data } => {
            header.set_entry_type(EntryType::Regular);
            header.set_mode(if *exec { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, data.as_slice())
        }
        Node::Symlink { target } => {
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, path, target)
        }
    }
}
