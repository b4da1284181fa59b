//! The boot guard (issue 12) with the real `grub-editenv` on a temp root: two
//! installed kernels, the required module on the old one only (the new kernel's
//! postinst hook ran while the server was down) → GRUB's saved entry is the old
//! kernel, inside Debian's "Advanced options" submenu; once the module arrives for
//! the new kernel → back to the normal default. `status` says which kernel boots.
//! Each time, the root's `/boot` (with Debian's real kernels) is booted by GRUB under
//! qemu, and the kernel that boots is the one the guard chose.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::grubvm;
use kmodforge_e2e::{fixture, request, Env, ServerOpts, StopMode, KERNEL_A, KERNEL_B};

/// Debian 12's update-grub output for two kernels, the newest first (its header as
/// `grub-mkconfig` writes it with `GRUB_DEFAULT=saved`; the entries' kernel arguments
/// are [`grubvm::BOOT_ARGS`] so that the same file boots under qemu).
fn grub_cfg(newest: &str, older: &str) -> String {
    let args = grubvm::BOOT_ARGS;
    let entry = |k: &str, kind: &str, title: &str| {
        format!(
            "\tmenuentry 'Debian GNU/Linux, with Linux {k}{title}' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-{k}-{kind}-c0ffee' {{\n\
             \t\tload_video\n\t\tlinux\t/boot/vmlinuz-{k} root=UUID=c0ffee ro {args}\n\
             \t\tinitrd\t/boot/initrd.img-{k}\n\t}}\n"
        )
    };
    format!(
        "if [ -s $prefix/grubenv ]; then\n  set have_grubenv=true\n  load_env\nfi\n\
         if [ \"${{next_entry}}\" ] ; then\n   set default=\"${{next_entry}}\"\n   set next_entry=\n   save_env next_entry\n   set boot_once=true\nelse\n   set default=\"${{saved_entry}}\"\nfi\n\
         if [ x\"${{feature_menuentry_id}}\" = xy ]; then\n  menuentry_id_option=\"--id\"\nelse\n  menuentry_id_option=\"\"\nfi\nexport menuentry_id_option\n\
         function load_video {{\n  if [ x$feature_all_video_module = xy ]; then\n    insmod all_video\n  fi\n}}\n\
         set timeout=1\n\
         menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-c0ffee' {{\n\
         \tload_video\n\tlinux\t/boot/vmlinuz-{newest} root=UUID=c0ffee ro {args}\n\tinitrd\t/boot/initrd.img-{newest}\n}}\n\
         submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-c0ffee' {{\n{}{}{}{}}}\n",
        entry(newest, "advanced", ""),
        entry(newest, "recovery", " (recovery mode)"),
        entry(older, "advanced", ""),
        entry(older, "recovery", " (recovery mode)"),
    )
}

