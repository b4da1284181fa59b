//! Secure Boot on a host (issue 11): the agent reads the host's enforcement from
//! its root (the `SecureBoot` EFI variable, lockdown, sig_enforce) and asks
//! `mokutil --test-key` whether the server's certificate is enrolled. On an
//! enforcing host it refuses what would not load (exit 10, the enrol command in
//! the message, nothing installed), and installs once the key is enrolled.
//! The enrolment answers come from a stand-in for mokutil (this machine has no
//! EFI variables); the real mokutil is run too, for the "cannot tell" case.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::BuildRequest;
use kmodforge_e2e::agent::{AgentRoot, Run};
use kmodforge_e2e::{fixture, request, Env, ServerOpts, KERNEL_A, KERNEL_B};

const SECURE_BOOT: &str =
    "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// A mokutil that answers `--test-key` from `<dir>/enrolled` and records `--import`
/// there (the confirmation in the MOK manager at the next boot, taken as given).
fn fake_mokutil(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("mokutil");
    let d = dir.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >>{d}/mokutil.log\ncase \"$1\" in\n\
             --test-key) if [ -f {d}/enrolled ] && cmp -s \"$2\" {d}/enrolled; then echo \"$2 is already enrolled\"; exit 1; \
             else echo \"$2 is not enrolled\"; exit 0; fi ;;\n\
             --import) cp \"$2\" {d}/enrolled ;;\n*) exit 2 ;;\nesac\n"
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// A host root with Secure Boot on; `mokutil`: the path of the mokutil to use.
fn secure_host(env: &Env, kernels: &[&str], mokutil: &Path) -> Result<AgentRoot> {
    let root = AgentRoot::new(kernels)?;
    let var = root.path().join(SECURE_BOOT);
    std::fs::create_dir_all(var.parent().context("parent")?)?;
    std::fs::write(&var, [0x06, 0, 0, 0, 1])?;
    let extra = format!("[paths]\nmokutil = \"{}\"\n", mokutil.display());
    root.write_config_with(&env.server, KERNEL_A, &[("kmf-hello", "1.0")], &extra)?;
    Ok(root)
}

fn one_error(run: &Run) -> Result<String> {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("kmodforge-agent: "))
        .collect();
    ensure!(lines.len() == 1, "one error line:\n{run}");
    Ok(lines[0].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enforcing_host_installs_only_what_its_kernel_will_load() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let mok = tempfile::tempdir()?;
    let mokutil = fake_mokutil(mok.path())?;
    let root = secure_host(&env, &[KERNEL_A], &mokutil)?;

    // Not enrolled: refused, with the way out in the message.
    let run = root
        .run(&["sync", "--kernel", KERNEL_A])
        .await?
        .expect(10)?;
    let line = one_error(&run)?;
    ensure!(
        line.contains("Secure Boot is on")
            && line.contains("kmodforge-agent mok enroll")
            && line.contains("not enrolled"),
        "{line}"
    );
    ensure!(
        !root.tree(KERNEL_A).join("updates").exists(),
        "nothing installed"
    );
    let status = root.run(&["mok", "status"]).await?.expect(0)?;
    ensure!(
        status.stdout.contains("Secure Boot is on") && status.stdout.contains("not enrolled"),
        "{status}"
    );

    // Enrolment fetches the server's certificate and hands it to mokutil --import.
    let run = root.run(&["mok", "enroll"]).await?.expect(0)?;
    ensure!(run.stdout.contains("reboot"), "{run}");
    let log = std::fs::read_to_string(mok.path().join("mokutil.log"))?;
    ensure!(log.lines().any(|l| l.starts_with("--import ")), "{log}");
    let der = env.client.bytes("/v1/keys/module-signing.der").await?;
    ensure!(
        std::fs::read(mok.path().join("enrolled"))? == der,
        "the server's certificate was imported"
    );

    // Enrolled: installed.
    let run = root.run(&["sync", "--kernel", KERNEL_A]).await?.expect(0)?;
    ensure!(
        run.stdout
            .contains(&format!("kmf-hello/1.0, {KERNEL_A}: installed")),
        "{run}"
    );

    // An unsigned artifact would not load on this host: refused.
    let unsigned = BuildRequest {
        sign: Some(false),
        ..request("kmf-hello", "1.0", KERNEL_B)?
    };
    let (_, first) = env.client.build(&unsigned).await?;
    env.client.wait(&first.build.id).await?;
    root.add_kernel(KERNEL_B)?;
    let run = root
        .run(&["sync", "--kernel", KERNEL_B])
        .await?
        .expect(10)?;
    ensure!(
        one_error(&run)?.contains("the artifact is unsigned"),
        "{run}"
    );
    ensure!(
        !root.tree(KERNEL_B).join("updates").exists(),
        "nothing installed on {KERNEL_B}"
    );

    // lockdown alone enforces too; a host that enforces nothing installs unsigned modules.
    let plain = AgentRoot::new(&[KERNEL_B])?;
    plain.write_config_with(
        &env.server,
        KERNEL_A,
        &[("kmf-hello", "1.0")],
        &format!("[paths]\nmokutil = \"{}\"\n", mokutil.display()),
    )?;
    let locked = plain.path().join("sys/kernel/security/lockdown");
    std::fs::create_dir_all(locked.parent().context("parent")?)?;
    std::fs::write(&locked, "none [integrity] confidentiality\n")?;
    let run = plain
        .run(&["sync", "--kernel", KERNEL_B])
        .await?
        .expect(10)?;
    ensure!(
        one_error(&run)?.contains("kernel lockdown is integrity"),
        "{run}"
    );
    std::fs::write(&locked, "[none] integrity confidentiality\n")?;
    plain
        .run(&["sync", "--kernel", KERNEL_B])
        .await?
        .expect(0)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_mokutil_without_efi_variables_is_a_clear_refusal() -> Result<()> {
    let mokutil = ["/usr/bin/mokutil", "/bin/mokutil"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("mokutil is not installed (apt-get install mokutil); this test never skips")?;
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let root = secure_host(&env, &[KERNEL_A], &mokutil)?;
    let run = root
        .run(&["sync", "--kernel", KERNEL_A])
        .await?
        .expect(10)?;
    let line = one_error(&run)?;
    ensure!(
        line.contains("cannot tell whether") && line.contains("mokutil"),
        "{line}"
    );
    ensure!(!root.tree(KERNEL_A).join("updates").exists());
    Ok(())
}
