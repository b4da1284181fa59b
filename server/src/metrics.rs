//! This process's Prometheus metrics, served at `GET /metrics` in the Prometheus
//! text format (version 0.0.4).
//!
//! One [`Metrics`] per process, shared through `AppState` and handed to the
//! services that count (`builds`, `images`, `http`). Every name starts with
//! `kmodforge_`. Each replica of a cluster reports its own process: builds on the
//! replica that ran them, HTTP requests on the replica that answered them; sum
//! across replicas in the queries.
//!
//! Adding metrics: a field here with its recording method (the usual way), or,
//! from a component that owns its metrics, [`Metrics::register`] with any
//! `prometheus_client` metric (the name gets the `kmodforge_` prefix).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Buckets of a whole build job, in seconds (queue wait and image preparation
/// included; the wall-clock limit defaults to 1800 s).
const BUILD_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];
/// Buckets of a boot check, in seconds (the guest's limit defaults to 90 s).
const BOOT_CHECK_BUCKETS: &[f64] = &[5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0];
/// Buckets of an image preparation, in seconds (a first builder image takes minutes).
const IMAGE_BUCKETS: &[f64] = &[
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];
/// Buckets of an HTTP request's time to its response head, in seconds.
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The outcomes a build ends with (the record's final state), shown at 0 from the start.
const BUILD_OUTCOMES: &[&str] = &["succeeded", "failed", "not_applicable"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ImageLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: Clone + std::hash::Hash + Eq>(new: fn() -> Histogram) -> HistogramFamily<L> {
    Family::new_with_constructor(new)
}

/// How a boot check ended, for [`Metrics::boot_check_finished`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    Passed,
    Failed,
    /// The check could not run (its own trouble, not the modules').
    Error,
}

/// What a kind of work served, for [`Metrics::artifact_served`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// One `.ko` of an artifact.
    File,
    /// A `modules.tar` (also the one-shot build's answer, and a DKMS bundle's chunks).
    Tar,
    /// A blob by its sha256.
    Blob,
}

