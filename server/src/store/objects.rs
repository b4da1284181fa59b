//! Everything stored as bytes: content-addressed `.ko` blobs, normalized source
//! tars and build logs, in one object store behind the `object_store` crate's
//! interface: a local directory (the embedded default) or an S3-compatible bucket
//! shared by every replica.
//!
//! Keys: `blobs/sha256/<first two hex>/<hex>`, `sources/<source digest>.tar`,
//! `logs/<build id>.log` (with a local directory, the same paths under the data
//! directory as before this seam existed). An object appears whole or not at all:
//! the local store writes a staging file and renames it, S3 makes an object
//! visible when its PUT completes. So nothing half-written is ever served.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kmodforge_api::names::SourceDigest;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

/// Errors of the object store, naming the store and what was asked of it.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The store could not be reached or failed: the request may succeed later.
    #[error("object store {store} is unavailable ({op} {key}): {source}")]
    Unavailable {
        store: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// The store's disk is full (ENOSPC, EDQUOT): nothing was stored; retrying
    /// helps once space is freed (507).
    #[error("object store {store} is full ({op} {key}): {source}")]
    Full {
        store: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("invalid blob address {0:?}")]
    BadAddress(String),
}

impl BlobError {
    /// The store's name, for a 503 that tells an operator where to look.
    pub fn store(&self) -> Option<&str> {
        match self {
            BlobError::Unavailable { store, .. } | BlobError::Full { store, .. } => Some(store),
            BlobError::BadAddress(_) => None,
        }
    }
}

/// Where objects live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectsConfig {
    /// A directory (created if needed).
    Local(std::path::PathBuf),
    S3(S3Config),
}

/// An S3-compatible bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// `http(s)://host:port` of an S3-compatible server; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// The object store with kmodforge's key layout.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<dyn ObjectStore>,
    /// Set for S3: presigns download URLs.
    signer: Option<Arc<dyn Signer>>,
    /// `local /var/lib/kmodforge` or `s3://bucket at http://host:port`: named in errors.
    name: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why the object store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsOpenError {
    #[error("cannot create {dir}: {source}")]
    Dir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{name}: {source}")]
    Store {
        name: String,
        source: object_store::Error,
    },
}

/// Requests to the store give up after this long (the store is down, not slow).
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

