//! Tokens, scopes and immutable versions against the real server over loopback:
//! every refusal is an attack that must change nothing (no record, no container,
//! no file on a host), and no token ever reaches the server's log.
//! (The full route × scope matrix runs through the router in `server/tests/api.rs`.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kmodforge_api::wire::ErrorKind;
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::{error_body, fixture, request, tar_gz_dir, Env, ServerOpts, KERNEL_A};
use reqwest::StatusCode;

/// The status line of a raw request that sends headers announcing a 1 GiB body,
/// and no body: the server must answer without waiting for it.
fn status_without_body(env: &Env, method: &str, path: &str, token: Option<&str>) -> Result<String> {
    let mut s = TcpStream::connect(env.server.addr()).context("connecting")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1073741824\r\n\r\n"
    )?;
    let mut buf = [0u8; 512];
    let n = s
        .read(&mut buf)
        .context("no answer before the body was sent")?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// `src` copied to a temp dir with one source file changed: other content under
/// the same name and version.
fn altered(src: &Path) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    let c = dir.path().join("kmf_hello.c");
    let mut text = std::fs::read_to_string(&c)?;
    text.push_str("\n/* not the code that was built */\n");
    std::fs::write(&c, text)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_module_limits_and_revocation_are_enforced() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let read = env.server.token("fleet", "read", &[]).await?;
    let hello = env
        .server
        .token("hello-ci", "publish", &["kmfhello*"])
        .await?;
    let admin = env.server.admin_token()?;
    let tar = tar_gz_dir(&fixture("hello"))?;

    // A publish token limited to kmfhello* cannot add r8152; it can add kmfhello.
    let as_hello = env.server.client_with(Some(&hello))?;
    let (status, body) =
        error_body(as_hello.put_module("r8152", "2.17.1", tar.clone()).await?).await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body.error.kind == ErrorKind::Forbidden,
        "{status} {body:?}"
    );
    ensure!(body.error.message.contains("kmfhello*"), "{body:?}");
    ensure!(env.client.modules().await?.is_empty(), "nothing stored");
    let resp = as_hello.put_module("kmfhello", "1.0", tar.clone()).await?;
    ensure!(resp.status() == StatusCode::CREATED, "{}", resp.status());

    // A read token cannot trigger a build: 403, no build record, no container.
    let as_read = env.server.client_with(Some(&read))?;
    let req = serde_json::to_value(request("kmfhello", "1.0", KERNEL_A)?)?;
    let (resp, created) = env.docker.count_created(as_read.post_build(&req)).await?;
    let (status, body) = error_body(resp?).await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body.error.scope.map(|s| s.as_str()) == Some("build"),
        "{status} {body:?}"
    );
    ensure!(
        env.own(&created).await?.is_empty() && created.is_empty(),
        "no container: {created:?}"
    );
    let builds: serde_json::Value = env.client.get("/v1/builds").await?.json().await?;
    ensure!(
        builds == serde_json::json!([]),
        "no build recorded: {builds}"
    );

    // No token, and a token in the query string: 401, even for reads.
    let anon = env.server.client_with(None)?;
    let (status, body) = error_body(anon.get("/v1/modules").await?).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED && body.error.kind == ErrorKind::Unauthorized,
        "{body:?}"
    );
    let (status, _) = error_body(
        anon.get(&format!("/v1/modules?access_token={read}"))
            .await?,
    )
    .await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "token in the query: {status}"
    );

    // Unauthorised uploads are answered before their body is read.
    let line = status_without_body(&env, "PUT", "/v1/modules/big/1.0", None)?;
    ensure!(
        line.starts_with("HTTP/1.1 401"),
        "without a token: {line:?}"
    );
    let line = status_without_body(&env, "PUT", "/v1/modules/big/1.0", Some(&read))?;
    ensure!(
        line.starts_with("HTTP/1.1 403"),
        "with a read token: {line:?}"
    );
    let line = status_without_body(
        &env,
        "POST",
        "/v1/build?kernel=6.1.0-47-amd64&name=r8152&version=1",
        Some(&hello),
    )?;
    ensure!(
        line.starts_with("HTTP/1.1 403"),
        "one-shot for another module: {line:?}"
    );

    // A revoked token is refused from the next request on.
    ensure!(as_read.get("/v1/modules").await?.status() == StatusCode::OK);
    let resp = env
        .client
        .http()
        .delete(env.client.url("/v1/tokens/fleet"))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK, "revoke: {}", resp.status());
    let (status, _) = error_body(as_read.get("/v1/modules").await?).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "revoked token: {status}"
    );

    // The token list shows names and scopes, never a secret.
    let list = env.client.get("/v1/tokens").await?.text().await?;
    ensure!(
        list.contains("\"fleet\"") && list.contains("revoked_at"),
        "{list}"
    );
    for secret in [&read, &hello, &admin] {
        ensure!(
            !list.contains(secret.as_str()),
            "a secret in the token list"
        );
    }

    // Not one of the tokens is in the server's log, though every one was used.
    let log = env.server.log_text();
    ensure!(
        log.contains("request refused"),
        "refusals are logged:\n{log}"
    );
    for secret in [&read, &hello, &admin] {
        let secret_part = &secret[secret.len() - 64..];
        ensure!(
            !log.contains(secret_part),
            "a token in the server log:\n{log}"
        );
    }
    ensure!(
        log.contains("admin.token"),
        "the first start names the token's file"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_built_version_cannot_be_replaced_after_a_delete() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    let ci = env
        .server
        .token("ci-hello", "publish", &["kmf-hello"])
        .await?;
    let as_ci = env.server.client_with(Some(&ci))?;
    as_ci
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let (_, first) = env
        .client
        .build(&request("kmf-hello", "1.0", KERNEL_A)?)
        .await?;
    let done = env.client.wait(&first.build.id).await?;
    let built = done.artifact.context("the build succeeds")?;

    // Only an admin deletes, and the publisher's attempt is audited.
    let url = env.client.url("/v1/modules/kmf-hello/1.0");
    let (status, _) = error_body(as_ci.http().delete(&url).send().await?).await?;
    ensure!(
        status == StatusCode::FORBIDDEN,
        "publish token deleting: {status}"
    );
    let resp = env.client.http().delete(&url).send().await?;
    ensure!(
        resp.status() == StatusCode::NO_CONTENT,
        "admin delete: {}",
        resp.status()
    );

    // Other content under the same name and version: refused, nothing stored.
    let other = altered(&fixture("hello"))?;
    let (status, body) = error_body(
        as_ci
            .put_module("kmf-hello", "1.0", tar_gz_dir(other.path())?)
            .await?,
    )
    .await?;
    ensure!(
        status == StatusCode::CONFLICT && body.error.kind == ErrorKind::ImmutableVersion,
        "{status} {body:?}"
    );
    ensure!(
        body.error.message.contains(built.source_digest.as_str()),
        "{body:?}"
    );
    ensure!(env.client.modules().await?.is_empty(), "nothing registered");
    let resp = env
        .client
        .get("/v1/artifacts/kmf-hello/1.0/6.1.0-47-amd64")
        .await?;
    ensure!(
        resp.status() == StatusCode::NOT_FOUND,
        "no artifact: {}",
        resp.status()
    );

    // The same content again is the same version: allowed.
    let (status, again) = as_ci
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    ensure!(status == StatusCode::CREATED && again.module.digest == built.source_digest);

    // The audit log lists each change and the refused attempts, with token names.
    let log: Vec<serde_json::Value> = env
        .client
        .get("/v1/audit?module=kmf-hello")
        .await?
        .json()
        .await?;
    let rows: Vec<String> = log
        .iter()
        .rev()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap_or("?"),
                e["action"].as_str().unwrap_or("?"),
                e["outcome"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let want = [
        "ci-hello module_add done",
        "ci-hello module_delete refused",
        "admin module_delete done",
        "ci-hello module_add refused",
        "ci-hello module_add done",
    ];
    ensure!(rows == want, "audit log: {rows:#?}\n{log:#?}");
    let refused = &log[1];
    ensure!(
        refused["digest"]
            .as_str()
            .is_some_and(|d| d != built.source_digest.as_str())
            && refused["version"] == "1.0",
        "the refused attempt names its digest: {refused}"
    );
    // Reading the audit log needs admin.
    let (status, _) = error_body(as_ci.get("/v1/audit").await?).await?;
    ensure!(status == StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_syncs_with_a_read_token_and_names_a_missing_one() -> Result<()> {
    let env = Env::start(ServerOpts::default()).await?;
    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let (_, first) = env
        .client
        .build(&request("kmf-hello", "1.0", KERNEL_A)?)
        .await?;
    env.client.wait(&first.build.id).await?;
    let url = env.server.base_url();

    // Without a token: one line naming the missing token, nothing installed.
    let bare = AgentRoot::new(&[KERNEL_A])?;
    bare.write_config(url.as_str(), KERNEL_A, &[("kmf-hello", "1.0")])?;
    let run = bare.run(&["sync"]).await?.expect(2)?;
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("kmodforge-agent: "))
        .collect();
    ensure!(errors.len() == 1, "one error line:\n{run}");
    ensure!(
        errors[0].contains("token_file") && errors[0].contains("requires a token"),
        "{run}"
    );
    ensure!(
        !bare.tree(KERNEL_A).join("updates").exists(),
        "nothing installed"
    );

    // A read token syncs a built module.
    let fleet = env.server.token("fleet", "read", &[]).await?;
    let root = AgentRoot::new(&[KERNEL_A])?;
    root.write_config(
        (url.as_str(), fleet.as_str()),
        KERNEL_A,
        &[("kmf-hello", "1.0")],
    )?;
    let run = root.run(&["sync"]).await?.expect(0)?;
    let line = format!("kmf-hello/1.0, {KERNEL_A}: installed (kmf_hello.ko)");
    ensure!(run.stdout.contains(&line), "no {line:?} in\n{run}");
    ensure!(
        !format!("{run}").contains(&fleet),
        "the agent never prints its token"
    );

    // Revoked: refused in one line, the installed module stays.
    let resp = env
        .client
        .http()
        .delete(env.client.url("/v1/tokens/fleet"))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK);
    root.add_kernel("6.1.0-56-amd64")?;
    let run = root
        .run(&["sync", "--kernel", "6.1.0-56-amd64"])
        .await?
        .expect(2)?;
    ensure!(run.stderr.contains("refused the configured token"), "{run}");
    ensure!(root
        .tree(KERNEL_A)
        .join("updates/dkms/kmf_hello.ko")
        .is_file());
    Ok(())
}
