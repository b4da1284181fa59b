//! `GET /v1/artifacts/{name}/{version}/dkms-binaries.tar.gz`: the built modules of
//! a module version for several kernels as one DKMS binaries-only tarball, the
//! layout `dkms mktarball --binaries-only` writes and `dkms ldtarball` loads (see
//! [`crate::dkms_bundle`]).
//!
//! Every lookup (module, artifacts, `dkms.conf`) happens before the answer starts,
//! so bad input and unknown names get their JSON 4xx; the body is then streamed one
//! kernel at a time, holding that kernel's `.ko` files and log only. A store fault
//! while streaming (a blob gone missing) can only cut the body short: it is logged,
//! and the client sees a truncated gzip stream, never a valid tarball.

use std::collections::VecDeque;
use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt as _, TryStreamExt as _};
use kmodforge_api::names::{Arch, KernelRelease, SourceDigest};
use kmodforge_api::wire::Manifest;
use serde::Deserialize;

use super::{kernel, module_id, AppError, AppState};
use crate::dkms_bundle::{bundled_conf, tarball_name, BundleWriter, KernelPart};
use crate::metrics::Served;
use crate::store::Store;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BundleQuery {
    /// The kernels, comma-separated, in the order to bundle them (default: every
    /// kernel that has an artifact of this module version, in kernel order).
    #[param(
        example = "6.1.0-47-amd64,6.1.0-56-amd64",
        pattern = r"^[0-9][A-Za-z0-9._+~-]{0,63}(,[0-9][A-Za-z0-9._+~-]{0,63})*$"
    )]
    kernels: Option<String>,
    /// The architecture (default: the server's, `x86_64`).
    #[param(value_type = Option<kmodforge_api::names::Arch>)]
    arch: Option<String>,
}

/// The kernels of `?kernels=`: releases separated by commas, each named once.
fn kernel_list(list: &str) -> Result<Vec<KernelRelease>, AppError> {
    let mut kernels: Vec<KernelRelease> = Vec::new();
    for item in list.split(',') {
        if item.is_empty() {
            return Err(AppError::BadRequest(format!(
                "kernels: {list:?} has an empty item; give kernel releases separated by commas"
            )));
        }
        let k = kernel(item)?;
        if kernels.contains(&k) {
            return Err(AppError::BadRequest(format!("kernels: {k} is named twice")));
        }
        kernels.push(k);
    }
    Ok(kernels)
}

/// A DKMS binaries-only tarball (the `dkms mktarball --binaries-only` layout) of
/// the newest artifact of the module version for each kernel. `dkms ldtarball FILE`
/// loads it, but DKMS's `ldtarball` (3.0.10 to 3.4.3 at least) loads only the first
/// kernel of a tarball of several, and with `--force` puts the others' modules in
/// its place: load one kernel per tarball (`?kernels=KREL`, `dkms ldtarball
/// --force`); see `docs/DKMS-BUNDLES.md`.
#[utoipa::path(get, path = "/v1/artifacts/{name}/{version}/dkms-binaries.tar.gz", tag = "artifacts",
    params(("name" = kmodforge_api::names::ModuleName, Path, description = "Module name", example = "v4l2loopback"), ("version" = kmodforge_api::names::ModuleVersion, Path, description = "Module version", example = "0.12.7"), BundleQuery),
    responses(
        (status = 200, description = "The tarball (`dkms_binaries_only/` with the module's `dkms.conf`, `dkms_main_tree/<kernel>/<arch>/module/*.ko` and `log/make.log`)",
            body = Vec<u8>, content_type = "application/gzip",
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<name>-<version>-kernel<krel>-<arch>[-kernel...].dkms.tar.gz\"`, the name `dkms mktarball` would give it"))),
        (status = 404, description = "The module version is not registered (`unknown_module`), or a kernel named has no artifact of it, or none has (`not_found`, naming the kernel)", body = kmodforge_api::wire::ErrorBody),
    ))]
