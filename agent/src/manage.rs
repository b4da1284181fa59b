//! `kmodforge-agent uninstall` and `kmodforge-agent status`.

use kmodforge_agent::host::{Host, HostError};
use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};

use crate::config::Config;
use crate::exitcode::Exit;
use crate::outcome::{describe_uninstall, host_exit};
use crate::report::{self, Subject};

/// What `uninstall` was asked to do.
#[derive(Clone, Debug)]
pub enum Uninstall {
    /// `NAME/VERSION` on one kernel, or on every kernel (`kernel: None`, `--all`).
    One {
        name: ModuleName,
        version: ModuleVersion,
        kernel: Option<KernelRelease>,
    },
    /// `--all-modules --kernel KREL`: everything installed for that kernel (prerm hook).
    AllModules { kernel: KernelRelease },
}

/// Runs `uninstall`; with `hook` errors are reported but the exit code is 0.
pub fn uninstall(cfg: &Config, what: &Uninstall, hook: bool) -> Exit {
    let exit = uninstall_inner(cfg, what, hook);
    if hook && exit != Exit::Ok {
        report::general(format!(
            "kernel hook: not failing the kernel package (exit {} ignored)",
            exit.code()
        ));
        return Exit::Ok;
    }
    exit
}

fn uninstall_inner(cfg: &Config, what: &Uninstall, hook: bool) -> Exit {
    let host = Host::new(cfg.paths.clone());
    // A hook (the kernel's prerm) waits for a sync that is installing, so the
    // removed kernel's modules and state never stay behind.
    let lock = match crate::sync::acquire(&host, cfg, hook) {
        Ok(l) => l,
        Err(e) => {
            report::general(format!("uninstall: {e}"));
            return host_exit(&e);
        }
    };
    let targets = match targets(&host, what) {
        Ok(t) => t,
        Err(e) => {
            report::general(format!("uninstall: {e}"));
            return Exit::Internal;
        }
    };
    let mut worst = Exit::Ok;
    for (name, version, kernel) in &targets {
        match host.uninstall(&lock, name, version, kernel.as_ref()) {
            Ok(reports) => {
                for r in &reports {
                    let s = Subject {
                        name,
                        version,
                        kernel: &r.kernel,
                    };
                    report::outcome(&s, describe_uninstall(r));
                }
            }
            Err(e @ HostError::NotInstalled { .. }) => println!("{e}: nothing to do"),
            Err(e) => {
                let where_ = kernel
                    .as_ref()
                    .map_or("every kernel".into(), |k| k.to_string());
                report::general(format!("{name}/{version} on {where_}: {e}"));
                worst = worst.worst(host_exit(&e));
            }
        }
    }
    // A removed module (or kernel: the prerm hook) can change what the host may boot.
    if cfg.boot_guard && cfg.modules.iter().any(|m| m.required) {
        crate::guard::report(crate::guard::apply(cfg, &host, &lock));
    }
    worst
}

/// A module/version to uninstall, on one kernel or (None) on every kernel.
type Target = (ModuleName, ModuleVersion, Option<KernelRelease>);

/// What to uninstall.
fn targets(host: &Host, what: &Uninstall) -> Result<Vec<Target>, Box<HostError>> {
    Ok(match what {
        Uninstall::One {
            name,
            version,
            kernel,
        } => vec![(name.clone(), version.clone(), kernel.clone())],
        Uninstall::AllModules { kernel } => {
            let mut out: Vec<_> = host
                .status(None)
                .map_err(Box::new)?
                .into_iter()
                .filter(|e| &e.kernel == kernel)
                .map(|e| (e.name, e.version, Some(kernel.clone())))
                .collect();
            out.dedup();
            if out.is_empty() {
                println!("{kernel}: no module installed by kmodforge-agent: nothing to do");
            }
            out
        }
    })
}

/// Runs `status`: DKMS 3.x lines (plus `name/version: added` for wanted modules
/// installed nowhere), or a JSON array of the host's status entries.
pub fn status(cfg: &Config, json: bool) -> Exit {
    let host = Host::new(cfg.paths.clone());
    let running = crate::running_kernel(cfg);
    let entries = match host.status(running.as_ref()) {
        Ok(e) => e,
        Err(e) => {
            report::general(format!("status: {e}"));
            return Exit::Internal;
        }
    };
    let boot = crate::guard::decide(cfg, &host);
    if json {
        let out = serde_json::json!({ "modules": entries, "boot": boot });
        return match serde_json::to_string_pretty(&out) {
            Ok(text) => {
                println!("{text}");
                Exit::Ok
            }
            Err(e) => {
                report::general(format!("status: encoding JSON: {e}"));
                Exit::Internal
            }
        };
    }
    for e in &entries {
        println!("{}", e.dkms_line());
    }
    for m in &cfg.modules {
        if !entries
            .iter()
            .any(|e| e.name == m.name && e.version == m.version)
        {
            println!("{}/{}: added", m.name, m.version);
        }
    }
    if boot.active {
        println!(
            "boot: {} ({})",
            boot.boots.as_ref().map(|k| k.as_str()).unwrap_or("?"),
            boot.reason
        );
    }
    Exit::Ok
}
