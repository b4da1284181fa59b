//! The audit log: every change (module add and delete, settings, tokens, keys),
//! done or refused, with the token's name, time, module and digest.
//!
//! An entry is written after the change it records; when the write fails the
//! request answers 500 (the change stands, and the log line says so).

use std::sync::Arc;

use kmodforge_api::auth::{AuditAction, AuditEntry, AuditOutcome};
use kmodforge_api::names::{ModuleName, ModuleVersion, SourceDigest, TokenName};

use super::Caller;
use crate::builds::now_rfc3339;
use crate::store::{AuditQuery, Records, RecordsError};

/// Appends to and reads the audit log.
#[derive(Clone)]
pub struct Audit {
    records: Arc<dyn Records>,
}

/// What a module change was about.
pub struct ModuleChange<'a> {
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub module: &'a ModuleName,
    pub version: Option<&'a ModuleVersion>,
    pub digest: Option<&'a SourceDigest>,
    pub detail: String,
}

impl Audit {
    pub fn new(records: Arc<dyn Records>) -> Self {
        Audit { records }
    }

    async fn append(&self, entry: AuditEntry) -> Result<u64, RecordsError> {
        let result = self.records.append_audit(&entry).await;
        match &result {
            Ok(seq) => tracing::info!(
                seq,
                actor = %entry.actor,
                action = entry.action.as_str(),
                outcome = ?entry.outcome,
                detail = %entry.detail,
                "audit"
            ),
            Err(e) => tracing::error!(
                error = %e,
                actor = %entry.actor,
                action = entry.action.as_str(),
                detail = %entry.detail,
                "audit entry could not be written"
            ),
        }
        result
    }

    fn entry(
        by: &Caller,
        action: AuditAction,
        outcome: AuditOutcome,
        detail: String,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: now_rfc3339(),
            actor: by.actor.clone(),
            action,
            outcome,
            module: None,
            version: None,
            digest: None,
            token: None,
            detail,
        }
    }

    /// A change to a module (add, delete, settings), done or refused.
    pub async fn module(&self, by: &Caller, c: ModuleChange<'_>) -> Result<u64, RecordsError> {
        let mut e = Self::entry(by, c.action, c.outcome, c.detail);
        e.module = Some(c.module.clone());
        e.version = c.version.cloned();
        e.digest = c.digest.map(|d| d.to_string());
        self.append(e).await
    }

    /// A token created or revoked.
    pub async fn token(
        &self,
        by: &Caller,
        action: AuditAction,
        token: &TokenName,
        detail: String,
    ) -> Result<u64, RecordsError> {
        let mut e = Self::entry(by, action, AuditOutcome::Done, detail);
        e.token = Some(token.clone());
        self.append(e).await
    }

    /// A refused change that names no module (a token request, say).
    pub async fn refused(
        &self,
        by: &Caller,
        action: AuditAction,
        detail: String,
    ) -> Result<u64, RecordsError> {
        self.append(Self::entry(by, action, AuditOutcome::Refused, detail))
            .await
    }

    /// A signing key created, imported or replaced (`key_id`: its identity).
    pub async fn key(
        &self,
        by: &Caller,
        key_id: &str,
        detail: String,
    ) -> Result<u64, RecordsError> {
        let mut e = Self::entry(by, AuditAction::KeyChange, AuditOutcome::Done, detail);
        e.digest = Some(key_id.to_string());
        self.append(e).await
    }

    /// A change to the apt repository's uploaded packages.
    pub async fn apt(
        &self,
        by: &Caller,
        action: AuditAction,
        package: &str,
        detail: String,
    ) -> Result<u64, RecordsError> {
        let mut e = Self::entry(by, action, AuditOutcome::Done, detail);
        e.digest = Some(package.to_string());
        self.append(e).await
    }

    pub async fn list(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, RecordsError> {
        self.records.list_audit(q).await
    }
}
