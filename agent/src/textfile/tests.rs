use super::*;
use kmodforge_api::names::{Arch, KernelRelease, ModuleName, ModuleVersion};

fn entry(name: &str, kernel: &str, intact: bool, verified: bool) -> StatusEntry {
    StatusEntry {
        name: ModuleName::parse(name).expect("name"),
        version: ModuleVersion::parse("1.0").expect("version"),
        kernel: KernelRelease::parse(kernel).expect("kernel"),
        arch: Arch::parse("x86_64").expect("arch"),
        state: "installed".into(),
        original_modules: false,
        files_missing: !intact,
        differs: false,
        artifact_key: "k".into(),
        installed_at: "2026-01-01T00:00:00Z".into(),
        files: Vec::new(),
        loaded: None,
        boot_verified: verified,
        boot_check: None,
        signing: None,
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_text_says_how_the_last_sync_went_and_what_is_installed() {
    let last = LastSync {
        exit: Exit::Unreachable,
        finished: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        seconds: 2.5,
    };
    let modules = [
        entry("kmf-hello", "6.1.0-47-amd64", true, true),
        entry("kmf-hello", "6.1.0-56-amd64", false, false),
    ];
    let boot = BootDecision {
        active: true,
        held: true,
        missing: vec![(
            KernelRelease::parse("6.1.0-56-amd64").expect("kernel"),
            vec!["r8152/2.17".into()],
        )],
        ..Default::default()
    };
    let text = render(&last, &modules, &boot);
    for (series, want) in [
        ("kmodforge_agent_last_sync_success", 0.0),
        ("kmodforge_agent_last_sync_exit_code", 3.0),
        (
            "kmodforge_agent_last_sync_timestamp_seconds",
            1_800_000_000.0,
        ),
        ("kmodforge_agent_last_sync_duration_seconds", 2.5),
        (
            r#"kmodforge_agent_module_installed{kernel="6.1.0-47-amd64",module="kmf-hello",version="1.0"}"#,
            1.0,
        ),
        (
            r#"kmodforge_agent_module_intact{kernel="6.1.0-56-amd64",module="kmf-hello",version="1.0"}"#,
            0.0,
        ),
        (
            r#"kmodforge_agent_module_boot_verified{kernel="6.1.0-47-amd64",module="kmf-hello",version="1.0"}"#,
            1.0,
        ),
        ("kmodforge_agent_boot_guard_held", 1.0),
        (
            r#"kmodforge_agent_kernel_required_modules_missing{kernel="6.1.0-56-amd64"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(
        text.contains("# TYPE kmodforge_agent_last_sync_success gauge\n"),
        "{text}"
    );
}

#[test]
fn a_write_replaces_the_file_whole_and_leaves_no_temp_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kmodforge.prom");
    write_atomic(&path, b"a 1\n").expect("first write");
    write_atomic(&path, b"a 2\n").expect("second write");
    assert_eq!(std::fs::read(&path).expect("read"), b"a 2\n");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "node_exporter must be able to read it");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["kmodforge.prom"], "only the file itself is left");
}

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The target is a non-empty directory: the rename fails after the temp file was written.
    let path = dir.path().join("busy.prom");
    std::fs::create_dir(&path).expect("mkdir");
    std::fs::write(path.join("x"), "x").expect("write");
    assert!(write_atomic(&path, b"a 1\n").is_err());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["busy.prom"], "the temp file was removed");
}
