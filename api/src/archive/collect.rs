//! Streaming the tar entries into a [`Tree`], checking each one as it goes by.

use std::io::{self, Read};

use tar::{Archive, Entry, EntryType};

use super::error::{reason, shown};
use super::tree::{Node, Tree};
use super::{ArchiveError, ArchiveLimits};

/// Initial buffer for a file's data. The buffer then grows with the bytes actually
/// read, never with the size a header claims.
const INITIAL_FILE_CAPACITY: u64 = 64 * 1024;

/// Reads every entry of `archive` into a tree keyed by normalized path (top-level
/// folder not yet stripped), enforcing the per-entry rules and the entry and size
/// budgets as it streams.
pub(super) fn collect<R: Read>(
    archive: &mut Archive<R>,
    limits: &ArchiveLimits,
) -> Result<Tree, ArchiveError> {
    let mut collector = Collector {
        limits,
        tree: Tree::new(),
        entries: 0,
        bytes: 0,
        last: None,
    };
    let entries = archive.entries().map_err(|e| collector.not_a_tar(&e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| collector.not_a_tar(&e))?;
        collector.add(&mut entry)?;
    }
    Ok(collector.tree)
}

struct Collector<'l> {
    limits: &'l ArchiveLimits,
    tree: Tree,
    /// Entries seen, pax headers included.
    entries: u64,
    /// Bytes of regular files kept, hard-link copies included.
    bytes: u64,
    /// The last entry read, to place tar format errors.
    last: Option<String>,
}

impl Collector<'_> {
    fn add<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<(), ArchiveError> {
        let entry_type = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        self.count(&raw)?;
        if matches!(entry_type, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let path = entry_path(&raw, self.limits.max_path_bytes)?;
        self.last = Some(path.clone());
        if path.is_empty() {
            return match entry_type {
                EntryType::Directory => Ok(()),
                _ => Err(ArchiveError::InvalidPath {
                    path: shown(&raw),
                    reason: "names the archive root",
                }),
            };
        }
        match entry_type {
            EntryType::Regular | EntryType::Continuous => self.add_file(path, entry),
            EntryType::Directory => self.add_dir(path),
            EntryType::Symlink => self.add_symlink(path, &link_target(entry)),
            EntryType::Link => self.add_hard_link(path, &link_target(entry)),
            EntryType::Char => Err(ArchiveError::SpecialFile {
                path,
                what: "character device",
            }),
            EntryType::Block => Err(ArchiveError::SpecialFile {
                path,
                what: "block device",
            }),
            EntryType::Fifo => Err(ArchiveError::SpecialFile { path, what: "fifo" }),
            other => Err(ArchiveError::UnsupportedEntry {
                path,
                entry_type: char::from(other.as_byte()),
            }),
        }
    }

    fn count(&mut self, raw_path: &[u8]) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                path: shown(raw_path),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn add_file<R: Read>(
        &mut self,
        path: String,
        entry: &mut Entry<'_, R>,
    ) -> Result<(), ArchiveError> {
        self.ensure_vacant(&path)?;
        let size = entry.size();
        self.reserve(&path, size)?;
        let mode = entry.header().mode().map_err(|e| self.not_a_tar(&e))?;
        let mut data = Vec::with_capacity(size.min(INITIAL_FILE_CAPACITY) as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| self.not_a_tar(&e))?;
        if data.len() as u64 != size {
            return Err(ArchiveError::Truncated { path, size });
        }
        self.tree.insert(
            path,
            Node::File {
                exec: mode & 0o111 != 0,
                data,
            },
        );
        Ok(())
    }

    fn add_dir(&mut self, path: String) -> Result<(), ArchiveError> {
        match self.tree.get(&path) {
            Some(Node::Dir) => Ok(()),
            Some(_) => Err(ArchiveError::DuplicateEntry { path }),
            None => {
                self.tree.insert(path, Node::Dir);
                Ok(())
            }
        }
    }

    fn add_symlink(&mut self, path: String, raw_target: &[u8]) -> Result<(), ArchiveError> {
        self.ensure_vacant(&path)?;
        // Where it leads is judged on the final tree (`links::drop_escaping`).
        let target = symlink_target(&path, raw_target, self.limits.max_path_bytes)?;
        self.tree.insert(path, Node::Symlink { target });
        Ok(())
    }

    /// A valid hard link becomes a copy of its target, so the tree has no hard links.
    fn add_hard_link(&mut self, path: String, raw_target: &[u8]) -> Result<(), ArchiveError> {
        self.ensure_vacant(&path)?;
        let target = hard_link_target(&path, raw_target, self.limits.max_path_bytes)?;
        let (exec, data) = match self.tree.get(&target) {
            Some(Node::File { exec, data }) => (*exec, data.clone()),
            _ => return Err(ArchiveError::BadHardLink { path, target }),
        };
        self.reserve(&path, data.len() as u64)?;
        self.tree.insert(path, Node::File { exec, data });
        Ok(())
    }

    fn ensure_vacant(&self, path: &str) -> Result<(), ArchiveError> {
        match self.tree.contains_key(path) {
            true => Err(ArchiveError::DuplicateEntry {
                path: path.to_owned(),
            }),
            false => Ok(()),
        }
    }

    /// Takes `size` bytes from the unpacked budget, before any of them is read.
    fn reserve(&mut self, path: &str, size: u64) -> Result<(), ArchiveError> {
        let limit = self.limits.max_unpacked_bytes;
        match self.bytes.checked_add(size).filter(|total| *total <= limit) {
            Some(total) => {
                self.bytes = total;
                Ok(())
            }
            None => Err(ArchiveError::UnpackedTooLarge {
                path: path.to_owned(),
                limit,
            }),
        }
    }

    fn not_a_tar(&self, error: &io::Error) -> ArchiveError {
        let reason = match &self.last {
            Some(path) => format!("after entry {path:?}: {}", reason(error)),
            None => reason(error),
        };
        ArchiveError::NotATar { reason }
    }
}

