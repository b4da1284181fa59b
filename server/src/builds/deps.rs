//! What a module's settings add to its builds: DKMS override files, Debian
//! packages and BUILD_DEPENDS dependencies.
//!
//! A dependency (from the settings, or from dkms.conf's own `BUILD_DEPENDS`) is the
//! newest registered version of that module (by DKMS's version order), built first
//! for the same kernel and arch through the ordinary build path (so it is cached,
//! single-flight and recorded like any build). The dependent then finds it where
//! DKMS keeps an installed dependency: its source at `/usr/src/<d>-<v>`, its build
//! under `/var/lib/dkms/<d>/<v>/<kver>/<arch>/module/`, with its `Module.symvers`
//! handed to kbuild as `KBUILD_EXTRA_SYMBOLS`.
//!
//! A job waits for its dependencies without holding a build slot, so dependents
//! can never starve the builds they wait for; a job about to wait on another that
//! (transitively) waits on it fails at once with the cycle instead of hanging.

use std::sync::Arc;

use bytes::Bytes;
use kmodforge_api::dkms::version_cmp;
use kmodforge_api::names::{Arch, ModuleName};
use kmodforge_api::settings::ModuleSettings;
use kmodforge_api::wire::{
    BuildRequest, BuildState, DependencyRef, Failure, FailureKind, Manifest, ModuleSource,
};

use super::{failure, Builds, Job};
use crate::builds::collect::SYMVERS;
use crate::flat_tar::flat_tar;

/// Most rounds of "evaluate, find new BUILD_DEPENDS, resolve them".
pub(super) const MAX_DEPENDENCY_ROUNDS: usize = 4;

/// One resolved dependency: its source and the artifact built from it.
#[derive(Clone, Debug)]
pub(super) struct Dependency {
    pub(super) module: ModuleSource,
    pub(super) manifest: Manifest,
}

/// The settings-derived inputs of one job.
#[derive(Clone, Debug, Default)]
pub(super) struct Extras {
    /// DKMS override files that apply: (file name, text), in DKMS's order.
    pub(super) overrides: Vec<(String, String)>,
    pub(super) packages: Vec<String>,
    pub(super) deps: Vec<Dependency>,
}

impl Extras {
    pub(super) fn new(settings: &ModuleSettings, req: &BuildRequest, arch: &Arch) -> Self {
        Extras {
            overrides: settings.overrides_for(&req.name, &req.version, &req.kernel, arch),
            packages: settings.packages.clone(),
            deps: Vec::new(),
        }
    }

    /// What the evaluation and the cache key depend on, beyond source/kernel/image.
    pub(super) fn identity(&self) -> serde_json::Value {
        let deps: Vec<_> = self
            .deps
            .iter()
            .map(|d| {
                serde_json::json!([
                    d.module.name,
                    d.module.version,
                    d.module.digest,
                    d.manifest.key
                ])
            })
            .collect();
        serde_json::json!({ "overrides": self.overrides, "packages": self.packages, "deps": deps })
    }

    pub(super) fn dependency_refs(&self) -> Vec<DependencyRef> {
        self.deps
            .iter()
            .map(|d| DependencyRef {
                name: d.module.name.clone(),
                version: d.module.version.clone(),
                key: d.manifest.key.clone(),
            })
            .collect()
    }

    pub(super) fn override_names(&self) -> Vec<String> {
        self.overrides.iter().map(|(f, _)| f.clone()).collect()
    }

    /// `<m>-<v>` of every source tree the container holds: the module's own first.
    pub(super) fn source_dirs(&self, req: &BuildRequest) -> Vec<String> {
        let mut dirs = vec![format!("{}-{}", req.name, req.version)];
        dirs.extend(
            self.deps
                .iter()
                .map(|d| format!("{}-{}", d.module.name, d.module.version)),
        );
        dirs
    }

