//! Module sources (`dkms add` / `dkms remove`): validated, digested, stored by content.

use std::sync::Arc;

use kmodforge_api::archive::{ingest, ArchiveError, ArchiveLimits};
use kmodforge_api::dkms::scan_declared;
use kmodforge_api::names::{ModuleName, ModuleVersion};
use kmodforge_api::wire::{AddModuleResponse, ModuleSource};

use crate::builds::{now_rfc3339, Builds};
use crate::store::{BlobError, PutModule, RecordsError, Store};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("module {name}/{version} already exists with other content (digest {existing}); DELETE it first or use a new version")]
    Conflict {
        name: ModuleName,
        version: ModuleVersion,
        existing: String,
    },
    #[error("module {name}/{version} is not registered")]
    NotFound {
        name: ModuleName,
        version: ModuleVersion,
    },
    #[error("module {name}/{version} has a build in progress; try again when it ends")]
    Busy {
        name: ModuleName,
        version: ModuleVersion,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("archive validation task failed: {0}")]
    Task(String),
}

/// Registers and removes module sources.
#[derive(Clone)]
pub struct Sources {
    store: Store,
    limits: Arc<ArchiveLimits>,
}

impl Sources {
    pub fn new(store: Store, limits: ArchiveLimits) -> Self {
        Sources {
            store,
            limits: Arc::new(limits),
        }
    }

    pub fn limits(&self) -> &ArchiveLimits {
        &self.limits
    }

    /// Validates the archive and registers it under `name/version`.
    ///
    /// Same content again answers the same; other content under an existing
    /// name/version is a conflict and changes nothing.
    pub async fn add(
        &self,
        name: ModuleName,
        version: ModuleVersion,
        body: bytes::Bytes,
    ) -> Result<AddModuleResponse, SourceError> {
        let limits = self.limits.clone();
        let tree = tokio::task::spawn_blocking(move || ingest(&body, &limits))
            .await
            .map_err(|e| SourceError::Task(e.to_string()))??;
        let declared = scan_declared(&tree.dkms_conf);
        let mut warnings: Vec<String> = tree
            .dropped_links
            .iter()
            .map(|l| {
                format!(
                    "dropped symlink {:?} -> {:?}: it points outside the source tree",
                    l.path, l.target
                )
            })
            .collect();
        if let Some(pkg) = declared.package_name.as_deref() {
            if pkg != name.as_str() && !declared.dynamic {
                warnings.push(format!(
                    "dkms.conf declares PACKAGE_NAME={pkg}, registered as {name}"
                ));
            }
        }
        if let Some(v) = declared.package_version.as_deref() {
            if v != version.as_str() && !declared.dynamic {
                warnings.push(format!(
                    "dkms.conf declares PACKAGE_VERSION={v}, registered as {version}"
                ));
            }
        }
        let module = ModuleSource {
            name: name.clone(),
            version: version.clone(),
            digest: tree.digest.clone(),
            declared,
            files: tree.files,
            bytes: tree.bytes,
            added_at: now_rfc3339(),
        };
        // Source first, record second: a record never points at a missing tree.
        self.store.put_source(&tree.digest, &tree.normalized_tar)?;
        match self.store.records.put_module(&module)? {
            PutModule::Created => Ok(AddModuleResponse {
                module,
                created: true,
                warnings,
            }),
            PutModule::Unchanged(existing) => Ok(AddModuleResponse {
                module: existing,
                created: false,
                warnings,
            }),
            PutModule::Conflict(existing) => {
                if !self.store.records.digest_in_use(tree.digest.as_str())? {
                    self.store.delete_source(&tree.digest)?;
                }
                Err(SourceError::Conflict {
                    name,
                    version,
                    existing: existing.digest.to_string(),
                })
            }
        }
    }

    pub fn get(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<ModuleSource, SourceError> {
        self.store
            .records
            .get_module(name, version)?
            .ok_or_else(|| SourceError::NotFound {
                name: name.clone(),
                version: version.clone(),
            })
    }

    pub fn list(&self) -> Result<Vec<ModuleSource>, SourceError> {
        Ok(self.store.records.list_modules()?)
    }

    /// Removes a module version, its artifacts, and blobs nothing else uses.
    pub fn delete(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        builds: &Builds,
    ) -> Result<(), SourceError> {
        let module = self.get(name, version)?;
        if builds.module_busy(name, version) {
            return Err(SourceError::Busy {
                name: name.clone(),
                version: version.clone(),
            });
        }
        let records = &self.store.records;
        let gone = records.delete_artifacts(name, version)?;
        records.delete_module(name, version)?;
        for f in gone.iter().flat_map(|m| m.files.iter()) {
            if !records.blob_in_use(&f.sha256)? {
                self.store.blobs.delete(&f.sha256)?;
            }
        }
        if !records.digest_in_use(module.digest.as_str())? {
            self.store.delete_source(&module.digest)?;
        }
        Ok(())
    }
}
