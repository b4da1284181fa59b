//! The archive watcher: reads the Debian archive indexes the builder images install
//! headers from (`dists/<suite>/main/binary-<arch>/Packages.xz`, else `.gz`) and
//! notices new `linux-headers-<krel>` of the configured flavours. A new kernel is
//! recorded as published and prebuilt (`prebuild`); the first scan of a server
//! records the archive's kernels and prebuilds only the newest of each flavour.
//!
//! The index only decides what to prebuild: the headers themselves are installed by
//! apt inside the builder image, which checks the archive's signatures. A forged
//! index can at worst make the server try to build for a kernel that does not exist
//! (`unknown_kernel`).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::KnownKernel;

use crate::builds::now_rfc3339;
use crate::prebuild::Prebuilder;
use crate::store::Store;

/// Largest index accepted, decompressed, in bytes (bookworm's main is ~45 MB).
const MAX_INDEX: u64 = 256 * 1024 * 1024;

/// One archive and the suites watched in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveSource {
    /// `http://deb.debian.org/debian` (no trailing slash).
    pub url: String,
    pub suites: Vec<String>,
}

/// An `--archive-suites` value that is not `URL SUITE[,SUITE...]`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadArchiveSource(String);

impl std::str::FromStr for ArchiveSource {
    type Err = BadArchiveSource;
    /// `URL SUITE[,SUITE...]`.
    fn from_str(s: &str) -> Result<Self, BadArchiveSource> {
        let (url, suites) = s
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| BadArchiveSource(format!("{s:?} is not `URL SUITE[,SUITE...]`")))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(BadArchiveSource(format!("{url:?} is not an http(s) URL")));
        }
        let suites: Vec<String> = suites
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        let ok = |x: &String| {
            x.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if suites.is_empty() || !suites.iter().all(ok) {
            return Err(BadArchiveSource(format!(
                "{s:?}: suites must be names like bookworm,bookworm-updates"
            )));
        }
        Ok(ArchiveSource {
            url: url.trim_end_matches('/').to_string(),
            suites,
        })
    }
}

/// What the watcher looks at and how often.
#[derive(Clone, Debug)]
pub struct WatchSettings {
    pub sources: Vec<ArchiveSource>,
    /// Kernel flavours, e.g. `amd64`, `cloud-amd64`, `rt-amd64`.
    pub flavours: Vec<String>,
    /// Between scans; `None`: the watcher does not run.
    pub interval: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{url}: {message}")]
    Index { url: String, message: String },
}

/// A kernel found in an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub kernel: KernelRelease,
    pub suite: String,
    pub headers_version: String,
}

/// `linux-headers-<krel>` packages of `flavours` in a `Packages` index.
pub fn kernels_in(index: &str, suite: &str, flavours: &[String]) -> Vec<Published> {
    let mut out = Vec::new();
    for stanza in index.split("\n\n") {
        let mut package = None;
        let mut version = None;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                package = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            }
        }
        let (Some(p), Some(v)) = (package, version) else {
            continue;
        };
        let Some(krel) = p.strip_prefix("linux-headers-") else {
            continue;
        };
        let Ok(kernel) = KernelRelease::parse(krel) else {
            continue;
        };
        if flavours.iter().any(|f| of_flavour(krel, f)) && kernel.debian_suite().is_some() {
            out.push(Published {
                kernel,
                suite: suite.to_string(),
                headers_version: v.to_string(),
            });
        }
    }
    out
}

/// True for a kernel release of exactly `flavour`: `6.1.0-47-amd64` (ABI number
/// before the flavour) or trixie's `6.12.43+deb13-amd64`; not `6.1.0-47-cloud-amd64`
/// for `amd64`, nor the `-common` packages or meta packages.
fn of_flavour(krel: &str, flavour: &str) -> bool {
    let Some(rest) = krel.strip_suffix(flavour).and_then(|r| r.strip_suffix('-')) else {
        return false;
    };
    match rest.rsplit_once('-') {
        Some((_, abi)) => !abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit()),
        None => rest.contains("+deb"),
    }
}

