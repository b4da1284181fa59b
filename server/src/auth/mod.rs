//! Authentication and authorisation: bearer tokens with scopes and module limits,
//! their management, and the audit log of every change.
//!
//! Every route but `/healthz` (and the public keys) needs `Authorization: Bearer
//! <token>`; the route table in `http` names the scope each one needs, and the
//! check runs before the request's body is read. Tokens live in the records store
//! (hashed); a revocation is seen by the next request, because every request reads
//! its token's record (one indexed lookup, measured in docs/BENCHMARKS.md).

pub mod audit;
mod manage;
pub mod token;

use std::sync::Arc;

use kmodforge_api::auth::Scope;
use kmodforge_api::names::{ModuleName, ModulePattern};

pub use audit::Audit;
pub use manage::{bootstrap_admin, TokenError, Tokens, ADMIN_TOKEN_FILE};

use crate::store::{Records, RecordsError};

/// Who is asking, once their token checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`anonymous` without one, where anonymous reads are on).
    pub actor: String,
    pub scope: Scope,
    /// Module patterns its build and publish rights are limited to; empty: all.
    pub modules: Vec<ModulePattern>,
}

impl Caller {
    /// A caller with every right, for the server's own work and the command line.
    pub fn local(actor: String) -> Caller {
        Caller {
            actor,
            scope: Scope::Admin,
            modules: Vec::new(),
        }
    }

    pub fn require(&self, needed: Scope) -> Result<(), Denied> {
        if self.scope.includes(needed) {
            return Ok(());
        }
        Err(Denied::Scope {
            actor: self.actor.clone(),
            has: self.scope,
            needed,
        })
    }

    /// `needed` on `module`: the scope, and for build and publish the module limit.
    pub fn require_module(&self, needed: Scope, module: &ModuleName) -> Result<(), Denied> {
        self.require(needed)?;
        let limited = matches!(needed, Scope::Build | Scope::Publish)
            && self.scope != Scope::Admin
            && !self.modules.is_empty();
        if !limited || self.modules.iter().any(|p| p.matches(module)) {
            return Ok(());
        }
        let patterns: Vec<&str> = self.modules.iter().map(|p| p.as_str()).collect();
        Err(Denied::Module {
            actor: self.actor.clone(),
            needed,
            module: module.clone(),
            patterns: patterns.join(", "),
        })
    }
}

/// A refused request: 401 (no valid token) or 403 (a token without the right).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "this request needs a token with scope {needed}: send `Authorization: Bearer <token>`"
    )]
    Missing { needed: Scope },
    #[error("the bearer token is not valid (unknown, revoked or mistyped); this request needs scope {needed}")]
    BadToken { needed: Scope },
    #[error(
        "the Authorization header must be `Bearer <token>`; this request needs scope {needed}"
    )]
    Malformed { needed: Scope },
    #[error("tokens are accepted only in the Authorization header, never in the query string")]
    TokenInQuery,
    #[error("token {actor} has scope {has}; this request needs scope {needed}")]
    Scope {
        actor: String,
        has: Scope,
        needed: Scope,
    },
    #[error("token {actor} may {needed} only modules matching {patterns}, not {module}")]
    Module {
        actor: String,
        needed: Scope,
        module: ModuleName,
        patterns: String,
    },
}

impl Denied {
    /// True for 401 (authentication), false for 403 (authorisation).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Denied::Missing { .. }
                | Denied::BadToken { .. }
                | Denied::Malformed { .. }
                | Denied::TokenInQuery
        )
    }

    /// The scope the request needed, where one applies.
    pub fn needed(&self) -> Option<Scope> {
        match self {
            Denied::Missing { needed }
            | Denied::BadToken { needed }
            | Denied::Malformed { needed }
            | Denied::Scope { needed, .. }
            | Denied::Module { needed, .. } => Some(*needed),
            Denied::TokenInQuery => None,
        }
    }
}

/// Why authentication could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("reading the token records: {0}")]
    Store(#[from] RecordsError),
}

/// Checks bearer tokens against the records.
#[derive(Clone)]
pub struct Auth {
    records: Arc<dyn Records>,
    /// Requests without a token get `read` (an explicit opt-in for a trusted LAN).
    anonymous_read: bool,
}

impl Auth {
    pub fn new(records: Arc<dyn Records>, anonymous_read: bool) -> Self {
        Auth {
            records,
            anonymous_read,
        }
    }

    /// The caller of a request with this `Authorization` header, if it may do
    /// `needed` at all (module limits are checked later, by the handler).
    pub async fn authenticate(
        &self,
        header: Option<&[u8]>,
        needed: Scope,
    ) -> Result<Caller, AuthError> {
        let Some(header) = header else {
            if self.anonymous_read && needed == Scope::Read {
                return Ok(Caller {
                    actor: "anonymous".into(),
                    scope: Scope::Read,
                    modules: Vec::new(),
                });
            }
            return Err(Denied::Missing { needed }.into());
        };
        let presented = bearer(header).ok_or(Denied::Malformed { needed })?;
        let presented = presented.as_str();
        let bad = || AuthError::Denied(Denied::BadToken { needed });
        let id = token::id_of(presented).ok_or_else(bad)?;
        let row = self.records.token_by_id(id).await?.ok_or_else(bad)?;
        // Compare before looking at revocation, so both refusals cost the same.
        if !token::matches(presented, &row.hash) || row.info.revoked_at.is_some() {
            return Err(bad());
        }
        let caller = Caller {
            actor: row.info.name.to_string(),
            scope: row.info.scope,
            modules: row.info.modules,
        };
        caller.require(needed)?;
        Ok(caller)
    }
}

/// The token of an `Authorization` value: `Bearer <token>`, or HTTP Basic with the
/// token as the password (browsers, and apt's `auth.conf`); scheme case-insensitive.
fn bearer(header: &[u8]) -> Option<String> {
    use base64::Engine;
    let value = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Some(rest.to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
