//! Retention: what the server stops keeping, and when.
//!
//! A collection removes
//! - build records (and their logs) created longer ago than `--retain-builds`,
//!   except records an artifact's manifest names and builds still queued or running;
//! - blobs no artifact refers to and source tars no module refers to;
//! - per-kernel images (builder, verifier, builder-with-packages) of kernels no
//!   build was requested for within `--retain-kernels-unused`, with their `/usr`
//!   volumes. A kernel this server has no record of is
//!   never touched (the engine may be shared with other servers), nor a kernel a
//!   queued or running build is for (its image is in use or being prepared).
//!
//! Runs every `--gc-interval-secs` and on `POST /v1/gc` (`?dry_run=true` only
//! reports). One collection at a time per process; in a cluster, the store part
//! (records, logs, blobs, sources) runs on one replica at a time under the
//! records' GC lock (a PostgreSQL advisory lock), while each replica collects the
//! images of its own engine.
//!
//! The race with builds: a build stores its blobs before it records the artifact
//! that refers to them. [`Objects::put_blob`] (re)writes every blob, so a blob
//! that a build in flight stored or reused is at least as new as that build; a
//! blob is collected only when it is older than the oldest build in flight (and
//! than the grace period). Just before deleting, the blob's reference and age are
//! read again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::{BuildRecord, KnownKernel};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::builds::Builds;
use crate::engine::{ContainerEngine, ImageInfo, LabelSelector};
use crate::store::{BlobError, RecordsError, Store, StoredObject};

/// Label of every per-kernel image (set by the recipes, inherited by package images).
const KERNEL_LABEL: &str = "kmodforge.kernel";
/// At most this many build records per collection (the next one takes the rest).
const MAX_BUILDS_PER_RUN: u32 = 10_000;

/// When things expire.
#[derive(Clone, Debug)]
pub struct GcSettings {
    /// Build records and logs older than this go.
    pub retain_builds: Duration,
    /// Images of kernels not requested for this long go.
    pub retain_kernels_unused: Duration,
    /// Time between periodic collections; `None`: only on request.
    pub interval: Option<Duration>,
    /// Unreferenced blobs and sources younger than this stay (an upload or a
    /// build may be about to record them).
    pub grace: Duration,
}

/// Default of [`GcSettings::grace`].
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// What collections freed since the server started: the counters `/metrics` exports
/// (`kmodforge_gc_runs_total`, `kmodforge_gc_freed_total{what}`,
/// `kmodforge_gc_freed_bytes_total`), registered by [`GcTotals::register`].
#[derive(Debug, Default)]
pub struct GcTotals {
    runs: Counter,
    freed: Family<WhatLabel, Counter>,
    bytes: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

/// The kinds of things a collection frees, the `what` label of `kmodforge_gc_freed_total`.
const FREED: [&str; 6] = ["records", "logs", "blobs", "sources", "images", "volumes"];

/// A snapshot of [`GcTotals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcTotalsSnapshot {
    /// Collections that ran (dry runs excluded).
    pub runs: u64,
    pub records: u64,
    pub logs: u64,
    pub blobs: u64,
    pub sources: u64,
    /// Bytes of logs, blobs and sources freed in the object store.
    pub bytes: u64,
    pub images: u64,
    pub volumes: u64,
}

impl GcTotals {
    /// Exports the totals in `metrics` (every `what` at 0 from the start).
    pub fn register(&self, metrics: &crate::metrics::Metrics) {
        for what in FREED {
            drop(self.freed.get_or_create(&WhatLabel { what }));
        }
        metrics.register(
            "gc_runs",
            "Garbage collections that ran (periodic and POST /v1/gc; dry runs excluded)",
            self.runs.clone(),
        );
        metrics.register(
            "gc_freed",
            "What garbage collections removed: build records, logs, blobs, sources, images, volumes",
            self.freed.clone(),
        );
        metrics.register(
            "gc_freed_bytes",
            "Bytes of logs, blobs and sources garbage collections removed from the object store",
            self.bytes.clone(),
        );
    }