/// How a raw path fails [`normalize`].
enum PathFault {
    NotUtf8,
    Nul,
    Absolute,
    Parent,
    TooLong(usize),
}

/// Normalizes a raw archive path: UTF-8, relative, no `..`, with empty and `.`
/// components dropped (`./a//b/` becomes `a/b`; the root becomes the empty string).
fn normalize(raw: &[u8], max_bytes: usize) -> Result<String, PathFault> {
    let text = std::str::from_utf8(raw).map_err(|_| PathFault::NotUtf8)?;
    if text.contains('\0') {
        return Err(PathFault::Nul);
    }
    if text.starts_with('/') {
        return Err(PathFault::Absolute);
    }
    let mut path = String::with_capacity(text.len());
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(PathFault::Parent),
            name => {
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(name);
            }
        }
    }
    match path.len() > max_bytes {
        true => Err(PathFault::TooLong(path.len())),
        false => Ok(path),
    }
}

fn entry_path(raw: &[u8], max_bytes: usize) -> Result<String, ArchiveError> {
    let path = shown(raw);
    normalize(raw, max_bytes).map_err(|fault| match fault {
        PathFault::NotUtf8 => ArchiveError::InvalidPath {
            path,
            reason: "is not valid UTF-8",
        },
        PathFault::Nul => ArchiveError::InvalidPath {
            path,
            reason: "contains a NUL byte",
        },
        PathFault::Absolute => ArchiveError::AbsolutePath { path },
        PathFault::Parent => ArchiveError::ParentDir { path },
        PathFault::TooLong(len) => ArchiveError::PathTooLong {
            path,
            len,
            limit: max_bytes,
        },
    })
}

fn hard_link_target(path: &str, raw: &[u8], max_bytes: usize) -> Result<String, ArchiveError> {
    let (path, target) = (path.to_owned(), shown(raw));
    normalize(raw, max_bytes).map_err(|fault| match fault {
        PathFault::NotUtf8 => ArchiveError::InvalidPath {
            path,
            reason: "has a link target that is not valid UTF-8",
        },
        PathFault::Nul => ArchiveError::InvalidPath {
            path,
            reason: "has a link target with a NUL byte",
        },
        PathFault::Absolute | PathFault::Parent => ArchiveError::LinkEscapes {
            path,
            target,
            link: "hard link",
        },
        PathFault::TooLong(len) => ArchiveError::PathTooLong {
            path,
            len,
            limit: max_bytes,
        },
    })
}

/// Checks a symlink target and gives its canonical spelling, with empty and `.`
/// components dropped (`./a//b/` becomes `a/b`, an empty result `.`, an absolute
/// target keeps its leading `/`). `..` is kept: where it leads is judged on the
/// final tree.
fn symlink_target(path: &str, raw: &[u8], max_bytes: usize) -> Result<String, ArchiveError> {
    let invalid = |reason| ArchiveError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(raw)
        .map_err(|_| invalid("has a link target that is not valid UTF-8"))?;
    if text.is_empty() || text.contains('\0') {
        return Err(invalid("has an empty link target or one with a NUL byte"));
    }
    if text.len() > max_bytes {
        return Err(ArchiveError::PathTooLong {
            path: path.to_owned(),
            len: text.len(),
            limit: max_bytes,
        });
    }
    let absolute = text.starts_with('/');
    let parts: Vec<&str> = text
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    Ok(match (absolute, parts.is_empty()) {
        (true, _) => format!("/{}", parts.join("/")),
        (false, true) => ".".to_owned(),
        (false, false) => parts.join("/"),
    })
}

/// The link target of a link entry, empty when the header has none.
fn link_target<R: Read>(entry: &Entry<'_, R>) -> Vec<u8> {
    entry
        .link_name_bytes()
        .map(|t| t.into_owned())
        .unwrap_or_default()
}
