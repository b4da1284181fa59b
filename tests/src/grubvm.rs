//! A host's boot, for real: the test root's `/boot` (GRUB's `grub.cfg` and
//! `grubenv`, Debian's kernels) made into a BIOS-bootable image with the real
//! `grub-mkrescue`, booted by qemu in the verifier image; the kernel that boots
//! says who it is on the serial console. This proves which kernel GRUB picks from
//! what the boot guard wrote, menus, submenus and `saved_entry` included.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use reqwest::StatusCode;

/// Kernel arguments for entries booted here: the console on the serial line, and
/// a reboot (qemu exits: `-no-reboot`) as soon as the kernel finds no root.
pub const BOOT_ARGS: &str = "console=ttyS0 panic=-1";

/// Prepares `krel`'s verifier image on the server (it has qemu and the kernel's
/// own `vmlinuz`); returns its tag.
pub async fn verifier_image(env: &crate::Env, krel: &str) -> Result<String> {
    let url = env
        .client
        .url(&format!("/v1/kernels/{krel}?boot_check=true"));
    let resp = env.client.http().put(&url).send().await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "PUT {url}: {}",
        resp.status()
    );
    let info: kmodforge_api::wire::KernelInfo = resp.json().await?;
    Ok(info.verifier.context("the verifier image")?.tag)
}

/// Copies Debian's `vmlinuz-<krel>` out of the verifier image `tag` to `boot/`,
/// with an empty initramfs beside it (`initrd.img-<krel>`), as a host's `/boot` has.
pub fn install_kernel(tag: &str, krel: &str, boot: &Path) -> Result<()> {
    std::fs::create_dir_all(boot)?;
    let out = docker(&["create", "--entrypoint", "true", tag])?;
    let id = out.trim();
    let copied = docker(&[
        "cp",
        &format!("{id}:/opt/kmodforge/kernel/boot/vmlinuz-{krel}"),
        &boot.join(format!("vmlinuz-{krel}")).to_string_lossy(),
    ]);
    let _ = docker(&["rm", id]);
    copied?;
    std::fs::write(boot.join(format!("initrd.img-{krel}")), empty_initramfs())?;
    Ok(())
}

/// A newc cpio archive with nothing in it but its trailer.
pub fn empty_initramfs() -> Vec<u8> {
    let name = b"TRAILER!!!\0";
    let mut out = b"070701".to_vec();
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    for v in [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, name.len(), 0] {
        out.extend_from_slice(format!("{v:08X}").as_bytes());
    }
    out.extend_from_slice(name);
    while out.len() % 512 != 0 {
        out.push(0);
    }
    out
}

/// Boots `root`'s `/boot` with GRUB under qemu (TCG, in the verifier image `tag`,
/// no network); returns the release of the kernel that booted.
pub fn boot(root: &Path, tag: &str) -> Result<String> {
    ensure!(
        Path::new("/usr/lib/grub/i386-pc").is_dir(),
        "GRUB's BIOS modules are not installed (apt-get install grub-pc-bin xorriso); this test never skips"
    );
    let work = tempfile::tempdir()?;
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree)?;
    let copy = Command::new("cp")
        .arg("-r")
        .arg(root.join("boot"))
        .arg(tree.join("boot"))
        .status()?;
    ensure!(copy.success(), "copying {}/boot", root.display());
    let iso = work.path().join("boot.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(&tree)
        .output()
        .context("running grub-mkrescue")?;
    ensure!(
        out.status.success(),
        "grub-mkrescue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // World-readable for the unprivileged user qemu runs as.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::set_permissions(&iso, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let vm = format!("{}:/vm:ro", work.path().display());
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--cap-drop",
            "ALL",
        ])
        .args(["--security-opt", "no-new-privileges", "--user", "1000:1000"])
        .args(["-v", &vm, "--entrypoint", "timeout", tag, "300"])
        .args([
            "qemu-system-x86_64",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-cdrom", "/vm/boot.iso", "-boot", "d"])
        .output()
        .context("running qemu in the verifier image")?;
    let console = String::from_utf8_lossy(&out.stdout);
    let version = console
        .lines()
        .find_map(|l| l.split("Linux version ").nth(1))
        .and_then(|rest| rest.split_whitespace().next());
    match version {
        Some(v) => Ok(v.to_string()),
        None => {
            let tail: String = console
                .chars()
                .skip(console.chars().count().saturating_sub(3000))
                .collect();
            bail!(
                "no kernel booted ({}); the serial console said:\n{tail}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        }
    }
}

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running the docker CLI")?;
    ensure!(
        out.status.success(),
        "docker {}: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