    pub fn totals(&self) -> GcTotalsSnapshot {
        let freed = |what| self.freed.get_or_create(&WhatLabel { what }).get();
        GcTotalsSnapshot {
            runs: self.runs.get(),
            records: freed("records"),
            logs: freed("logs"),
            blobs: freed("blobs"),
            sources: freed("sources"),
            bytes: self.bytes.get(),
            images: freed("images"),
            volumes: freed("volumes"),
        }
    }

    fn add(&self, r: &GcReport) {
        self.runs.inc();
        let freed = |what, n: u64| {
            self.freed.get_or_create(&WhatLabel { what }).inc_by(n);
        };
        let len = |v: usize| v as u64;
        freed("records", len(r.builds.len()));
        freed("logs", r.logs);
        freed("blobs", len(r.blobs.len()));
        freed("sources", len(r.sources.len()));
        freed("images", len(r.images.len()));
        freed("volumes", len(r.volumes.len()));
        self.bytes.inc_by(r.bytes);
    }
}

/// An image a collection removed (or would remove).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GcImage {
    pub id: String,
    pub kernel: String,
}

/// What one collection freed (or, in a dry run, would free): the body of `POST /v1/gc`.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct GcReport {
    pub dry_run: bool,
    /// Set when another replica held the GC lock: records, logs, blobs and
    /// sources were left to it (images of this replica's engine were collected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Ids of the build records removed.
    pub builds: Vec<String>,
    /// Build logs removed.
    pub logs: u64,
    /// Blob addresses (sha256) removed.
    pub blobs: Vec<String>,
    /// Source digests removed.
    pub sources: Vec<String>,
    /// Bytes freed in the object store (logs, blobs, sources).
    pub bytes: u64,
    pub images: Vec<GcImage>,
    /// Names of the `/usr` volumes removed.
    pub volumes: Vec<String>,
    /// Things that could not be removed (in use, engine errors): one line each.
    pub errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error(transparent)]
    Objects(#[from] BlobError),
}

/// The collector.
pub struct Gc {
    store: Store,
    builds: Arc<Builds>,
    engine: Arc<dyn ContainerEngine>,
    settings: GcSettings,
    pub totals: Arc<GcTotals>,
    /// One collection at a time in this process.
    running: tokio::sync::Mutex<()>,
}

/// What builds in flight protect, read once per collection.
struct InFlight {
    kernels: HashSet<String>,
    /// Start of the oldest build in flight.
    oldest: Option<SystemTime>,
}

impl Gc {
    pub fn new(
        store: Store,
        builds: Arc<Builds>,
        engine: Arc<dyn ContainerEngine>,
        settings: GcSettings,
    ) -> Arc<Self> {
        Arc::new(Gc {
            store,
            builds,
            engine,
            settings,
            totals: Arc::new(GcTotals::default()),
            running: tokio::sync::Mutex::new(()),
        })
    }

