//! `kmodforge-agent`: the host side of kmodforge. It replaces `dkms install` and
//! `autoinstall` on each machine of a fleet: it asks the kmodforge server for the
//! modules the host wants (building them there if needed), verifies them, and
//! installs them with DKMS's semantics, so the host needs neither headers nor a
//! compiler. See `agent/README.md` for the commands, the configuration and the exit codes.

mod boot;
mod client;
mod config;
mod exitcode;
mod guard;
mod hooks;
mod keys;
mod manage;
mod outcome;
mod pack;
mod report;
mod submit;
mod sync;
mod textfile;
mod wait;

/// The host fixtures of the integration tests (modules compiled with gcc, manifests).
#[cfg(test)]
#[path = "../tests/host_support/mod.rs"]
mod test_support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};

use crate::config::Config;
use crate::exitcode::Exit;

#[derive(Parser)]
#[command(
    name = "kmodforge-agent",
    version,
    about = "Install DKMS modules built by a kmodforge server"
)]
struct Cli {
    /// Configuration file [default: /etc/kmodforge/agent.toml].
    #[arg(
        long,
        global = true,
        env = "KMODFORGE_AGENT_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Server URL, overriding `server` in the configuration.
    #[arg(long, global = true, env = "KMODFORGE_SERVER", value_name = "URL")]
    server: Option<String>,
    /// File holding the bearer token, overriding `token_file` in the configuration
    /// (CI: a secret mounted as a file; the token itself is never a flag).
    #[arg(long, global = true, env = "KMODFORGE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the wanted modules for the running and installed kernels (or --kernel).
    Sync {
        /// Only this kernel (repeatable).
        #[arg(long = "kernel", value_name = "KREL")]
        kernels: Vec<KernelRelease>,
        /// Also every kernel directory under /lib/modules, even without modules.dep or image.
        #[arg(long, conflicts_with = "kernels")]
        all_kernels: bool,
        /// Install even when an existing module is newer or identical (DKMS --force).
        #[arg(long)]
        force: bool,
        /// Show the live build log instead of a progress line.
        #[arg(long, short)]
        verbose: bool,
        /// Run from a kernel hook: report errors but always exit 0 (implies --autoinstall).
        #[arg(long)]
        hook: bool,
        /// Only modules whose dkms.conf sets AUTOINSTALL=yes, like DKMS's autoinstall
        /// (the kernel hook and the boot unit).
        #[arg(long)]
        autoinstall: bool,
    },
    /// Remove an installed module (NAME/VERSION) and rerun depmod.
    Uninstall {
        /// The module, as NAME/VERSION.
        #[arg(
            value_name = "NAME/VERSION",
            value_parser = parse_module,
            required_unless_present = "all_modules",
            conflicts_with = "all_modules"
        )]
        module: Option<(ModuleName, ModuleVersion)>,
        /// On this kernel [default: the running kernel].
        #[arg(long, value_name = "KREL")]
        kernel: Option<KernelRelease>,
        /// On every kernel.
        #[arg(long, conflicts_with = "kernel")]
        all: bool,
        /// Every module installed for --kernel (the prerm hook).
        #[arg(long, requires = "kernel")]
        all_modules: bool,
        /// Run from a kernel hook: report errors but always exit 0.
        #[arg(long)]
        hook: bool,
    },
    /// List installed modules like `dkms status` (or as JSON).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Install or remove the kernel hooks and the boot unit.
    Hooks {
        #[command(subcommand)]
        action: HooksCmd,
    },
    /// Manifest keys: show the server's to pin in `trusted_keys`.
    Trust {
        #[command(subcommand)]
        action: TrustCmd,
    },
    /// Secure Boot: module signature enforcement and MOK enrolment.
    Mok {
        #[command(subcommand)]
        action: MokCmd,
    },
    /// CI: upload a source tree, build it for kernels, write the artifacts.
    Submit {
        /// The source tree (dkms.conf at its root).
        path: PathBuf,
        /// Build for this kernel (repeatable, at least one).
        #[arg(long = "kernel", value_name = "KREL", required = true)]
        kernels: Vec<KernelRelease>,
        /// Where to write `<krel>/<file>.ko` and `<krel>/manifest.json`.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Module name [default: dkms.conf's PACKAGE_NAME].
        #[arg(long)]
        name: Option<ModuleName>,
        /// Module version [default: dkms.conf's PACKAGE_VERSION].
        #[arg(long)]
        version: Option<ModuleVersion>,
        /// Have the server boot each kernel with the modules and load them; fail
        /// (exit 5) unless that check passed [default: require_boot_check].
        #[arg(long)]
        boot_check: bool,
    },
}