    /// Variables for `kmf prepare`/`eval` (overrides) and `kmf build` (dependencies).
    pub(super) fn env(&self) -> Vec<String> {
        let mut env = Vec::new();
        for (i, (name, text)) in self.overrides.iter().enumerate() {
            env.push(format!("KMF_OVERRIDE_{i}={text}"));
            env.push(format!("KMF_OVERRIDE_NAME_{i}={name}"));
        }
        let deps: Vec<String> = self
            .deps
            .iter()
            .map(|d| format!("{} {}", d.module.name, d.module.version))
            .collect();
        env.push(format!("KMF_DEPENDS={}", deps.join("\n")));
        env
    }
}

impl Builds {
    /// The module's settings (empty when none were set).
    pub(super) async fn settings_of(
        &self,
        name: &ModuleName,
    ) -> Result<ModuleSettings, super::BuildError> {
        match self.store.records.get_settings(name).await {
            Ok(Some(r)) => Ok(r.settings),
            Ok(None) => Ok(ModuleSettings::default()),
            Err(source) => Err(super::BuildError::Settings {
                name: name.clone(),
                source,
            }),
        }
    }

    /// Builds (or finds) every dependency in `names` for the job's kernel and arch.
    pub(super) async fn resolve_deps(
        self: &Arc<Self>,
        job: &Job,
        names: &[ModuleName],
        req: &BuildRequest,
        arch: &Arch,
    ) -> Result<Vec<Dependency>, Failure> {
        let what = format!("{}/{} for {}", req.name, req.version, req.kernel);
        let fail = |msg: String| {
            failure(
                FailureKind::DependencyFailed,
                format!("{what}: {msg}"),
                &job.log,
            )
        };
        let registered = self
            .store
            .records
            .list_modules()
            .await
            .map_err(|e| failure(FailureKind::Infrastructure, e.to_string(), &job.log))?;
        let mut out = Vec::new();
        for name in names {
            let Some(module) = registered
                .iter()
                .filter(|m| &m.name == name)
                .max_by(|a, b| version_cmp(a.version.as_str(), b.version.as_str()))
                .cloned()
            else {
                return Err(fail(format!(
                    "BUILD_DEPENDS {name} is not registered (PUT /v1/modules/{name}/<version> first; DKMS: missing BUILD_DEPENDS)"
                )));
            };
            let dep_req = BuildRequest {
                name: module.name.clone(),
                version: module.version.clone(),
                kernel: req.kernel.clone(),
                arch: Some(arch.clone()),
                options: Default::default(),
                // Built to compile against; the dependent's check loads its modules too.
                boot_check: Some(false),
                // Signed like the dependent: both load into the same kernel.
                sign: req.sign,
            };
            let dep_what = format!("{}/{}", module.name, module.version);
            let submitted = self
                .submit(dep_req)
                .await
                .map_err(|e| fail(format!("BUILD_DEPENDS {dep_what}: {e}")))?;
            let done = match submitted.job {
                None => submitted.response,
                Some(dep_job) => {
                    job.log.note(&format!(
                        "BUILD_DEPENDS {dep_what}: waiting for build {}",
                        dep_job.id
                    ));
                    if let Some(cycle) = self.start_waiting(&job.id, &dep_job.id) {
                        return Err(fail(format!(
                            "BUILD_DEPENDS cycle: {cycle} (DKMS: missing BUILD_DEPENDS)"
                        )));
                    }
                    let done = dep_job.wait().await;
                    self.stop_waiting(&job.id);
                    done
                }
            };
            match (done.build.state, done.artifact, done.build.failure) {
                (BuildState::Succeeded, Some(manifest), _) => {
                    job.log.note(&format!(
                        "BUILD_DEPENDS {dep_what}: built by {} ({}{})",
                        manifest.build_id,
                        manifest.files.len(),
                        if manifest.symvers.is_some() {
                            " modules, with Module.symvers"
                        } else {
                            " modules"
                        }
                    ));
                    out.push(Dependency { module, manifest });
                }
                (state, _, f) => {
                    let why = f.map(|f| f.message).unwrap_or_default();
                    return Err(fail(format!(
                        "BUILD_DEPENDS {dep_what} is {} for {} (build {}): {why}",
                        state.as_str(),
                        req.kernel,
                        done.build.id
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Records that `waiter` waits for `target`, unless `target` already waits
    /// (transitively) for `waiter`: then returns the cycle, by module.
    fn start_waiting(&self, waiter: &str, target: &str) -> Option<String> {
        let mut inflight = self.inflight();
        let name_of = |id: &str, inflight: &super::Inflight| {
            inflight
                .by_id
                .get(id)
                .map(|j| j.snapshot().build.name.to_string())
                .unwrap_or_else(|| id.to_string())
        };
        let mut chain = vec![waiter.to_string(), target.to_string()];
        let mut at = target.to_string();
        loop {
            if at == waiter {
                let names: Vec<String> = chain.iter().map(|id| name_of(id, &inflight)).collect();
                return Some(names.join(" -> "));
            }
            match inflight.waits.get(&at) {
                // A job waits for one dependency at a time, so this is a chain.
                Some(next) if chain.len() <= 64 => {
                    chain.push(next.clone());
                    at = next.clone();
                }
                _ => break,
            }
        }
        inflight
            .waits
            .insert(waiter.to_string(), target.to_string());
        None
    }

    fn stop_waiting(&self, waiter: &str) {
        self.inflight().waits.remove(waiter);
    }

    /// Puts each dependency's source and build into the container, as DKMS has
    /// them after `dkms build` + `dkms install` of the dependency.
    pub(super) async fn place_deps(
        &self,
        container: &crate::sandbox::JobContainer,
        job: &Job,
        req: &BuildRequest,
        extras: &Extras,
    ) -> Result<(), super::SetupError> {
        for dep in &extras.deps {
            let dep_req = BuildRequest {
                name: dep.module.name.clone(),
                version: dep.module.version.clone(),
                ..req.clone()
            };
            let env = super::run::base_env(&dep_req, self.jobs());
            let source = self
                .store
                .objects
                .get_source(&dep.module.digest)
                .await
                .map_err(|source| super::SetupError::Blob {
                    what: format!("source of {}", dep.module.name),
                    source,
                })?
                .to_vec();
            let built = self.dependency_tar(&dep.manifest).await?;
            for (sub, stdin) in [("unpack", source), ("put-built", built)] {
                let out = container
                    .exec(crate::sandbox::Exec {
                        cmd: super::run::kmf(sub),
                        env: env.clone(),
                        stdin: Some(Bytes::from(stdin)),
                        collect_stdout: None,
                        log: &job.log,
                        timeouts: Some((super::run::EVAL_TIMEOUT, super::run::EVAL_TIMEOUT)),
                        output_cap: Some(self.sandbox.limits().output_cap_bytes),
                    })
                    .await?;
                if out.exit_code != Some(0) {
                    return Err(super::SetupError::DependencyStep {
                        step: sub,
                        dependency: format!("{}/{}", dep.module.name, dep.module.version),
                        exit: out.exit_code,
                    });
                }
            }
        }
        Ok(())
    }

    /// A flat tar of a dependency's modules and Module.symvers, from the blobs.
    async fn dependency_tar(&self, m: &Manifest) -> Result<Vec<u8>, super::SetupError> {
        let mut files: Vec<(String, String)> = m
            .files
            .iter()
            .map(|f| (f.file.clone(), f.sha256.clone()))
            .collect();
        if let Some(s) = &m.symvers {
            files.push((SYMVERS.to_string(), s.sha256.clone()));
        }
        let mut blobs = Vec::with_capacity(files.len());
        for (name, sha256) in files {
            let data = self
                .store
                .objects
                .get_blob(&sha256)
                .await
                .map_err(|source| super::SetupError::Blob {
                    what: format!("blob {sha256} of {}/{}", m.name, m.version),
                    source,
                })?
                .ok_or_else(|| {
                    super::SetupError::Missing(format!("blob {sha256} of {}/{}", m.name, m.version))
                })?;
            blobs.push((name, data));
        }
        flat_tar(
            blobs
                .iter()
                .map(|(name, data)| (name.as_str(), 0o644, &data[..])),
        )
        .map_err(super::SetupError::Tar)
    }
}