    /// Collects every `--gc-interval-secs` (first after one interval).
    pub fn spawn(self: Arc<Self>) {
        let Some(every) = self.settings.interval else {
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = self.run(false).await {
                    tracing::warn!(error = %e, "gc: collection failed; next try in one interval");
                }
            }
        });
    }

    /// One collection; with `dry_run`, only says what would go.
    pub async fn run(&self, dry_run: bool) -> Result<GcReport, GcError> {
        let _one = self.running.lock().await;
        let now = SystemTime::now();
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        match self.store.records.try_gc_lock().await? {
            Some(_lock) => {
                let flight = self.in_flight().await?;
                self.collect_builds(now, &mut report).await?;
                let cutoff = object_cutoff(now, self.settings.grace, flight.oldest);
                self.collect_blobs(cutoff, &mut report).await?;
                self.collect_sources(cutoff, &mut report).await?;
            }
            None => report.skipped = Some("another replica is collecting the store".into()),
        }
        self.collect_images(now, &mut report).await?;
        if !dry_run {
            self.totals.add(&report);
        }
        tracing::info!(
            dry_run,
            records = report.builds.len(),
            logs = report.logs,
            blobs = report.blobs.len(),
            sources = report.sources.len(),
            bytes = report.bytes,
            images = report.images.len(),
            volumes = report.volumes.len(),
            errors = report.errors.len(),
            "gc: collected"
        );
        Ok(report)
    }

    /// Builds queued or running here or (in a cluster) on any replica.
    async fn in_flight(&self) -> Result<InFlight, RecordsError> {
        let mut builds: Vec<BuildRecord> = self.builds.in_flight();
        builds.extend(self.store.records.unfinished_builds().await?);
        Ok(InFlight {
            kernels: builds.iter().map(|b| b.kernel.to_string()).collect(),
            oldest: builds
                .iter()
                .filter_map(|b| humantime::parse_rfc3339(&b.created_at).ok())
                .min(),
        })
    }

    async fn collect_builds(&self, now: SystemTime, r: &mut GcReport) -> Result<(), GcError> {
        let before = humantime::format_rfc3339_seconds(
            now.checked_sub(self.settings.retain_builds)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
        .to_string();
        let records = &self.store.records;
        let mut ids = records.expired_builds(&before, MAX_BUILDS_PER_RUN).await?;
        if !r.dry_run {
            ids = records.delete_builds(&ids).await?;
        }
        for id in &ids {
            let objects = &self.store.objects;
            if let Some(size) = objects.log_size(id).await? {
                if !r.dry_run {
                    objects.delete_log(id).await?;
                }
                r.logs += 1;
                r.bytes += size;
            }
        }
        r.builds = ids;
        Ok(())
    }

    async fn collect_blobs(&self, cutoff: SystemTime, r: &mut GcReport) -> Result<(), GcError> {
        let objects = &self.store.objects;
        let referenced = self.store.records.referenced_blobs().await?;
        for blob in unreferenced(objects.list_blobs().await?, &referenced, cutoff) {
            if !r.dry_run {
                // Read again: an artifact recorded, or a build that rewrote it, since the listing.
                let now_meta = objects.blob_meta(&blob.name).await?;
                let still_old = now_meta.is_some_and(|m| m.modified < cutoff);
                if !still_old || self.store.records.blob_in_use(&blob.name).await? {
                    continue;
                }
                objects.delete_blob(&blob.name).await?;
            }
            r.bytes += blob.size;
            r.blobs.push(blob.name);
        }
        Ok(())
    }

    async fn collect_sources(&self, cutoff: SystemTime, r: &mut GcReport) -> Result<(), GcError> {
        let objects = &self.store.objects;
        let referenced = self.store.records.referenced_sources().await?;
        for source in unreferenced(objects.list_sources().await?, &referenced, cutoff) {
            let Ok(digest) = kmodforge_api::names::SourceDigest::parse(&source.name) else {
                continue;
            };
            if !r.dry_run {
                if self.store.records.digest_in_use(&source.name).await? {
                    continue;
                }
                objects.delete_source(&digest).await?;
            }
            r.bytes += source.size;
            r.sources.push(source.name);
        }
        Ok(())
    }

    async fn collect_images(&self, now: SystemTime, r: &mut GcReport) -> Result<(), GcError> {
        let selector = LabelSelector::default().has(KERNEL_LABEL);
        let images = match self.engine.list_images(&selector).await {
            Ok(images) => images,
            Err(e) => {
                r.errors.push(format!("images not collected: {e}"));
                return Ok(());
            }
        };
        let last_use = last_use(&self.store.records.list_kernels().await?);
        let cutoff = now
            .checked_sub(self.settings.retain_kernels_unused)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let flight = self.in_flight().await?;
        let mut gone = HashSet::new();
        for img in unused_images(&images, &last_use, &flight.kernels, cutoff) {
            let kernel = img.labels.get(KERNEL_LABEL).cloned().unwrap_or_default();
            if !r.dry_run {
                // A build for the kernel may have started since the listing.
                if self
                    .builds
                    .in_flight()
                    .iter()
                    .any(|b| b.kernel.as_str() == kernel)
                {
                    continue;
                }
                if let Err(e) = self.engine.remove_image(&img.id).await {
                    r.errors.push(e.to_string());
                    continue;
                }
                self.forget(&kernel, &img.id);
            }
            gone.insert(img.id.clone());
            r.images.push(GcImage {
                id: img.id.clone(),
                kernel,
            });
        }
        self.collect_volumes(&gone, r).await;
        Ok(())
    }

    /// The `/usr` volumes of the images removed now. (Volumes of images removed
    /// otherwise are left alone: on an engine shared with other servers, this one
    /// cannot tell whose they are.)
    async fn collect_volumes(&self, gone: &HashSet<String>, r: &mut GcReport) {
        if gone.is_empty() {
            return;
        }
        let label = crate::usr_volumes::IMAGE_LABEL;
        let selector = LabelSelector::default().has(label);
        let volumes = match self.engine.list_volumes(&selector).await {
            Ok(v) => v,
            Err(e) => return r.errors.push(format!("volumes not collected: {e}")),
        };
        for v in volumes {
            if !v
                .labels
                .get(label)
                .is_some_and(|image| gone.contains(image))
            {
                continue;
            }
            if !r.dry_run {
                if let Err(e) = self.engine.remove_volume(&v.name).await {
                    r.errors.push(e.to_string());
                    continue;
                }
            }
            r.volumes.push(v.name);
        }
    }

    /// Drops what this process resolved for a removed image.
    fn forget(&self, kernel: &str, image_id: &str) {
        let (builder, checker, usr) = self.builds.image_caches();
        if let Ok(k) = KernelRelease::parse(kernel) {
            builder.forget(&k);
            checker.forget(&k);
        }
        usr.forget(image_id);
    }
}

