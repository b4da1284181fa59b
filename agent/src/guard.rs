//! The boot guard: never let the host boot into a kernel that lacks a module it
//! cannot live without (`required = true`, e.g. the only NIC's driver).
//!
//! After every sync, from the kernel hooks and at boot, the boot loader's default
//! is made the newest installed kernel that has every required module installed,
//! intact and verified (boot-verified too, with `require_boot_check`); as soon as
//! the newest kernel is complete, the default goes back to normal. GRUB: the
//! guard sets `saved_entry` (with `GRUB_DEFAULT=saved`, which `hooks install`
//! sets up) and unsets it again; systemd-boot: `loader.conf`'s `default`, the
//! operator's own value restored afterwards. What the guard did is kept in
//! `<state_dir>/bootguard.json`, so it only ever undoes its own change.

use std::path::PathBuf;

use kmodforge_agent::host::bootloader::{self, Entry, Loader};
use kmodforge_agent::host::{Host, HostLock};
use kmodforge_api::dkms::version_cmp;
use kmodforge_api::names::KernelRelease;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// What the host will boot, and why (`status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BootDecision {
    /// The guard is on and some module is required.
    pub active: bool,
    /// `grub`, `systemd-boot` or `none`.
    pub loader: String,
    /// Installed kernels (with an image in /boot), newest first.
    pub installed: Vec<KernelRelease>,
    /// The required modules each incomplete kernel lacks (`name/version`).
    pub missing: Vec<(KernelRelease, Vec<String>)>,
    /// The kernel the guard wants booted: the newest that has every required module.
    pub wanted: Option<KernelRelease>,
    /// The kernel the host boots next, as far as the agent can tell.
    pub boots: Option<KernelRelease>,
    /// The guard holds the default on an older kernel.
    pub held: bool,
    /// One line: why.
    pub reason: String,
}

/// What the guard changed and must undo later.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct GuardState {
    /// The kernel the guard holds the default on.
    held: Option<KernelRelease>,
    /// systemd-boot: the operator's `default` before the guard changed it.
    #[serde(default)]
    original_default: Option<String>,
}

fn state_file(cfg: &Config) -> PathBuf {
    cfg.paths.state_dir.join("bootguard.json")
}

fn load(cfg: &Config) -> GuardState {
    std::fs::read(state_file(cfg))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(cfg: &Config, s: &GuardState) -> Result<(), String> {
    let path = state_file(cfg);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(s).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&cfg.paths.state_dir).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Kernels with an image in the boot directory, newest first.
fn installed(cfg: &Config) -> Vec<KernelRelease> {
    let mut out: Vec<KernelRelease> = std::fs::read_dir(&cfg.paths.boot_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            KernelRelease::parse(name.strip_prefix("vmlinuz-")?).ok()
        })
        .collect();
    out.sort_by(|a, b| version_cmp(b.as_str(), a.as_str()));
    out
}

/// The required modules `kernel` lacks: not installed, changed on disk, or (with
/// `require_boot_check`) not boot-verified.
fn lacking(cfg: &Config, host: &Host, kernel: &KernelRelease) -> Vec<String> {
    let mut out = Vec::new();
    for m in cfg.modules.iter().filter(|m| m.required) {
        let ok = match host.installed(&m.name, &m.version, kernel) {
            Ok(Some(rec)) => {
                rec.files.iter().all(|(_, sha, path)| {
                    std::fs::read(path).is_ok_and(|b| hex::encode(sha2::Sha256::digest(&b)) == *sha)
                }) && (!cfg.require_boot_check || rec.boot_check.is_some_and(|c| c.passed))
            }
            _ => false,
        };
        if !ok {
            out.push(format!("{}/{}", m.name, m.version));
        }
    }
    out
}

use sha2::Digest;

