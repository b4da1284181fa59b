//! Boot checks: what the agent does with the server's record of booting an
//! artifact's kernel under qemu and loading its modules (`Manifest::boot_check`).
//!
//! - A failed check always refuses the artifact (exit 5), whatever the config says.
//! - With `require_boot_check = true`, an artifact without a check is checked first:
//!   the agent asks `POST /v1/builds` with `boot_check: true` (the server then runs
//!   the check on the cached artifact) and decides again on the manifest that comes
//!   back; still no passed check refuses it.
//! - Without it, an artifact without a check is installed as before.

use kmodforge_agent::host::BootCheckRecord;
use kmodforge_api::wire::{BootCheck, BuildResponse, BuildState, FailureKind};

/// The refusal when `require_boot_check` is set and no check passed.
pub const NOT_VERIFIED: &str = "artifact is not boot-verified (require_boot_check = true)";

/// What to do with an artifact, given its boot check.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Install it (or keep it installed).
    Accept,
    /// Ask the server for a boot check, then decide again on its manifest.
    Check,
    /// Do not install it.
    Refuse(Refusal),
}

/// Why an artifact is refused: one line, plus the guest's console tail when a check
/// failed (shown with `--verbose`, and by `submit`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub message: String,
    pub console_tail: String,
}

impl Refusal {
    /// `boot check failed: <reason>`.
    pub fn failed(check: &BootCheck) -> Refusal {
        Refusal {
            message: format!(
                "boot check failed: {}",
                BootCheckRecord::failure_reason(check)
            ),
            console_tail: check.console_tail.clone(),
        }
    }

    /// `boot check failed: <reason>` from a failure message (no manifest came back).
    pub fn failed_message(message: &str) -> Refusal {
        let reason = message.trim();
        let reason = reason.strip_prefix("boot check failed: ").unwrap_or(reason);
        Refusal {
            message: format!("boot check failed: {reason}"),
            console_tail: String::new(),
        }
    }

    /// `artifact is not boot-verified (<why>)`.
    pub fn not_verified(message: &str) -> Refusal {
        Refusal {
            message: message.to_owned(),
            console_tail: String::new(),
        }
    }
}

/// The request's `boot_check`: `true` when required, else the server's default.
pub fn request_flag(required: bool) -> Option<bool> {
    required.then_some(true)
}

/// The decision on an artifact's `check`. `required` is `require_boot_check`;
/// `asked` says that the manifest came from a request with `boot_check: true`, so
/// asking again would not change it.
pub fn verdict(check: Option<&BootCheck>, required: bool, asked: bool) -> Verdict {
    verdict_with(check, required, asked, NOT_VERIFIED)
}

/// [`verdict`] with another refusal text for "no check" (`submit --boot-check`).
pub fn verdict_with(
    check: Option<&BootCheck>,
    required: bool,
    asked: bool,
    not_verified: &str,
) -> Verdict {
    match check {
        Some(c) if !c.passed => Verdict::Refuse(Refusal::failed(c)),
        Some(_) => Verdict::Accept,
        None if !required => Verdict::Accept,
        None if !asked => Verdict::Check,
        None => Verdict::Refuse(Refusal::not_verified(not_verified)),
    }
}

/// The refusal of a build that ended `failed` with `boot_check_failed` (the modules
/// built, the check failed); `None` for every other answer.
pub fn failed_build(resp: &BuildResponse) -> Option<Refusal> {
    let f = resp.build.failure.as_ref()?;
    if resp.build.state != BuildState::Failed || f.kind != FailureKind::BootCheckFailed {
        return None;
    }
    Some(
        match resp.artifact.as_ref().and_then(|m| m.boot_check.as_ref()) {
            Some(c) if !c.passed => Refusal::failed(c),
            _ => {
                // The server's line: `<name>/<version> on <krel>: boot check failed: <reason>`.
                let prefix = format!(
                    "{}/{} on {}: ",
                    resp.build.name, resp.build.version, resp.build.kernel
                );
                Refusal::failed_message(f.message.strip_prefix(&prefix).unwrap_or(&f.message))
            }
        },
    )
}