/// Blobs and sources written before `cutoff` that nothing refers to.
fn unreferenced(
    listed: Vec<StoredObject>,
    referenced: &HashSet<String>,
    cutoff: SystemTime,
) -> Vec<StoredObject> {
    listed
        .into_iter()
        .filter(|o| o.modified < cutoff && !referenced.contains(&o.name))
        .collect()
}

/// Objects written after this may belong to a build or upload in flight: the
/// grace period before now, or the start of the oldest build in flight if earlier.
fn object_cutoff(now: SystemTime, grace: Duration, oldest: Option<SystemTime>) -> SystemTime {
    let by_grace = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    oldest.map_or(by_grace, |o| o.min(by_grace))
}

/// When each known kernel was last requested (its first sighting if never).
fn last_use(kernels: &[KnownKernel]) -> HashMap<String, SystemTime> {
    kernels
        .iter()
        .filter_map(|k| {
            let at = k.last_requested.as_deref().unwrap_or(&k.first_seen);
            Some((k.kernel.to_string(), humantime::parse_rfc3339(at).ok()?))
        })
        .collect()
}

/// The images to remove: of a kernel this server knows, last used before
/// `cutoff`, and not the kernel of a build in flight. Images built on another
/// (package images) come first, so that their parent can go after them.
fn unused_images<'a>(
    images: &'a [ImageInfo],
    last_use: &HashMap<String, SystemTime>,
    protected: &HashSet<String>,
    cutoff: SystemTime,
) -> Vec<&'a ImageInfo> {
    let mut out: Vec<&ImageInfo> = images
        .iter()
        .filter(|img| {
            let Some(kernel) = img.labels.get(KERNEL_LABEL) else {
                return false;
            };
            let unused = last_use.get(kernel).is_some_and(|t| *t < cutoff);
            unused && !protected.contains(kernel)
        })
        .collect();
    out.sort_by_key(|img| !img.labels.contains_key("kmodforge.base"));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::Labels;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn obj(name: &str, secs: u64) -> StoredObject {
        StoredObject {
            name: name.into(),
            size: 10,
            modified: at(secs),
        }
    }

    fn image(id: &str, kernel: &str, extra: &[(&str, &str)]) -> ImageInfo {
        let mut labels = Labels::from([(KERNEL_LABEL.to_string(), kernel.to_string())]);
        for (k, v) in extra {
            labels.insert(k.to_string(), v.to_string());
        }
        ImageInfo {
            id: id.into(),
            labels,
        }
    }

    #[test]
    fn only_old_unreferenced_objects_go() {
        let referenced = HashSet::from(["used".to_string()]);
        let listed = vec![obj("used", 1), obj("orphan", 1), obj("fresh", 100)];
        let names: Vec<String> = unreferenced(listed, &referenced, at(50))
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["orphan"]);
    }

    #[test]
    fn a_build_in_flight_moves_the_object_cutoff_back() {
        let grace = Duration::from_secs(10);
        assert_eq!(object_cutoff(at(100), grace, None), at(90));
        assert_eq!(object_cutoff(at(100), grace, Some(at(40))), at(40));
        assert_eq!(object_cutoff(at(100), grace, Some(at(95))), at(90));
    }

    #[test]
    fn kernels_last_used_before_the_cutoff_lose_their_images() {
        let images = vec![
            image("old-builder", "6.1.0-1-amd64", &[]),
            image(
                "old-pkgs",
                "6.1.0-1-amd64",
                &[("kmodforge.base", "old-builder")],
            ),
            image("recent", "6.1.0-2-amd64", &[]),
            image("unknown", "6.1.0-3-amd64", &[]),
            image("busy", "6.1.0-4-amd64", &[]),
            ImageInfo {
                id: "unlabelled".into(),
                labels: Labels::new(),
            },
        ];
        let last_use = HashMap::from([
            ("6.1.0-1-amd64".to_string(), at(10)),
            ("6.1.0-2-amd64".to_string(), at(100)),
            ("6.1.0-4-amd64".to_string(), at(10)),
        ]);
        let protected = HashSet::from(["6.1.0-4-amd64".to_string()]);
        let ids: Vec<&str> = unused_images(&images, &last_use, &protected, at(50))
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        // The package image before the builder image it was made from.
        assert_eq!(ids, ["old-pkgs", "old-builder"]);
    }

    #[test]
    fn last_use_is_the_last_request_else_the_first_sighting() {
        let k = |kernel: &str, last: Option<&str>| KnownKernel {
            kernel: KernelRelease::parse(kernel).unwrap(),
            suite: None,
            headers_version: None,
            published: true,
            requested: last.is_some(),
            first_seen: "1970-01-01T00:00:10Z".into(),
            last_requested: last.map(str::to_string),
            prebuild: None,
        };
        let uses = last_use(&[
            k("6.1.0-1-amd64", None),
            k("6.1.0-2-amd64", Some("1970-01-01T00:01:40Z")),
        ]);
        assert_eq!(uses["6.1.0-1-amd64"], at(10));
        assert_eq!(uses["6.1.0-2-amd64"], at(100));
    }

    #[test]
    fn totals_add_up_real_runs() {
        let totals = GcTotals::default();
        let report = GcReport {
            builds: vec!["a".into(), "b".into()],
            logs: 2,
            blobs: vec!["x".into()],
            bytes: 30,
            volumes: vec!["v".into()],
            ..GcReport::default()
        };
        totals.add(&report);
        totals.add(&report);
        let t = totals.totals();
        assert_eq!((t.runs, t.records, t.logs, t.blobs), (2, 4, 4, 2));
        assert_eq!((t.bytes, t.images, t.volumes), (60, 0, 2));
    }
}