/// Decides the kernel to boot and points the boot loader at it. `lock`: the host
/// lock (the loader's files are host state like any other).
pub fn apply(cfg: &Config, host: &Host, _lock: &HostLock) -> Result<BootDecision, String> {
    let d = decide(cfg, host);
    let loader = bootloader::detect(&cfg.paths);
    let mut state = load(cfg);
    let target: Option<&KernelRelease> = if d.active { d.wanted.as_ref() } else { None };
    let hold = target.filter(|k| Some(*k) != d.installed.first()).cloned();
    if hold == state.held && hold.is_none() {
        return Ok(d);
    }
    match &loader {
        Loader::Grub { cfg: grub_cfg, env } => {
            let text = std::fs::read_to_string(grub_cfg)
                .map_err(|e| format!("{}: {e}", grub_cfg.display()))?;
            let entries = bootloader::grub_entries(&text);
            // Set even when GRUB_DEFAULT is not `saved` yet (then it takes effect once it is).
            let id = match &hold {
                Some(k) => Some(entry_for(&entries, k).ok_or_else(|| {
                    format!("no GRUB menu entry boots {k} ({})", grub_cfg.display())
                })?),
                None => None,
            };
            bootloader::grub_set_saved_entry(&cfg.paths.grub_editenv, env, id.as_deref())
                .map_err(|e| e.to_string())?;
        }
        Loader::SystemdBoot { dir } => {
            let entries = bootloader::sdboot_entries(dir).map_err(|e| e.to_string())?;
            if state.held.is_none() && hold.is_some() {
                state.original_default = bootloader::sdboot_default(dir);
            }
            let value = match &hold {
                Some(k) => Some(
                    entry_for(&entries, k)
                        .ok_or_else(|| format!("no systemd-boot entry boots {k}"))?,
                ),
                None => state.original_default.take(),
            };
            bootloader::sdboot_set_default(dir, value.as_deref()).map_err(|e| e.to_string())?;
        }
        Loader::None => return Ok(d),
    }
    state.held = hold;
    save(cfg, &state)?;
    Ok(d)
}

/// The id of the normal entry that boots `kernel` (the submenu one on GRUB when the
/// kernel has two: Debian's first entry boots the newest).
fn entry_for(entries: &[Entry], kernel: &KernelRelease) -> Option<String> {
    let mine: Vec<&Entry> = entries.iter().filter(|e| &e.kernel == kernel).collect();
    mine.iter()
        .find(|e| e.id.contains('>'))
        .or(mine.first())
        .map(|e| e.id.clone())
}

/// What the guard would do (read-only).
pub fn decide(cfg: &Config, host: &Host) -> BootDecision {
    let loader = match bootloader::detect(&cfg.paths) {
        Loader::Grub { .. } => "grub",
        Loader::SystemdBoot { .. } => "systemd-boot",
        Loader::None => "none",
    };
    let installed = installed(cfg);
    let required = cfg.modules.iter().any(|m| m.required);
    let mut d = BootDecision {
        active: cfg.boot_guard && required,
        loader: loader.to_string(),
        installed: installed.clone(),
        wanted: installed.first().cloned(),
        boots: installed.first().cloned(),
        ..Default::default()
    };
    if !d.active {
        d.reason = if cfg.boot_guard {
            "boot guard idle: no [[module]] is marked required".into()
        } else {
            "boot guard off (boot_guard = false)".into()
        };
        return d;
    }
    for k in &installed {
        let lacks = lacking(cfg, host, k);
        if lacks.is_empty() {
            d.wanted = Some(k.clone());
            break;
        }
        d.missing.push((k.clone(), lacks));
    }
    let newest = installed.first();
    let none_complete = d.missing.len() == installed.len();
    if none_complete {
        d.wanted = newest.cloned();
    }
    d.held = d.wanted.as_ref() != newest;
    d.boots = d.wanted.clone();
    d.reason = match newest {
        None => "no installed kernel".into(),
        Some(n) if none_complete => {
            format!("no installed kernel has every required module: booting the newest, {n}")
        }
        Some(n) if !d.held => format!("{n} is the newest kernel and has every required module"),
        Some(n) => {
            let lacks = d
                .missing
                .first()
                .map(|(_, l)| l.join(", "))
                .unwrap_or_default();
            format!(
                "{n} lacks {lacks}: holding the default on {}, the newest kernel that has every required module",
                d.wanted.as_ref().map(|k| k.as_str()).unwrap_or("?")
            )
        }
    };
    if d.held {
        match loader {
            "grub" if !bootloader::grub_default_is_saved(&cfg.paths.root) => {
                d.reason.push_str(
                    "; but GRUB_DEFAULT is not `saved`, so GRUB boots its first entry: run \
                     `kmodforge-agent hooks install` (it sets GRUB_DEFAULT=saved) and update-grub",
                );
                d.boots = newest.cloned();
            }
            "none" => {
                d.reason
                    .push_str("; but no GRUB or systemd-boot configuration was found to change");
                d.boots = newest.cloned();
            }
            _ => {}
        }
    }
    d
}

/// Prints the guard's line after a sync or an uninstall: what the host boots next.
pub fn report(result: Result<BootDecision, String>) {
    match result {
        Ok(d) if d.active => println!(
            "boot: {} ({})",
            d.boots.as_ref().map(|k| k.as_str()).unwrap_or("?"),
            d.reason
        ),
        Ok(_) => {}
        Err(e) => crate::report::general(format!("boot guard: {e}")),
    }
}
