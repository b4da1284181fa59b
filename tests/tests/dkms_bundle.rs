//! DKMS binaries-only bundles (issue 15): `GET /v1/artifacts/{name}/{version}/dkms-binaries.tar.gz`
//! for two kernels at once, loaded by the real `dkms ldtarball` (Debian bookworm's
//! dkms 3.0.10, in a container made FROM debian:bookworm-slim by this test).
//!
//! Two modules: `kmf-renamed` (two modules, one shipped under a DEST_MODULE_NAME)
//! and the plain `kmf-hello`, each built for KERNEL_A and KERNEL_B by a real server.
//!
//! dkms's own `ldtarball` loads only the first kernel of a tarball of several (its
//! loop variables are `local -r`, the bug dkms#415 fixed in `mktarball` only): the
//! test checks that it loads the first kernel of the server's bundle of both, and
//! then the second kernel from the server's bundle of that kernel alone
//! (`ldtarball --force`), after which `dkms status` lists each module as built for
//! each kernel and the `.ko` files under `/var/lib/dkms` are the artifacts' bytes.
//! The real `dkms mktarball --binaries-only` of the loaded tree (one kernel) gives
//! the same entries with the same contents as the server's bundle, and `dkms
//! install` installs the loaded modules, where the real depmod resolves the renamed
//! module's dependency.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use kmodforge_api::wire::{BuildState, Manifest};
use kmodforge_e2e::{
    e2e_fixture, error_body, fixture, promtext, request, Client, Env, ServerOpts, KERNEL_A,
    KERNEL_B,
};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// The modules of the test: (name, version, fixture directory).
fn modules() -> [(&'static str, &'static str, std::path::PathBuf); 2] {
    [
        ("kmf-renamed", "1.0", e2e_fixture("renamed")),
        ("kmf-hello", "1.0", fixture("hello")),
    ]
}

fn bundle_path(name: &str, version: &str) -> String {
    format!("/v1/artifacts/{name}/{version}/dkms-binaries.tar.gz")
}