impl Objects {
    pub fn open(config: &ObjectsConfig) -> Result<Self, ObjectsOpenError> {
        match config {
            ObjectsConfig::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| ObjectsOpenError::Dir {
                    dir: dir.clone(),
                    source,
                })?;
                let name = format!("local {}", dir.display());
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|source| ObjectsOpenError::Store {
                        name: name.clone(),
                        source,
                    })?
                    .with_automatic_cleanup(true);
                Ok(Objects {
                    inner: Arc::new(fs),
                    signer: None,
                    name,
                })
            }
            ObjectsConfig::S3(s3) => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key)
                    .with_retry(object_store::RetryConfig {
                        max_retries: 2,
                        retry_timeout: Duration::from_secs(10),
                        ..Default::default()
                    })
                    .with_client_options(client_options());
                let mut name = format!("s3://{}", s3.bucket);
                if let Some(endpoint) = &s3.endpoint {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                    name = format!("{name} at {endpoint}");
                }
                let s3store = Arc::new(b.build().map_err(|source| ObjectsOpenError::Store {
                    name: name.clone(),
                    source,
                })?);
                Ok(Objects {
                    inner: s3store.clone(),
                    signer: Some(s3store),
                    name,
                })
            }
        }
    }

    /// The store's name for logs and errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn unavailable(
        &self,
        op: &'static str,
        key: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> BlobError + '_ {
        let key = key.to_string();
        move |source| {
            let store = self.name.clone();
            let source = Box::new(source);
            if is_disk_full(source.as_ref()) {
                BlobError::Full {
                    store,
                    op,
                    key,
                    source,
                }
            } else {
                BlobError::Unavailable {
                    store,
                    op,
                    key,
                    source,
                }
            }
        }
    }

    async fn put(&self, key: &ObjectPath, bytes: Bytes) -> Result<(), BlobError> {
        self.inner
            .put(key, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(self.unavailable("put", key))
    }

    async fn get(&self, key: &ObjectPath) -> Result<Option<Bytes>, BlobError> {
        let got = match self.inner.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.unavailable("get", key)(e)),
        };
        got.bytes()
            .await
            .map(Some)
            .map_err(self.unavailable("get", key))
    }

    async fn exists(&self, key: &ObjectPath) -> Result<bool, BlobError> {
        match self.inner.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.unavailable("head", key)(e)),
        }
    }

    async fn delete(&self, key: &ObjectPath) -> Result<(), BlobError> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.unavailable("delete", key)(e)),
        }
    }

    /// Stores `bytes` under their sha256; returns the lowercase hex digest.
    ///
    /// Written even when the blob exists: the write refreshes its modification
    /// time, which retention reads as "in use by a build in flight" (see `gc`), so
    /// a blob that a new build reuses is never collected before its artifact is
    /// recorded. Either way the object is replaced whole, never seen half-written.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let sha = hex::encode(Sha256::digest(bytes));
        let key = blob_key(&sha)?;
        self.put(&key, Bytes::copy_from_slice(bytes)).await?;
        Ok(sha)
    }

    /// A blob's bytes, `None` when absent. The bytes are checked against their
    /// address: a blob altered in the store is an error, never served.
    pub async fn get_blob(&self, sha256: &str) -> Result<Option<Bytes>, BlobError> {
        let key = blob_key(sha256)?;
        let Some(bytes) = self.get(&key).await? else {
            return Ok(None);
        };
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            return Err(BlobError::Unavailable {
                store: self.name.clone(),
                op: "get",
                key: key.to_string(),
                source: Box::new(object_store::Error::Generic {
                    store: "kmodforge",
                    source: "the object's content does not match its sha256 address".into(),
                }),
            });
        }
        Ok(Some(bytes))
    }

    pub async fn contains_blob(&self, sha256: &str) -> Result<bool, BlobError> {
        self.exists(&blob_key(sha256)?).await
    }

    pub async fn delete_blob(&self, sha256: &str) -> Result<(), BlobError> {
        self.delete(&blob_key(sha256)?).await
    }

    /// A short-lived URL that lets anyone holding it GET the blob from the object
    /// store directly; `None` when the store cannot presign (a local directory).
    pub async fn presigned_blob_url(
        &self,
        sha256: &str,
        valid_for: Duration,
    ) -> Result<Option<String>, BlobError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let key = blob_key(sha256)?;
        let url = signer
            .signed_url(axum::http::Method::GET, &key, valid_for)
            .await
            .map_err(self.unavailable("presign", &key))?;
        Ok(Some(url.to_string()))
    }

    /// Stores a normalized source tar under its digest (idempotent).
    pub async fn put_source(&self, digest: &SourceDigest, tar: Bytes) -> Result<(), BlobError> {
        let key = source_key(digest);
        if self.exists(&key).await? {
            return Ok(());
        }
        self.put(&key, tar).await
    }

    /// A stored source tar; a missing one is an error (its module record refers to it).
    pub async fn get_source(&self, digest: &SourceDigest) -> Result<Bytes, BlobError> {
        let key = source_key(digest);
        self.get(&key).await?.ok_or_else(|| BlobError::Unavailable {
            store: self.name.clone(),
            op: "get",
            key: key.to_string(),
            source: Box::new(object_store::Error::NotFound {
                path: key.to_string(),
                source: "the source archive of a registered module is missing".into(),
            }),
        })
    }

    pub async fn delete_source(&self, digest: &SourceDigest) -> Result<(), BlobError> {
        self.delete(&source_key(digest)).await
    }

    pub async fn put_log(&self, build_id: &str, log: Bytes) -> Result<(), BlobError> {
        self.put(&log_key(build_id)?, log).await
    }

    /// A finished build's stored log, `None` when there is none.
    pub async fn get_log(&self, build_id: &str) -> Result<Option<Bytes>, BlobError> {
        self.get(&log_key(build_id)?).await
    }
}

