//! `kmodforge-agent hooks install|uninstall`: kernel package hooks and the boot unit,
//! written under the configured root.
//!
//! - `/etc/kernel/postinst.d/dkms-kmodforge`: `sync --kernel "$1" --hook` when a kernel
//!   package is installed (Debian's run-parts convention: `$1` = release).
//! - `/etc/kernel/prerm.d/kmodforge-agent`: `uninstall --all-modules --kernel "$1" --hook`.
//! - `/etc/kernel/install.d/50-kmodforge-agent.install`: the same for systemd's
//!   `kernel-install` (`add`/`remove`), written only where that layout exists.
//! - `/etc/systemd/system/kmodforge-agent-sync.service`, enabled (the
//!   `multi-user.target.wants` link `systemctl enable` would make).
//!
//! Ordering of the boot unit: the modules a kernel needs early are put in place by the
//! postinst hook when the kernel package is installed, so they are on disk before that
//! kernel ever boots, and before any network. The boot unit only catches up on what a
//! hook could not do (server unreachable then): it needs the server, so it runs after
//! `network-online.target` (never `Before=network-pre.target`, where it could only fail)
//! and is restarted while the server is unreachable (exit 3) or the lock is held (7).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::exitcode::Exit;
use crate::report;

/// The systemd unit's name.
pub const UNIT: &str = "kmodforge-agent-sync.service";
/// Seconds between restarts of the boot unit while the server is unreachable.
const RESTART_SEC: u32 = 60;

/// How the hook scripts call the agent.
pub struct HookSpec {
    /// Absolute path of the agent binary (default: this executable).
    pub agent: PathBuf,
    /// `--config FILE` to pass, when not the default file.
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct HookError {
    path: PathBuf,
    source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> HookError + '_ {
    move |source| HookError {
        path: path.to_path_buf(),
        source,
    }
}

/// One file the hooks consist of, relative to root.
struct HookFile {
    rel: &'static str,
    mode: u32,
    text: String,
}

/// Writes every hook under `root`; prints one line per file.
pub fn install(root: &Path, spec: &HookSpec) -> Exit {
    match install_inner(root, spec) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            report::general(format!("hooks install: {e}"));
            Exit::InstallFailed
        }
    }
}

fn install_inner(root: &Path, spec: &HookSpec) -> Result<(), HookError> {
    for f in files(root, spec) {
        let path = root.join(f.rel);
        write_atomic(&path, f.mode, f.text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    let link = wants_link(root);
    let target = Path::new("/etc/systemd/system").join(UNIT);
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(at(dir))?;
    }
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(&link)(e)),
    }
    std::os::unix::fs::symlink(&target, &link).map_err(at(&link))?;
    println!(
        "enabled {} ({} -> {})",
        UNIT,
        link.display(),
        target.display()
    );
    if root.join(GRUB_DROP_IN).is_file() {
        update_grub(root);
    }
    Ok(())
}

/// Regenerates grub.cfg on the real root (a test root has no GRUB to run).
fn update_grub(root: &Path) {
    let tool = Path::new("/usr/sbin/update-grub");
    if root != Path::new("/") || !tool.exists() {
        println!("GRUB_DEFAULT=saved is set in {GRUB_DROP_IN}; run update-grub to apply it");
        return;
    }
    match std::process::Command::new(tool).status() {
        Ok(s) if s.success() => println!("ran update-grub"),
        Ok(s) => report::general(format!("update-grub failed ({s}): run it by hand")),
        Err(e) => report::general(format!("cannot run update-grub: {e}")),
    }
}

/// Removes every hook file that exists under `root`.
pub fn uninstall(root: &Path) -> Exit {
    let mut paths: Vec<PathBuf> = [POSTINST, PRERM, KERNEL_INSTALL, UNIT_FILE, GRUB_DROP_IN]
        .iter()
        .map(|rel| root.join(rel))
        .collect();
    paths.push(wants_link(root));
    let mut exit = Exit::Ok;
    for path in paths {
        match std::fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                report::general(format!("hooks uninstall: {}: {e}", path.display()));
                exit = Exit::InstallFailed;
            }
        }
    }
    exit
}

