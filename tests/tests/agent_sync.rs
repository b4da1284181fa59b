//! The agent against the real server, Docker and `depmod -b ROOT`: sync for two
//! kernels, status, an idempotent second sync, uninstall; the kernel hooks, also
//! with the server stopped.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::{fixture, Env, ServerOpts, KERNEL_A, KERNEL_B};

const ENTRY: &str = "updates/dkms/kmf_hello.ko:";

fn ko(root: &AgentRoot, krel: &str) -> std::path::PathBuf {
    root.tree(krel).join("updates/dkms/kmf_hello.ko")
}

fn mtime(path: &Path) -> Result<SystemTime> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} must exist", path.display()))?
        .modified()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_status_resync_uninstall() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let root = AgentRoot::new(&[KERNEL_A, KERNEL_B])?;
    root.write_config(&env.server, KERNEL_A, &[("kmf-hello", "1.0")])?;

    let first = root.run(&["sync"]).await?.expect(0)?;
    for k in [KERNEL_A, KERNEL_B] {
        let line = format!("kmf-hello/1.0, {k}: installed (kmf_hello.ko)");
        ensure!(first.stdout.contains(&line), "no {line:?} in\n{first}");
        let dep = root.modules_dep(k);
        ensure!(
            dep.contains(ENTRY),
            "{k}: modules.dep lacks {ENTRY}: {dep:?}"
        );
        ensure!(ko(&root, k).is_file());
    }

    let status = root.run(&["status"]).await?.expect(0)?;
    for k in [KERNEL_A, KERNEL_B] {
        let line = format!("kmf-hello/1.0, {k}, x86_64: installed");
        ensure!(
            status.stdout.lines().any(|l| l == line),
            "no {line:?} in\n{status}"
        );
    }
    let (entries, _) = root.status_json().await?;
    ensure!(entries.len() == 2, "{entries:?}");
    let running = entries
        .iter()
        .find(|e| e["kernel"] == KERNEL_A)
        .context("running kernel entry")?;
    ensure!(running["loaded"]["loaded"] == false, "{running}");

    let before = [mtime(&ko(&root, KERNEL_A))?, mtime(&ko(&root, KERNEL_B))?];
    let dep_before = mtime(&root.tree(KERNEL_A).join("modules.dep"))?;
    let second = root.run(&["sync"]).await?.expect(0)?;
    for k in [KERNEL_A, KERNEL_B] {
        let line = format!("kmf-hello/1.0, {k}: unchanged");
        ensure!(second.stdout.contains(&line), "no {line:?} in\n{second}");
    }
    let after = [mtime(&ko(&root, KERNEL_A))?, mtime(&ko(&root, KERNEL_B))?];
    ensure!(before == after, "a second sync rewrote the modules");
    ensure!(
        mtime(&root.tree(KERNEL_A).join("modules.dep"))? == dep_before,
        "a second sync reran depmod"
    );

    let un = root
        .run(&["uninstall", "kmf-hello/1.0", "--kernel", KERNEL_B])
        .await?
        .expect(0)?;
    ensure!(
        un.stdout
            .contains(&format!("kmf-hello/1.0, {KERNEL_B}: uninstalled")),
        "{un}"
    );
    ensure!(!ko(&root, KERNEL_B).exists() && ko(&root, KERNEL_A).exists());
    ensure!(!root.modules_dep(KERNEL_B).contains(ENTRY));
    root.run(&["uninstall", "kmf-hello/1.0", "--all"])
        .await?
        .expect(0)?;
    ensure!(!ko(&root, KERNEL_A).exists());
    ensure!(!root.modules_dep(KERNEL_A).contains(ENTRY));
    let status = root.run(&["status"]).await?.expect(0)?;
    ensure!(
        status.stdout.trim() == "kmf-hello/1.0: added",
        "after uninstall:\n{status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_hooks_install_and_survive_a_stopped_server() -> Result<()> {
    let mut env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    // The running kernel has a tree; the "new" kernel arrives with its package.
    let root = AgentRoot::new(&[KERNEL_A])?;
    root.write_config(&env.server, KERNEL_A, &[("kmf-hello", "1.0")])?;
    std::fs::create_dir_all(root.path().join("usr/lib/kernel/install.d"))?;
    let hooks = root.run(&["hooks", "install"]).await?.expect(0)?;
    for f in [
        "etc/kernel/postinst.d/dkms-kmodforge",
        "etc/kernel/prerm.d/kmodforge-agent",
        "etc/kernel/install.d/50-kmodforge-agent.install",
        "etc/systemd/system/kmodforge-agent-sync.service",
    ] {
        ensure!(root.path().join(f).is_file(), "{f} not written:\n{hooks}");
    }

    root.add_kernel(KERNEL_B)?;
    let post = root
        .run_hook(
            "etc/kernel/postinst.d/dkms-kmodforge",
            &[KERNEL_B, "/boot/vmlinuz"],
        )
        .await?
        .expect(0)?;
    ensure!(
        root.modules_dep(KERNEL_B).contains(ENTRY),
        "hook did not install:\n{post}"
    );
    ensure!(
        !ko(&root, KERNEL_A).exists(),
        "the hook must sync only its kernel"
    );

    // Removing the kernel package cleans up.
    root.run_hook("etc/kernel/prerm.d/kmodforge-agent", &[KERNEL_B])
        .await?
        .expect(0)?;
    ensure!(!ko(&root, KERNEL_B).exists(), "prerm hook left the module");

    // The server is gone: the hook still exits 0 and says why.
    env.server.stop();
    let down = root
        .run_hook(
            "etc/kernel/postinst.d/dkms-kmodforge",
            &[KERNEL_A, "/boot/vmlinuz"],
        )
        .await?
        .expect(0)?;
    ensure!(
        down.stderr.contains(&format!(
            "kmodforge-agent: kmf-hello/1.0 on {KERNEL_A}: server unreachable"
        )),
        "the hook must say the server is unreachable:\n{down}"
    );
    ensure!(
        down.stderr.contains("not failing the kernel package"),
        "{down}"
    );
    ensure!(!ko(&root, KERNEL_A).exists());
    // Without --hook the same run fails with the documented code.
    let plain = root.run(&["sync", "--kernel", KERNEL_A]).await?.expect(3)?;
    ensure!(
        plain.stderr.lines().count() == 1,
        "one error line:\n{plain}"
    );
    Ok(())
}

