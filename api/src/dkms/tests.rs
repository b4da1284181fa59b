//! Table-driven tests of [`super::evaluate`] over hand-written dumps.

use super::dump::encode;
use super::*;
use crate::names::{Arch, KernelRelease, ModuleName, ModuleVersion};

mod errors;
mod records;
mod selection;

type Rec = (&'static str, &'static str, u32, &'static str);

const K47: &str = "6.1.0-47-amd64";

fn ctx_for(kernel: &str, module: &str, version: &str) -> EvalContext {
    EvalContext::new(
        KernelRelease::parse(kernel).unwrap(),
        Arch::host_default(),
        ModuleName::parse(module).unwrap(),
        ModuleVersion::parse(version).unwrap(),
        2,
    )
}

fn ctx() -> EvalContext {
    ctx_for(K47, "acpi-call", "1.2.2")
}

/// PACKAGE_NAME, PACKAGE_VERSION and one DEST_MODULE_LOCATION, plus `extra`.
fn with(extra: &[Rec]) -> Vec<Rec> {
    let mut records = vec![
        ("d", "PACKAGE_NAME", 0, "acpi-call"),
        ("d", "PACKAGE_VERSION", 0, "1.2.2"),
        ("d", "DEST_MODULE_LOCATION", 0, "/extra"),
    ];
    records.extend_from_slice(extra);
    records
}

fn eval_in(records: &[Rec], ctx: &EvalContext) -> Result<Evaluation, ConfError> {
    evaluate(&Dump::parse(&encode(records)).unwrap(), ctx)
}

fn eval(records: &[Rec]) -> Result<Evaluation, ConfError> {
    eval_in(records, &ctx())
}

fn plan(records: &[Rec]) -> BuildPlan {
    match eval(records) {
        Ok(Evaluation::Build(plan)) => plan,
        other => panic!("expected a plan, got {other:?}"),
    }
}

fn not_applicable(records: &[Rec], ctx: &EvalContext) -> Option<String> {
    match eval_in(records, ctx) {
        Ok(Evaluation::NotApplicable { reason }) => Some(reason),
        Ok(Evaluation::Build(_)) => None,
        Err(e) => panic!("unexpected error {e}"),
    }
}
#[test]
fn acpi_call_matches_real_dkms() {
    let p = plan(&with(&[
        ("d", "BUILT_MODULE_NAME", 0, "acpi_call"),
        (
            "d",
            "MAKE",
            0,
            "make -C /lib/modules/6.1.0-47-amd64/build M=/var/lib/dkms/acpi-call/1.2.2/build",
        ),
        ("d", "CLEAN", 0, "make clean"),
        ("d", "AUTOINSTALL", 0, "yes"),
        ("d", "BUILD_EXCLUSIVE_CONFIG", 0, "CONFIG_ACPI"),
        ("c", "CONFIG_ACPI", 0, "y"),
        ("v", "kernelver", 0, K47),
        ("v", "arch", 0, "x86_64"),
    ]));
    assert_eq!(p.make, "make -j2 KERNELRELEASE=6.1.0-47-amd64 -C /lib/modules/6.1.0-47-amd64/build M=/var/lib/dkms/acpi-call/1.2.2/build");
    let spec = ModuleSpec {
        built_name: "acpi_call".into(),
        built_location: String::new(),
        dest_name: "acpi_call".into(),
        dest_location: "/updates/dkms".into(),
        strip: true,
    };
    assert_eq!(p.modules, vec![spec]);
    assert!(p.autoinstall);
    assert_eq!(p.warnings, vec!["Deprecated feature: CLEAN"]);
}

#[test]
fn make_commands_from_the_corpus_baseline() {
    // (module, version, MAKE after expansion or "" for none, make_command DKMS 3.0.10 ran)
    let cases = [
        ("xtrx", "0.0.1+git20190320.5ae3a3e-3.2", "", "make -j2 KERNELRELEASE=6.1.0-47-amd64 -C /lib/modules/6.1.0-47-amd64/build M=/var/lib/dkms/xtrx/0.0.1+git20190320.5ae3a3e-3.2/build"),
        ("dpdk-kmods", "0~20220829+git", "make -C /lib/modules/6.1.0-47-amd64/build M=/var/lib/dkms/dpdk-kmods/0~20220829+git/build MODULE_CFLAGS='-fno-PIE' modules", "make -j2 KERNELRELEASE=6.1.0-47-amd64 -C /lib/modules/6.1.0-47-amd64/build M=/var/lib/dkms/dpdk-kmods/0~20220829+git/build MODULE_CFLAGS='-fno-PIE' modules"),
        ("ipt-netflow", "2.6", "make ipt_NETFLOW.ko", "make -j2 KERNELRELEASE=6.1.0-47-amd64 ipt_NETFLOW.ko"),
        ("openrazer-driver", "3.5.1", "KERNELDIR=/lib/modules/6.1.0-47-amd64/build make driver", "KERNELDIR=/lib/modules/6.1.0-47-amd64/build make driver"),
        ("dahdi", "2.11.1.0.20170917", "(make modules KVERS=6.1.0-47-amd64; make KVERS=6.1.0-47-amd64)", "(make modules KVERS=6.1.0-47-amd64; make KVERS=6.1.0-47-amd64)"),
        ("v4l2loopback", "0.12.7", "make KERNEL_DIR=/lib/modules/6.1.0-47-amd64/build all", "make -j2 KERNELRELEASE=6.1.0-47-amd64 KERNEL_DIR=/lib/modules/6.1.0-47-amd64/build all"),
        ("jool-dkms", "4.1.9", "make -C /k M=/a modules && make -C /k M=/b modules", "make -j2 KERNELRELEASE=6.1.0-47-amd64 -C /k M=/a modules && make -C /k M=/b modules"),
    ];
    for (module, version, make, expected) in cases {
        let mut records = with(&[]);
        if !make.is_empty() {
            records.push(("d", "MAKE", 0, make));
        }
        let p = match eval_in(&records, &ctx_for(K47, module, version)) {
            Ok(Evaluation::Build(p)) => p,
            other => panic!("{module}: {other:?}"),
        };
        assert_eq!(p.make, expected, "{module}");
    }
}

#[test]
fn scripts_depends_and_obsolete_by() {
    let p = plan(&with(&[
        ("d", "PRE_BUILD", 0, "configure.sh pre"),
        ("d", "POST_BUILD", 0, ""),
        ("d", "BUILD_DEPENDS", 0, "dep-a"),
        ("d", "BUILD_DEPENDS", 2, "dep-b"),
        ("d", "OBSOLETE_BY", 0, "7.0"),
    ]));
    assert_eq!(p.pre_build.as_deref(), Some("configure.sh pre"));
    assert_eq!(p.post_build, None);
    assert_eq!(p.build_depends, vec!["dep-a", "dep-b"]);
    assert_eq!(p.obsolete_by.as_deref(), Some("7.0"));
}

#[test]
fn plan_serde_roundtrip() {
    let p = plan(&with(&[("d", "MAKE", 0, "make")]));
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<BuildPlan>(&json).unwrap(), p);
}
