//! Whether this host's kernel enforces module signatures, and whether the server's
//! module-signing certificate is enrolled.
//!
//! Enforcement: UEFI Secure Boot on (`SecureBoot-<EFI global GUID>` in efivarfs:
//! 4 bytes of attributes, then 1), kernel lockdown (`integrity` or
//! `confidentiality` in `/sys/kernel/security/lockdown`), or
//! `module.sig_enforce` (`/sys/module/module/parameters/sig_enforce` = `Y`). Any
//! of them and a module whose key the kernel does not trust fails to load with
//! `Key was rejected by service`. Enrolment is asked of `mokutil --test-key`
//! (MOK, the keys shim hands the kernel), by its output: it says "is already
//! enrolled" or "is not enrolled" (and exits 1 and 0 for those, respectively).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::HostPaths;

/// `SecureBoot-<EFI_GLOBAL_VARIABLE GUID>`.
const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// What the host says about module signature enforcement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SigState {
    /// The host booted through UEFI (efivarfs is there).
    pub efi: bool,
    /// UEFI Secure Boot is on (`None`: not readable).
    pub secure_boot: Option<bool>,
    /// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`).
    pub lockdown: Option<String>,
    /// `module.sig_enforce`.
    pub sig_enforce: Option<bool>,
}

impl SigState {
    /// True when a module whose key the kernel does not trust cannot load.
    pub fn enforces(&self) -> bool {
        self.secure_boot == Some(true)
            || matches!(
                self.lockdown.as_deref(),
                Some("integrity" | "confidentiality")
            )
            || self.sig_enforce == Some(true)
    }

    /// One line: why the host enforces.
    pub fn why(&self) -> String {
        let mut why = Vec::new();
        if self.secure_boot == Some(true) {
            why.push("Secure Boot is on".to_string());
        }
        if let Some(l @ ("integrity" | "confidentiality")) = self.lockdown.as_deref() {
            why.push(format!("kernel lockdown is {l}"));
        }
        if self.sig_enforce == Some(true) {
            why.push("module.sig_enforce is set".to_string());
        }
        if why.is_empty() {
            "module signatures are not enforced".into()
        } else {
            why.join(", ")
        }
    }
}

/// Reads the state under the host's root.
pub fn read(paths: &HostPaths) -> SigState {
    let efivars = paths.efivars.as_path();
    let secure_boot = std::fs::read(efivars.join(SECURE_BOOT_VAR))
        .ok()
        .and_then(|b| b.get(4).copied())
        .map(|v| v == 1);
    let lockdown = std::fs::read_to_string(&paths.lockdown).ok().and_then(|t| {
        let start = t.find('[')?;
        let end = t[start..].find(']')? + start;
        Some(t[start + 1..end].to_string())
    });
    let sig_enforce =
        std::fs::read_to_string(paths.sys_module.join("module/parameters/sig_enforce"))
            .ok()
            .map(|t| t.trim() == "Y");
    SigState {
        efi: efivars.is_dir(),
        secure_boot,
        lockdown,
        sig_enforce,
    }
}

/// Whether a certificate is enrolled, by `mokutil --test-key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "enrolled", content = "detail")]
pub enum Enrolled {
    Yes,
    No,
    /// mokutil could not tell (missing, no EFI variables, ...): its one line.
    Unknown(String),
}

/// Runs `mokutil --test-key CERT` and reads its answer.
pub fn test_key(mokutil: &Path, cert_der: &Path) -> Enrolled {
    let out = match Command::new(mokutil)
        .arg("--test-key")
        .arg(cert_der)
        .output()
    {
        Ok(o) => o,
        Err(e) => return Enrolled::Unknown(format!("cannot run {}: {e}", mokutil.display())),
    };
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("is already enrolled") {
        Enrolled::Yes
    } else if text.contains("is not enrolled") {
        Enrolled::No
    } else {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no output")
            .to_string();
        Enrolled::Unknown(format!(
            "{} --test-key: {line} ({})",
            mokutil.display(),
            out.status
        ))
    }
}

/// Where a fetched certificate is kept: `<state_dir>/keys/<sha256>.der`.
pub fn cert_path(paths: &HostPaths, sha256: &str) -> PathBuf {
    paths.state_dir.join("keys").join(format!("{sha256}.der"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, data) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, data).expect("write");
        }
        let paths = HostPaths::under(dir.path());
        (dir, paths)
    }

    #[test]
    fn the_host_state_is_read_from_its_files() {
        let sb = format!("sys/firmware/efi/efivars/{SECURE_BOOT_VAR}");
        let (_d, p) = root_with(&[
            (&sb, &[0x06, 0, 0, 0, 1]),
            (
                "sys/kernel/security/lockdown",
                b"none [integrity] confidentiality\n",
            ),
        ]);
        let s = read(&p);
        assert_eq!(
            s,
            SigState {
                efi: true,
                secure_boot: Some(true),
                lockdown: Some("integrity".into()),
                sig_enforce: None,
            }
        );
        assert!(s.enforces());
        assert_eq!(s.why(), "Secure Boot is on, kernel lockdown is integrity");

        let (_d, p) = root_with(&[
            (&sb, &[0x06, 0, 0, 0, 0]),
            (
                "sys/kernel/security/lockdown",
                b"[none] integrity confidentiality\n",
            ),
            ("sys/module/module/parameters/sig_enforce", b"N\n"),
        ]);
        assert!(!read(&p).enforces());
        let (_d, p) = root_with(&[("sys/module/module/parameters/sig_enforce", b"Y\n")]);
        let s = read(&p);
        assert!(s.enforces() && !s.efi && s.secure_boot.is_none());
    }
}