pub(super) async fn bundle(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<BundleQuery>,
) -> Result<Response, AppError> {
    let (name, version) = module_id(&name, &version)?;
    let arch = match &q.arch {
        None => Arch::host_default(),
        Some(a) => Arch::parse(a).map_err(|e| AppError::InvalidName {
            what: "arch",
            reason: e.to_string(),
        })?,
    };
    let wanted = q.kernels.as_deref().map(kernel_list).transpose()?;
    let module = s.sources.get(&name, &version).await?;
    let records = &s.store.records;
    let manifests = match wanted {
        Some(kernels) => {
            let mut found = Vec::with_capacity(kernels.len());
            for k in kernels {
                let m = records.latest_artifact(&name, &version, &k, &arch).await?;
                found.push(m.ok_or_else(|| {
                    AppError::NotFound(format!(
                        "no artifact for {name}/{version} on kernel {k} ({arch}); POST /v1/builds to build it"
                    ))
                })?);
            }
            found
        }
        None => {
            let mut all = records
                .latest_artifacts_per_kernel(&name, &version, &arch)
                .await?;
            // Byte order whatever the database's collation.
            all.sort_by(|a, b| a.kernel.as_str().cmp(b.kernel.as_str()));
            if all.is_empty() {
                return Err(AppError::NotFound(format!(
                    "no artifact for {name}/{version} on any kernel ({arch}); POST /v1/builds to build one"
                )));
            }
            all
        }
    };
    let conf = dkms_conf(&s.store, &module.digest).await?;
    let conf = bundled_conf(&conf, &module.declared, name.as_str(), version.as_str());
    let mtime = manifests.iter().map(built_at).max().unwrap_or(0);
    let mut writer = BundleWriter::new();
    writer
        .begin(name.as_str(), version.as_str(), &conf, mtime)
        .map_err(|e| AppError::Internal(format!("writing the bundle: {e}")))?;
    let first = Bytes::from(writer.take());
    let pairs: Vec<(&str, &str)> = manifests
        .iter()
        .map(|m| (m.kernel.as_str(), m.arch.as_str()))
        .collect();
    let file = tarball_name(name.as_str(), version.as_str(), &pairs);
    let state = Streaming {
        store: s.store.clone(),
        writer: Some(writer),
        todo: manifests.into(),
    };
    let rest = futures_util::stream::try_unfold(state, next_chunk);
    let metrics = s.metrics.clone();
    let body = futures_util::stream::once(async { Ok::<_, std::io::Error>(first) })
        .chain(rest)
        .inspect_ok(move |chunk| metrics.artifact_served(Served::Tar, chunk.len()));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The root `dkms.conf` of a stored source tree.
async fn dkms_conf(store: &Store, digest: &SourceDigest) -> Result<Vec<u8>, AppError> {
    let tar = store.objects.get_source(digest).await?;
    let found = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.header().entry_type().is_file() && &*entry.path_bytes() == b"dkms.conf" {
                let mut conf = Vec::new();
                entry.read_to_end(&mut conf)?;
                return Ok(Some(conf));
            }
        }
        Ok(None)
    })
    .await
    .map_err(|e| AppError::Internal(format!("reading the source of {digest}: {e}")))?;
    match found {
        Ok(Some(conf)) => Ok(conf),
        Ok(None) => Err(AppError::Internal(format!(
            "the stored source {digest} has no dkms.conf"
        ))),
        Err(e) => Err(AppError::Internal(format!(
            "reading the stored source {digest}: {e}"
        ))),
    }
}

/// An artifact's build time in seconds since the epoch (its entries' mtime).
fn built_at(m: &Manifest) -> u64 {
    humantime::parse_rfc3339_weak(&m.built_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The stream's state: the writer (gone once finished) and the kernels to go.
struct Streaming {
    store: Store,
    writer: Option<BundleWriter>,
    todo: VecDeque<Manifest>,
}

/// The next part of the body: one kernel's files, or the end of the tarball.
async fn next_chunk(mut st: Streaming) -> std::io::Result<Option<(Bytes, Streaming)>> {
    let Some(mut writer) = st.writer.take() else {
        return Ok(None);
    };
    let Some(m) = st.todo.pop_front() else {
        let last = tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .inspect_err(|e| tracing::error!(error = %e, "dkms bundle: finishing the tarball"))?;
        return Ok(Some((Bytes::from(last), st)));
    };
    let files = kernel_files(&st.store, &m)
        .await
        .inspect_err(|e| tracing::error!(error = %e, kernel = %m.kernel, build = %m.build_id, "dkms bundle cut short"))?;
    let (writer, chunk) = tokio::task::spawn_blocking(move || {
        let (log, modules) = files;
        let modules: Vec<(&str, &[u8])> =
            modules.iter().map(|(f, b)| (f.as_str(), &b[..])).collect();
        writer.kernel(&KernelPart {
            kernel: m.kernel.as_str(),
            arch: m.arch.as_str(),
            mtime: built_at(&m),
            make_log: log.as_deref(),
            modules: &modules,
        })?;
        let chunk = writer.take();
        Ok::<_, std::io::Error>((writer, chunk))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .inspect_err(|e| tracing::error!(error = %e, "dkms bundle: writing a kernel"))?;
    st.writer = Some(writer);
    Ok(Some((Bytes::from(chunk), st)))
}

/// A kernel's build log (when still stored) and `.ko` files, read from the store.
type KernelFiles = (Option<Bytes>, Vec<(String, Bytes)>);

async fn kernel_files(store: &Store, m: &Manifest) -> std::io::Result<KernelFiles> {
    let log = store
        .objects
        .get_log(&m.build_id)
        .await
        .map_err(std::io::Error::other)?;
    let mut modules = Vec::with_capacity(m.files.len());
    for f in &m.files {
        let data = store
            .objects
            .get_blob(&f.sha256)
            .await
            .map_err(std::io::Error::other)?
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "blob {} ({}) of {}/{} on {} is missing",
                    f.sha256, f.file, m.name, m.version, m.kernel
                ))
            })?;
        modules.push((f.file.clone(), data));
    }
    Ok((log, modules))
}