/// An object found by a listing: what retention needs to decide on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// The blob's sha256, the source's digest, or the build id of a log.
    pub name: String,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

impl Objects {
    async fn list(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>, BlobError> {
        use futures_util::TryStreamExt;
        let prefix = ObjectPath::from(prefix);
        self.inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(self.unavailable("list", &prefix))
    }

    /// Every stored blob (objects under `blobs/sha256/` with a valid address).
    pub async fn list_blobs(&self) -> Result<Vec<StoredObject>, BlobError> {
        Ok(self
            .list("blobs/sha256")
            .await?
            .into_iter()
            .filter_map(|m| {
                let sha = m.location.filename()?.to_string();
                blob_key(&sha).ok()?;
                Some(stored(sha, &m))
            })
            .collect())
    }

    /// Every stored source tar, named by its digest.
    pub async fn list_sources(&self) -> Result<Vec<StoredObject>, BlobError> {
        Ok(self
            .list("sources")
            .await?
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.strip_suffix(".tar")?.to_string();
                SourceDigest::parse(&name).ok()?;
                Some(stored(name, &m))
            })
            .collect())
    }

    /// A build's log size, `None` when there is none.
    pub async fn log_size(&self, build_id: &str) -> Result<Option<u64>, BlobError> {
        let key = log_key(build_id)?;
        match self.inner.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable("head", &key)(e)),
        }
    }

    pub async fn delete_log(&self, build_id: &str) -> Result<(), BlobError> {
        self.delete(&log_key(build_id)?).await
    }

    /// A blob's size and modification time, `None` when absent.
    pub async fn blob_meta(&self, sha256: &str) -> Result<Option<StoredObject>, BlobError> {
        let key = blob_key(sha256)?;
        match self.inner.head(&key).await {
            Ok(meta) => Ok(Some(stored(sha256.to_string(), &meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable("head", &key)(e)),
        }
    }
}

fn stored(name: String, m: &object_store::ObjectMeta) -> StoredObject {
    StoredObject {
        name,
        size: m.size,
        modified: std::time::SystemTime::from(m.last_modified),
    }
}

/// True when the store failed for want of space: an `ENOSPC` or `EDQUOT`
/// anywhere in the error's chain (the local store wraps the `io::Error`).
pub fn is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
                || io.kind() == std::io::ErrorKind::StorageFull
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The HTTP client to the store; connections are kept and reused.
///
/// Garage 2.5 writes a response's head and body in two segments without
/// TCP_NODELAY, so on a kept-alive connection the body waits for the client's
/// delayed ACK: 40 ms per GET (a lone `.ko` download through the server: 45 ms).
/// Opening a connection per GET instead cut that to 3 ms but cost 30 % of the
/// saturated cache-hit throughput and 0.4 ms of CPU per hit (docs/BENCHMARKS.md):
/// a fleet's download wave matters more than one download's latency, so the pool
/// stays; presigned downloads (`--presign-downloads-secs`) avoid both.
fn client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_timeout(STORE_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5))
}

fn blob_key(sha256: &str) -> Result<ObjectPath, BlobError> {
    let valid = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(BlobError::BadAddress(sha256.to_string()));
    }
    Ok(ObjectPath::from(format!(
        "blobs/sha256/{}/{sha256}",
        &sha256[..2]
    )))
}

fn source_key(digest: &SourceDigest) -> ObjectPath {
    ObjectPath::from(format!("sources/{digest}.tar"))
}

fn log_key(build_id: &str) -> Result<ObjectPath, BlobError> {
    // Build ids are 16 hex digits; anything else never names a key.
    let valid = !build_id.is_empty()
        && build_id.len() <= 64
        && build_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err(BlobError::BadAddress(build_id.to_string()));
    }
    Ok(ObjectPath::from(format!("logs/{build_id}.log")))
}