/// Watches the archives and prebuilds new kernels.
pub struct Watcher {
    settings: WatchSettings,
    store: Store,
    prebuilder: Arc<Prebuilder>,
    http: reqwest::Client,
}

impl Watcher {
    pub fn new(settings: WatchSettings, store: Store, prebuilder: Arc<Prebuilder>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("kmodforge-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Watcher {
            settings,
            store,
            prebuilder,
            http,
        }
    }

    /// Scans every interval until the process ends (a failed scan is logged and
    /// tried again at the next interval).
    pub fn spawn(self: Arc<Self>) {
        let Some(interval) = self.settings.interval else {
            return;
        };
        tokio::spawn(async move {
            loop {
                match self.scan().await {
                    Ok(new) if !new.is_empty() => {
                        tracing::info!(kernels = ?new, "archive scan: new kernels, prebuilding")
                    }
                    Ok(_) => tracing::debug!("archive scan: nothing new"),
                    Err(e) => tracing::warn!(error = %e, "archive scan failed"),
                }
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// One scan: records every published kernel, prebuilds the new ones; returns them.
    pub async fn scan(&self) -> Result<Vec<KernelRelease>, ArchiveError> {
        let mut found: BTreeMap<KernelRelease, Published> = BTreeMap::new();
        for source in &self.settings.sources {
            for suite in &source.suites {
                let index = self.fetch_index(&source.url, suite).await?;
                for p in kernels_in(&index, suite, &self.settings.flavours) {
                    found.entry(p.kernel.clone()).or_insert(p);
                }
            }
        }
        let records = &self.store.records;
        let known = records.list_kernels().await.unwrap_or_default();
        let first_scan = !known.iter().any(|k| k.published);
        let mut new = Vec::new();
        for (kernel, p) in &found {
            let before = known.iter().find(|k| &k.kernel == kernel);
            if before.is_some_and(|k| k.published) {
                continue;
            }
            let record = KnownKernel {
                kernel: kernel.clone(),
                suite: Some(p.suite.clone()),
                headers_version: Some(p.headers_version.clone()),
                published: true,
                requested: before.is_some_and(|k| k.requested),
                first_seen: before.map_or_else(now_rfc3339, |k| k.first_seen.clone()),
                last_requested: before.and_then(|k| k.last_requested.clone()),
                prebuild: before.and_then(|k| k.prebuild.clone()),
            };
            match records.publish_kernel(&record).await {
                Ok(true) => new.push(kernel.clone()),
                // Another replica saw it first: it prebuilds.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%kernel, error = %e, "could not record a published kernel")
                }
            }
        }
        let to_build = if first_scan {
            newest_per_flavour(&new, &self.settings.flavours)
        } else {
            new.clone()
        };
        for kernel in &to_build {
            self.prebuilder.start(kernel.clone(), "published");
        }
        Ok(to_build)
    }

    async fn fetch_index(&self, url: &str, suite: &str) -> Result<String, ArchiveError> {
        let base = format!("{url}/dists/{suite}/main/binary-amd64/Packages");
        let mut last = String::new();
        for (ext, xz) in [(".xz", true), (".gz", false)] {
            let u = format!("{base}{ext}");
            match self.http.get(&u).send().await {
                Ok(r) if r.status().is_success() => {
                    let body = r.bytes().await.map_err(|e| ArchiveError::Fetch {
                        url: u.clone(),
                        message: e.to_string(),
                    })?;
                    return tokio::task::spawn_blocking(move || decompress(&body, xz))
                        .await
                        .map_err(|e| ArchiveError::Index {
                            url: u.clone(),
                            message: e.to_string(),
                        })?
                        .map_err(|e| ArchiveError::Index {
                            url: u,
                            message: e.to_string(),
                        });
                }
                Ok(r) => last = format!("{u}: {}", r.status()),
                Err(e) => last = format!("{u}: {e}"),
            }
        }
        Err(ArchiveError::Fetch {
            url: base,
            message: format!("no Packages.xz or Packages.gz ({last})"),
        })
    }
}

/// The highest kernel of each flavour among `kernels` (by Debian ABI number).
fn newest_per_flavour(kernels: &[KernelRelease], flavours: &[String]) -> Vec<KernelRelease> {
    let mut out = Vec::new();
    for f in flavours {
        let newest = kernels
            .iter()
            .filter(|k| of_flavour(k.as_str(), f))
            .max_by(|a, b| kmodforge_api::dkms::version_cmp(a.as_str(), b.as_str()));
        out.extend(newest.cloned());
    }
    out
}

/// Why a `Packages` index could not be read.
#[derive(Debug, thiserror::Error)]
enum IndexError {
    #[error("xz: {0}")]
    Xz(#[from] lzma_rs::error::Error),
    #[error("gzip: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("index over {MAX_INDEX} bytes")]
    TooLarge,
    #[error("not UTF-8: {0}")]
    NotUtf8(#[from] std::string::FromUtf8Error),
}

fn decompress(body: &[u8], xz: bool) -> Result<String, IndexError> {
    let mut out = Vec::new();
    if xz {
        let mut limited = std::io::BufReader::new(body);
        lzma_rs::xz_decompress(&mut limited, &mut out)?;
    } else {
        flate2::read::GzDecoder::new(body)
            .take(MAX_INDEX)
            .read_to_end(&mut out)?;
    }
    if out.len() as u64 >= MAX_INDEX {
        return Err(IndexError::TooLarge);
    }
    Ok(String::from_utf8(out)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kernels_of_the_flavours_are_found_in_an_index() {
        let index = "Package: linux-headers-6.1.0-47-amd64\nVersion: 6.1.170-3\n\n\
                     Package: linux-headers-6.1.0-47-common\nVersion: 6.1.170-3\n\n\
                     Package: linux-headers-amd64\nVersion: 6.1.170-3\n\n\
                     Package: linux-headers-6.1.0-47-cloud-amd64\nVersion: 6.1.170-3\n\n\
                     Package: linux-headers-6.1.0-47-rt-amd64\nVersion: 6.1.170-3\n\n\
                     Package: bash\nVersion: 5.2\n";
        let amd64 = kernels_in(index, "bookworm", &["amd64".into()]);
        let names: Vec<&str> = amd64.iter().map(|p| p.kernel.as_str()).collect();
        // `cloud-amd64` ends in `-amd64` too: the ABI number must come right before.
        assert_eq!(names, ["6.1.0-47-amd64"]);
        assert!(of_flavour("6.12.43+deb13-amd64", "amd64"));
        let cloud = kernels_in(index, "bookworm", &["cloud-amd64".into()]);
        assert_eq!(cloud.len(), 1);
        assert_eq!(cloud[0].headers_version, "6.1.170-3");
    }

    #[test]
    fn sources_parse_from_their_text() {
        let s: ArchiveSource = "http://deb.debian.org/debian/ bookworm,bookworm-updates"
            .parse()
            .unwrap();
        assert_eq!(s.url, "http://deb.debian.org/debian");
        assert_eq!(s.suites, ["bookworm", "bookworm-updates"]);
        assert!("ftp://x bookworm".parse::<ArchiveSource>().is_err());
        assert!("http://x".parse::<ArchiveSource>().is_err());
        assert!("http://x a;b".parse::<ArchiveSource>().is_err());
    }

    #[test]
    fn the_first_scan_prebuilds_the_newest_of_each_flavour() {
        let k = |s: &str| KernelRelease::parse(s).unwrap();
        let all = [k("6.1.0-9-amd64"), k("6.1.0-47-amd64"), k("6.1.0-10-amd64")];
        assert_eq!(
            newest_per_flavour(&all, &["amd64".into()]),
            [k("6.1.0-47-amd64")]
        );
    }
}
