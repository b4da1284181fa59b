//! A small tmpfs for tests of a full disk (needs root: `mount -t tmpfs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// A tmpfs mounted on a directory; unmounted when dropped.
pub struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (`8m`) on `dir` (created if needed).
    pub fn mount(dir: &Path, size: &str) -> Result<SmallFs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount -t tmpfs on {} failed ({status}): this test needs root",
            dir.display()
        );
        Ok(SmallFs {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes `<dir>/filler` until the filesystem is full (ENOSPC); returns its path.
    pub fn fill(&self) -> Result<PathBuf> {
        let path = self.dir.join("filler");
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e).context("filling the tmpfs"),
            }
        }
        Ok(path)
    }

    /// Every file under the mount, relative to it.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk(&self.dir, &self.dir, &mut out)?;
        Ok(out)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(())
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazily: a server that is still stopping may hold files open.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
