//! `kmodforge-agent hooks install|uninstall`: kernel package hooks and the boot unit,
//! written under the configured root; `hooks render DIR`: the same files in the
//! Debian package's layout, for `scripts/package.sh` (one text for both).
//!
//! - `/etc/kernel/postinst.d/dkms-kmodforge`: `sync --kernel "$1" --hook` when a kernel
//!   package is installed (Debian's run-parts convention: `$1` = release).
//! - `/etc/kernel/prerm.d/kmodforge-agent`: `uninstall --all-modules --kernel "$1" --hook`.
//! - `/etc/kernel/install.d/50-kmodforge-agent.install`: the same for systemd's
//!   `kernel-install` (`add`/`remove`), written only where that layout exists.
//! - `/etc/systemd/system/kmodforge-agent-sync.service`, enabled (the
//!   `multi-user.target.wants` link `systemctl enable` would make).
//!
//! The `kmodforge-agent` Debian package ships the same hooks, rendered by `hooks render`
//! with the agent at `/usr/bin/kmodforge-agent`: the kernel-install plugin under
//! `/usr/lib/kernel/install.d` and the unit under `/usr/lib/systemd/system` (the
//! package enables it). On such a host `hooks install` writes nothing the package owns
//! (only the GRUB setting, which the package leaves to the operator) and `hooks
//! uninstall` removes only what `hooks install` wrote.
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

/// Where the files go and who wrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `hooks install`: the administrator's directories under `/etc`.
    Host,
    /// `hooks render`: the Debian package's (`/usr/lib/...` for what is not configuration).
    Package,
}

impl Layout {
    fn kernel_install(self) -> &'static str {
        match self {
            Layout::Host => KERNEL_INSTALL,
            Layout::Package => PKG_KERNEL_INSTALL,
        }
    }

    fn unit_file(self) -> &'static str {
        match self {
            Layout::Host => UNIT_FILE,
            Layout::Package => PKG_UNIT_FILE,
        }
    }

    fn header(self) -> &'static str {
        match self {
            Layout::Host => HEADER,
            Layout::Package => PKG_HEADER,
        }
    }
}

/// One file the hooks consist of, relative to root.
struct HookFile {
    rel: &'static str,
    mode: u32,
    text: String,
}

