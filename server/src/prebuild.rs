//! Prebuilds: when a kernel is published (or on `POST /v1/kernels/{krel}/prebuild`),
//! build every registered module marked AUTOINSTALL (or a configured set), newest
//! version of each, at background priority: prebuild jobs yield build slots to
//! builds a client waits for. A failure is the news an operator needs before rolling
//! the kernel out: it goes to the webhook (JSON POST, retried, never blocking).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kmodforge_api::dkms::version_cmp;
use kmodforge_api::names::{KernelRelease, ModuleName};
use kmodforge_api::wire::{
    BuildRequest, BuildResponse, BuildState, KnownKernel, ModuleSource, Prebuild,
};

use crate::builds::{now_rfc3339, Builds, Priority};
use crate::store::{RecordsError, Store};

/// Attempts of one webhook delivery; the delay doubles from 1 s.
const WEBHOOK_ATTEMPTS: u32 = 5;

/// Which modules a prebuild builds.
#[derive(Clone, Debug, Default)]
pub struct PrebuildSettings {
    /// Only these modules; empty: every module whose dkms.conf sets AUTOINSTALL=yes
    /// (or computes it).
    pub modules: Vec<ModuleName>,
    /// Where failures are posted.
    pub webhook: Option<String>,
}

/// Starts prebuilds and reports their failures.
pub struct Prebuilder {
    builds: Arc<Builds>,
    store: Store,
    settings: PrebuildSettings,
    http: reqwest::Client,
}

impl Prebuilder {
    pub fn new(builds: Arc<Builds>, store: Store, settings: PrebuildSettings) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Arc::new(Prebuilder {
            builds,
            store,
            settings,
            http,
        })
    }

    /// Prebuilds `kernel` in the background.
    pub fn start(self: &Arc<Self>, kernel: KernelRelease, trigger: &'static str) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.prebuild(&kernel, trigger).await {
                tracing::warn!(%kernel, error = %e, "prebuild could not start");
            }
        });
    }

    /// Submits the builds of `kernel` and records them; returns the record.
    pub async fn prebuild(
        self: &Arc<Self>,
        kernel: &KernelRelease,
        trigger: &str,
    ) -> Result<Prebuild, RecordsError> {
        let records = &self.store.records;
        let mut known = records
            .get_kernel(kernel)
            .await?
            .unwrap_or_else(|| KnownKernel {
                kernel: kernel.clone(),
                suite: kernel.debian_suite().map(str::to_string),
                headers_version: None,
                published: false,
                requested: false,
                first_seen: now_rfc3339(),
                last_requested: None,
                prebuild: None,
            });
        let mut prebuild = Prebuild {
            started_at: now_rfc3339(),
            trigger: trigger.to_string(),
            builds: Vec::new(),
            error: None,
        };
        for module in self.chosen(&records.list_modules().await?) {
            let req = BuildRequest {
                name: module.name.clone(),
                version: module.version.clone(),
                kernel: kernel.clone(),
                arch: None,
                options: Default::default(),
                boot_check: None,
                sign: None,
            };
            match self.builds.submit_with(req, Priority::Background).await {
                Ok(s) => {
                    prebuild.builds.push(s.response.build.id.clone());
                    if let Some(job) = s.job {
                        let this = self.clone();
                        tokio::spawn(async move { this.report(job.wait().await).await });
                    }
                }
                Err(e) => {
                    let line = format!("{}/{}: {e}", module.name, module.version);
                    prebuild.error = Some(
                        prebuild
                            .error
                            .map_or(line.clone(), |p| format!("{p}; {line}")),
                    );
                }
            }
        }
        tracing::info!(%kernel, trigger, builds = prebuild.builds.len(), "prebuild submitted");
        known.prebuild = Some(prebuild.clone());
        // A client may have asked for the kernel meanwhile (retention reads that note): keep it.
        if let Some(now) = records.get_kernel(kernel).await? {
            known.requested = now.requested;
            known.last_requested = now.last_requested;
        }
        records.put_kernel(&known).await?;
        Ok(prebuild)
    }

    /// The newest version of each module name that a prebuild builds.
    fn chosen<'a>(&self, modules: &'a [ModuleSource]) -> Vec<&'a ModuleSource> {
        let mut newest: BTreeMap<&ModuleName, &ModuleSource> = BTreeMap::new();
        for m in modules {
            let wanted = if self.settings.modules.is_empty() {
                m.declared.autoinstall != Some(false)
            } else {
                self.settings.modules.contains(&m.name)
            };
            if !wanted {
                continue;
            }
            let slot = newest.entry(&m.name).or_insert(m);
            if version_cmp(m.version.as_str(), slot.version.as_str()).is_gt() {
                *slot = m;
            }
        }
        newest.into_values().collect()
    }

    /// A finished prebuild job: a failure goes to the webhook.
    async fn report(&self, done: BuildResponse) {
        let b = &done.build;
        if b.state != BuildState::Failed {
            return;
        }
        let Some(url) = self.settings.webhook.clone() else {
            return;
        };
        let failure = b.failure.clone();
        let notice = serde_json::json!({
            "event": "prebuild_failed",
            "kernel": b.kernel,
            "module": b.name,
            "version": b.version,
            "build_id": b.id,
            "kind": failure.as_ref().map(|f| f.kind),
            "message": failure.as_ref().map(|f| f.message.clone()),
            "log": format!("/v1/builds/{}/log", b.id),
            "at": now_rfc3339(),
        });
        deliver(&self.http, &url, &notice).await;
    }
}

/// POSTs `notice` to `url`, retrying with a doubling delay; gives up quietly (logged).
pub async fn deliver(http: &reqwest::Client, url: &str, notice: &serde_json::Value) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        match http.post(url).json(notice).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(url, attempt, "webhook delivered");
                return;
            }
            Ok(r) => {
                tracing::warn!(url, attempt, status = %r.status(), "webhook refused the notice")
            }
            Err(e) => tracing::warn!(url, attempt, error = %e, "webhook unreachable"),
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    tracing::error!(
        url,
        "webhook: notice dropped after {WEBHOOK_ATTEMPTS} attempts"
    );
}
