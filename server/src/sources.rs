//! Module sources (`dkms add` / `dkms remove`): validated, digested, stored by content.
//!
//! A name and version, once it has artifacts, always means the same source digest
//! (its pin): after a delete, other content under it is refused unless an admin
//! asks for it explicitly (`replace`). Every change and every refused change is
//! audited.

use std::sync::Arc;

use kmodforge_api::archive::{ingest, ArchiveError, ArchiveLimits, SourceTree};
use kmodforge_api::auth::{AuditAction, AuditOutcome, Scope};
use kmodforge_api::dkms::{is_placeholder, scan_declared};
use kmodforge_api::names::{ModuleName, ModuleVersion, SourceDigest};
use kmodforge_api::wire::{AddModuleResponse, ModuleSource};

use crate::auth::audit::ModuleChange;
use crate::auth::{Audit, Caller, Denied};
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
    #[error("module {name}/{version} was built from source digest {pinned}; other content needs a new version (an admin may override with ?replace=true)")]
    Immutable {
        name: ModuleName,
        version: ModuleVersion,
        pinned: String,
    },
    #[error(transparent)]
    Denied(Denied),
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
    audit: Audit,
}

/// A source to register.
pub struct AddSource {
    pub name: ModuleName,
    pub version: ModuleVersion,
    /// The tar or tar.gz as uploaded.
    pub body: bytes::Bytes,
    /// Register other content under a pinned name and version (admin only).
    pub replace: bool,
}