/// The image with the real dkms: Debian bookworm's, with what it depends on.
const DOCKERFILE: &str = "FROM debian:bookworm-slim
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dkms kmod \\
 && rm -rf /var/lib/apt/lists/*
";

/// Tagged by the Dockerfile's content: built once, kept in the engine.
fn dkms_image() -> Result<String> {
    kmodforge_e2e::debhost::image("kmodforge-e2e-dkms", DOCKERFILE)
}

/// What runs in the dkms container, with the bundles in /x; everything it finds
/// is written to /x for the test to read.
const SCRIPT: &str = r#"set -u
for m in kmf-renamed kmf-hello; do
  dkms ldtarball "/x/$m.tar.gz" >"/x/ld-$m.out" 2>&1; echo $? >"/x/ld-$m.rc"
done
dkms status >/x/status-both.txt 2>&1
for m in kmf-renamed kmf-hello; do
  dkms ldtarball --force "/x/$m-b.tar.gz" >"/x/ldb-$m.out" 2>&1; echo $? >"/x/ldb-$m.rc"
done
dkms status >/x/status.txt 2>/x/status.err
cp -a /var/lib/dkms /x/tree
dkms mktarball kmf-renamed/1.0 --binaries-only -k "$KA" --archive /x/real-renamed.tar.gz \
  >/x/mktarball.out 2>&1; echo $? >/x/mktarball.rc
mkdir -p "/lib/modules/$KA"
dkms install kmf-renamed/1.0 -k "$KA" >/x/install.out 2>&1; echo $? >/x/install.rc
cp "/lib/modules/$KA/modules.dep" /x/modules.dep
cp -a "/lib/modules/$KA/updates" /x/installed
dkms status kmf-renamed/1.0 >/x/status-after.txt 2>&1
"#;

fn read(dir: &Path, file: &str) -> Result<String> {
    std::fs::read_to_string(dir.join(file)).with_context(|| format!("reading {file}"))
}

/// (path, is a directory, content) of every entry of a gzipped tar, by path.
fn gz_entries(gz: &[u8]) -> Result<BTreeMap<String, (bool, Vec<u8>)>> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut tar)
        .context("gunzip")?;
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut out = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let header = entry.header();
        ensure!(
            header.uid()? == 0 && header.gid()? == 0,
            "owned by root: {:?}",
            entry.path()
        );
        let is_dir = header.entry_type().is_dir();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        ensure!(
            out.insert(path.clone(), (is_dir, data)).is_none(),
            "{path} twice"
        );
    }
    Ok(out)
}

async fn build_all(env: &Env) -> Result<BTreeMap<(String, String), Manifest>> {
    let mut ids = Vec::new();
    for (name, version, dir) in modules() {
        env.client.add_module(name, version, &dir).await?;
        for kernel in [KERNEL_A, KERNEL_B] {
            let (_, first) = env.client.build(&request(name, version, kernel)?).await?;
            ids.push((name, kernel, first.build.id));
        }
    }
    let mut built = BTreeMap::new();
    for (name, kernel, id) in ids {
        let done = env.client.wait(&id).await?;
        ensure!(
            done.build.state == BuildState::Succeeded,
            "{name} on {kernel}: {:?}\n{}",
            done.build.failure,
            env.client.build_log(&id).await.unwrap_or_default()
        );
        // The bundle carries the newest artifact, as the other artifact routes serve.
        let m = env.client.manifest(name, "1.0", kernel).await?;
        built.insert((name.to_string(), kernel.to_string()), m);
    }
    Ok(built)
}

/// The bundle, with the file name the server gives it.
async fn download(client: &Client, path: &str) -> Result<(Vec<u8>, String)> {
    let resp = client.get(path).await?;
    let status = resp.status();
    if status != StatusCode::OK {
        bail!(
            "GET {path}: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }
    let header = |h: reqwest::header::HeaderName| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default()
    };
    ensure!(header(reqwest::header::CONTENT_TYPE) == "application/gzip");
    let disposition = header(reqwest::header::CONTENT_DISPOSITION);
    let file = disposition
        .strip_prefix("attachment; filename=\"")
        .and_then(|f| f.strip_suffix('"'))
        .with_context(|| format!("Content-Disposition {disposition:?}"))?
        .to_string();
    Ok((resp.bytes().await?.to_vec(), file))
}

#[tokio::test(flavor = "multi_thread")]
async fn real_dkms_loads_a_bundle_of_two_kernels() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let built = build_all(&env).await?;
    let reader = env.server.token("bundle-reader", "read", &[]).await?;
    let reader = env.server.client_with(Some(&reader))?;

    let work = tempfile::tempdir()?;
    let mut bundles = BTreeMap::new();
    let mut served = 0;
    for (name, version, _) in modules() {
        let both = format!(
            "{}?kernels={KERNEL_A},{KERNEL_B}",
            bundle_path(name, version)
        );
        let (bytes, file) = download(&reader, &both).await?;
        ensure!(
            file == format!(
                "{name}-{version}-kernel{KERNEL_A}-x86_64-kernel{KERNEL_B}-x86_64.dkms.tar.gz"
            ),
            "{file}"
        );
        // Every kernel with an artifact is the default; the same artifacts give the same bytes.
        let (default, _) = download(&reader, &bundle_path(name, version)).await?;
        ensure!(default == bytes, "{name}: the default bundle differs");
        let (other_order, reversed) = download(
            &reader,
            &format!(
                "{}?kernels={KERNEL_B},{KERNEL_A}",
                bundle_path(name, version)
            ),
        )
        .await?;
        ensure!(
            reversed.contains(&format!("kernel{KERNEL_B}-x86_64-kernel{KERNEL_A}")),
            "{reversed}"
        );
        served += bytes.len() + default.len() + other_order.len();
        std::fs::write(work.path().join(format!("{name}.tar.gz")), &bytes)?;
        bundles.insert(name, bytes);
        // One kernel alone: what dkms's ldtarball can load after the first (below).
        let (alone, file) = download(
            &reader,
            &format!("{}?kernels={KERNEL_B}", bundle_path(name, version)),
        )
        .await?;
        ensure!(file == format!("{name}-{version}-kernel{KERNEL_B}-x86_64.dkms.tar.gz"));
        served += alone.len();
        std::fs::write(work.path().join(format!("{name}-b.tar.gz")), &alone)?;
        let mut part = gz_entries(&bundles[name])?;
        part.retain(|path, _| !path.contains(KERNEL_A));
        ensure!(
            gz_entries(&alone)? == part,
            "{name}: the bundle of {KERNEL_B} alone is not that part of the bundle of both"
        );
    }

    // The bytes are counted with the artifact tars'.
    let metrics = promtext::scrape(&env.client).await?;
    let counted = metrics.value("kmodforge_artifact_bytes_served_total", &[("kind", "tar")])?;
    ensure!(
        counted == served as f64,
        "counted {counted}, served {served}"
    );

    // The real dkms loads both bundles, reports them, makes its own tarball, installs.
    let image = dkms_image()?;
    let started = std::time::Instant::now();
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-e"])
        .arg(format!("KA={KERNEL_A}"))
        .arg("-v")
        .arg(format!("{}:/x", work.path().display()))
        .args([&image, "bash", "-c", SCRIPT])
        .output()
        .context("docker run")?;
    ensure!(
        out.status.success(),
        "the dkms container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dkms container: {:.1}s", started.elapsed().as_secs_f64());
    let dir = work.path();

    // The bundle of both kernels. dkms 3.0.10's load_tarball (and upstream's, as of
    // 3.4.3) declares its loop's variables `local -r`, as make_tarball did before
    // dkms#415: only the first kernel directory (in glob order) is loaded, the others
    // fail with "readonly variable" and are skipped as "already exists". (With
    // --force the second kernel's modules would even replace the first's.)
    let mut both_loaded = true;
    for (name, _, _) in modules() {
        let said = read(dir, &format!("ld-{name}.out"))?;
        let rc = read(dir, &format!("ld-{name}.rc"))?;
        // load_tarball ends with `[[ $loc != dkms_binaries_only ]] || [[ -d
        // $source_tree/$module-$module_version ]]`: a binaries-only tarball loaded
        // without the sources in /usr/src exits 1 (and skips `add`).
        ensure!(
            matches!(rc.trim(), "0" | "1")
                && said.contains(&format!("Loading tarball for {name}-1.0"))
                && said.contains(&format!(
                    "Loading /var/lib/dkms/{name}/1.0/{KERNEL_A}/x86_64..."
                ))
                && !said.contains("Error"),
            "dkms ldtarball of {name}: exit {rc}\n{said}"
        );
        let second = said.contains(&format!(
            "Loading /var/lib/dkms/{name}/1.0/{KERNEL_B}/x86_64..."
        ));
        ensure!(
            second || said.contains("local: kernel_arch_to_load: readonly variable"),
            "{name}: neither loaded {KERNEL_B} nor failed as dkms 3.0.10 does:\n{said}"
        );
        both_loaded &= second;
    }
    let kernels_loaded: &[&str] = if both_loaded {
        &[KERNEL_A, KERNEL_B]
    } else {
        &[KERNEL_A]
    };
    let status_of = |kernels: &[&str]| -> Vec<String> {
        ["kmf-hello", "kmf-renamed"]
            .iter()
            .flat_map(|m| {
                kernels
                    .iter()
                    .map(move |k| format!("{m}/1.0, {k}, x86_64: built"))
            })
            .collect()
    };
    let mut status: Vec<String> = read(dir, "status-both.txt")?
        .lines()
        .map(str::to_string)
        .collect();
    status.sort();
    ensure!(
        status == status_of(kernels_loaded),
        "dkms status after the bundles of both kernels:\n{}",
        status.join("\n")
    );
    eprintln!("dkms ldtarball loaded both kernels of one bundle: {both_loaded}");

    // The second kernel from its own bundle: --force, as the module is "already added".
    for (name, _, _) in modules() {
        let said = read(dir, &format!("ldb-{name}.out"))?;
        let rc = read(dir, &format!("ldb-{name}.rc"))?;
        ensure!(
            matches!(rc.trim(), "0" | "1")
                && said.contains(&format!(
                    "Loading /var/lib/dkms/{name}/1.0/{KERNEL_B}/x86_64..."
                ))
                && !said.contains("Error"),
            "dkms ldtarball --force of {name} for {KERNEL_B}: exit {rc}\n{said}"
        );
    }
    let mut status: Vec<String> = read(dir, "status.txt")?
        .lines()
        .map(str::to_string)
        .collect();
    status.sort();
    ensure!(
        status == status_of(&[KERNEL_A, KERNEL_B]),
        "dkms status:\n{}\n{}",
        status.join("\n"),
        read(dir, "status.err")?
    );

    // The .ko files dkms holds are the artifacts, byte for byte, under their DKMS names.
    for ((name, kernel), m) in &built {
        let module_dir = dir.join(format!("tree/{name}/1.0/{kernel}/x86_64/module"));
        let mut held: Vec<String> = std::fs::read_dir(&module_dir)
            .with_context(|| format!("{}", module_dir.display()))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        held.sort();
        let mut files: Vec<String> = m.files.iter().map(|f| f.file.clone()).collect();
        files.sort();
        ensure!(held == files, "{name} on {kernel}: {held:?} vs {files:?}");
        for f in &m.files {
            let bytes = std::fs::read(module_dir.join(&f.file))?;
            let served = env.client.download(name, "1.0", kernel, &f.file).await?;
            ensure!(
                bytes == served && hex::encode(Sha256::digest(&bytes)) == f.sha256,
                "{name} on {kernel}: {} differs from the artifact",
                f.file
            );
        }
        let log = std::fs::read(dir.join(format!("tree/{name}/1.0/{kernel}/x86_64/log/make.log")))?;
        ensure!(
            log == env.client.build_log(&m.build_id).await?.into_bytes(),
            "make.log is the build's log"
        );
    }
    let renamed = &built[&("kmf-renamed".to_string(), KERNEL_A.to_string())];
    let names: Vec<&str> = renamed.files.iter().map(|f| f.file.as_str()).collect();
    ensure!(
        names == ["kmf_rn_base-current.ko", "kmf_rn_user.ko"],
        "{names:?}"
    );

    // dkms's own binaries-only tarball of the loaded tree, for one kernel: the same
    // entries, with the same contents, as the server's bundle for that kernel.
    let rc = read(dir, "mktarball.rc")?;
    ensure!(
        rc.trim() == "0",
        "dkms mktarball: exit {rc}\n{}",
        read(dir, "mktarball.out")?
    );
    let real = gz_entries(&std::fs::read(dir.join("real-renamed.tar.gz"))?)?;
    let mut ours = gz_entries(&bundles["kmf-renamed"])?;
    ours.retain(|path, _| !path.contains(KERNEL_B));
    ensure!(
        real.keys().collect::<Vec<_>>() == ours.keys().collect::<Vec<_>>(),
        "entries: dkms {:?}\nours {:?}",
        real.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>()
    );
    for (path, entry) in &real {
        ensure!(ours.get(path) == Some(entry), "{path} differs from dkms's");
    }
    ensure!(real.contains_key(&format!(
        "./dkms_main_tree/{KERNEL_A}/x86_64/module/kmf_rn_base-current.ko"
    )));

    // And dkms installs the loaded modules; the real depmod resolves the dependency.
    let rc = read(dir, "install.rc")?;
    ensure!(
        rc.trim() == "0",
        "dkms install: exit {rc}\n{}",
        read(dir, "install.out")?
    );
    let dep = read(dir, "modules.dep")?;
    ensure!(
        dep.contains("updates/dkms/kmf_rn_user.ko: updates/dkms/kmf_rn_base-current.ko"),
        "{dep}"
    );
    for f in &renamed.files {
        let installed = std::fs::read(dir.join("installed/dkms").join(&f.file))?;
        ensure!(hex::encode(Sha256::digest(&installed)) == f.sha256);
    }
    let after = read(dir, "status-after.txt")?;
    ensure!(
        after.contains(&format!("kmf-renamed/1.0, {KERNEL_A}, x86_64: installed"))
            && after.contains(&format!("kmf-renamed/1.0, {KERNEL_B}, x86_64: built")),
        "{after}"
    );

    // Errors over HTTP: JSON, naming what is wrong.
    let path = bundle_path("kmf-hello", "1.0");
    let unknown = "6.1.0-99-amd64";
    let cases: [(String, StatusCode, &str, &str); 7] = [
        (
            format!("{path}?kernels={KERNEL_A},{unknown}"),
            StatusCode::NOT_FOUND,
            "not_found",
            unknown,
        ),
        (
            format!("{path}?kernels={KERNEL_A},,{KERNEL_B}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "empty item",
        ),
        (
            format!("{path}?kernels="),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "empty item",
        ),
        (
            format!("{path}?kernels={KERNEL_A},{KERNEL_A}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "twice",
        ),
        (
            format!("{path}?kernels={KERNEL_A};rm"),
            StatusCode::BAD_REQUEST,
            "invalid_name",
            "kernel release",
        ),
        (
            bundle_path("kmf-hello", "9.9"),
            StatusCode::NOT_FOUND,
            "unknown_module",
            "kmf-hello/9.9",
        ),
        (
            format!("{path}?arch=aarch64"),
            StatusCode::NOT_FOUND,
            "not_found",
            "any kernel",
        ),
    ];
    for (uri, status, kind, says) in cases {
        let (got, body) = error_body(reader.get(&uri).await?).await?;
        ensure!(
            got == status && body.error.kind.as_str() == kind && body.error.message.contains(says),
            "{uri}: {got} {body:?}"
        );
    }
    // No token: 401. Reading is never limited to modules: a build token limited to
    // another module gets the bundle too.
    let anonymous = env.server.client_with(None)?;
    let (got, body) = error_body(anonymous.get(&path).await?).await?;
    ensure!(
        got == StatusCode::UNAUTHORIZED && body.error.kind.as_str() == "unauthorized",
        "{got} {body:?}"
    );
    let other = env
        .server
        .token("other-builder", "build", &["kmf-other"])
        .await?;
    let other = env.server.client_with(Some(&other))?;
    let (bytes, _) = download(&other, &path).await?;
    ensure!(bytes == bundles["kmf-hello"]);
    env.assert_no_job_containers().await?;
    Ok(())
}