#[derive(Subcommand)]
enum TrustCmd {
    /// Print the server's manifest key as a `trusted_keys` line, with its fingerprint.
    Show {
        /// The server [default: `server` of the configuration].
        url: Option<String>,
        /// Every public key of the server, as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MokCmd {
    /// Whether this host enforces module signatures, and whether the server's
    /// module-signing key is enrolled.
    Status {
        /// The server [default: `server` of the configuration].
        url: Option<String>,
    },
    /// Fetch the server's module-signing certificate and `mokutil --import` it
    /// (confirmed in the MOK manager at the next boot).
    Enroll {
        /// The server [default: `server` of the configuration].
        url: Option<String>,
        /// Enrol only a certificate with this sha256 (checked out of band).
        #[arg(long, value_name = "SHA256")]
        certificate_sha256: Option<String>,
    },
}

#[derive(Subcommand)]
enum HooksCmd {
    /// Write the hooks and the boot unit under the configured root.
    Install {
        /// The agent binary the hooks run [default: this executable].
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
    /// Remove them.
    Uninstall,
    /// Write the hooks and the boot unit into DIR in the Debian package's layout
    /// (etc/kernel/..., usr/lib/kernel/install.d/..., usr/lib/systemd/system/...),
    /// for packaging (scripts/package.sh); reads no configuration.
    Render {
        /// The staging directory.
        dir: PathBuf,
        /// The agent binary the hooks run.
        #[arg(long, value_name = "PATH", default_value = "/usr/bin/kmodforge-agent")]
        agent: PathBuf,
    },
}

fn parse_module(s: &str) -> Result<(ModuleName, ModuleVersion), String> {
    let (n, v) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not NAME/VERSION"))?;
    let name = ModuleName::parse(n).map_err(|e| e.to_string())?;
    let version = ModuleVersion::parse(v).map_err(|e| e.to_string())?;
    Ok((name, version))
}

/// The running kernel: `running_kernel` from the config, else `uname -r`.
pub fn running_kernel(cfg: &Config) -> Option<KernelRelease> {
    if let Some(k) = &cfg.running_kernel {
        return Some(k.clone());
    }
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    KernelRelease::parse(text.trim()).ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run(cli).into()
}

fn run(cli: Cli) -> Exit {
    let explicit = cli.config.is_some();
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    if let Cmd::Hooks {
        action: HooksCmd::Render { dir, agent },
    } = &cli.cmd
    {
        let spec = hooks::HookSpec {
            agent: agent.clone(),
            config: None,
        };
        return hooks::render(dir, &spec);
    }
    // `hooks` needs only `root` ("/" by default): it runs before the agent is configured.
    let missing_ok = !explicit
        && matches!(
            cli.cmd,
            Cmd::Submit { .. } | Cmd::Trust { .. } | Cmd::Hooks { .. }
        );
    let mut cfg = match Config::load(&path, missing_ok) {
        Ok(c) => c,
        Err(e) => return config_error(&cli.cmd, &path, &e),
    };
    if let Some(url) = &cli.server {
        if let Err(e) = cfg.set_server(url) {
            report::general(format!("--server: {e}"));
            return Exit::Usage;
        }
    }
    if let Some(file) = &cli.token_file {
        if let Err(e) = cfg.set_token_file(file) {
            report::general(format!("--token-file: {e}"));
            return Exit::Usage;
        }
    }
    match cli.cmd {
        Cmd::Sync {
            kernels,
            all_kernels,
            force,
            verbose,
            hook,
            autoinstall,
        } => {
            let args = sync::SyncArgs {
                kernels,
                all_kernels,
                force,
                verbose,
                hook,
                autoinstall: autoinstall || hook,
            };
            sync::run(&cfg, &args)
        }
        Cmd::Uninstall {
            module,
            kernel,
            all,
            all_modules,
            hook,
        } => uninstall(&cfg, module, kernel, all, all_modules, hook),
        Cmd::Status { json } => manage::status(&cfg, json),
        Cmd::Trust {
            action: TrustCmd::Show { url, json },
        } => keys::show(&cfg, url.as_deref(), json),
        Cmd::Mok { action } => match action {
            MokCmd::Status { url } => keys::status(&cfg, url.as_deref()),
            MokCmd::Enroll {
                url,
                certificate_sha256,
            } => keys::enroll(&cfg, url.as_deref(), certificate_sha256.as_deref()),
        },
        Cmd::Hooks { action } => hooks_cmd(&cfg, action, explicit.then_some(path.as_path())),
        Cmd::Submit {
            path,
            kernels,
            out,
            name,
            version,
            boot_check,
        } => {
            let args = submit::SubmitArgs {
                path,
                kernels,
                out,
                name,
                version,
                boot_check: boot_check || cfg.require_boot_check,
            };
            submit_cmd(&cfg, &args)
        }
    }
}

/// A configuration that cannot be loaded: exit 2, except under `--hook`, where a
/// kernel package must never fail: one line, exit 0 (a host where the agent is
/// installed but not configured yet gets `not configured`).
fn config_error(cmd: &Cmd, path: &Path, e: &config::ConfigError) -> Exit {
    let kernel = match cmd {
        Cmd::Sync {
            hook: true,
            kernels,
            ..
        } => kernels.first().map(ToString::to_string),
        Cmd::Uninstall {
            hook: true, kernel, ..
        } => kernel.as_ref().map(ToString::to_string),
        _ => {
            report::general(e);
            return Exit::Usage;
        }
    };
    let kernel = kernel.map(|k| format!(" for {k}")).unwrap_or_default();
    if !path.exists() {
        report::general(format!(
            "not configured ({} does not exist): nothing done{kernel}; not failing the kernel package",
            path.display()
        ));
    } else {
        report::general(format!(
            "{e}: nothing done{kernel}; not failing the kernel package"
        ));
    }
    Exit::Ok
}

fn uninstall(
    cfg: &Config,
    module: Option<(ModuleName, ModuleVersion)>,
    kernel: Option<KernelRelease>,
    all: bool,
    all_modules: bool,
    hook: bool,
) -> Exit {
    let what = match (module, all_modules, kernel) {
        (_, true, Some(kernel)) => manage::Uninstall::AllModules { kernel },
        (Some((name, version)), _, kernel) => {
            let kernel = match (all, kernel) {
                (true, _) => None,
                (false, Some(k)) => Some(k),
                (false, None) => {
                    match running_kernel(cfg) {
                        Some(k) => Some(k),
                        None => {
                            report::general("uninstall: the running kernel is unknown: pass --kernel KREL or --all");
                            return Exit::Usage;
                        }
                    }
                }
            };
            manage::Uninstall::One {
                name,
                version,
                kernel,
            }
        }
        _ => {
            report::general("uninstall: give NAME/VERSION, or --all-modules --kernel KREL");
            return Exit::Usage;
        }
    };
    manage::uninstall(cfg, &what, hook)
}

fn hooks_cmd(cfg: &Config, action: HooksCmd, config: Option<&Path>) -> Exit {
    match action {
        HooksCmd::Install { agent } => {
            let agent = match agent.map(Ok).unwrap_or_else(std::env::current_exe) {
                Ok(a) => a,
                Err(e) => {
                    report::general(format!("hooks install: locating this executable: {e}"));
                    return Exit::Internal;
                }
            };
            let config = match config.map(std::path::absolute).transpose() {
                Ok(c) => c,
                Err(e) => {
                    report::general(format!("hooks install: --config: {e}"));
                    return Exit::Usage;
                }
            };
            hooks::install(&cfg.root, &hooks::HookSpec { agent, config })
        }
        HooksCmd::Uninstall => hooks::uninstall(&cfg.root),
        // Handled before the configuration is read.
        HooksCmd::Render { dir, agent } => hooks::render(
            &dir,
            &hooks::HookSpec {
                agent,
                config: None,
            },
        ),
    }
}

fn submit_cmd(cfg: &Config, args: &submit::SubmitArgs) -> Exit {
    let client = cfg
        .server()
        .map_err(|e| e.to_string())
        .and_then(|s| client::Client::new(s, &cfg.http).map_err(|e| e.to_string()));
    match client {
        Ok(c) => submit::run(&c, args),
        Err(e) => {
            report::general(format!("submit: {e}"));
            Exit::Usage
        }
    }
}