/// This process's metrics (see the module doc).
pub struct Metrics {
    registry: Mutex<Registry>,
    builds: Family<OutcomeLabel, Counter>,
    build_failures: Family<KindLabel, Counter>,
    build_seconds: HistogramFamily<OutcomeLabel>,
    boot_check_seconds: HistogramFamily<ResultLabel>,
    queued: Gauge,
    running: Gauge,
    cache_hits: Counter,
    cache_misses: Counter,
    images: Family<ImageLabels, Counter>,
    image_seconds: HistogramFamily<KindLabel>,
    artifact_bytes: Family<KindLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: HistogramFamily<RouteLabels>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric of the server, at zero.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("kmodforge")),
            builds: Family::default(),
            build_failures: Family::default(),
            build_seconds: histograms(|| Histogram::new(BUILD_BUCKETS.iter().copied())),
            boot_check_seconds: histograms(|| Histogram::new(BOOT_CHECK_BUCKETS.iter().copied())),
            queued: Gauge::default(),
            running: Gauge::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            images: Family::default(),
            image_seconds: histograms(|| Histogram::new(IMAGE_BUCKETS.iter().copied())),
            artifact_bytes: Family::default(),
            requests: Family::default(),
            request_seconds: histograms(|| Histogram::new(HTTP_BUCKETS.iter().copied())),
        };
        for outcome in BUILD_OUTCOMES {
            drop(m.builds.get_or_create(&OutcomeLabel { outcome }));
        }
        m.register_own();
        m
    }

    fn register_own(&self) {
        self.register(
            "builds",
            "Build jobs this replica ran to their end, by outcome (the record's final state)",
            self.builds.clone(),
        );
        self.register(
            "build_failures",
            "Failed build jobs by failure kind (the record's failure.kind)",
            self.build_failures.clone(),
        );
        self.register(
            "build_duration_seconds",
            "Seconds from a build job's start to its end (queue wait and image preparation included), by outcome",
            self.build_seconds.clone(),
        );
        self.register(
            "boot_check_duration_seconds",
            "Seconds a boot check took (boot, loads, power-off), by result: passed, failed, error (could not run)",
            self.boot_check_seconds.clone(),
        );
        self.register(
            "builds_queued",
            "Build jobs of this replica waiting for a build slot",
            self.queued.clone(),
        );
        self.register(
            "builds_running",
            "Build jobs of this replica holding or past their first build slot",
            self.running.clone(),
        );
        self.register(
            "cache_hits",
            "Build requests answered from an existing artifact",
            self.cache_hits.clone(),
        );
        self.register(
            "cache_misses",
            "Build jobs that found no artifact for their cache key and built one",
            self.cache_misses.clone(),
        );
        self.register(
            "image_preparations",
            "Image builds (builder, verifier, packages) by kind and outcome (success, failure)",
            self.images.clone(),
        );
        self.register(
            "image_preparation_duration_seconds",
            "Seconds an image build took (waiting for an image-work permit included), by kind",
            self.image_seconds.clone(),
        );
        self.register(
            "artifact_bytes_served",
            "Bytes of artifacts sent in answers, by kind: file (.ko), tar (modules.tar, one-shot), blob",
            self.artifact_bytes.clone(),
        );
        self.register(
            "http_requests",
            "HTTP requests by route template (unmatched: no route), method and status",
            self.requests.clone(),
        );
        self.register(
            "http_request_duration_seconds",
            "Seconds to an HTTP response's head (a streamed body's transfer is not included), by route template and method",
            self.request_seconds.clone(),
        );
    }

    /// Registers another metric (a component's own); `name` gets the `kmodforge_`
    /// prefix, a counter also the `_total` suffix. Register once, at start-up.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry())
        {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }

    /// A build job ended in `state` (`succeeded`, `failed`, `not_applicable`) after
    /// `seconds`; `kind` is its failure kind when it failed.
    pub fn build_finished(&self, state: &'static str, kind: Option<&'static str>, seconds: f64) {
        let outcome = OutcomeLabel { outcome: state };
        self.builds.get_or_create(&outcome).inc();
        self.build_seconds.get_or_create(&outcome).observe(seconds);
        if let (Some(kind), "failed") = (kind, state) {
            self.build_failures.get_or_create(&KindLabel { kind }).inc();
        }
    }

    /// A boot check ran (or could not) for `elapsed`.
    pub fn boot_check_finished(&self, result: CheckResult, elapsed: Duration) {
        let result = match result {
            CheckResult::Passed => "passed",
            CheckResult::Failed => "failed",
            CheckResult::Error => "error",
        };
        self.boot_check_seconds
            .get_or_create(&ResultLabel { result })
            .observe(elapsed.as_secs_f64());
    }

    /// The build jobs of this replica now: waiting for a slot, and running.
    pub fn set_build_load(&self, queued: usize, running: usize) {
        self.queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    /// An image build of `kind` (`builder`, `verifier`, `packages`) ended after `elapsed`.
    pub fn image_prepared(&self, kind: &'static str, success: bool, elapsed: Duration) {
        let outcome = if success { "success" } else { "failure" };
        self.images
            .get_or_create(&ImageLabels { kind, outcome })
            .inc();
        self.image_seconds
            .get_or_create(&KindLabel { kind })
            .observe(elapsed.as_secs_f64());
    }

    /// `bytes` of an artifact went into an answer.
    pub fn artifact_served(&self, what: Served, bytes: usize) {
        let kind = match what {
            Served::File => "file",
            Served::Tar => "tar",
            Served::Blob => "blob",
        };
        self.artifact_bytes
            .get_or_create(&KindLabel { kind })
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// An HTTP request to `route` (a template, never the raw path) was answered
    /// with `status` after `elapsed`.
    pub fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests;
