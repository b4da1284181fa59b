//! kmodforge's own Debian packages, with the real dpkg, apt and systemd tools in a
//! Debian bookworm container: `scripts/package.sh` packages the workspace's binaries
//! (the ones the other tests run) twice, as version N and N+1. Then, on a host where
//! `kmodforge-agent hooks install` wrote the hooks by hand (the package takes them
//! over): install both packages with apt, check the user, the files, the units
//! (`systemd-analyze verify`, enabled) and the agent's kernel hooks (a hook on a host
//! with no agent configuration exits 0 with one line); upgrade to N+1 with dpkg (a
//! changed conffile kept, the units still enabled); remove, and purge (hooks, units,
//! `/etc` files gone; `/var/lib/kmodforge` and the user kept, as the README says).
//!
//! The container runs no systemd (the engine here refuses `--privileged`), so the
//! server's unit is checked with `systemd-analyze verify` and `systemd-analyze security
//! --offline`, and the packaged server is run as the unit would run it (its user, its
//! environment, the Docker socket's group only, the umask), without the unit's sandbox:
//! it answers and prepares a builder image from the packaged recipes.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use kmodforge_e2e::debhost::{image, kmodforge_debs, DebHost};
use kmodforge_e2e::{DockerProbe, KERNEL_A};

/// What the packages depend on, and systemd for `systemd-analyze` and `systemctl`.
const DOCKERFILE: &str = "FROM debian:bookworm-slim
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      systemd adduser kmod init-system-helpers libssl3 \\
 && rm -rf /var/lib/apt/lists/*
";
const V1: &str = "0.1.0-1";
const V2: &str = "0.1.1-1";

const SERVER_UNIT: &str = "/usr/lib/systemd/system/kmodforge-server.service";
const AGENT_UNIT: &str = "/usr/lib/systemd/system/kmodforge-agent-sync.service";
const HOOKS: [&str; 3] = [
    "/etc/kernel/postinst.d/dkms-kmodforge",
    "/etc/kernel/prerm.d/kmodforge-agent",
    "/usr/lib/kernel/install.d/50-kmodforge-agent.install",
];
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants";
/// What `kmodforge-agent hooks install` writes besides the run-parts hooks.
const BY_HAND_PLUGIN: &str = "/etc/kernel/install.d/50-kmodforge-agent.install";
const BY_HAND_UNIT: &str = "/etc/systemd/system/kmodforge-agent-sync.service";

/// The test image, built once per recipe (its tag is the Dockerfile's hash).
fn test_image() -> Result<String> {
    image("kmodforge-pkgtest", DOCKERFILE)
}

/// A container of the test image with the packages at `/debs` and the engine's
/// socket (for the packaged server), without a network.
fn start(image: &str, debs: &Path) -> Result<DebHost> {
    let mount = format!("{}:/debs:ro", debs.display());
    // The engine's socket where a host's Docker has it, for the packaged server.
    let sock = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    let engine = format!("{sock}:/run/docker.sock");
    DebHost::start_with(image, &["--network", "none", "-v", &mount, "-v", &engine])
}

fn debs(dir: &Path, version: &str) -> String {
    ["kmodforge-server", "kmodforge-agent"]
        .iter()
        .map(|p| format!("/debs/{}/{p}_{version}_amd64.deb", dir.display()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn enabled(b: &DebHost) -> Result<()> {
    for unit in ["kmodforge-server.service", "kmodforge-agent-sync.service"] {
        let state = b.ok(&format!("systemctl is-enabled {unit}"))?;
        ensure!(state.trim() == "enabled", "{unit}: {state}");
        ensure!(
            b.exists(&format!("{WANTS}/{unit}"))?,
            "{unit} has no wants link"
        );
    }
    Ok(())
}

#[test]
fn packages_install_upgrade_remove_and_purge() -> Result<()> {
    // Fails loudly without an engine (never skips).
    tokio::runtime::Runtime::new()?.block_on(DockerProbe::connect())?;
    let image = test_image()?;
    let work = tempfile::tempdir()?;
    for v in [V1, V2] {
        kmodforge_debs(v, &work.path().join(v))?;
    }
    let b = start(&image, work.path())?;
    let rel = |v: &str| PathBuf::from(v);

    // This host ran `kmodforge-agent hooks install` by hand before (an agent from the
    // package's own files, not installed): the package takes those files over.
    let by_hand = b.ok(&format!(
        "mkdir /opt/agent && dpkg-deb -x /debs/{V1}/kmodforge-agent_{V1}_amd64.deb /opt/agent \
         && /opt/agent/usr/bin/kmodforge-agent hooks install --agent /usr/local/bin/kmodforge-agent"
    ))?;
    for f in [
        HOOKS[0],
        HOOKS[1],
        BY_HAND_PLUGIN,
        BY_HAND_UNIT,
        &format!("{WANTS}/kmodforge-agent-sync.service"),
    ] {
        ensure!(b.exists(f)?, "hooks install did not write {f}:\n{by_hand}");
    }

    // Install both with apt (which checks their dependencies).
    let install = b.ok(&format!(
        "apt-get install -y --no-install-recommends {}",
        debs(&rel(V1), V1)
    ))?;
    ensure!(
        install.contains("kmodforge-agent: not configured yet"),
        "the agent's postinst says it needs its configuration:\n{install}"
    );
    for f in [BY_HAND_PLUGIN, BY_HAND_UNIT] {
        ensure!(!b.exists(f)?, "{f} (by hand) is left beside the package's");
        ensure!(
            install.contains(&format!("kmodforge-agent: removed {f}")),
            "the preinst says it removed {f}:\n{install}"
        );
    }
    let link = b.ok(&format!("readlink {WANTS}/kmodforge-agent-sync.service"))?;
    ensure!(
        link.trim() == AGENT_UNIT || link.trim() == AGENT_UNIT.trim_start_matches("/usr"),
        "the boot unit's link points at {link}"
    );

    // The server's own system user: no login, no other group.
    let user = b.ok("getent passwd kmodforge")?;
    let fields: Vec<&str> = user.trim().split(':').collect();
    ensure!(fields.len() == 7, "{user}");
    let uid: u32 = fields[2].parse()?;
    ensure!(uid < 1000, "kmodforge is a system user: {user}");
    ensure!(
        fields[5] == "/var/lib/kmodforge" && fields[6] == "/usr/sbin/nologin",
        "{user}"
    );
    let groups = b.ok("id -nG kmodforge")?;
    ensure!(groups.trim() == "kmodforge", "groups: {groups}");
    let state = b.ok("stat -c '%U %a' /var/lib/kmodforge")?;
    ensure!(
        state.trim() == "kmodforge 700",
        "/var/lib/kmodforge: {state}"
    );

    // The files.
    for f in [
        "/usr/bin/kmodforge-server",
        "/usr/bin/kmodforge-agent",
        "/usr/share/kmodforge/images/bootstrap-base.sh",
    ] {
        b.ok(&format!("test -x {f}"))?;
    }
    for f in [
        "/usr/share/kmodforge/images/builder/Dockerfile",
        "/usr/share/kmodforge/images/verifier/Dockerfile",
        "/etc/default/kmodforge-server",
        "/usr/share/doc/kmodforge-agent/agent.toml.example",
        SERVER_UNIT,
        AGENT_UNIT,
    ] {
        b.ok(&format!("test -f {f}"))?;
    }
    let unit = b.ok(&format!("cat {SERVER_UNIT}"))?;
    for line in [
        "User=kmodforge",
        "SupplementaryGroups=docker",
        "StateDirectory=kmodforge",
        "Environment=KMODFORGE_IMAGES_DIR=/usr/share/kmodforge/images",
        "EnvironmentFile=-/etc/default/kmodforge-server",
        "ProtectSystem=strict",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "UMask=0077",
    ] {
        ensure!(
            unit.lines().any(|l| l == line),
            "{SERVER_UNIT} lacks {line}"
        );
    }
    ensure!(
        unit.lines().any(|l| l == "CapabilityBoundingSet="),
        "no capabilities"
    );
    // The kernel hooks, executable, the package's, running the packaged agent.
    for h in HOOKS {
        b.ok(&format!("test -x {h}"))?;
        let text = b.ok(&format!("cat {h}"))?;
        ensure!(
            text.contains("'/usr/bin/kmodforge-agent'")
                && text.contains("Installed by the kmodforge-agent package"),
            "{h} is not the package's:\n{text}"
        );
    }
    let conffiles = b.ok("cat /var/lib/dpkg/info/kmodforge-agent.conffiles /var/lib/dpkg/info/kmodforge-server.conffiles")?;
    for f in [HOOKS[0], HOOKS[1], "/etc/default/kmodforge-server"] {
        ensure!(
            conffiles.lines().any(|l| l == f),
            "{f} is not a conffile:\n{conffiles}"
        );
    }

    // The units: valid for systemd, enabled; the server's sandbox rated by systemd.
    // (It warns about unknown or misspelt settings without failing: it must say nothing.)
    let verify = b.ok(&format!(
        "systemd-analyze verify {SERVER_UNIT} {AGENT_UNIT}"
    ))?;
    ensure!(
        verify.trim().is_empty(),
        "systemd-analyze verify:\n{verify}"
    );
    enabled(&b)?;
    let security = b.ok(&format!(
        "systemd-analyze security --offline=true --no-pager {SERVER_UNIT}"
    ))?;
    let exposure = security
        .lines()
        .find_map(|l| l.split("kmodforge-server.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f32>().ok())
        .with_context(|| format!("no exposure level in:\n{security}"))?;
    ensure!(
        exposure <= 2.0,
        "the server's unit exposure is {exposure}:\n{security}"
    );
    eprintln!("systemd-analyze security: kmodforge-server.service exposure {exposure}");

    // A kernel package installed on a host where the agent is not configured yet: the
    // hooks exit 0 with one line (run as the kernel's maintainer scripts do).
    let krel = KERNEL_A;
    for (hook, args) in [
        (HOOKS[0], format!("{krel} /boot/vmlinuz-{krel}")),
        (HOOKS[1], format!("{krel} /boot/vmlinuz-{krel}")),
        (HOOKS[2], format!("add {krel} /boot/vmlinuz-{krel}")),
    ] {
        let out = b.sh(&format!("{hook} {args}"))?;
        let stderr = &out.stderr;
        ensure!(out.ok(), "{hook} failed ({}): {stderr}", out.code);
        ensure!(
            stderr.lines().count() == 1
                && stderr.contains("not configured (/etc/kmodforge/agent.toml does not exist)"),
            "{hook}: one line saying the agent is not configured:\n{stderr}"
        );
    }
    b.ok(&format!(
        "run-parts --report --exit-on-error --arg={krel} --arg=/boot/vmlinuz-{krel} /etc/kernel/postinst.d"
    ))?;
    // `hooks install` on a packaged host: the package provides them; nothing is written.
    let hooks = b.ok("kmodforge-agent hooks install")?;
    ensure!(
        hooks.contains("the kmodforge-agent package provides the kernel hooks"),
        "{hooks}"
    );
    ensure!(
        !b.exists(BY_HAND_UNIT)? && !b.exists(BY_HAND_PLUGIN)?,
        "hooks install wrote a unit or plugin beside the package's"
    );

    // The packaged server as its unit runs it (no systemd here: the unit's user, its
    // environment, the Docker socket's group as its only other group, the umask): it
    // starts, makes its keys and admin token in /var/lib/kmodforge, answers, and prepares
    // a builder image from the recipes under /usr/share/kmodforge/images.
    let started = b.ok(&format!(
        r#"set -e
        gid=$(stat -c %g /run/docker.sock)
        env=$(sed -n 's/^Environment=//p' {SERVER_UNIT})
        user=$(sed -n 's/^User=//p' {SERVER_UNIT})
        cd /var/lib/kmodforge
        umask 0077
        setpriv --reuid "$user" --regid "$user" --groups "$gid" \
          env -i PATH=/usr/bin:/bin HOME=/var/lib/kmodforge $env /usr/bin/kmodforge-server \
          >/tmp/server.log 2>&1 &
        echo $! > /tmp/server.pid
        for i in $(seq 60); do
          if out=$( (exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && head -1 <&3) 2>/dev/null ); then
            echo "$out"; exit 0
          fi
          sleep 1
        done
        cat /tmp/server.log; exit 1"#
    ));
    let started = match started {
        Ok(s) => s,
        Err(e) => bail!("the packaged server did not start: {e:#}"),
    };
    ensure!(started.contains("200"), "GET /healthz: {started}");
    let owned =
        b.ok("stat -c '%U %a %n' /var/lib/kmodforge/admin.token /var/lib/kmodforge/keys")?;
    for line in owned.lines() {
        ensure!(
            line.starts_with("kmodforge 600 ") || line.starts_with("kmodforge 700 "),
            "the server's files are its own and private: {owned}"
        );
    }
    let prepared = b.ok(&format!(
        r#"t=$(cat /var/lib/kmodforge/admin.token)
        exec 3<>/dev/tcp/127.0.0.1/8080
        printf 'PUT /v1/kernels/{krel} HTTP/1.0\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\n\r\n' "$t" >&3
        timeout 1500 cat <&3"#
    ))?;
    ensure!(
        prepared.starts_with("HTTP/1.0 200") || prepared.starts_with("HTTP/1.1 200"),
        "PUT /v1/kernels/{krel} (a builder image from /usr/share/kmodforge/images):\n{prepared}\n{}",
        b.ok("tail -20 /tmp/server.log").unwrap_or_default()
    );
    eprintln!(
        "the packaged server, PUT /v1/kernels/{krel}: {}",
        prepared.lines().last().unwrap_or_default()
    );
    b.ok("kill $(cat /tmp/server.pid)")?;

    // Upgrade to N+1 with dpkg: the administrator's settings stay, so do the units.
    b.ok("echo 'KMODFORGE_LISTEN=0.0.0.0:9999' >> /etc/default/kmodforge-server")?;
    b.ok(&format!("dpkg -i {}", debs(&rel(V2), V2)))?;
    for p in ["kmodforge-server", "kmodforge-agent"] {
        let v = b.ok(&format!("dpkg-query -W -f='${{Version}} ${{Status}}' {p}"))?;
        ensure!(v.trim() == format!("{V2} install ok installed"), "{p}: {v}");
    }
    let settings = b.ok("cat /etc/default/kmodforge-server")?;
    ensure!(
        settings.contains("KMODFORGE_LISTEN=0.0.0.0:9999"),
        "the conffile was replaced on upgrade:\n{settings}"
    );
    ensure!(
        !b.exists("/etc/default/kmodforge-server.dpkg-new")?
            && !b.exists("/etc/default/kmodforge-server.dpkg-old")?,
        "dpkg left a conffile copy"
    );
    enabled(&b)?;
    for h in HOOKS {
        b.ok(&format!("test -x {h}"))?;
    }

    // Remove: the programs, units and kernel-install plugin go; the conffiles (the
    // run-parts hooks among them) stay until purge and do nothing without the agent.
    b.ok("apt-get remove -y kmodforge-server kmodforge-agent")?;
    for f in [
        "/usr/bin/kmodforge-server",
        "/usr/bin/kmodforge-agent",
        SERVER_UNIT,
        AGENT_UNIT,
        HOOKS[2],
        "/usr/share/kmodforge",
    ] {
        ensure!(!b.exists(f)?, "{f} is left after remove");
    }
    let leftover = b.sh(&format!("{} {krel} /boot/vmlinuz-{krel}", HOOKS[0]))?;
    ensure!(
        leftover.ok() && leftover.stderr.is_empty() && leftover.stdout.is_empty(),
        "a removed agent's hook must do nothing: {leftover}"
    );

    // Purge: the /etc files and the enablement go; the state and the user stay (README).
    let purge = b.ok("apt-get purge -y kmodforge-server kmodforge-agent")?;
    for f in [
        HOOKS[0],
        HOOKS[1],
        "/etc/default/kmodforge-server",
        &format!("{WANTS}/kmodforge-server.service"),
        &format!("{WANTS}/kmodforge-agent-sync.service"),
    ] {
        ensure!(!b.exists(f)?, "{f} is left after purge");
    }
    let listed = b.sh("dpkg -l kmodforge-server kmodforge-agent | grep -E '^(ii|rc)'")?;
    ensure!(!listed.ok(), "dpkg still lists them: {}", listed.stdout);
    ensure!(
        purge.contains("kmodforge-server: kept /var/lib/kmodforge"),
        "purge says what it keeps:\n{purge}"
    );
    // The keys the server made (hosts trust them) are still there.
    b.ok("test -s /var/lib/kmodforge/admin.token && ls /var/lib/kmodforge/keys | grep -q .")?;
    b.ok("getent passwd kmodforge")?;
    if b.exists("/etc/systemd/system/kmodforge-server.service")? {
        bail!("a unit is left in /etc/systemd/system");
    }
    Ok(())
}
