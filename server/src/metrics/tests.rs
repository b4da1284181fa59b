use super::*;

/// The value of the sample line `series` (name and labels exactly as encoded).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_fresh_registry_shows_build_outcomes_cache_and_load_at_zero() {
    let text = Metrics::new().render();
    for outcome in BUILD_OUTCOMES {
        let series = format!("kmodforge_builds_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
    }
    for series in [
        "kmodforge_cache_hits_total",
        "kmodforge_cache_misses_total",
        "kmodforge_builds_queued",
        "kmodforge_builds_running",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
    }
}

#[test]
fn every_family_has_its_type_once_it_has_a_series() {
    let m = Metrics::new();
    let s = Duration::from_secs(1);
    m.build_finished("failed", Some("timeout"), 1.0);
    m.boot_check_finished(CheckResult::Error, s);
    m.image_prepared("builder", true, s);
    m.artifact_served(Served::Tar, 1);
    m.http_request("/healthz", "GET", 200, s);
    let text = m.render();
    for family in [
        "kmodforge_builds_total counter",
        "kmodforge_build_failures_total counter",
        "kmodforge_build_duration_seconds histogram",
        "kmodforge_boot_check_duration_seconds histogram",
        "kmodforge_builds_queued gauge",
        "kmodforge_builds_running gauge",
        "kmodforge_cache_hits_total counter",
        "kmodforge_cache_misses_total counter",
        "kmodforge_image_preparations_total counter",
        "kmodforge_image_preparation_duration_seconds histogram",
        "kmodforge_artifact_bytes_served_total counter",
        "kmodforge_http_requests_total counter",
        "kmodforge_http_request_duration_seconds histogram",
    ] {
        let line = format!("# TYPE {family}\n");
        assert_eq!(text.matches(&line).count(), 1, "{family:?} in\n{text}");
    }
}

#[test]
fn a_failed_build_counts_its_kind_and_a_success_does_not() {
    let m = Metrics::new();
    m.build_finished("succeeded", None, 12.0);
    m.build_finished("failed", Some("compile_error"), 3.0);
    m.build_finished("not_applicable", Some("not_applicable"), 1.0);
    let text = m.render();
    for (series, value) in [
        ("kmodforge_builds_total{outcome=\"succeeded\"}", 1.0),
        ("kmodforge_builds_total{outcome=\"failed\"}", 1.0),
        ("kmodforge_builds_total{outcome=\"not_applicable\"}", 1.0),
        (
            "kmodforge_build_failures_total{kind=\"compile_error\"}",
            1.0,
        ),
        (
            "kmodforge_build_duration_seconds_count{outcome=\"succeeded\"}",
            1.0,
        ),
        (
            "kmodforge_build_duration_seconds_sum{outcome=\"succeeded\"}",
            12.0,
        ),
        (
            "kmodforge_build_duration_seconds_bucket{outcome=\"succeeded\",le=\"10\"}",
            0.0,
        ),
        (
            "kmodforge_build_duration_seconds_bucket{outcome=\"succeeded\",le=\"30\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        !text.contains("kind=\"not_applicable\""),
        "a build that does not apply is no failure:\n{text}"
    );
}

#[test]
fn requests_are_counted_by_route_method_and_status() {
    let m = Metrics::new();
    let ms = Duration::from_millis(3);
    m.http_request("/v1/builds/{id}", "GET", 200, ms);
    m.http_request("/v1/builds/{id}", "GET", 200, ms);
    m.http_request("/v1/builds/{id}", "GET", 404, ms);
    m.http_request("unmatched", "GET", 404, ms);
    let text = m.render();
    let ok =
        "kmodforge_http_requests_total{route=\"/v1/builds/{id}\",method=\"GET\",status=\"200\"}";
    assert_eq!(sample(&text, ok), Some(2.0), "{text}");
    let count =
        "kmodforge_http_request_duration_seconds_count{route=\"/v1/builds/{id}\",method=\"GET\"}";
    assert_eq!(sample(&text, count), Some(3.0), "{text}");
    let unmatched =
        "kmodforge_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}";
    assert_eq!(sample(&text, unmatched), Some(1.0), "{text}");
}

#[test]
fn gauges_images_bytes_and_checks() {
    let m = Metrics::new();
    m.set_build_load(3, 2);
    m.set_build_load(1, 2);
    m.image_prepared("builder", true, Duration::from_secs(95));
    m.image_prepared("verifier", false, Duration::from_secs(5));
    m.artifact_served(Served::File, 1000);
    m.artifact_served(Served::File, 24);
    m.artifact_served(Served::Blob, 7);
    m.boot_check_finished(CheckResult::Passed, Duration::from_secs(40));
    m.cache_hit();
    m.cache_miss();
    m.cache_miss();
    let text = m.render();
    for (series, value) in [
        ("kmodforge_builds_queued", 1.0),
        ("kmodforge_builds_running", 2.0),
        (
            "kmodforge_image_preparations_total{kind=\"builder\",outcome=\"success\"}",
            1.0,
        ),
        (
            "kmodforge_image_preparations_total{kind=\"verifier\",outcome=\"failure\"}",
            1.0,
        ),
        (
            "kmodforge_image_preparation_duration_seconds_count{kind=\"builder\"}",
            1.0,
        ),
        (
            "kmodforge_artifact_bytes_served_total{kind=\"file\"}",
            1024.0,
        ),
        ("kmodforge_artifact_bytes_served_total{kind=\"blob\"}", 7.0),
        (
            "kmodforge_boot_check_duration_seconds_count{result=\"passed\"}",
            1.0,
        ),
        ("kmodforge_cache_hits_total", 1.0),
        ("kmodforge_cache_misses_total", 2.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
}

#[test]
fn another_component_registers_its_own_metric() {
    let m = Metrics::new();
    let freed: Counter = Counter::default();
    m.register(
        "gc_freed_bytes",
        "Bytes freed by garbage collection",
        freed.clone(),
    );
    freed.inc_by(4096);
    let text = m.render();
    assert!(
        text.contains("# TYPE kmodforge_gc_freed_bytes_total counter\n"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kmodforge_gc_freed_bytes_total"),
        Some(4096.0)
    );
}
