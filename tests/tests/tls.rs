//! HTTPS end to end: the server with a certificate from a test CA (made by the
//! real `openssl`), the agent trusting that CA through `ca_file`; a client or an
//! agent with another CA is refused, and installs nothing.

use anyhow::{ensure, Context, Result};
use kmodforge_e2e::agent::AgentRoot;
use kmodforge_e2e::{fixture, request, Client, Env, ServerOpts, TestPki, KERNEL_A};

#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_private_ca() -> Result<()> {
    let pki = TestPki::new()?;
    let env = Env::start(ServerOpts::default().tls(pki.clone())).await?;
    let url = env.server.base_url();
    ensure!(url.starts_with("https://127.0.0.1:"), "{url}");

    env.client
        .add_module("kmf-hello", "1.0", &fixture("hello"))
        .await?;
    let (_, first) = env
        .client
        .build(&request("kmf-hello", "1.0", KERNEL_A)?)
        .await?;
    let done = env.client.wait(&first.build.id).await?;
    ensure!(done.artifact.is_some(), "{done:?}");
    let log = env.client.build_log(&first.build.id).await?;
    ensure!(log.contains("kmf_hello"), "the log streams over TLS too");

    // A client that trusts only the system roots does not get through.
    let token = env.server.admin_token()?;
    let stranger = Client::with_token(url.clone(), Some(&token), None)?;
    ensure!(
        stranger.get("/healthz").await.is_err(),
        "an unknown CA must fail the handshake"
    );

    // The agent with the test CA installs; with another CA it is refused.
    let fleet = env.server.token("fleet", "read", &[]).await?;
    let modules = [("kmf-hello", "1.0")];
    let root = AgentRoot::new(&[KERNEL_A])?;
    let ca = format!("ca_file = \"{}\"\n", pki.ca_cert.display());
    root.write_config_with((url.as_str(), fleet.as_str()), KERNEL_A, &modules, &ca)?;
    let run = root.run(&["sync"]).await?.expect(0)?;
    let line = format!("kmf-hello/1.0, {KERNEL_A}: installed (kmf_hello.ko)");
    ensure!(run.stdout.contains(&line), "no {line:?} in\n{run}");

    let wrong = AgentRoot::new(&[KERNEL_A])?;
    let other = format!("ca_file = \"{}\"\n", pki.other_ca_cert.display());
    wrong.write_config_with((url.as_str(), fleet.as_str()), KERNEL_A, &modules, &other)?;
    let run = wrong.run(&["sync"]).await?.expect(3)?;
    let error = run
        .stderr
        .lines()
        .find(|l| l.starts_with("kmodforge-agent: "))
        .with_context(|| format!("no error line:\n{run}"))?;
    ensure!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "the error names the certificate problem: {error}"
    );
    ensure!(
        !wrong.tree(KERNEL_A).join("updates").exists(),
        "nothing installed"
    );
    Ok(())
}