/// Named to sort next to DKMS's own `dkms` hook, i.e. before `initramfs-tools` in
/// run-parts order, so a new kernel's initramfs is generated with our modules in place.
const POSTINST: &str = "etc/kernel/postinst.d/dkms-kmodforge";
const PRERM: &str = "etc/kernel/prerm.d/kmodforge-agent";
const KERNEL_INSTALL: &str = "etc/kernel/install.d/50-kmodforge-agent.install";
const UNIT_FILE: &str = "etc/systemd/system/kmodforge-agent-sync.service";
/// `GRUB_DEFAULT=saved`, so the boot guard's `saved_entry` decides (no saved entry
/// boots the first entry, as before).
const GRUB_DROP_IN: &str = "etc/default/grub.d/kmodforge.cfg";

fn wants_link(root: &Path) -> PathBuf {
    root.join("etc/systemd/system/multi-user.target.wants")
        .join(UNIT)
}

/// True when systemd's `kernel-install` layout exists under `root`.
fn has_kernel_install(root: &Path) -> bool {
    ["usr/lib/kernel/install.d", "etc/kernel/install.d"]
        .iter()
        .any(|d| root.join(d).is_dir())
}

fn files(root: &Path, spec: &HookSpec) -> Vec<HookFile> {
    let agent = agent_cmd(spec);
    let mut out = vec![
        HookFile {
            rel: POSTINST,
            mode: 0o755,
            text: postinst(&agent, &spec.agent),
        },
        HookFile {
            rel: PRERM,
            mode: 0o755,
            text: prerm(&agent, &spec.agent),
        },
    ];
    if has_kernel_install(root) {
        out.push(HookFile {
            rel: KERNEL_INSTALL,
            mode: 0o755,
            text: kernel_install(&agent, &spec.agent),
        });
    }
    out.push(HookFile {
        rel: UNIT_FILE,
        mode: 0o644,
        text: unit(spec),
    });
    if root.join("etc/default/grub").is_file() || root.join("boot/grub/grub.cfg").is_file() {
        out.push(HookFile {
            rel: GRUB_DROP_IN,
            mode: 0o644,
            text: "# Written by `kmodforge-agent hooks install`: the boot guard sets saved_entry to
                   # the newest kernel that has every required module; with none set GRUB boots its
                   # first entry, as with GRUB_DEFAULT=0.
GRUB_DEFAULT=saved
"
            .to_string(),
        });
    }
    out
}

