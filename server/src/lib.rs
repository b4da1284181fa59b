//! `kmodforge-server`: DKMS as a service.
//!
//! Builds DKMS-style module sources inside sandboxed, per-kernel builder images
//! (on a container engine, Docker today), caches the `.ko` files by
//! content and cache key, and serves them over HTTP (axum).
//!
//! Layout: `http` (API), `builds` (jobs, single-flight, pipeline), `sandbox`
//! (all job container work), `images` (builder images), `engine` (the
//! `ContainerEngine` seam: every engine call, Docker's in `engine::docker`),
//! `sources` (uploads), `store` (SQLite records + content-addressed blobs behind
//! traits).

pub mod apt;
pub mod archive;
pub mod auth;
pub mod bootcheck;
pub mod builds;
pub mod cli;
pub mod config;
pub mod dkms_bundle;
pub mod engine;
pub mod flat_tar;
pub mod gc;
pub mod http;
pub mod images;
pub mod keys;
pub mod matrix;
pub mod metrics;
pub mod prebuild;
pub mod sandbox;
pub mod sources;
pub mod store;
pub mod usr_volumes;

use std::sync::Arc;

use kmodforge_api::archive::ArchiveLimits;

pub use config::Config;
pub use http::{app, route_table, AppState};

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid configuration: {0}")]
    Settings(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreOpenError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error(transparent)]
    Builds(#[from] builds::BuildError),
    #[error("first admin token: {0}")]
    Token(#[from] auth::TokenError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the store, connects to Docker, recovers from a previous run, and
/// returns the handlers' state.
pub async fn init(config: &Config) -> Result<AppState, StartError> {
    config.validate()?;
    let objects = config.objects_config()?;
    let store = store::Store::connect(&config.data_dir, &config.records_config(), &objects).await?;
    tracing::info!(
        records = if config.database_url.is_some() {
            "postgresql"
        } else {
            "sqlite"
        },
        objects = store.objects.name(),
        "store ready"
    );
    if let Some(path) = auth::bootstrap_admin(store.records.clone(), &config.data_dir).await? {
        tracing::info!(path = %path.display(), "first start: wrote an admin token (mode 0600); create narrower tokens with it and keep it safe");
    }
    let keys = keys::Keys::open(
        &config.data_dir,
        &config.key_settings(),
        store.records.clone(),
    )
    .await?;
    tracing::info!(
        module_signing = %keys.module_info().signer,
        certificate_sha256 = %keys.module_info().cert_sha256,
        manifest_key = %keys.manifest_public(),
        sign_by_default = config.sign_modules,
        "signing keys ready"
    );
    let replica = config
        .replica_id
        .clone()
        .unwrap_or_else(|| owner_id(&config.data_dir));
    let docker = engine::docker::DockerEngine::connect()
        .await
        .map_err(sandbox::SandboxError::from)?;
    match docker.storage_driver().await {
        Ok(Some(driver)) => match engine::docker::fuse_overlayfs_hint(&driver) {
            Some(hint) => tracing::warn!(storage_driver = %driver, "{hint}"),
            None => tracing::info!(storage_driver = %driver, "Docker engine"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the Docker engine's storage driver"),
    }
    let engine: Arc<dyn engine::ContainerEngine> = Arc::new(docker);
    let mut sandbox =
        sandbox::Sandbox::new(engine.clone(), config.sandbox_limits(), replica.clone());
    if let (true, Some(queue)) = (config.database_url.is_some(), store.records.jobs()) {
        sandbox = sandbox.with_cluster(
            queue
                .cluster_id()
                .await
                .map_err(store::StoreOpenError::Records)?,
        );
    }
    if let Some(dir) = &config.trace_container_input {
        sandbox = sandbox.with_input_trace(dir.clone()).map_err(|e| {
            StartError::Config(format!("--trace-container-input {}: {e}", dir.display()))
        })?;
        tracing::warn!(dir = %dir.display(), "writing a copy of every container input (audit trace)");
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let gc_engine = engine.clone();
    let image_settings = images::ImageSettings {
        images_dir: config.images_dir.clone(),
        base_image: config.base_image.clone(),
        work: Arc::new(tokio::sync::Semaphore::new(config.max_image_builds)),
        metrics: metrics.clone(),
    };
    let base = images::BaseImages::new(engine.clone(), image_settings.clone());
    let images = Arc::new(images::BuilderImages::new(
        sandbox.clone(),
        image_settings.clone(),
        base.clone(),
    ));
    let checker = bootcheck::BootChecker::new(
        images::KernelImages::new(engine, images::VERIFIER, image_settings, base),
        sandbox.clone(),
        bootcheck::BootCheckSettings {
            default: config.boot_check,
            timeout: std::time::Duration::from_secs(config.boot_timeout_secs),
            enforce_signed: config.boot_check_enforce,
        },
    );
    let builds = builds::Builds::new(
        store.clone(),
        sandbox,
        images.clone(),
        checker,
        keys.clone(),
        builds::BuildSettings {
            max_builds: config.max_builds,
            engine_retry_wait: std::time::Duration::from_secs(config.engine_retry_wait_secs),
            usr_volumes: config.usr_volumes,
            metrics: metrics.clone(),
            cluster: config
                .database_url
                .is_some()
                .then(|| builds::ClusterSettings {
                    replica: replica.clone(),
                    builds: config.role.builds(),
                    lease: std::time::Duration::from_secs(config.lease_secs),
                }),
        },
    );
    builds.recover().await?;
    builds.spawn_claimer();
    let gc = gc::Gc::new(
        store.clone(),
        builds.clone(),
        gc_engine,
        config.gc_settings(),
    );
    gc.totals.register(&metrics);
    gc.clone().spawn();
    let prebuilder = prebuild::Prebuilder::new(
        builds.clone(),
        store.clone(),
        prebuild::PrebuildSettings {
            modules: config.prebuild_modules.clone(),
            webhook: config.webhook_url.clone(),
        },
    );
    let watcher = Arc::new(archive::Watcher::new(
        config.watch_settings(),
        store.clone(),
        prebuilder.clone(),
    ));
    watcher.clone().spawn();
    let limits = ArchiveLimits {
        max_input_bytes: config.max_upload_mib * 1024 * 1024,
        ..ArchiveLimits::default()
    };
    Ok(AppState {
        apt: Arc::new(apt::AptRepo::new(store.clone(), keys.clone())),
        sources: sources::Sources::new(store.clone(), limits),
        auth: auth::Auth::new(store.records.clone(), config.anonymous_read),
        tokens: auth::Tokens::new(store.records.clone()),
        audit: auth::Audit::new(store.records.clone()),
        store,
        builds,
        images,
        keys,
        prebuilder,
        watcher,
        metrics,
        gc,
        oneshot_wait: std::time::Duration::from_secs(config.oneshot_wait_secs),
        presign: (config.presign_downloads_secs > 0)
            .then(|| std::time::Duration::from_secs(config.presign_downloads_secs)),
    })
}

/// This server instance's identity for container labels: a hash of its data directory.
fn owner_id(data_dir: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    hex::encode(Sha256::digest(path.to_string_lossy().as_bytes()))[..16].to_string()
}

/// How long a stopping server lets open connections finish.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until SIGTERM or Ctrl-C: HTTPS when a certificate is configured,
/// plain HTTP otherwise.
pub async fn serve(config: &Config, state: AppState) -> Result<(), StartError> {
    let builds = state.builds.clone();
    let served = serve_until_signal(config, state).await;
    builds.release_containers().await;
    served
}

async fn serve_until_signal(config: &Config, state: AppState) -> Result<(), StartError> {
    let listen_error = |source| StartError::Listen {
        addr: config.listen,
        source,
    };
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(listen_error)?;
        let addr = listener.local_addr().unwrap_or(config.listen);
        tracing::info!(%addr, data_dir = %config.data_dir.display(), "kmodforge-server listening (http)");
        // Stop accepting at the signal; give open connections (a followed log, a
        // waiting agent) DRAIN to finish, then close them.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let server =
            axum::serve(listener, app(state)).with_graceful_shutdown(stopped(stop_rx.clone()));
        return tokio::select! {
            served = server => served.map_err(listen_error),
            () = async { stopped(stop_rx).await; tokio::time::sleep(DRAIN).await } => {
                tracing::warn!(secs = DRAIN.as_secs(), "shutdown: closing connections still open");
                Ok(())
            }
        };
    };
    // One provider for the whole process, whatever else the dependency graph enables.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            StartError::Tls(format!(
                "loading {} and {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    let listener = std::net::TcpListener::bind(config.listen).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let handle = axum_server::Handle::new();
    tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown_signal().await;
            handle.graceful_shutdown(Some(DRAIN));
        }
    });
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "kmodforge-server listening (https)");
    axum_server::from_tcp_rustls(listener, tls)
        .map_err(listen_error)?
        .handle(handle)
        .serve(app(state).into_make_service())
        .await
        .map_err(listen_error)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