/// DKMS's autoinstall (the kernel hook) skips modules whose dkms.conf does not set
/// `AUTOINSTALL=yes`; so does the agent's hook, while a plain sync installs them.
#[tokio::test(flavor = "multi_thread")]
async fn kernel_hook_skips_modules_without_autoinstall() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let src = tempfile::tempdir()?;
    for f in ["Makefile", "kmf_hello.c"] {
        std::fs::copy(fixture("hello").join(f), src.path().join(f))?;
    }
    let conf = std::fs::read_to_string(fixture("hello").join("dkms.conf"))?;
    let conf: String = conf
        .lines()
        .filter(|l| !l.starts_with("AUTOINSTALL"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(src.path().join("dkms.conf"), conf)?;
    env.client
        .add_module("kmf-hello", "1.0", src.path())
        .await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    root.write_config(&env.server, KERNEL_A, &[("kmf-hello", "1.0")])?;
    let hook = root
        .run(&["sync", "--hook", "--kernel", KERNEL_A])
        .await?
        .expect(0)?;
    ensure!(
        hook.stdout.contains("AUTOINSTALL") && !ko(&root, KERNEL_A).exists(),
        "the hook must skip it and say why:\n{hook}"
    );
    root.run(&["sync", "--kernel", KERNEL_A]).await?.expect(0)?;
    ensure!(
        root.modules_dep(KERNEL_A).contains(ENTRY),
        "a plain sync installs it"
    );
    Ok(())
}
