//! The boot loader's default kernel, under the host's root: GRUB (`grubenv`'s
//! `saved_entry`, with `GRUB_DEFAULT=saved`, written with the real `grub-editenv`)
//! and systemd-boot (`loader.conf`'s `default`).
//!
//! GRUB's saved entry names a menu entry by its id, inside a submenu as
//! `<submenu id>><entry id>` (Debian puts every kernel but the newest under
//! "Advanced options"). The entries are read from `grub.cfg` as `update-grub`
//! wrote it.

use std::path::{Path, PathBuf};
use std::process::Command;

use kmodforge_api::names::KernelRelease;

use super::HostPaths;

/// A kernel's normal (not recovery) boot entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What selects it: GRUB's `saved_entry` value, or systemd-boot's entry id.
    pub id: String,
    pub title: String,
    pub kernel: KernelRelease,
}

/// The boot loader found under the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loader {
    Grub { cfg: PathBuf, env: PathBuf },
    SystemdBoot { dir: PathBuf },
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoaderError + '_ {
    move |source| LoaderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// GRUB when `boot/grub/grub.cfg` exists, else systemd-boot when a `loader/entries`
/// directory does (`boot/`, `efi/`, `boot/efi/`), else none.
pub fn detect(paths: &HostPaths) -> Loader {
    let grub = paths.boot_dir.join("grub");
    if grub.join("grub.cfg").is_file() {
        return Loader::Grub {
            cfg: grub.join("grub.cfg"),
            env: grub.join("grubenv"),
        };
    }
    for esp in ["boot", "efi", "boot/efi"] {
        let dir = paths.root.join(esp).join("loader");
        if dir.join("entries").is_dir() {
            return Loader::SystemdBoot { dir };
        }
    }
    Loader::None
}

/// The kernels' normal entries of a `grub.cfg`, in menu order.
pub fn grub_entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    // (submenu id, its depth in braces)
    let mut submenus: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<(String, String, usize)> = None; // (path, title, depth)
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("submenu ") {
            if let Some(id) = entry_id(t) {
                submenus.push((id, depth));
            }
        } else if t.starts_with("menuentry ") {
            let title = quoted(t).unwrap_or_default();
            if let Some(id) = entry_id(t) {
                let path = submenus
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .chain([id.as_str()])
                    .collect::<Vec<_>>()
                    .join(">");
                current = Some((path, title, depth));
            }
        } else if t.starts_with("linux") {
            if let Some((path, title, _)) = &current {
                let kernel = t
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.rsplit('/').next())
                    .and_then(|f| f.strip_prefix("vmlinuz-"))
                    .and_then(|k| KernelRelease::parse(k).ok());
                if let Some(kernel) = kernel {
                    if !title.contains("recovery mode")
                        && !out.iter().any(|e: &Entry| e.id == *path)
                    {
                        out.push(Entry {
                            id: path.clone(),
                            title: title.clone(),
                            kernel,
                        });
                    }
                }
            }
        }
        depth += t.matches('{').count();
        depth = depth.saturating_sub(t.matches('}').count());
        if current.as_ref().is_some_and(|(_, _, d)| depth <= *d) {
            current = None;
        }
        while submenus.last().is_some_and(|(_, d)| depth <= *d) && t.contains('}') {
            submenus.pop();
        }
    }
    out
}

/// The `$menuentry_id_option '<id>'` of a menuentry or submenu line.
fn entry_id(line: &str) -> Option<String> {
    let rest = line.split("$menuentry_id_option").nth(1)?;
    quoted(rest)
}

/// The first single- or double-quoted string of `s`.
fn quoted(s: &str) -> Option<String> {
    let start = s.find(['\'', '"'])?;
    let q = s[start..].chars().next()?;
    let rest = &s[start + 1..];
    let end = rest.find(q)?;
    Some(rest[..end].to_string())
}

/// True when GRUB's default follows `saved_entry`: the last `GRUB_DEFAULT=` of
/// `etc/default/grub` and then `etc/default/grub.d/*.cfg` (as update-grub reads them).
pub fn grub_default_is_saved(root: &Path) -> bool {
    let mut files = vec![root.join("etc/default/grub")];
    if let Ok(dir) = std::fs::read_dir(root.join("etc/default/grub.d")) {
        let mut cfgs: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cfg"))
            .collect();
        cfgs.sort();
        files.extend(cfgs);
    }
    let mut saved = false;
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            if let Some(v) = line.trim().strip_prefix("GRUB_DEFAULT=") {
                saved = v.trim().trim_matches(['"', '\'']) == "saved";
            }
        }
    }
    saved
}

/// `grub-editenv ENV list`'s `saved_entry`.
pub fn grub_saved_entry(editenv: &Path, env: &Path) -> Result<Option<String>, LoaderError> {
    if !env.exists() {
        return Ok(None);
    }
    let text = run(editenv, &[env.as_os_str(), "list".as_ref()])?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("saved_entry="))
        .map(str::to_string))
}

/// Sets (`Some`) or removes (`None`) `saved_entry` with `grub-editenv`.
pub fn grub_set_saved_entry(
    editenv: &Path,
    env: &Path,
    entry: Option<&str>,
) -> Result<(), LoaderError> {
    match entry {
        Some(id) => {
            let arg = format!("saved_entry={id}");
            run(editenv, &[env.as_os_str(), "set".as_ref(), arg.as_ref()]).map(drop)
        }
        None if env.exists() => run(
            editenv,
            &[env.as_os_str(), "unset".as_ref(), "saved_entry".as_ref()],
        )
        .map(drop),
        None => Ok(()),
    }
}

