//! The dkms.conf directives of DKMS's do_build that no Debian package uses, each with an
//! effect the tests can see in the artifact or the build log:
//! `BUILT_MODULE_LOCATION`, `DEST_MODULE_NAME`, `STRIP`, `PATCH`/`PATCH_MATCH`,
//! `MAKE`/`MAKE_MATCH` (the last matching one wins), `PRE_BUILD` and `POST_BUILD` (with
//! arguments, in `build/`, in DKMS's order), and the failures of patches and build scripts.
//!
//! Fixtures: `tests/fixtures-e2e/{directives,patch-fails,patch-missing,pre-build-fails}`.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use kmodforge_api::modinfo::ModInfo;
use kmodforge_api::wire::{ArtifactFile, BuildResponse, BuildState, Failure, FailureKind};
use kmodforge_e2e::{
    check_downloads, e2e_fixture, expect_failure, real_modinfo, request, Env, ServerOpts, KERNEL_A,
};
use reqwest::StatusCode;

/// Adds `dir` as `name`/1.0, builds it for `KERNEL_A` (a cache miss), waits for the end
/// and checks that the build's container is gone. Returns the final record and the log.
async fn build_to_end(env: &Env, name: &str, dir: &Path) -> Result<(BuildResponse, String)> {
    env.client.add_module(name, "1.0", dir).await?;
    let (status, first) = env.client.build(&request(name, "1.0", KERNEL_A)?).await?;
    ensure!(
        status == StatusCode::ACCEPTED && !first.cached,
        "first request for {name} must start a build: {status} {first:?}"
    );
    let done = env.client.wait(&first.build.id).await?;
    env.assert_no_container_of(&done.build.id).await?;
    let log = env.client.build_log(&done.build.id).await?;
    Ok((done, log))
}

/// The failure of a build that must have failed with `kind`, and no artifact for it.
async fn failed_with<'a>(
    env: &Env,
    name: &str,
    done: &'a BuildResponse,
    kind: FailureKind,
) -> Result<&'a Failure> {
    let f = expect_failure(done, kind)?;
    eprintln!("{name}: failed as expected: {:?}: {}", f.kind, f.message);
    env.assert_no_artifact(done, name, "1.0", KERNEL_A).await?;
    Ok(f)
}

/// The value of a `.modinfo` field (first occurrence) as the manifest reports it.
fn field<'a>(info: &'a ModInfo, key: &str) -> Option<&'a str> {
    info.fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Checks that both the manifest and the real `modinfo -F` give `key` = `want`.
fn expect_field(f: &ArtifactFile, ko: &[u8], key: &str, want: &str) -> Result<()> {
    let manifest = field(&f.modinfo, key);
    ensure!(
        manifest == Some(want),
        "{}: manifest modinfo {key} = {manifest:?}, expected {want:?} (fields {:?})",
        f.file,
        f.modinfo.fields
    );
    let real = real_modinfo(ko, key)?;
    ensure!(
        real == want,
        "{}: modinfo -F {key} = {real:?}, expected {want:?}",
        f.file
    );
    Ok(())
}

/// The section names of a little-endian ELF64 file (what `readelf -S` lists).
fn section_names(elf: &[u8]) -> Result<Vec<String>> {
    let u16_at = |o: usize| -> Result<u16> {
        let b = elf.get(o..o + 2).context("ELF truncated")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| -> Result<u32> {
        let b = elf.get(o..o + 4).context("ELF truncated")?;
        Ok(u32::from_le_bytes(b.try_into()?))
    };
    let u64_at = |o: usize| -> Result<usize> {
        let b = elf.get(o..o + 8).context("ELF truncated")?;
        Ok(usize::try_from(u64::from_le_bytes(b.try_into()?))?)
    };
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "not a little-endian ELF64 file"
    );
    let shoff = u64_at(0x28)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    ensure!(
        shentsize >= 0x40 && shnum > 0 && shstrndx < shnum,
        "unexpected ELF section header table"
    );
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18)?;
    let strtab_size = u64_at(header(shstrndx) + 0x20)?;
    let strtab = elf
        .get(strtab..strtab + strtab_size)
        .context("section name table outside the file")?;
    let mut names = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let start = usize::try_from(u32_at(header(i))?)?;
        let rest = strtab
            .get(start..)
            .context("section name outside its table")?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
    }
    Ok(names)
}

