//! A Debian archive over loopback whose `Packages` index can gain kernels: its
//! stanzas are the real ones of the real archive (`apt-cache show`), so they point
//! at the real mirror, where the builder images fetch the headers.

use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;

/// A test archive serving `dists/<suite>/main/binary-amd64/Packages.gz`.
#[derive(Clone)]
pub struct TestArchive {
    pub url: String,
    pub suite: String,
    stanzas: Arc<Mutex<Vec<String>>>,
}

/// The real index stanza of `package` (the newest version apt knows).
pub fn real_stanza(package: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .output()
        .context("running apt-cache")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "apt-cache show {package}: {} (run apt-get update)",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl TestArchive {
    /// An archive for `suite` listing the headers of `kernels`.
    pub fn start(suite: &str, kernels: &[&str]) -> Result<TestArchive> {
        let stanzas = Arc::new(Mutex::new(Vec::new()));
        let s2 = stanzas.clone();
        let path = format!("/dists/{suite}/main/binary-amd64/Packages.gz");
        let addr = crate::minihttp::serve(move |r| {
            if r.method != "GET" || r.path != path {
                return (404, b"not found".to_vec());
            }
            let text = s2.lock().unwrap_or_else(|p| p.into_inner()).join("\n\n") + "\n";
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            use std::io::Write;
            let _ = gz.write_all(text.as_bytes());
            (200, gz.finish().unwrap_or_default())
        })?;
        let archive = TestArchive {
            url: format!("http://{addr}"),
            suite: suite.to_string(),
            stanzas,
        };
        for k in kernels {
            archive.publish(k)?;
        }
        Ok(archive)
    }

    /// Adds `linux-headers-<krel>` (and some unrelated package) to the index.
    pub fn publish(&self, krel: &str) -> Result<()> {
        let stanza = real_stanza(&format!("linux-headers-{krel}"))?;
        let mut s = self.stanzas.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_empty() {
            s.push(real_stanza("kmod")?);
        }
        s.push(stanza);
        Ok(())
    }

    /// `KMODFORGE_ARCHIVES` for a server watching this archive.
    pub fn setting(&self) -> String {
        format!("{} {}", self.url, self.suite)
    }
}
