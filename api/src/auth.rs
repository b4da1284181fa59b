//! Who may do what: token scopes, module limits, and the audit log's records.
//!
//! Scopes are ordered, each including the ones before it:
//! `read` < `build` < `publish` < `admin`. A token may be limited to module name
//! patterns; the limit applies to what it builds and publishes (reading is never
//! limited, and an admin token is never limited).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{ModuleName, ModulePattern, ModuleVersion, TokenName};

/// What a token may do; each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Manifests, artifacts, blobs, builds, logs, kernels.
    Read,
    /// Trigger builds of registered modules.
    Build,
    /// Add modules and their settings; the curl one-shot.
    Publish,
    /// Delete modules, prepare kernels, manage tokens, read the audit log.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Build, Scope::Publish, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Build => "build",
            Scope::Publish => "publish",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// True when a token of this scope may do what `needed` allows.
    pub fn includes(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::parse(s).ok_or_else(|| format!("unknown scope {s:?}: read, build, publish or admin"))
    }
}

/// A token as lists show it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub name: TokenName,
    pub scope: Scope,
    /// Module name patterns its `build` and `publish` rights are limited to; empty
    /// means every module.
    #[serde(default)]
    pub modules: Vec<ModulePattern>,
    pub created_at: String,
    /// Who created it: a token name, or `cli:<user>` for the local command line.
    pub created_by: String,
    /// When it was revoked; a revoked token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl TokenInfo {
    /// True when this token may build or publish `module` (the scope aside).
    pub fn covers(&self, module: &ModuleName) -> bool {
        self.scope == Scope::Admin
            || self.modules.is_empty()
            || self.modules.iter().any(|p| p.matches(module))
    }
}

/// Why a token request is refused, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRequestError {
    #[error("modules: an admin token cannot be limited to modules (it can create any token)")]
    AdminWithModules,
    #[error("modules: a read token cannot be limited to modules (reading is never limited)")]
    ReadWithModules,
    #[error("modules: at most {max} patterns")]
    TooManyPatterns { max: usize },
}

/// `POST /v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: TokenName,
    pub scope: Scope,
    #[serde(default)]
    pub modules: Vec<ModulePattern>,
}

impl CreateTokenRequest {
    /// Most patterns one token may carry.
    pub const MAX_PATTERNS: usize = 64;

    /// Checks what serde cannot: limits only where they mean something.
    pub fn validate(&self) -> Result<(), TokenRequestError> {
        match self.scope {
            _ if self.modules.is_empty() => Ok(()),
            Scope::Admin => Err(TokenRequestError::AdminWithModules),
            Scope::Read => Err(TokenRequestError::ReadWithModules),
            _ if self.modules.len() > Self::MAX_PATTERNS => {
                Err(TokenRequestError::TooManyPatterns {
                    max: Self::MAX_PATTERNS,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Answer to `POST /v1/tokens`: the secret, shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

impl fmt::Debug for CreatedToken {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &"<redacted>")
            .field("info", &self.info)
            .finish()
    }
}

/// What an audited change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// `PUT /v1/modules/{name}/{version}` or the one-shot's add.
    ModuleAdd,
    ModuleDelete,
    SettingsPut,
    SettingsDelete,
    TokenCreate,
    TokenRevoke,
    /// A signing key was created, imported or replaced.
    KeyChange,
    /// A package uploaded into the apt repository (`PUT /v1/apt/packages`).
    AptUpload,
    /// An uploaded package removed from the apt repository.
    AptDelete,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ModuleAdd => "module_add",
            AuditAction::ModuleDelete => "module_delete",
            AuditAction::SettingsPut => "settings_put",
            AuditAction::SettingsDelete => "settings_delete",
            AuditAction::TokenCreate => "token_create",
            AuditAction::TokenRevoke => "token_revoke",
            AuditAction::KeyChange => "key_change",
            AuditAction::AptUpload => "apt_upload",
            AuditAction::AptDelete => "apt_delete",
        }
    }
}

/// Whether the change happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Done,
    /// Refused: a missing scope or module limit, an immutable version, a conflict.
    Refused,
}

/// One line of the audit log (`GET /v1/audit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Position in the log, increasing; assigned by the store.
    #[serde(default)]
    pub seq: u64,
    pub at: String,
    /// The token's name, or `cli:<user>` / `server` for local actions.
    pub actor: String,
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ModuleVersion>,
    /// The source digest (module changes), or the key's id (key changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The token a token change is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenName>,
    /// One line: what changed, or why it was refused.
    pub detail: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_the_ones_before() {
        assert!(Scope::Admin.includes(Scope::Read));
        assert!(Scope::Publish.includes(Scope::Build));
        assert!(!Scope::Build.includes(Scope::Publish));
        assert!(!Scope::Read.includes(Scope::Build));
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn module_limits_only_where_they_mean_something() {
        let req = |scope, modules: &[&str]| CreateTokenRequest {
            name: TokenName::parse("t").unwrap(),
            scope,
            modules: modules
                .iter()
                .map(|m| ModulePattern::parse(m).unwrap())
                .collect(),
        };
        assert!(req(Scope::Publish, &["realtek-*"]).validate().is_ok());
        assert!(req(Scope::Admin, &[]).validate().is_ok());
        assert_eq!(
            req(Scope::Admin, &["x"]).validate(),
            Err(TokenRequestError::AdminWithModules)
        );
        assert_eq!(
            req(Scope::Read, &["x"]).validate(),
            Err(TokenRequestError::ReadWithModules)
        );
        let body = r#"{"name":"t","scope":"build","modules":["a"],"extra":1}"#;
        assert!(serde_json::from_str::<CreateTokenRequest>(body).is_err());
    }

    #[test]
    fn created_tokens_never_debug_print_the_secret() {
        let t = CreatedToken {
            token: "kmf_secret".into(),
            info: TokenInfo {
                name: TokenName::parse("t").unwrap(),
                scope: Scope::Read,
                modules: vec![],
                created_at: "now".into(),
                created_by: "cli:root".into(),
                revoked_at: None,
            },
        };
        assert!(!format!("{t:?}").contains("kmf_secret"));
    }
}
