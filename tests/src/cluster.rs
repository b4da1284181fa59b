//! Several real `kmodforge-server` replicas sharing a real PostgreSQL database (a
//! fresh one per cluster) and a real S3 server (Garage), as `scripts/services.sh
//! start` runs them; and their Docker engine, which is this machine's.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::server::{DataDir, Server, ServerOpts};

/// A variable of the backing services' environment: the process's, else the file
/// `scripts/services.sh start` wrote. Missing services fail the test, naming the fix.
pub fn service_env(name: &str) -> Result<String> {
    if let Ok(v) = std::env::var(name) {
        return Ok(v);
    }
    let dir = std::env::var("KMODFORGE_SERVICES_DIR")
        .unwrap_or_else(|_| "/tmp/kmodforge-services".into());
    let file = format!("{dir}/env");
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!("{name} is not set and {file} cannot be read: run `scripts/services.sh start` (PostgreSQL and Garage) first")
    })?;
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('\'').trim_matches('"').to_string())
        .with_context(|| format!("{name} is missing from {file}"))
}

/// A fresh database on the test PostgreSQL server, dropped with the handle.
pub struct FreshDb {
    admin_url: String,
    name: String,
    pub url: String,
}

impl FreshDb {
    pub async fn new() -> Result<FreshDb> {
        let admin_url = service_env("KMODFORGE_TEST_DATABASE_URL")?;
        let name = format!("kmf_e2e_{:016x}", rand_u64());
        psql(&admin_url, &format!("CREATE DATABASE {name}"))?;
        let (base, _) = admin_url
            .rsplit_once('/')
            .context("database URL without a path")?;
        Ok(FreshDb {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }

    /// Runs SQL against this database (`psql`), returning its unaligned output.
    pub fn query(&self, sql: &str) -> Result<String> {
        psql(&self.url, sql)
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Result<String> {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .context("running psql (Debian's postgresql-client)")?;
    anyhow::ensure!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Replicas on one database and one bucket, signing with the first replica's keys.
pub struct Cluster {
    /// Declared first: the replicas stop before their database is dropped.
    pub replicas: Vec<Server>,
    pub db: FreshDb,
    base: ServerOpts,
    /// r1's first data directory: the keys every replica signs with, and the admin
    /// token; kept while the cluster lives, whichever replicas restart.
    home: DataDir,
}

impl Cluster {
    /// Starts `n` replicas (`r1`..`rn`) with `opts` plus the cluster's settings; `r1`
    /// first (it makes the keys and the admin token), the rest with its keys.
    pub async fn start(n: usize, opts: ServerOpts) -> Result<Cluster> {
        let db = FreshDb::new().await?;
        let base = opts
            .env("KMODFORGE_DATABASE_URL", &db.url)
            .env(
                "KMODFORGE_S3_BUCKET",
                service_env("KMODFORGE_TEST_S3_BUCKET")?,
            )
            .env(
                "KMODFORGE_S3_ENDPOINT",
                service_env("KMODFORGE_TEST_S3_ENDPOINT")?,
            )
            .env(
                "KMODFORGE_S3_REGION",
                service_env("KMODFORGE_TEST_S3_REGION")?,
            )
            .env("AWS_ACCESS_KEY_ID", service_env("AWS_ACCESS_KEY_ID")?)
            .env(
                "AWS_SECRET_ACCESS_KEY",
                service_env("AWS_SECRET_ACCESS_KEY")?,
            );
        let first = Server::start(base.clone().env("KMODFORGE_REPLICA_ID", "r1")).await?;
        let keys = first.data_dir().data().join("keys");
        let base = base
            .env(
                "KMODFORGE_MODULE_SIGNING_KEY",
                keys.join("module-signing.key").display(),
            )
            .env(
                "KMODFORGE_MODULE_SIGNING_CERT",
                keys.join("module-signing.crt").display(),
            )
            .env(
                "KMODFORGE_MANIFEST_SIGNING_KEY",
                keys.join("manifest-signing.key").display(),
            );
        let mut cluster = Cluster {
            db,
            home: first.data_dir(),
            replicas: vec![first],
            base,
        };
        for i in 2..=n {
            cluster
                .replicas
                .push(cluster.start_replica(&format!("r{i}")).await?);
        }
        Ok(cluster)
    }

    /// Starts a replica with the cluster's settings (a restart: the same id again).
    pub async fn start_replica(&self, id: &str) -> Result<Server> {
        self.start_replica_with(id, &[]).await
    }

    /// [`Cluster::start_replica`] with more settings (`KMODFORGE_ROLE`, say).
    pub async fn start_replica_with(&self, id: &str, env: &[(&str, &str)]) -> Result<Server> {
        let mut opts = self.base.clone().env("KMODFORGE_REPLICA_ID", id);
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        Server::start(opts).await
    }

    /// The admin token (written by `r1` on the cluster's first start).
    pub fn admin_token(&self) -> Result<String> {
        let path = self.home.data().join("admin.token");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().to_string())
    }

    /// A client of replica `i` (0-based) with the admin token.
    pub fn client(&self, i: usize) -> Result<crate::Client> {
        self.replicas[i].client_with(Some(&self.admin_token()?))
    }
}

/// How long a lease lasts in the cluster tests (short, so a dead replica's build
/// moves on quickly).
pub const TEST_LEASE: Duration = Duration::from_secs(6);

/// A TCP load balancer in front of the replicas: each connection goes to the next
/// backend that accepts it (round robin), so a replica that is down or restarting
/// is skipped, as any HTTP load balancer with health checks would.
pub struct LoadBalancer {
    pub addr: std::net::SocketAddr,
    backends: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadBalancer {
    pub async fn start(backends: Vec<std::net::SocketAddr>) -> Result<LoadBalancer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends = std::sync::Arc::new(std::sync::Mutex::new(backends));
        let shared = backends.clone();
        let task = tokio::spawn(async move {
            let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            while let Ok((mut client, _)) = listener.accept().await {
                let (shared, next) = (shared.clone(), next.clone());
                tokio::spawn(async move {
                    let list = shared.lock().map(|l| l.clone()).unwrap_or_default();
                    for _ in 0..list.len() {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let backend = list[i % list.len()];
                        let connect = tokio::net::TcpStream::connect(backend);
                        if let Ok(Ok(mut server)) =
                            tokio::time::timeout(Duration::from_secs(1), connect).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(LoadBalancer {
            addr,
            backends,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces backend `old` by `new` (a replica restarted on another port).
    pub fn replace(&self, old: std::net::SocketAddr, new: std::net::SocketAddr) {
        if let Ok(mut list) = self.backends.lock() {
            for b in list.iter_mut() {
                if *b == old {
                    *b = new;
                }
            }
        }
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
