//! An HTTP client for the server's API, returning the `kmodforge-api` wire types.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kmodforge_api::wire::{
    AddModuleResponse, BuildRequest, BuildResponse, ErrorBody, Manifest, ModuleSource,
};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::fixtures::tar_gz_dir;
use crate::BUILD_WAIT;

/// Timeout of one ordinary request (not of waits or streams).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How often [`Client::wait`] polls a build.
const POLL: Duration = Duration::from_millis(250);

/// A client bound to one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client without a token.
    pub fn new(base: String) -> Self {
        Client {
            // No client-wide timeout: log streams and one-shot builds run long.
            http: reqwest::Client::new(),
            base,
        }
    }

    /// A client that sends `token` with every request, trusting only `ca_pem` for
    /// HTTPS when given.
    pub fn with_token(base: String, token: Option<&str>, ca_pem: Option<&[u8]>) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .context("token as a header")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder().default_headers(headers);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).context("the test CA")?;
            builder = builder.tls_certs_only(certs);
        }
        Ok(Client {
            http: builder.build().context("building the HTTP client")?,
            base,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying reqwest client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn get(&self, path: &str) -> Result<Response> {
        let url = self.url(path);
        self.http
            .get(&url)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("GET {url}"))
    }

    pub async fn healthz(&self) -> Result<()> {
        let resp = self.get("/healthz").await?;
        expect_status(resp, &[StatusCode::OK]).await.map(drop)
    }

    /// `PUT /v1/modules/{name}/{version}` with a raw body.
    pub async fn put_module(&self, name: &str, version: &str, body: Vec<u8>) -> Result<Response> {
        let url = self.url(&format!("/v1/modules/{name}/{version}"));
        self.http
            .put(&url)
            .timeout(REQUEST_TIMEOUT)
            .body(body)
            .send()
            .await
            .with_context(|| format!("PUT {url}"))
    }

    /// Uploads `dir` (tar.gz made in-process) as `name`/`version`; expects 200 or 201.
    pub async fn add_module(
        &self,
        name: &str,
        version: &str,
        dir: &Path,
    ) -> Result<(StatusCode, AddModuleResponse)> {
        let body = tar_gz_dir(dir)?;
        let resp = self.put_module(name, version, body).await?;
        let status = resp.status();
        let resp = expect_status(resp, &[StatusCode::OK, StatusCode::CREATED]).await?;
        Ok((status, resp.json().await.context("AddModuleResponse")?))
    }

    /// `PUT /v1/modules/{name}/settings` with a JSON body (any status returned).
    pub async fn put_settings(&self, name: &str, body: &Value) -> Result<Response> {
        let url = self.url(&format!("/v1/modules/{name}/settings"));
        self.http
            .put(&url)
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await
            .with_context(|| format!("PUT {url}"))
    }

    /// Sets a module's settings; expects 200.
    pub async fn set_settings(&self, name: &str, body: &Value) -> Result<Value> {
        let resp = expect_status(self.put_settings(name, body).await?, &[StatusCode::OK]).await?;
        resp.json().await.context("settings")
    }

    /// `DELETE /v1/modules/{name}/settings`; expects 204.
    pub async fn delete_settings(&self, name: &str) -> Result<()> {
        let url = self.url(&format!("/v1/modules/{name}/settings"));
        let resp = self
            .http
            .delete(&url)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("DELETE {url}"))?;
        expect_status(resp, &[StatusCode::NO_CONTENT]).await?;
        Ok(())
    }

    pub async fn modules(&self) -> Result<Vec<ModuleSource>> {
        let resp = expect_status(self.get("/v1/modules").await?, &[StatusCode::OK]).await?;
        resp.json().await.context("module list")
    }

    /// `POST /v1/builds` with a raw JSON body.
    pub async fn post_build(&self, body: &Value) -> Result<Response> {
        let url = self.url("/v1/builds");
        self.http
            .post(&url)
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))
    }

    /// Submits a build; expects 200 (cache hit or final) or 202 (queued/running).
    pub async fn build(&self, req: &BuildRequest) -> Result<(StatusCode, BuildResponse)> {
        let resp = self.post_build(&serde_json::to_value(req)?).await?;
        let status = resp.status();
        let resp = expect_status(resp, &[StatusCode::OK, StatusCode::ACCEPTED]).await?;
        Ok((status, resp.json().await.context("BuildResponse")?))
    }

    pub async fn get_build(&self, id: &str) -> Result<BuildResponse> {
        let resp = self.get(&format!("/v1/builds/{id}")).await?;
        let resp = expect_status(resp, &[StatusCode::OK]).await?;
        resp.json().await.context("BuildResponse")
    }

    /// True when the server knows build `id`.
    pub async fn has_build(&self, id: &str) -> Result<bool> {
        let resp = self.get(&format!("/v1/builds/{id}")).await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => bail!("GET /v1/builds/{id}: unexpected {s}"),
        }
    }

    /// Polls build `id` until it is final ([`BUILD_WAIT`] at most).
    pub async fn wait(&self, id: &str) -> Result<BuildResponse> {
        self.wait_for(id, BUILD_WAIT, |r| r.build.state.is_final())
            .await
            .with_context(|| format!("waiting for build {id} to finish"))
    }

    /// Polls build `id` until `done` holds or `timeout` passes.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&BuildResponse) -> bool,
    ) -> Result<BuildResponse> {
        let started = Instant::now();
        loop {
            let r = self.get_build(id).await?;
            if done(&r) {
                return Ok(r);
            }
            if started.elapsed() > timeout {
                bail!(
                    "build {id} still {} after {timeout:?}",
                    r.build.state.as_str()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The whole build log: the stored one after the build, or the live stream read to its end.
    pub async fn build_log(&self, id: &str) -> Result<String> {
        let resp = self.get(&format!("/v1/builds/{id}/log")).await?;
        let resp = expect_status(resp, &[StatusCode::OK]).await?;
        Ok(resp.text().await?)
    }

    /// `GET /v1/builds/{id}/log` as a response whose body can be read chunk by chunk.
    pub async fn log_stream(&self, id: &str) -> Result<Response> {
        let url = self.url(&format!("/v1/builds/{id}/log"));
        let resp = self.http.get(&url).send().await.context("GET log")?;
        expect_status(resp, &[StatusCode::OK]).await
    }

    pub async fn manifest(&self, name: &str, version: &str, krel: &str) -> Result<Manifest> {
        let resp = self
            .get(&format!("/v1/artifacts/{name}/{version}/{krel}"))
            .await?;
        let resp = expect_status(resp, &[StatusCode::OK]).await?;
        resp.json().await.context("Manifest")
    }

    /// One `.ko` of an artifact.
    pub async fn download(
        &self,
        name: &str,
        version: &str,
        krel: &str,
        file: &str,
    ) -> Result<Vec<u8>> {
        let path = format!("/v1/artifacts/{name}/{version}/{krel}/files/{file}");
        self.bytes(&path).await
    }

    /// `POST /v1/gc` (`?dry_run=true` when `dry_run`); expects 200 and returns the report.
    pub async fn gc(&self, dry_run: bool) -> Result<Value> {
        let url = self.url(&format!("/v1/gc?dry_run={dry_run}"));
        let resp = self
            .http
            .post(&url)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let resp = expect_status(resp, &[StatusCode::OK]).await?;
        resp.json().await.context("the GC report")
    }

    /// A `GET` whose body is returned as bytes; any status but 200 is an error.
    pub async fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let resp = expect_status(self.get(path).await?, &[StatusCode::OK]).await?;
        Ok(resp.bytes().await?.to_vec())
    }
}

/// Passes `resp` through when its status is one of `ok`; otherwise an error that
/// quotes the body.
pub async fn expect_status(resp: Response, ok: &[StatusCode]) -> Result<Response> {
    if ok.contains(&resp.status()) {
        return Ok(resp);
    }
    let status = resp.status();
    let url = resp.url().clone();
    let body = resp.text().await.unwrap_or_default();
    bail!("{url}: expected {ok:?}, got {status}: {body}")
}

/// The status and JSON error body of a 4xx/5xx answer.
pub async fn error_body(resp: Response) -> Result<(StatusCode, ErrorBody)> {
    let status = resp.status();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text)
        .with_context(|| format!("{status} body is not a JSON error: {text}"))?;
    Ok((status, body))
}
