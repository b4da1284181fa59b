//! Token checks against real SQLite records in a temp dir.

use super::*;
use crate::store::SqliteRecords;
use kmodforge_api::auth::{AuditAction, CreateTokenRequest};
use kmodforge_api::names::TokenName;

struct World {
    _dir: tempfile::TempDir,
    records: Arc<dyn Records>,
    tokens: Tokens,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let records: Arc<dyn Records> = Arc::new(SqliteRecords::open(&dir.path().join("db")).unwrap());
    World {
        tokens: Tokens::new(records.clone()),
        records,
        _dir: dir,
    }
}

async fn create(w: &World, name: &str, scope: Scope, modules: &[&str]) -> String {
    let req = CreateTokenRequest {
        name: TokenName::parse(name).unwrap(),
        scope,
        modules: modules
            .iter()
            .map(|m| ModulePattern::parse(m).unwrap())
            .collect(),
    };
    w.tokens
        .create(req, &Caller::local("cli:test".into()))
        .await
        .unwrap()
        .token
}

fn header(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

fn denied(r: Result<Caller, AuthError>) -> Denied {
    match r {
        Err(AuthError::Denied(d)) => d,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn scopes_and_refusals() {
    let w = world();
    let auth = Auth::new(w.records.clone(), false);
    let build = create(&w, "ci", Scope::Build, &[]).await;
    let caller = auth
        .authenticate(Some(&header(&build)), Scope::Read)
        .await
        .unwrap();
    assert_eq!((caller.actor.as_str(), caller.scope), ("ci", Scope::Build));
    assert!(auth
        .authenticate(Some(&header(&build)), Scope::Build)
        .await
        .is_ok());
    assert_eq!(
        denied(
            auth.authenticate(Some(&header(&build)), Scope::Publish)
                .await
        ),
        Denied::Scope {
            actor: "ci".into(),
            has: Scope::Build,
            needed: Scope::Publish
        }
    );
    assert_eq!(
        denied(auth.authenticate(None, Scope::Read).await),
        Denied::Missing {
            needed: Scope::Read
        }
    );
    // HTTP Basic carries the token as the password (browsers, apt); a wrong one is refused.
    use base64::Engine;
    let basic = |user_pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
        .into_bytes()
    };
    assert!(matches!(
        denied(
            auth.authenticate(Some(&basic("admin:admin")), Scope::Read)
                .await
        ),
        Denied::BadToken { .. }
    ));
    assert!(auth
        .authenticate(Some(&basic(&format!("apt:{build}"))), Scope::Read)
        .await
        .is_ok());
    assert!(matches!(
        denied(auth.authenticate(Some(b"Digest x"), Scope::Read).await),
        Denied::Malformed { .. }
    ));
    // Same id, other secret: a forged token.
    let forged = format!(
        "{}{}",
        &build[..build.len() - 1],
        if build.ends_with('0') { '1' } else { '0' }
    );
    assert!(matches!(
        denied(auth.authenticate(Some(&header(&forged)), Scope::Read).await),
        Denied::BadToken { .. }
    ));
    assert!(matches!(
        denied(
            auth.authenticate(Some(&header("kmf_nonsense")), Scope::Read)
                .await
        ),
        Denied::BadToken { .. }
    ));
    // Lower-case scheme and extra spaces are still a bearer token.
    assert!(auth
        .authenticate(Some(format!("bearer  {build} ").as_bytes()), Scope::Read)
        .await
        .is_ok());
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once() {
    let w = world();
    let auth = Auth::new(w.records.clone(), false);
    let t = create(&w, "fleet", Scope::Read, &[]).await;
    assert!(auth
        .authenticate(Some(&header(&t)), Scope::Read)
        .await
        .is_ok());
    let name = TokenName::parse("fleet").unwrap();
    w.tokens
        .revoke(&name, &Caller::local("cli:test".into()))
        .await
        .unwrap();
    assert!(matches!(
        denied(auth.authenticate(Some(&header(&t)), Scope::Read).await),
        Denied::BadToken { .. }
    ));
    let log = Audit::new(w.records.clone())
        .list(&crate::store::AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = log.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [AuditAction::TokenRevoke, AuditAction::TokenCreate]
    );
    assert!(log.iter().all(|e| e.actor == "cli:test"));
}

#[tokio::test]
async fn module_limits_apply_to_build_and_publish_only() {
    let w = world();
    let auth = Auth::new(w.records.clone(), false);
    let t = create(&w, "hello-ci", Scope::Publish, &["kmfhello*"]).await;
    let caller = auth
        .authenticate(Some(&header(&t)), Scope::Publish)
        .await
        .unwrap();
    let m = |s: &str| ModuleName::parse(s).unwrap();
    assert!(caller
        .require_module(Scope::Publish, &m("kmfhello"))
        .is_ok());
    assert!(caller
        .require_module(Scope::Build, &m("kmfhello-extra"))
        .is_ok());
    assert!(caller.require_module(Scope::Read, &m("r8152")).is_ok());
    let refused = caller
        .require_module(Scope::Publish, &m("r8152"))
        .unwrap_err();
    assert!(!refused.is_unauthenticated());
    assert_eq!(refused.needed(), Some(Scope::Publish));
    assert!(refused.to_string().contains("kmfhello*"), "{refused}");
    assert!(caller.require_module(Scope::Admin, &m("kmfhello")).is_err());
}

#[tokio::test]
async fn anonymous_reads_only_when_asked_for() {
    let w = world();
    let open = Auth::new(w.records.clone(), true);
    assert_eq!(
        open.authenticate(None, Scope::Read).await.unwrap().scope,
        Scope::Read
    );
    assert!(matches!(
        denied(open.authenticate(None, Scope::Build).await),
        Denied::Missing {
            needed: Scope::Build
        }
    ));
    // A wrong token is never downgraded to anonymous.
    assert!(matches!(
        denied(open.authenticate(Some(b"Bearer kmf_x"), Scope::Read).await),
        Denied::BadToken { .. }
    ));
}

#[tokio::test]
async fn the_first_admin_token_is_written_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let path = bootstrap_admin(w.records.clone(), dir.path())
        .await
        .unwrap()
        .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    let auth = Auth::new(w.records.clone(), false);
    let caller = auth
        .authenticate(Some(&header(token.trim())), Scope::Admin)
        .await
        .unwrap();
    assert_eq!(caller.actor, "admin");
    assert_eq!(
        bootstrap_admin(w.records.clone(), dir.path())
            .await
            .unwrap(),
        None,
        "only once"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        token,
        "file untouched"
    );
}

#[tokio::test]
async fn token_names_stay_unique_and_limits_are_checked() {
    let w = world();
    create(&w, "ci", Scope::Build, &[]).await;
    let again = CreateTokenRequest {
        name: TokenName::parse("ci").unwrap(),
        scope: Scope::Read,
        modules: vec![],
    };
    let local = Caller::local("cli:test".into());
    assert!(matches!(
        w.tokens.create(again, &local).await,
        Err(TokenError::Exists(_))
    ));
    let limited_admin = CreateTokenRequest {
        name: TokenName::parse("x").unwrap(),
        scope: Scope::Admin,
        modules: vec![ModulePattern::parse("a").unwrap()],
    };
    assert!(matches!(
        w.tokens.create(limited_admin, &local).await,
        Err(TokenError::Invalid(_))
    ));
    let nope = TokenName::parse("nope").unwrap();
    assert!(matches!(
        w.tokens.revoke(&nope, &local).await,
        Err(TokenError::Unknown(_))
    ));
}