fn saved_entry(root: &Path) -> Result<Option<String>> {
    let env = root.join("boot/grub/grubenv");
    if !env.exists() {
        return Ok(None);
    }
    let out = Command::new("grub-editenv")
        .arg(&env)
        .arg("list")
        .output()
        .context("grub-editenv")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("saved_entry="))
        .map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_boots_the_newest_kernel_that_has_its_required_module() -> Result<()> {
    ensure!(
        Path::new("/usr/bin/grub-editenv").exists(),
        "grub-editenv is not installed (apt-get install grub-common); this test never skips"
    );
    let mut env = Env::start(ServerOpts::default().stop_mode(StopMode::Kill)).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    for k in [KERNEL_A, KERNEL_B] {
        let (_, first) = env.client.build(&request("kmf-hello", "1.0", k)?).await?;
        env.client.wait(&first.build.id).await?;
    }

    // A Debian host on the old kernel, with GRUB, both kernels' images (Debian's own,
    // from the verifier images, which also run qemu) and the hooks installed.
    let vm = grubvm::verifier_image(&env, KERNEL_A).await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    std::fs::create_dir_all(root.path().join("boot/grub"))?;
    for k in [KERNEL_A, KERNEL_B] {
        let tag = grubvm::verifier_image(&env, k).await?;
        grubvm::install_kernel(&tag, k, &root.path().join("boot"))?;
    }
    std::fs::write(
        root.path().join("boot/grub/grub.cfg"),
        grub_cfg(KERNEL_B, KERNEL_A),
    )?;
    std::fs::create_dir_all(root.path().join("etc/default"))?;
    std::fs::write(
        root.path().join("etc/default/grub"),
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n",
    )?;
    let token = env.server.admin_token()?;
    let url = env.server.base_url();
    let modules = [("kmf-hello", "1.0")];
    root.write_config_with((url.as_str(), token.as_str()), KERNEL_A, &modules, "")?;
    // `required = true` on the module: the config writer's [[module]] tables come last.
    let cfg = std::fs::read_to_string(&root.config)?;
    std::fs::write(&root.config, format!("{cfg}required = true\n"))?;
    root.run(&["hooks", "install", "--agent", "/bin/true"])
        .await?
        .expect(0)?;
    ensure!(
        std::fs::read_to_string(root.path().join("etc/default/grub.d/kmodforge.cfg"))?
            .contains("GRUB_DEFAULT=saved"),
        "hooks install makes GRUB follow saved_entry"
    );
    root.run(&["sync", "--kernel", KERNEL_A]).await?.expect(0)?;

    // The new kernel arrives while the server is down: its postinst hook cannot
    // install the module, exits 0, and the guard keeps the host on the old kernel.
    root.add_kernel(KERNEL_B)?;
    env.server.kill9();
    let hook = root
        .run(&["sync", "--kernel", KERNEL_B, "--hook"])
        .await?
        .expect(0)?;
    ensure!(hook.stdout.contains(&format!("boot: {KERNEL_A}")), "{hook}");
    let held = saved_entry(root.path())?;
    ensure!(
        held.as_deref()
            == Some(&*format!(
                "gnulinux-advanced-c0ffee>gnulinux-{KERNEL_A}-advanced-c0ffee"
            )),
        "GRUB's saved entry is the old kernel in the submenu: {held:?}"
    );
    let status = root.run(&["status"]).await?.expect(0)?;
    ensure!(
        status
            .stdout
            .contains(&format!("boot: {KERNEL_A} ({KERNEL_B} lacks kmf-hello/1.0")),
        "{status}"
    );
    let (_, boot) = root.status_json().await?;
    ensure!(
        boot["held"] == true && boot["boots"] == KERNEL_A && boot["loader"] == "grub",
        "{boot:#}"
    );
    let booted = tokio::task::block_in_place(|| grubvm::boot(root.path(), &vm))?;
    ensure!(
        booted == KERNEL_A,
        "GRUB under qemu booted {booted}, not the guard's {KERNEL_A}"
    );

    // The module arrives for the new kernel: the default goes back to normal.
    env.restart(ServerOpts::default().data_dir(env.server.data_dir()))
        .await?;
    let url = env.server.base_url();
    root.write_config_with((url.as_str(), token.as_str()), KERNEL_A, &modules, "")?;
    let cfg = std::fs::read_to_string(&root.config)?;
    std::fs::write(&root.config, format!("{cfg}required = true\n"))?;
    let run = root
        .run(&["sync", "--kernel", KERNEL_B, "--hook"])
        .await?
        .expect(0)?;
    ensure!(
        run.stdout
            .contains(&format!("kmf-hello/1.0, {KERNEL_B}: installed")),
        "{run}"
    );
    ensure!(
        saved_entry(root.path())?.is_none(),
        "saved_entry unset: GRUB boots its first entry, the newest kernel"
    );
    let (_, boot) = root.status_json().await?;
    ensure!(
        boot["held"] == false && boot["boots"] == KERNEL_B,
        "{boot:#}"
    );
    let booted = tokio::task::block_in_place(|| grubvm::boot(root.path(), &vm))?;
    ensure!(
        booted == KERNEL_B,
        "GRUB under qemu booted {booted}, not the newest {KERNEL_B}"
    );

    // Without GRUB_DEFAULT=saved the guard says it cannot act.
    std::fs::remove_file(root.path().join("etc/default/grub.d/kmodforge.cfg"))?;
    root.run(&["uninstall", "kmf-hello/1.0", "--kernel", KERNEL_B])
        .await?
        .expect(0)?;
    let status = root.run(&["status"]).await?.expect(0)?;
    ensure!(
        status.stdout.contains("GRUB_DEFAULT is not `saved`"),
        "{status}"
    );
    Ok(())
}
