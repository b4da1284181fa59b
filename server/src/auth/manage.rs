//! Token management: create (the secret shown once), list, revoke, each audited;
//! and the first admin token, written 0600 into the data directory on first start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kmodforge_api::auth::{
    AuditAction, CreateTokenRequest, CreatedToken, Scope, TokenInfo, TokenRequestError,
};
use kmodforge_api::names::TokenName;

use super::token::{self, NoEntropy};
use super::{Audit, Caller};
use crate::builds::now_rfc3339;
use crate::store::{write_secret, Records, RecordsError, Revoked, TokenRow};

/// The first admin token's file, under the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The first admin token's name.
const ADMIN_TOKEN_NAME: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token request: {0}")]
    Invalid(#[from] TokenRequestError),
    #[error("a token named {0} exists; revoke it first or choose another name")]
    Exists(TokenName),
    #[error("no token named {0}")]
    Unknown(TokenName),
    #[error(transparent)]
    Entropy(#[from] NoEntropy),
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("writing {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates, lists and revokes tokens.
#[derive(Clone)]
pub struct Tokens {
    records: Arc<dyn Records>,
    audit: Audit,
}

impl Tokens {
    pub fn new(records: Arc<dyn Records>) -> Self {
        Tokens {
            audit: Audit::new(records.clone()),
            records,
        }
    }

    /// Makes a token; the answer holds its secret, which is not kept anywhere.
    pub async fn create(
        &self,
        req: CreateTokenRequest,
        by: &Caller,
    ) -> Result<CreatedToken, TokenError> {
        req.validate()?;
        let minted = token::mint()?;
        let info = TokenInfo {
            name: req.name,
            scope: req.scope,
            modules: req.modules,
            created_at: now_rfc3339(),
            created_by: by.actor.clone(),
            revoked_at: None,
        };
        let row = TokenRow {
            id: minted.id,
            hash: minted.hash,
            info: info.clone(),
        };
        if !self.records.insert_token(&row).await? {
            return Err(TokenError::Exists(info.name));
        }
        let patterns: Vec<&str> = info.modules.iter().map(|p| p.as_str()).collect();
        let limit = if patterns.is_empty() {
            String::new()
        } else {
            format!(" limited to {}", patterns.join(", "))
        };
        self.audit
            .token(
                by,
                AuditAction::TokenCreate,
                &info.name,
                format!(
                    "created token {} with scope {}{limit}",
                    info.name, info.scope
                ),
            )
            .await?;
        Ok(CreatedToken {
            token: minted.token,
            info,
        })
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        Ok(self.records.list_tokens().await?)
    }

    /// Revokes `name`: refused from the next request on. Revoking a revoked token
    /// answers it again.
    pub async fn revoke(&self, name: &TokenName, by: &Caller) -> Result<TokenInfo, TokenError> {
        match self.records.revoke_token(name, &now_rfc3339()).await? {
            Revoked::Unknown => Err(TokenError::Unknown(name.clone())),
            Revoked::Already(info) => Ok(info),
            Revoked::Now(info) => {
                let detail = format!("revoked token {name} (scope {})", info.scope);
                self.audit
                    .token(by, AuditAction::TokenRevoke, name, detail)
                    .await?;
                Ok(info)
            }
        }
    }
}

/// On a first start (no token was ever stored), makes the `admin` token and
/// writes it to `<data_dir>/admin.token` (mode 0600). Returns the file's path when
/// it did. The record goes first: among replicas starting together, the one whose
/// insert wins writes the file.
pub async fn bootstrap_admin(
    records: Arc<dyn Records>,
    data_dir: &Path,
) -> Result<Option<PathBuf>, TokenError> {
    if records.any_tokens().await? {
        return Ok(None);
    }
    let name = TokenName::parse(ADMIN_TOKEN_NAME).map_err(|e| TokenError::File {
        path: data_dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let tokens = Tokens::new(records.clone());
    let server = Caller::local("server".into());
    let req = CreateTokenRequest {
        name: name.clone(),
        scope: Scope::Admin,
        modules: Vec::new(),
    };
    let created = match tokens.create(req, &server).await {
        Ok(c) => c,
        Err(TokenError::Exists(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Err(source) = write_secret(&path, format!("{}\n", created.token).as_bytes()) {
        // Nobody could use a token whose only copy was not written.
        let _ = records.forget_token(&name).await;
        return Err(TokenError::File { path, source });
    }
    Ok(Some(path))
}
