//! Small durable file-system helpers: every write that must survive a crash goes
//! through a temp file, `fsync`, `rename`, and an `fsync` of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::HostError;

/// Lowercase hex sha256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lowercase hex sha256 of a file's content, or `None` when it does not exist.
pub(crate) fn file_sha256(path: &Path) -> Result<Option<String>, HostError> {
    match fs::read(path) {
        Ok(data) => Ok(Some(sha256_hex(&data))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HostError::io(path)(e)),
    }
}

/// `fsync`s a directory, so that renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), HostError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(HostError::io(dir))
}

/// [`sync_dir`] for a directory that may not exist (then there is nothing to sync).
pub(crate) fn sync_dir_if_exists(dir: &Path) -> Result<(), HostError> {
    match File::open(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HostError::io(dir)(e)),
        Ok(d) => d.sync_all().map_err(HostError::io(dir)),
    }
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Writes `data` to `path` (created or truncated, mode 0644) and `fsync`s it.
///
/// Not atomic by itself: callers write to a temp name and rename.
pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<(), HostError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(HostError::io(path))?;
    file.write_all(data).map_err(HostError::io(path))?;
    file.sync_all().map_err(HostError::io(path))
}

/// Replaces `path` with `data` atomically: `<path>.tmp`, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), HostError> {
    let tmp = with_suffix(path, ".tmp");
    write_synced(&tmp, data)?;
    fs::rename(&tmp, path).map_err(HostError::io(path))?;
    sync_dir(parent(path))
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a file; a missing file is not an error.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), HostError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(HostError::io(path)(e)),
        _ => Ok(()),
    }
}

/// True when something (even a dangling symlink) is at `path`.
pub(crate) fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// True when `a` and `b` are hard links to the same inode.
pub(crate) fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