fn run(tool: &Path, args: &[&std::ffi::OsStr]) -> Result<String, LoaderError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| LoaderError::Tool {
            tool: tool.display().to_string(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LoaderError::Tool {
            tool: tool.display().to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// systemd-boot's entries (`loader/entries/*.conf`) of kernels.
pub fn sdboot_entries(dir: &Path) -> Result<Vec<Entry>, LoaderError> {
    let entries = dir.join("entries");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&entries)
        .map_err(io(&entries))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(io(&f))?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(k).map(|v| v.trim().to_string()))
        };
        let kernel = field("version ")
            .and_then(|v| KernelRelease::parse(&v).ok())
            .or_else(|| {
                field("linux ")
                    .and_then(|l| l.rsplit('/').next().map(str::to_string))
                    .and_then(|f| f.strip_prefix("vmlinuz-").map(str::to_string))
                    .and_then(|k| KernelRelease::parse(&k).ok())
            });
        let (Some(kernel), Some(id)) = (
            kernel,
            f.file_name().map(|n| n.to_string_lossy().into_owned()),
        ) else {
            continue;
        };
        out.push(Entry {
            title: field("title ").unwrap_or_else(|| id.clone()),
            id,
            kernel,
        });
    }
    Ok(out)
}

/// `loader.conf`'s `default` value.
pub fn sdboot_default(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("loader.conf"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("default")
                .map(|v| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
}

/// Sets (or removes) `loader.conf`'s `default` line (temp file + rename).
pub fn sdboot_set_default(dir: &Path, value: Option<&str>) -> Result<(), LoaderError> {
    let path = dir.join("loader.conf");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().starts_with("default"))
        .map(str::to_string)
        .collect();
    if let Some(v) = value {
        lines.insert(0, format!("default {v}"));
    }
    let tmp = dir.join(".loader.conf.kmodforge");
    std::fs::write(&tmp, lines.join("\n") + "\n").map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Debian 12's update-grub output.
    pub const GRUB_CFG: &str = r#"
function load_video {
  insmod all_video
}
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
else
   set default="${saved_entry}"
fi
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-1234' {
	load_video
	linux	/boot/vmlinuz-6.1.0-56-amd64 root=UUID=1234 ro  quiet
	initrd	/boot/initrd.img-6.1.0-56-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-1234' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-56-amd64' --class debian $menuentry_id_option 'gnulinux-6.1.0-56-amd64-advanced-1234' {
		linux	/boot/vmlinuz-6.1.0-56-amd64 root=UUID=1234 ro  quiet
	}
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-56-amd64 (recovery mode)' --class debian $menuentry_id_option 'gnulinux-6.1.0-56-amd64-recovery-1234' {
		linux	/boot/vmlinuz-6.1.0-56-amd64 root=UUID=1234 ro single
	}
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-47-amd64' --class debian $menuentry_id_option 'gnulinux-6.1.0-47-amd64-advanced-1234' {
		linux	/boot/vmlinuz-6.1.0-47-amd64 root=UUID=1234 ro  quiet
	}
}
menuentry 'UEFI Firmware Settings' $menuentry_id_option 'uefi-firmware' {
	fwsetup
}
"#;

    #[test]
    fn grub_entries_follow_the_submenu() {
        let e = grub_entries(GRUB_CFG);
        let ids: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.id.as_str(), e.kernel.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("gnulinux-simple-1234", "6.1.0-56-amd64"),
                (
                    "gnulinux-advanced-1234>gnulinux-6.1.0-56-amd64-advanced-1234",
                    "6.1.0-56-amd64"
                ),
                (
                    "gnulinux-advanced-1234>gnulinux-6.1.0-47-amd64-advanced-1234",
                    "6.1.0-47-amd64"
                ),
            ]
        );
    }

    #[test]
    fn grub_default_reads_the_drop_ins_last() {
        let root = tempfile::tempdir().expect("tempdir");
        let d = root.path().join("etc/default/grub.d");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(root.path().join("etc/default/grub"), "GRUB_DEFAULT=0\n").expect("write");
        assert!(!grub_default_is_saved(root.path()));
        std::fs::write(d.join("kmodforge.cfg"), "GRUB_DEFAULT=saved\n").expect("write");
        assert!(grub_default_is_saved(root.path()));
    }

    #[test]
    fn sdboot_default_is_replaced_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("entries")).expect("mkdir");
        std::fs::write(
            dir.path().join("loader.conf"),
            "timeout 3\ndefault debian-*\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("entries/debian-6.1.0-47-amd64.conf"),
            "title Debian\nversion 6.1.0-47-amd64\nlinux /vmlinuz-6.1.0-47-amd64\n",
        )
        .expect("write");
        let e = sdboot_entries(dir.path()).expect("entries");
        assert_eq!(e[0].id, "debian-6.1.0-47-amd64.conf");
        assert_eq!(sdboot_default(dir.path()).as_deref(), Some("debian-*"));
        sdboot_set_default(dir.path(), Some("debian-6.1.0-47-amd64.conf")).expect("set");
        assert_eq!(
            sdboot_default(dir.path()).as_deref(),
            Some("debian-6.1.0-47-amd64.conf")
        );
        sdboot_set_default(dir.path(), None).expect("unset");
        assert_eq!(sdboot_default(dir.path()), None);
        let text = std::fs::read_to_string(dir.path().join("loader.conf")).expect("read");
        assert!(text.contains("timeout 3"));
    }
}