/// Writes every hook under `root`; prints one line per file. Where the Debian package
/// provides them, writes only the GRUB setting and says so.
pub fn install(root: &Path, spec: &HookSpec) -> Exit {
    if let Some(unit) = packaged(root) {
        return install_packaged(root, spec, &unit);
    }
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

/// The packaged boot unit under `root`, when the `kmodforge-agent` package is installed.
fn packaged(root: &Path) -> Option<PathBuf> {
    [
        PKG_UNIT_FILE,
        "lib/systemd/system/kmodforge-agent-sync.service",
    ]
    .iter()
    .map(|rel| root.join(rel))
    .find(|p| p.is_file())
}

/// `hooks install` where the package already provides the hooks and the unit.
fn install_packaged(root: &Path, spec: &HookSpec, unit: &Path) -> Exit {
    println!(
        "the kmodforge-agent package provides the kernel hooks and the boot unit ({}, {}, {}): left to it",
        root.join(POSTINST).display(),
        root.join(PRERM).display(),
        unit.display()
    );
    if spec.config.is_some() {
        report::general(format!(
            "hooks install: the packaged hooks read {}: --config is not used by them",
            crate::config::DEFAULT_PATH
        ));
        return Exit::Usage;
    }
    if !wants_grub(root) {
        return Exit::Ok;
    }
    let path = root.join(GRUB_DROP_IN);
    match write_atomic(&path, 0o644, GRUB_TEXT.as_bytes()) {
        Ok(()) => {
            println!("wrote {}", path.display());
            update_grub(root);
            Exit::Ok
        }
        Err(e) => {
            report::general(format!("hooks install: {e}"));
            Exit::InstallFailed
        }
    }
}

/// Writes the hooks and the boot unit into `dir` in the Debian package's layout
/// (`etc/kernel/...`, `usr/lib/kernel/install.d/...`, `usr/lib/systemd/system/...`),
/// for the agent at `spec.agent`; prints one line per file. No enablement link and
/// no GRUB setting: the package's maintainer scripts enable the unit.
pub fn render(dir: &Path, spec: &HookSpec) -> Exit {
    for f in package_files(spec) {
        let path = dir.join(f.rel);
        if let Err(e) = write_atomic(&path, f.mode, f.text.as_bytes()) {
            report::general(format!("hooks render: {e}"));
            return Exit::InstallFailed;
        }
        println!("wrote {}", path.display());
    }
    Exit::Ok
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

/// Removes every hook file that exists under `root`. Where the Debian package provides
/// the hooks, removes only what `hooks install` wrote (the GRUB setting, a plugin in
/// `/etc/kernel/install.d`, a unit in `/etc/systemd/system` and its link) and says the
/// rest belongs to the package.
pub fn uninstall(root: &Path) -> Exit {
    let packaged = packaged(root);
    let mut paths: Vec<PathBuf> = match &packaged {
        None => [POSTINST, PRERM, KERNEL_INSTALL, UNIT_FILE, GRUB_DROP_IN].as_slice(),
        Some(_) => [KERNEL_INSTALL, UNIT_FILE, GRUB_DROP_IN].as_slice(),
    }
    .iter()
    .map(|rel| root.join(rel))
    .collect();
    let link = wants_link(root);
    let by_hand = Path::new("/etc/systemd/system").join(UNIT);
    // The package's own enablement link points at its unit: `systemctl disable` is for it.
    if packaged.is_none() || std::fs::read_link(&link).is_ok_and(|t| t == by_hand) {
        paths.push(link);
    }
    if let Some(unit) = &packaged {
        println!(
            "the kernel hooks and {} belong to the kmodforge-agent package: `apt remove kmodforge-agent` removes them (`systemctl disable {UNIT}` stops the boot run)",
            unit.display()
        );
    }
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
/// The Debian package's kernel-install plugin and unit (not configuration: under /usr).
const PKG_KERNEL_INSTALL: &str = "usr/lib/kernel/install.d/50-kmodforge-agent.install";
const PKG_UNIT_FILE: &str = "usr/lib/systemd/system/kmodforge-agent-sync.service";
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

/// `GRUB_DEFAULT=saved`, for a host booted by GRUB.
const GRUB_TEXT: &str =
    "# Written by `kmodforge-agent hooks install`: the boot guard sets saved_entry to
# the newest kernel that has every required module; with none set GRUB boots its
# first entry, as with GRUB_DEFAULT=0.
GRUB_DEFAULT=saved
";

fn wants_grub(root: &Path) -> bool {
    root.join("etc/default/grub").is_file() || root.join("boot/grub/grub.cfg").is_file()
}

/// The kernel hooks and the unit (in `layout`'s places), the same text for both.
fn hook_files(spec: &HookSpec, layout: Layout, kernel_install_plugin: bool) -> Vec<HookFile> {
    let agent = agent_cmd(spec);
    let header = layout.header();
    let mut out = vec![
        HookFile {
            rel: POSTINST,
            mode: 0o755,
            text: postinst(header, &agent, &spec.agent),
        },
        HookFile {
            rel: PRERM,
            mode: 0o755,
            text: prerm(header, &agent, &spec.agent),
        },
    ];
    if kernel_install_plugin {
        out.push(HookFile {
            rel: layout.kernel_install(),
            mode: 0o755,
            text: kernel_install(header, &agent, &spec.agent),
        });
    }
    out.push(HookFile {
        rel: layout.unit_file(),
        mode: 0o644,
        text: unit(layout, spec),
    });
    out
}

/// What `hooks install` writes under `root`.
fn files(root: &Path, spec: &HookSpec) -> Vec<HookFile> {
    let mut out = hook_files(spec, Layout::Host, has_kernel_install(root));
    if wants_grub(root) {
        out.push(HookFile {
            rel: GRUB_DROP_IN,
            mode: 0o644,
            text: GRUB_TEXT.to_string(),
        });
    }
    out
}

/// What the Debian package ships (the kernel-install plugin always: a host without
/// `kernel-install` never runs it).
fn package_files(spec: &HookSpec) -> Vec<HookFile> {
    hook_files(spec, Layout::Package, true)
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
const PKG_HEADER: &str = "#!/bin/sh\n# Installed by the kmodforge-agent package (rendered by `kmodforge-agent hooks render`).\n";

fn postinst(header: &str, agent: &str, bin: &Path) -> String {
    format!(
        "{header}# A kernel package was installed: install the wanted modules for it ($1 = kernel release).\n\
         # Never fails the package: with --hook the agent reports errors on stderr and exits 0,\n\
         # and {UNIT} retries at boot.\n\
         [ -n \"${{1:-}}\" ] || exit 0\n\
         [ -x {bin} ] || exit 0\n\
         {agent} sync --kernel \"$1\" --hook\n\
         exit 0\n",
        bin = sh_quote(&bin.to_string_lossy())
    )
}

fn prerm(header: &str, agent: &str, bin: &Path) -> String {
    format!(
        "{header}# A kernel package is being removed: uninstall every module the agent installed for it.\n\
         [ -n \"${{1:-}}\" ] || exit 0\n\
         [ -x {bin} ] || exit 0\n\
         {agent} uninstall --all-modules --kernel \"$1\" --hook\n\
         exit 0\n",
        bin = sh_quote(&bin.to_string_lossy())
    )
}

fn kernel_install(header: &str, agent: &str, bin: &Path) -> String {
    format!(
        "{header}# systemd kernel-install plugin: $1 = add|remove, $2 = kernel release.\n\
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

/// The boot unit; see the module documentation for its ordering. It runs only where
/// the agent is configured (`ConditionPathExists=` on the config file): an
/// unconfigured host skips it instead of failing it at every boot.
fn unit(layout: Layout, spec: &HookSpec) -> String {
    let mut exec = spec.agent.to_string_lossy().into_owned();
    if let Some(c) = &spec.config {
        exec.push_str(&format!(" --config {}", c.to_string_lossy()));
    }
    let config = spec
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
    let origin = match layout {
        Layout::Host => "Written by `kmodforge-agent hooks install`",
        Layout::Package => {
            "Installed by the kmodforge-agent package (`kmodforge-agent hooks render`)"
        }
    };
    format!(
        "# {origin}.\n\
         [Unit]\n\
         Description=kmodforge-agent: install the wanted kernel modules for every installed kernel\n\
         # The kernel hooks already installed a new kernel's modules when its package was\n\
         # installed, so they are on disk before that kernel boots. This unit catches up on\n\
         # what a hook could not do; it needs the server, hence the network.\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         ConditionPathExists={config}\n\
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
         WantedBy=multi-user.target\n",
        config = config.to_string_lossy()
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

    /// Everything after the two header lines (shebang, who wrote it).
    fn body(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().skip(2).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn render_writes_the_package_layout_with_the_same_text() {
        let spec = HookSpec {
            agent: PathBuf::from("/usr/bin/kmodforge-agent"),
            config: None,
        };
        let stage = tempfile::tempdir().unwrap();
        assert_eq!(render(stage.path(), &spec), Exit::Ok);
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(host.path().join("usr/lib/kernel/install.d")).unwrap();
        assert_eq!(install(host.path(), &spec), Exit::Ok);
        for (pkg, by_hand) in [
            (POSTINST, POSTINST),
            (PRERM, PRERM),
            (PKG_KERNEL_INSTALL, KERNEL_INSTALL),
            (PKG_UNIT_FILE, UNIT_FILE),
        ] {
            let rendered = stage.path().join(pkg);
            assert_eq!(body(&rendered), body(&host.path().join(by_hand)), "{pkg}");
            let mode = std::fs::metadata(&rendered).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode,
                if pkg == PKG_UNIT_FILE { 0o644 } else { 0o755 },
                "{pkg}"
            );
        }
        let post = std::fs::read_to_string(stage.path().join(POSTINST)).unwrap();
        assert!(post.contains("Installed by the kmodforge-agent package"));
        assert!(post.contains("'/usr/bin/kmodforge-agent' sync --kernel \"$1\" --hook"));
        let unit = std::fs::read_to_string(stage.path().join(PKG_UNIT_FILE)).unwrap();
        assert!(unit.contains("ConditionPathExists=/etc/kmodforge/agent.toml"));
        assert!(unit.contains("ExecStart=/usr/bin/kmodforge-agent sync --autoinstall"));
        // No enablement link, no GRUB setting: the package's scripts and the operator do those.
        assert!(!stage.path().join("etc/systemd").exists());
        assert!(!stage.path().join(GRUB_DROP_IN).exists());
    }

    #[test]
    fn a_packaged_host_keeps_the_package_files() {
        let root = tempfile::tempdir().unwrap();
        let spec = HookSpec {
            agent: PathBuf::from("/usr/bin/kmodforge-agent"),
            config: None,
        };
        assert_eq!(render(root.path(), &spec), Exit::Ok);
        std::fs::create_dir_all(root.path().join("etc/default")).unwrap();
        std::fs::write(root.path().join("etc/default/grub"), "GRUB_DEFAULT=0\n").unwrap();
        let packaged_link = wants_link(root.path());
        std::fs::create_dir_all(packaged_link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(Path::new("/").join(PKG_UNIT_FILE), &packaged_link).unwrap();
        let before = std::fs::read_to_string(root.path().join(POSTINST)).unwrap();

        assert_eq!(install(root.path(), &spec), Exit::Ok);
        assert_eq!(
            std::fs::read_to_string(root.path().join(POSTINST)).unwrap(),
            before
        );
        assert!(!root.path().join(UNIT_FILE).exists());
        assert!(root.path().join(GRUB_DROP_IN).is_file());
        // A different config cannot be given to the packaged hooks.
        let other = HookSpec {
            agent: spec.agent.clone(),
            config: Some(PathBuf::from("/srv/agent.toml")),
        };
        assert_eq!(install(root.path(), &other), Exit::Usage);

        assert_eq!(uninstall(root.path()), Exit::Ok);
        assert!(!root.path().join(GRUB_DROP_IN).exists());
        for rel in [POSTINST, PRERM, PKG_KERNEL_INSTALL, PKG_UNIT_FILE] {
            assert!(root.path().join(rel).is_file(), "{rel} is the package's");
        }
        assert!(std::fs::symlink_metadata(&packaged_link).is_ok());
    }
}