/// `; boot-verified` for an outcome line when `check` passed.
pub fn note(check: Option<&BootCheck>) -> &'static str {
    match check {
        Some(c) if c.passed => "; boot-verified",
        _ => "",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kmodforge_api::wire::{BuildRecord, Failure, ImageRef, Manifest};

    /// A boot check as the server records it.
    pub fn check(passed: bool, reason: Option<&str>) -> BootCheck {
        BootCheck {
            passed,
            booted: true,
            completed: true,
            reason: reason.map(str::to_owned),
            kernel: kmodforge_api::names::KernelRelease::parse("6.1.0-47-amd64")
                .expect("kernel release"),
            kernel_package_version: Some("6.1.158-1".into()),
            verifier_image: ImageRef {
                id: "sha256:verifier".into(),
                tag: "kmodforge-verifier:test".into(),
            },
            checked_at: "2026-01-02T03:04:05Z".into(),
            boot_seconds: 1.25,
            seconds: 3.5,
            initramfs_bytes: 1000,
            boot_image: "pvh".into(),
            timed_out: false,
            signature_enforced: false,
            trusted_cert_loaded: None,
            probes: vec![],
            modules: vec![],
            console_tail: "[    0.5] kmf_hello: loading out-of-tree module taints kernel.".into(),
        }
    }

    #[test]
    fn a_failed_check_is_always_refused() {
        let failed = check(false, Some("kmf_hello.ko: insmod: Invalid module format"));
        for (required, asked) in [(false, false), (true, false), (true, true), (false, true)] {
            let v = verdict(Some(&failed), required, asked);
            let Verdict::Refuse(r) = v else {
                panic!("{required} {asked}: {v:?}");
            };
            assert_eq!(
                r.message,
                "boot check failed: kmf_hello.ko: insmod: Invalid module format"
            );
            assert!(r.console_tail.contains("taints kernel"));
        }
        // No reason from the server: still one line saying what failed.
        let mut silent = check(false, None);
        silent.booted = false;
        let Verdict::Refuse(r) = verdict(Some(&silent), false, false) else {
            panic!("must refuse");
        };
        assert_eq!(
            r.message,
            "boot check failed: the kernel did not boot (the server gave no reason)"
        );
    }

    #[test]
    fn required_without_a_check_triggers_one_then_refuses() {
        assert_eq!(verdict(None, true, false), Verdict::Check);
        assert_eq!(
            verdict(None, true, true),
            Verdict::Refuse(Refusal::not_verified(NOT_VERIFIED))
        );
        assert_eq!(
            NOT_VERIFIED,
            "artifact is not boot-verified (require_boot_check = true)"
        );
    }

    #[test]
    fn a_passed_check_installs_and_no_check_installs_when_not_required() {
        let passed = check(true, None);
        for (required, asked) in [(false, false), (true, false), (true, true)] {
            assert_eq!(verdict(Some(&passed), required, asked), Verdict::Accept);
        }
        assert_eq!(verdict(None, false, false), Verdict::Accept);
        assert_eq!(verdict(None, false, true), Verdict::Accept);
        assert_eq!(request_flag(true), Some(true));
        assert_eq!(request_flag(false), None);
        assert_eq!(note(Some(&passed)), "; boot-verified");
        assert_eq!(note(None), "");
    }

    /// A final build answer.
    pub fn response(
        state: BuildState,
        failure: Option<(FailureKind, &str)>,
        artifact: Option<Manifest>,
    ) -> BuildResponse {
        let record = serde_json::json!({
            "id": "b1", "name": "kmf-hello", "version": "1.0", "kernel": "6.1.0-47-amd64",
            "arch": "x86_64", "state": state, "source_digest": "0".repeat(64),
            "image_id": null, "artifact_key": null, "failure": null,
            "created_at": "2026-01-01T00:00:00Z", "finished_at": null, "seconds": null
        });
        let mut build: BuildRecord = serde_json::from_value(record).expect("build record");
        build.failure = failure.map(|(kind, message)| Failure {
            kind,
            message: message.to_owned(),
            log_tail: String::new(),
        });
        BuildResponse {
            build,
            cached: false,
            artifact,
        }
    }

    #[test]
    fn a_build_failed_by_its_boot_check_is_a_refusal() {
        let msg = "kmf-hello/1.0 on 6.1.0-47-amd64: boot check failed: the guest panicked";
        let bare = response(
            BuildState::Failed,
            Some((FailureKind::BootCheckFailed, msg)),
            None,
        );
        assert_eq!(
            failed_build(&bare).expect("a refusal").message,
            "boot check failed: the guest panicked"
        );
        // With the artifact, its check's own reason wins.
        let mut m = crate::sync::tests::manifest_for_tests();
        m.boot_check = Some(check(false, Some("kmf_hello.ko did not load")));
        let full = response(
            BuildState::Failed,
            Some((FailureKind::BootCheckFailed, msg)),
            Some(m),
        );
        assert_eq!(
            failed_build(&full).expect("a refusal").message,
            "boot check failed: kmf_hello.ko did not load"
        );
        let compile = response(
            BuildState::Failed,
            Some((FailureKind::CompileError, "error")),
            None,
        );
        assert!(failed_build(&compile).is_none());
        assert!(failed_build(&response(BuildState::Succeeded, None, None)).is_none());
    }
}
