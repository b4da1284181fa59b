//! `kmodforge-server token create|list|revoke`: token management on the server's
//! host, straight against the records of a data directory (a running server sees
//! the change with its next request). Whoever can write the data directory owns
//! the server anyway; these commands are the way back in when no admin token is at
//! hand. Each change is audited as `cli:<user>`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kmodforge_api::auth::{CreateTokenRequest, Scope, TokenInfo};
use kmodforge_api::names::{ModulePattern, TokenName};

use crate::auth::{Caller, TokenError, Tokens};
use crate::store::{SqliteRecords, StoreOpenError};

/// The records of the server whose tokens to manage: its data directory's SQLite,
/// or the cluster's PostgreSQL database.
#[derive(Clone, Debug, Args)]
pub struct DataDirArg {
    #[arg(long, env = "KMODFORGE_DATA_DIR", default_value = "/var/lib/kmodforge")]
    pub data_dir: PathBuf,
    /// The cluster's database (as the server's `--database-url`).
    #[arg(long, env = "KMODFORGE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Clone, Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints it alone on stdout (it is shown this once).
    Create {
        /// Its name, for lists, revocation and the audit log.
        #[arg(long)]
        name: TokenName,
        /// read, build, publish or admin (each includes the ones before it).
        #[arg(long)]
        scope: Scope,
        /// Limits build and publish rights to modules matching this pattern
        /// (`r8152`, `realtek-*`); repeat for more.
        #[arg(long = "module")]
        modules: Vec<ModulePattern>,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Lists tokens by name (never their secrets).
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Revokes a token by name: refused from the next request on.
    Revoke {
        name: TokenName,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("data directory {0} does not exist (pass --data-dir)")]
    NoDataDir(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreOpenError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Runs a token command; returns what to print on stdout.
pub async fn run_token(cmd: TokenCommand) -> Result<String, CliError> {
    let by = Caller::local(local_actor());
    match cmd {
        TokenCommand::Create {
            name,
            scope,
            modules,
            dir,
        } => {
            let tokens = open(&dir).await?;
            let req = CreateTokenRequest {
                name,
                scope,
                modules,
            };
            Ok(format!("{}\n", tokens.create(req, &by).await?.token))
        }
        TokenCommand::List { json, dir } => {
            let list = open(&dir).await?.list().await?;
            if json {
                return Ok(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                ));
            }
            Ok(table(&list))
        }
        TokenCommand::Revoke { name, dir } => {
            let info = open(&dir).await?.revoke(&name, &by).await?;
            let at = info.revoked_at.unwrap_or_default();
            Ok(format!("revoked {name} ({} token) at {at}\n", info.scope))
        }
    }
}

async fn open(dir: &DataDirArg) -> Result<Tokens, CliError> {
    if let Some(url) = &dir.database_url {
        let records = crate::store::postgres::PgRecords::connect(url)
            .await
            .map_err(StoreOpenError::Records)?;
        return Ok(Tokens::new(std::sync::Arc::new(records)));
    }
    if !dir.data_dir.is_dir() {
        return Err(CliError::NoDataDir(dir.data_dir.clone()));
    }
    let records =
        SqliteRecords::open(&dir.data_dir.join("kmodforge.db")).map_err(StoreOpenError::Records)?;
    Ok(Tokens::new(std::sync::Arc::new(records)))
}

/// `cli:<user>`, the audit log's name for the local command line.
fn local_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid{}", nix_uid()));
    format!("cli:{user}")
}

fn nix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

fn table(list: &[TokenInfo]) -> String {
    let mut out = format!(
        "{:<24} {:<8} {:<24} {:<21} {:<16} {}\n",
        "NAME", "SCOPE", "MODULES", "CREATED", "BY", "REVOKED"
    );
    for t in list {
        let modules: Vec<&str> = t.modules.iter().map(|p| p.as_str()).collect();
        let modules = if modules.is_empty() {
            "*".to_string()
        } else {
            modules.join(",")
        };
        out.push_str(&format!(
            "{:<24} {:<8} {:<24} {:<21} {:<16} {}\n",
            t.name.as_str(),
            t.scope.as_str(),
            modules,
            t.created_at,
            t.created_by,
            t.revoked_at.as_deref().unwrap_or("-")
        ));
    }
    out
}