/// Where `needle` first occurs in the log, or an error quoting the log.
fn position(log: &str, needle: &str) -> Result<usize> {
    log.find(needle)
        .with_context(|| format!("the build log lacks {needle:?}:\n{log}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn do_build_directives_are_honoured_like_dkms() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let name = "kmf-directives";
    let (done, log) = build_to_end(&env, name, &e2e_fixture("directives")).await?;
    ensure!(
        done.build.state == BuildState::Succeeded,
        "build {}: {:?}; log:\n{log}",
        done.build.id,
        done.build.failure
    );
    let m = done
        .artifact
        .context("a succeeded build carries its manifest")?;
    let downloads = check_downloads(&env.client, &m).await?;

    // BUILT_MODULE_NAME[0..1], BUILT_MODULE_LOCATION[1]="sub", DEST_MODULE_NAME[1]: the
    // artifact holds exactly <DEST_MODULE_NAME>.ko for each record, in Debian's location.
    let mut names: Vec<&str> = m.files.iter().map(|f| f.file.as_str()).collect();
    names.sort_unstable();
    ensure!(
        names == ["kmf_dir_a.ko", "kmf_dir_renamed.ko"],
        "artifact files {names:?}"
    );
    for f in &m.files {
        ensure!(
            f.dest_location == "/updates/dkms",
            "{}: Debian overrides DEST_MODULE_LOCATION with /updates/dkms, got {}",
            f.file,
            f.dest_location
        );
    }
    let resp = env
        .client
        .get(&format!(
            "/v1/artifacts/{name}/1.0/{KERNEL_A}/files/kmf_dir_b.ko"
        ))
        .await?;
    ensure!(
        resp.status() == StatusCode::NOT_FOUND,
        "the BUILT name kmf_dir_b.ko must not be served, got {}",
        resp.status()
    );
    let get = |file: &str| {
        downloads
            .iter()
            .find(|(f, _)| f.file == file)
            .with_context(|| format!("{file} not downloaded"))
    };
    let (a, a_ko) = get("kmf_dir_a.ko")?;
    let (b, b_ko) = get("kmf_dir_renamed.ko")?;
    // DEST_MODULE_NAME renames the file only: the module inside is still kmf_dir_b (DKMS copies it).
    ensure!(
        a.modinfo.name.as_deref() == Some("kmf_dir_a"),
        "{:?}",
        a.modinfo
    );
    ensure!(
        b.modinfo.name.as_deref() == Some("kmf_dir_b"),
        "{:?}",
        b.modinfo
    );
    ensure!(real_modinfo(b_ko, "name")? == "kmf_dir_b");

    // PATCH[0] (no PATCH_MATCH): applied.
    ensure!(
        a.modinfo.version.as_deref() == Some("1.0-patched"),
        "PATCH[0] must be applied: version {:?}",
        a.modinfo.version
    );
    ensure!(real_modinfo(a_ko, "version")? == "1.0-patched");
    // PATCH[1] with PATCH_MATCH[1]="^5\.": not applied; PATCH[2] with "^6\.1\.0-": applied;
    // PATCH[3] ("^4\.", a file that does not exist) is never looked up, or the build had failed.
    expect_field(b, b_ko, "kmf_patch1", "not-applied")?;
    expect_field(b, b_ko, "kmf_patch2", "applied")?;

    // MAKE[0] default, MAKE[1] "^6\." and MAKE[2] "^6\.1\.0-" match, MAKE[3] "^5\." does not:
    // the last matching one, MAKE[2], ran.
    expect_field(a, a_ko, "kmf_make", "last_match")?;
    ensure!(
        log.contains(&format!("KERNELRELEASE={KERNEL_A}"))
            && log.contains("KMF_WHICH_MAKE=last_match"),
        "the log must show the selected, rewritten make command:\n{log}"
    );

    // PRE_BUILD "gen-header.sh kmf-pre-arg": got its argument, ran in build/ after the patches,
    // and wrote the header kmf_dir_a.c includes (without it the build had failed).
    expect_field(a, a_ko, "kmf_pre_arg", "kmf-pre-arg")?;
    expect_field(a, a_ko, "kmf_pre_saw_patch", "yes")?;
    expect_field(a, a_ko, "kmf_pre_cwd", "build")?;

    // POST_BUILD "post-build.sh kmf-post-arg": its output is in the build log; it ran in build/
    // (the generated header and sub/kmf_dir_b.ko are there) after the modules were copied to
    // <kver>/<arch>/module/ under their DEST names.
    let pre = position(
        &log,
        "kmf-pre: wrote kmf_generated.h (arg=kmf-pre-arg, saw_patch=yes)",
    )?;
    let post = position(&log, "kmf-post: args=kmf-post-arg")?;
    ensure!(
        pre < post,
        "PRE_BUILD's output must come before POST_BUILD's:\n{log}"
    );
    position(&log, "kmf-post: cwd=build\n")?;
    position(&log, "kmf-post: build-tree=yes")?;
    position(&log, "kmf-post: modules=kmf_dir_a.ko kmf_dir_renamed.ko \n")?;

    // STRIP[0]=no keeps the debug info (-g in the Makefile), STRIP[1]=yes removes it (strip -g).
    let a_sections = section_names(a_ko)?;
    let b_sections = section_names(b_ko)?;
    ensure!(
        a_sections.iter().any(|s| s == ".debug_info"),
        "STRIP[0]=no: kmf_dir_a.ko must keep .debug_info, sections {a_sections:?}"
    );
    ensure!(
        !b_sections.iter().any(|s| s.starts_with(".debug_")),
        "STRIP[1]=yes: kmf_dir_renamed.ko must have no .debug_* section, sections {b_sections:?}"
    );
    ensure!(
        b_sections.iter().any(|s| s == ".modinfo") && b_sections.iter().any(|s| s == ".symtab"),
        "strip -g keeps .modinfo and .symtab, sections {b_sections:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_that_does_not_apply_is_patch_failed() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let name = "kmf-patch-fails";
    let (done, log) = build_to_end(&env, name, &e2e_fixture("patch-fails")).await?;
    failed_with(&env, name, &done, FailureKind::PatchFailed).await?;
    position(&log, "wrong-context.patch")?;
    position(&log, "FAILED")?; // patch(1)'s own "Hunk #1 FAILED at 16."
    ensure!(
        !log.contains("kmf_pf.o"),
        "make must not run after a failed patch:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_naming_a_missing_file_is_patch_failed() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let name = "kmf-patch-missing";
    let (done, log) = build_to_end(&env, name, &e2e_fixture("patch-missing")).await?;
    failed_with(&env, name, &done, FailureKind::PatchFailed).await?;
    position(&log, "absent.patch")?;
    ensure!(
        !log.contains("kmf_pm.o"),
        "make must not run when a patch is missing:\n{log}"
    );
    Ok(())
}

/// DKMS aborts do_build with the script's exit status; kmodforge reports the package's
/// own build step as `compile_error` and names the script. The script exits 7, which
/// is also kmf's "module missing" code: it must not pass for that.
#[tokio::test(flavor = "multi_thread")]
async fn failing_pre_build_stops_the_build_before_make() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let name = "kmf-pre-build-fails";
    let (done, log) = build_to_end(&env, name, &e2e_fixture("pre-build-fails")).await?;
    let f = failed_with(&env, name, &done, FailureKind::CompileError).await?;
    ensure!(
        f.message.contains("PRE_BUILD script failed"),
        "the message must name the PRE_BUILD script: {}",
        f.message
    );
    position(&log, "kmf-pre-fail: exiting with status 7")?;
    ensure!(
        log.contains("pre_build script failed with exit status 7"),
        "the log must say that PRE_BUILD failed:\n{log}"
    );
    ensure!(
        !log.contains("kmf_pb.o"),
        "make must not run after a failed PRE_BUILD:\n{log}"
    );
    Ok(())
}
