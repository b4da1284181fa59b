//! The readiness matrix: every known kernel (published, requested or prebuilt)
//! against every registered module version, each cell the newest build of that
//! pair. Read from the records only (no engine calls), so it is cheap to serve.

use std::collections::HashMap;

use kmodforge_api::dkms::version_cmp;
use kmodforge_api::names::{KernelRelease, ModuleName, ModuleVersion};
use kmodforge_api::wire::{
    BuildRecord, BuildState, CellCheck, CellFailure, CellState, KnownKernel, Matrix, MatrixCell,
    MatrixModule,
};

use crate::builds::now_rfc3339;
use crate::store::{RecordsError, Store};

/// How many recent build records the matrix reads.
const RECENT_BUILDS: u32 = 20_000;

type Pair = (KernelRelease, ModuleName, ModuleVersion);

/// Computes the matrix from the records.
pub async fn matrix(store: &Store) -> Result<Matrix, RecordsError> {
    let records = &store.records;
    let builds = records.list_builds(RECENT_BUILDS).await?;
    // Newest first: the first record of a pair is its newest build.
    let mut newest: HashMap<Pair, &BuildRecord> = HashMap::new();
    for b in &builds {
        newest
            .entry((b.kernel.clone(), b.name.clone(), b.version.clone()))
            .or_insert(b);
    }
    let mut kernels = records.list_kernels().await?;
    for b in &builds {
        if !kernels.iter().any(|k| k.kernel == b.kernel) {
            kernels.push(KnownKernel {
                kernel: b.kernel.clone(),
                suite: b.kernel.debian_suite().map(str::to_string),
                headers_version: None,
                published: false,
                requested: true,
                first_seen: b.created_at.clone(),
                last_requested: Some(b.created_at.clone()),
                prebuild: None,
            });
        }
    }
    kernels.sort_by(|a, b| version_cmp(b.kernel.as_str(), a.kernel.as_str()));
    let modules: Vec<MatrixModule> = records
        .list_modules()
        .await?
        .into_iter()
        .map(|m| MatrixModule {
            name: m.name,
            version: m.version,
            autoinstall: m.declared.autoinstall,
        })
        .collect();
    let mut cells = Vec::with_capacity(kernels.len() * modules.len());
    for k in &kernels {
        for m in &modules {
            let pair = (k.kernel.clone(), m.name.clone(), m.version.clone());
            cells.push(
                cell(
                    store,
                    pair,
                    newest
                        .get(&(k.kernel.clone(), m.name.clone(), m.version.clone()))
                        .copied(),
                )
                .await?,
            );
        }
    }
    Ok(Matrix {
        generated_at: now_rfc3339(),
        kernels,
        modules,
        cells,
    })
}

async fn cell(
    store: &Store,
    (kernel, name, version): Pair,
    b: Option<&BuildRecord>,
) -> Result<MatrixCell, RecordsError> {
    let mut c = MatrixCell {
        kernel,
        name,
        version,
        state: CellState::Missing,
        build_id: None,
        failure: None,
        boot_check: None,
        signed: None,
    };
    let Some(b) = b else {
        return Ok(c);
    };
    c.build_id = Some(b.id.clone());
    c.failure = b.failure.as_ref().map(|f| CellFailure {
        kind: f.kind,
        message: f.message.clone(),
    });
    c.state = match b.state {
        BuildState::Queued | BuildState::Running => CellState::Building,
        BuildState::Succeeded => CellState::Ready,
        BuildState::Failed => CellState::Failed,
        BuildState::NotApplicable => CellState::NotApplicable,
    };
    if let Some(key) = &b.artifact_key {
        if let Some(m) = store.records.get_artifact(key).await? {
            c.boot_check = m.boot_check.as_ref().map(|k| CellCheck {
                passed: k.passed,
                signature_enforced: k.signature_enforced,
            });
            c.signed = m.module_signing.as_ref().map(|s| s.signed);
        }
    }
    Ok(c)
}