/// `'/path/agent' --config '/path/conf'`, quoted for sh.
fn agent_cmd(spec: &HookSpec) -> String {
    let mut s = sh_quote(&spec.agent.to_string_lossy());
    if let Some(c) = &spec.config {
        s.push_str(" --config ");
        s.push_str(&sh_quote(&c.to_string_lossy()));
    }
    s
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const HEADER: &str = "#!/bin/sh\n# Written by `kmodforge-agent hooks install`; removed by `kmodforge-agent hooks uninstall`.\n";

fn postinst(agent: &str, bin: &Path) -> String {
    format!(
        "{HEADER}# A kernel package was installed: install the wanted modules for it ($1 = kernel release).\n\
         # Never fails the package: with --hook the agent reports errors on stderr and exits 0,\n\
         # and {UNIT} retries at boot.\n\
         [ -n \"${{1:-}}\" ] || exit 0\n\
         [ -x {bin} ] || exit 0\n\
         {agent} sync --kernel \"$1\" --hook\n\
         exit 0\n",
        bin = sh_quote(&bin.to_string_lossy())
    )
}

fn prerm(agent: &str, bin: &Path) -> String {
    format!(
        "{HEADER}# A kernel package is being removed: uninstall every module the agent installed for it.\n\
         [ -n \"${{1:-}}\" ] || exit 0\n\
         [ -x {bin} ] || exit 0\n\
         {agent} uninstall --all-modules --kernel \"$1\" --hook\n\
         exit 0\n",
        bin = sh_quote(&bin.to_string_lossy())
    )
}

fn kernel_install(agent: &str, bin: &Path) -> String {
    format!(
        "{HEADER}# systemd kernel-install plugin: $1 = add|remove, $2 = kernel release.\n\
         [ -n \"${{2:-}}\" ] || exit 0\n\
         [ -x {bin} ] || exit 0\n\
         case \"$1\" in\n\
         \x20   add) {agent} sync --kernel \"$2\" --hook ;;\n\
         \x20   remove) {agent} uninstall --all-modules --kernel \"$2\" --hook ;;\n\
         esac\n\
         exit 0\n",
        bin = sh_quote(&bin.to_string_lossy())
    )
}

/// The boot unit; see the module documentation for its ordering.
fn unit(spec: &HookSpec) -> String {
    let mut exec = spec.agent.to_string_lossy().into_owned();
    if let Some(c) = &spec.config {
        exec.push_str(&format!(" --config {}", c.to_string_lossy()));
    }
    format!(
        "# Written by `kmodforge-agent hooks install`.\n\
         [Unit]\n\
         Description=kmodforge-agent: install the wanted kernel modules for every installed kernel\n\
         # The kernel hooks already installed a new kernel's modules when its package was\n\
         # installed, so they are on disk before that kernel boots. This unit catches up on\n\
         # what a hook could not do; it needs the server, hence the network.\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         StartLimitIntervalSec=0\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={exec} sync --autoinstall\n\
         # Retry while the server is unreachable (3) or another run holds the lock (7);\n\
         # the other failures need an operator (see agent/README.md, exit codes).\n\
         Restart=on-failure\n\
         RestartSec={RESTART_SEC}s\n\
         RestartPreventExitStatus=1 2 4 5 6 8 9 10\n\
         TimeoutStartSec=2h\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Temp file beside `path`, mode set, then rename.
fn write_atomic(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), HookError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(at(dir))?;
    tmp.write_all(bytes).map_err(at(path))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(at(path))?;
    tmp.as_file().sync_all().map_err(at(path))?;
    tmp.persist(path).map_err(|e| at(path)(e.error))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_removes_hooks() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib/kernel/install.d")).unwrap();
        let spec = HookSpec {
            agent: PathBuf::from("/usr/sbin/kmodforge-agent"),
            config: Some(PathBuf::from("/etc/it's.toml")),
        };
        assert_eq!(install(root.path(), &spec), Exit::Ok);
        let post = std::fs::read_to_string(root.path().join(POSTINST)).unwrap();
        assert!(post.contains(
            r#"'/usr/sbin/kmodforge-agent' --config '/etc/it'\''s.toml' sync --kernel "$1" --hook"#
        ));
        let mode = std::fs::metadata(root.path().join(POSTINST))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let ki = std::fs::read_to_string(root.path().join(KERNEL_INSTALL)).unwrap();
        assert!(ki.contains("uninstall --all-modules --kernel \"$2\" --hook"));
        let unit = std::fs::read_to_string(root.path().join(UNIT_FILE)).unwrap();
        assert!(unit.contains("After=network-online.target") && unit.contains("Type=oneshot"));
        assert!(std::fs::symlink_metadata(wants_link(root.path())).is_ok());
        assert_eq!(uninstall(root.path()), Exit::Ok);
        assert!(!root.path().join(POSTINST).exists());
        assert!(std::fs::symlink_metadata(wants_link(root.path())).is_err());
    }

    #[test]
    fn no_kernel_install_plugin_without_its_layout() {
        let root = tempfile::tempdir().unwrap();
        let spec = HookSpec {
            agent: PathBuf::from("/a"),
            config: None,
        };
        assert_eq!(install(root.path(), &spec), Exit::Ok);
        assert!(!root.path().join(KERNEL_INSTALL).exists());
        let post = std::fs::read_to_string(root.path().join(POSTINST)).unwrap();
        assert!(post.contains("'/a' sync --kernel"));
    }
}