impl Sources {
    pub fn new(store: Store, limits: ArchiveLimits) -> Self {
        Sources {
            audit: Audit::new(store.records.clone()),
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
    /// name/version is a conflict, and other content under a pinned one is refused
    /// (both change nothing and are audited).
    pub async fn add(&self, req: AddSource, by: &Caller) -> Result<AddModuleResponse, SourceError> {
        let limits = self.limits.clone();
        let body = req.body.clone();
        let tree = tokio::task::spawn_blocking(move || ingest(&body, &limits))
            .await
            .map_err(|e| SourceError::Task(e.to_string()))??;
        let warnings = warnings(&tree, &req.name, &req.version);
        let module = ModuleSource {
            name: req.name.clone(),
            version: req.version.clone(),
            digest: tree.digest.clone(),
            declared: scan_declared(&tree.dkms_conf),
            files: tree.files,
            bytes: tree.bytes,
            added_at: now_rfc3339(),
        };
        let records = &self.store.records;
        if let Some(existing) = records.get_module(&req.name, &req.version).await? {
            return self.same_or_conflict(existing, module, warnings, by).await;
        }
        let replaced = self.check_pin(&req, &tree.digest, by).await?;
        // Source first, record second: a record never points at a missing tree.
        self.store
            .objects
            .put_source(&tree.digest, tree.normalized_tar.clone().into())
            .await?;
        match records.put_module(&module).await? {
            PutModule::Created => {}
            PutModule::Unchanged(existing) | PutModule::Conflict(existing) => {
                return self.same_or_conflict(existing, module, warnings, by).await;
            }
        }
        let mut detail = format!("added {} files, {} bytes", module.files, module.bytes);
        if let Some(old) = replaced {
            records
                .pin_digest(
                    &req.name,
                    &req.version,
                    tree.digest.as_str(),
                    &now_rfc3339(),
                )
                .await?;
            detail = format!(
                "{detail}; replaced the pinned source digest {old} (explicit admin request)"
            );
        }
        self.audit_module(
            by,
            AuditAction::ModuleAdd,
            AuditOutcome::Done,
            &module,
            detail,
        )
        .await?;
        Ok(AddModuleResponse {
            module,
            created: true,
            warnings,
        })
    }

    /// The answer when `name/version` is registered already: the same content is
    /// fine, other content a conflict (its tree is dropped unless used elsewhere).
    async fn same_or_conflict(
        &self,
        existing: ModuleSource,
        attempted: ModuleSource,
        warnings: Vec<String>,
        by: &Caller,
    ) -> Result<AddModuleResponse, SourceError> {
        if existing.digest == attempted.digest {
            return Ok(AddModuleResponse {
                module: existing,
                created: false,
                warnings,
            });
        }
        if !self
            .store
            .records
            .digest_in_use(attempted.digest.as_str())
            .await?
        {
            self.store.objects.delete_source(&attempted.digest).await?;
        }
        let err = SourceError::Conflict {
            name: attempted.name.clone(),
            version: attempted.version.clone(),
            existing: existing.digest.to_string(),
        };
        self.audit_module(
            by,
            AuditAction::ModuleAdd,
            AuditOutcome::Refused,
            &attempted,
            err.to_string(),
        )
        .await?;
        Err(err)
    }

    /// Refuses other content under a pinned name/version, unless an admin asked to
    /// replace it; returns the pin being replaced.
    async fn check_pin(
        &self,
        req: &AddSource,
        digest: &SourceDigest,
        by: &Caller,
    ) -> Result<Option<String>, SourceError> {
        let Some(pinned) = self
            .store
            .records
            .pinned_digest(&req.name, &req.version)
            .await?
        else {
            return Ok(None);
        };
        if pinned == digest.as_str() {
            return Ok(None);
        }
        let refusal = if !req.replace {
            SourceError::Immutable {
                name: req.name.clone(),
                version: req.version.clone(),
                pinned: pinned.clone(),
            }
        } else if let Err(d) = by.require(Scope::Admin) {
            SourceError::Denied(d)
        } else {
            return Ok(Some(pinned));
        };
        let change = ModuleChange {
            action: AuditAction::ModuleAdd,
            outcome: AuditOutcome::Refused,
            module: &req.name,
            version: Some(&req.version),
            digest: Some(digest),
            detail: refusal.to_string(),
        };
        self.audit.module(by, change).await?;
        Err(refusal)
    }

    async fn audit_module(
        &self,
        by: &Caller,
        action: AuditAction,
        outcome: AuditOutcome,
        m: &ModuleSource,
        detail: String,
    ) -> Result<u64, RecordsError> {
        let change = ModuleChange {
            action,
            outcome,
            module: &m.name,
            version: Some(&m.version),
            digest: Some(&m.digest),
            detail,
        };
        self.audit.module(by, change).await
    }

    pub async fn get(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
    ) -> Result<ModuleSource, SourceError> {
        self.store
            .records
            .get_module(name, version)
            .await?
            .ok_or_else(|| SourceError::NotFound {
                name: name.clone(),
                version: version.clone(),
            })
    }

    pub async fn list(&self) -> Result<Vec<ModuleSource>, SourceError> {
        Ok(self.store.records.list_modules().await?)
    }

    /// Removes a module version, its artifacts, and blobs nothing else uses. Its
    /// pin stays: the name and version keep meaning this source.
    pub async fn delete(
        &self,
        name: &ModuleName,
        version: &ModuleVersion,
        builds: &Builds,
        by: &Caller,
    ) -> Result<(), SourceError> {
        let module = self.get(name, version).await?;
        if builds.module_busy(name, version).await? {
            return Err(SourceError::Busy {
                name: name.clone(),
                version: version.clone(),
            });
        }
        let records = &self.store.records;
        let gone = records.delete_artifacts(name, version).await?;
        records.delete_module(name, version).await?;
        for f in gone.iter().flat_map(|m| m.files.iter()) {
            if !records.blob_in_use(&f.sha256).await? {
                self.store.objects.delete_blob(&f.sha256).await?;
            }
        }
        if !records.digest_in_use(module.digest.as_str()).await? {
            self.store.objects.delete_source(&module.digest).await?;
        }
        let detail = format!("deleted with {} artifact(s)", gone.len());
        self.audit_module(
            by,
            AuditAction::ModuleDelete,
            AuditOutcome::Done,
            &module,
            detail,
        )
        .await?;
        Ok(())
    }
}

/// Warnings about the upload: dropped symlinks, and a dkms.conf that names
/// another package or version than the URL.
fn warnings(tree: &SourceTree, name: &ModuleName, version: &ModuleVersion) -> Vec<String> {
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
    let declared = scan_declared(&tree.dkms_conf);
    if let Some(pkg) = declared.package_name.as_deref() {
        if pkg != name.as_str() && !declared.dynamic {
            warnings.push(format!(
                "dkms.conf declares PACKAGE_NAME={pkg}, registered as {name}"
            ));
        }
    }
    if let Some(v) = declared.package_version.as_deref() {
        if is_placeholder(v) {
            warnings.push(format!(
                "dkms.conf's PACKAGE_VERSION is the placeholder {v}: built as {version} \
                 (replace it in dkms.conf if the build reads it)"
            ));
        } else if v != version.as_str() && !declared.dynamic {
            warnings.push(format!(
                "dkms.conf declares PACKAGE_VERSION={v}, registered as {version}"
            ));
        }
    }
    warnings
}
