//! Prometheus text parsed by a real parser: `prometheus_client.parser` (Python,
//! PyPI, the Prometheus project's own client library), from the venv that
//! `scripts/install-deps.sh` keeps in the tools cache. A line the parser refuses
//! fails the test.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

/// The parser's output: every sample with its family's name and type.
const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
"#;

/// One sample.
#[derive(Clone, Debug, Deserialize)]
pub struct Sample {
    /// The family's name (a counter's without `_total`, as the parser names it).
    pub family: String,
    /// `counter`, `gauge`, `histogram`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The sample's own name (`..._total`, `..._bucket`, `..._count`).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

/// The venv's Python (`KMODFORGE_TOOLS`, default `~/.cache/kmodforge/tools`).
fn python() -> Result<PathBuf> {
    let tools = match std::env::var_os("KMODFORGE_TOOLS") {
        Some(t) => PathBuf::from(t),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/kmodforge/tools"),
    };
    let py = tools.join("prometheus/bin/python3");
    if !py.exists() {
        bail!(
            "{} is missing: run scripts/install-deps.sh (it installs prometheus_client's text parser)",
            py.display()
        );
    }
    Ok(py)
}

/// Parses `text` with the Prometheus text parser; fails on any line it refuses.
pub fn parse(text: &str) -> Result<Scrape> {
    let py = python()?;
    let mut child = Command::new(&py)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", py.display()))?;
    child
        .stdin
        .take()
        .context("parser stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the Prometheus text parser refused the exposition: {}\n--- text\n{text}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let samples = serde_json::from_slice(&out.stdout).context("the parser's JSON")?;
    Ok(Scrape { samples })
}

impl Scrape {
    /// The value of sample `name` whose labels include all of `labels`; `None` when
    /// there is none, an error when several match.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            many => bail!("{} samples {name}{labels:?}: {many:?}", many.len()),
        }
    }

    /// [`Scrape::get`], 0 when absent (a labelled series appears with its first event).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(self.get(name, labels)?.unwrap_or(0.0))
    }

    /// The type the exposition declares for family `family`.
    pub fn kind_of(&self, family: &str) -> Option<&str> {
        self.samples
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.kind.as_str())
    }
}

/// `GET /metrics` of a real server: 200, the text format's content type, parsed.
pub async fn scrape(client: &crate::Client) -> Result<Scrape> {
    let resp = client.get("/metrics").await?;
    ensure!(
        resp.status() == reqwest::StatusCode::OK,
        "GET /metrics: {}",
        resp.status()
    );
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        ctype == "text/plain; version=0.0.4; charset=utf-8",
        "content type {ctype:?}"
    );
    parse(&resp.text().await?)
}
