//! Per-kernel images, built on demand, once per kernel: builder images and
//! verifier images.
//!
//! A builder image is the kernel's own Debian release as base, its toolchain
//! layer (shared by every kernel of that release), and exactly
//! `linux-headers-<krel>` with the compiler named by its `CONFIG_CC_VERSION_TEXT`
//! (see `images/builder/Dockerfile`), tagged `kmodforge-builder:debian-<suite>-<krel>`.
//! A verifier image holds the kernel itself, `linux-image-<krel>`, and qemu to
//! boot it (`images/verifier/`), tagged `kmodforge-verifier:debian-<suite>-<krel>`.
//! Both are used by image ID. A recipe's hash is a label, so an image built from
//! an older recipe is rebuilt.
//!
//! No registry is reachable on our machines: when the base image is neither
//! present nor pullable, `images/bootstrap-base.sh` makes it from Debian
//! packages and imports it under the tag a normal machine would pull.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kmodforge_api::names::KernelRelease;
use kmodforge_api::wire::{ErrorKind, ImageRef, KernelInfo};
use sha2::{Digest, Sha256};

use crate::engine::{BuildEvent, ContainerEngine, EngineError, ImageBuild, LabelSelector, Labels};
use crate::flat_tar::flat_tar;
use crate::sandbox::{ContainerSpec, Sandbox};

/// Exit code of a recipe's check when its kernel package does not exist.
const UNKNOWN_KERNEL_EXIT: i64 = 42;

/// An image recipe under `images/`: one image per kernel release.
#[derive(Clone, Copy, Debug)]
pub struct Recipe {
    /// Directory under `images/` holding the Dockerfile.
    pub dir: &'static str,
    /// Repository of the image tags.
    pub repo: &'static str,
    /// What the image is, in messages.
    pub role: &'static str,
    /// The Debian package whose absence the recipe reports with exit 42.
    pub package: fn(&KernelRelease) -> String,
}

/// Builder images: kernel headers and the kernel's compiler.
pub const BUILDER: Recipe = Recipe {
    dir: "builder",
    repo: "kmodforge-builder",
    role: "builder",
    package: KernelRelease::headers_package,
};

/// Verifier images: the kernel itself and qemu to boot it.
pub const VERIFIER: Recipe = Recipe {
    dir: "verifier",
    repo: "kmodforge-verifier",
    role: "verifier",
    package: image_package,
};

fn image_package(kernel: &KernelRelease) -> String {
    format!("linux-image-{kernel}")
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("kernel {kernel}: Debian package {package} not found in Debian {suite}")]
    UnknownKernel {
        kernel: String,
        package: String,
        suite: String,
    },
    #[error(
        "kernel {0}: not a Debian kernel release this server knows (expected e.g. 6.1.0-47-amd64)"
    )]
    UnsupportedKernel(String),
    #[error("base image {image}: {message}")]
    BaseImage { image: String, message: String },
    #[error("{role} image for kernel {kernel} failed to build: {message}")]
    Build {
        role: &'static str,
        kernel: String,
        message: String,
        log_tail: String,
    },
    #[error("image recipe {dir}: {source}")]
    Recipe {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {kernel}: installing Debian packages {packages} failed: {message}")]
    Packages {
        kernel: String,
        packages: String,
        message: String,
        log_tail: String,
    },
    /// The engine failed (it names the operation and the image).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A failed image build step.
struct StepFailure {
    message: String,
    code: Option<i64>,
    log: Vec<u8>,
}

/// apt's own one-line reason (`E: Unable to locate package foo`), if it gave one.
fn apt_error(log: &[u8]) -> Option<String> {
    String::from_utf8_lossy(log)
        .lines()
        .find(|l| l.starts_with("E: "))
        .map(|l| l.trim().to_string())
}

impl ImageError {
    /// Its kind in the API.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::UnknownKernel { .. } => ErrorKind::UnknownKernel,
            ImageError::UnsupportedKernel(_) => ErrorKind::UnsupportedKernel,
            _ => ErrorKind::Infrastructure,
        }
    }
}

/// Where images come from.
#[derive(Clone, Debug)]
pub struct ImageSettings {
    /// `images/` directory holding `builder/` and `bootstrap-base.sh`.
    pub images_dir: PathBuf,
    /// Base image template; `{suite}` is replaced (e.g. `debian:{suite}-slim`).
    pub base_image: String,
    /// Permits for host-side image work (a base bootstrap, an image build): a flood
    /// of requests for new kernels waits here instead of running all at once.
    pub work: Arc<tokio::sync::Semaphore>,
    /// Image preparations are counted here.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl ImageSettings {
    /// Waits for a permit of image work.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ImageError> {
        self.work
            .acquire()
            .await
            .map_err(|_| ImageError::BaseImage {
                image: String::new(),
                message: "the server is shutting down".into(),
            })
    }
}

/// The suite's base images: present, pulled, or bootstrapped from Debian packages.
pub struct BaseImages {
    engine: Arc<dyn ContainerEngine>,
    settings: ImageSettings,
    /// One base-image bootstrap at a time.
    lock: tokio::sync::Mutex<()>,
}

impl BaseImages {
    pub fn new(engine: Arc<dyn ContainerEngine>, settings: ImageSettings) -> Arc<Self> {
        Arc::new(BaseImages {
            engine,
            settings,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Makes sure the suite's base image exists: present, else pulled, else bootstrapped.
    async fn ensure(&self, suite: &str) -> Result<String, ImageError> {
        let image = self.settings.base_image.replace("{suite}", suite);
        let _guard = self.lock.lock().await;
        if self.engine.inspect_image(&image).await.is_ok() {
            return Ok(image);
        }
        if self.try_pull(&image).await {
            return Ok(image);
        }
        tracing::info!(%image, "base image neither present nor pullable; bootstrapping from Debian packages");
        self.bootstrap(suite, &image).await?;
        Ok(image)
    }

    async fn try_pull(&self, image: &str) -> bool {
        let pull = self.engine.pull_image(image);
        let pulled = tokio::time::timeout(Duration::from_secs(60), pull)
            .await
            .is_ok_and(|r| r.is_ok());
        pulled && self.engine.inspect_image(image).await.is_ok()
    }

    async fn bootstrap(&self, suite: &str, image: &str) -> Result<(), ImageError> {
        let _permit = self.settings.permit().await?;
        let script = self.settings.images_dir.join("bootstrap-base.sh");
        let out = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(suite)
            .arg(image)
            .output()
            .await
            .map_err(|e| ImageError::BaseImage {
                image: image.to_string(),
                message: format!("cannot run {}: {e}", script.display()),
            })?;
        if !out.status.success() || self.engine.inspect_image(image).await.is_err() {
            let tail = crate::builds::log::tail_of(&out.stderr, 5);
            return Err(ImageError::BaseImage {
                image: image.to_string(),
                message: format!("{} failed ({}): {tail}", script.display(), out.status),
            });
        }
        Ok(())
    }
}

/// A per-kernel image that is ready in the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyImage {
    pub kernel: KernelRelease,
    pub suite: String,
    pub image: ImageRef,
}

/// The images of one recipe by kernel, single-flight per kernel.
pub struct KernelImages {
    engine: Arc<dyn ContainerEngine>,
    recipe: Recipe,
    settings: ImageSettings,
    base: Arc<BaseImages>,
    prepared: Mutex<HashMap<KernelRelease, ReadyImage>>,
    /// Per-kernel locks: concurrent requests for one kernel wait for one build.
    locks: Mutex<HashMap<KernelRelease, Arc<tokio::sync::Mutex<()>>>>,
}

impl KernelImages {
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        recipe: Recipe,
        settings: ImageSettings,
        base: Arc<BaseImages>,
    ) -> Self {
        KernelImages {
            engine,
            recipe,
            settings,
            base,
            prepared: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, HashMap<KernelRelease, ReadyImage>> {
        self.prepared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `<repo>:debian-<suite>-<krel>`.
    pub fn tag_for(&self, suite: &str, kernel: &KernelRelease) -> String {
        format!("{}:debian-{suite}-{kernel}", self.recipe.repo)
    }

    /// The ready image for `kernel`, if this process already resolved it.
    pub fn cached(&self, kernel: &KernelRelease) -> Option<ReadyImage> {
        self.prepared().get(kernel).cloned()
    }

    /// Forgets the image resolved for `kernel` (retention removed it): the next
    /// build for the kernel resolves, or builds, it again.
    pub fn forget(&self, kernel: &KernelRelease) {
        self.prepared().remove(kernel);
    }

    /// The image for `kernel` if it is ready in the engine (never builds).
    pub async fn existing(&self, kernel: &KernelRelease) -> Option<ReadyImage> {
        if let Some(info) = self.cached(kernel) {
            return Some(info);
        }
        let suite = kernel.debian_suite()?;
        let info = self.current(kernel, suite).await.ok()??;
        self.prepared().insert(kernel.clone(), info.clone());
        Some(info)
    }

    /// The tagged image for `kernel` when it was built from the current recipe.
    async fn current(
        &self,
        kernel: &KernelRelease,
        suite: &str,
    ) -> Result<Option<ReadyImage>, ImageError> {
        let tag = self.tag_for(suite, kernel);
        let recipe = self.recipe_hash()?;
        let Ok(img) = self.engine.inspect_image(&tag).await else {
            return Ok(None);
        };
        match (img.labels.get("kmodforge.recipe") == Some(&recipe), img.id) {
            (true, id) if !id.is_empty() => Ok(Some(ReadyImage {
                kernel: kernel.clone(),
                suite: suite.to_string(),
                image: ImageRef { id, tag },
            })),
            _ => {
                tracing::info!(%tag, role = self.recipe.role, "image is from an older recipe; it will be rebuilt");
                Ok(None)
            }
        }
    }

    /// Returns the image for `kernel`, building it if needed (once, however many
    /// callers ask at the same time).
    pub async fn ensure(&self, kernel: &KernelRelease) -> Result<ReadyImage, ImageError> {
        if let Some(info) = self.cached(kernel) {
            return Ok(info);
        }
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(kernel.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(info) = self.cached(kernel) {
            return Ok(info);
        }
        let info = self.resolve(kernel).await?;
        self.prepared().insert(kernel.clone(), info.clone());
        Ok(info)
    }

    async fn resolve(&self, kernel: &KernelRelease) -> Result<ReadyImage, ImageError> {
        let suite = kernel
            .debian_suite()
            .ok_or_else(|| ImageError::UnsupportedKernel(kernel.to_string()))?;
        if let Some(info) = self.current(kernel, suite).await? {
            return Ok(info);
        }
        let tag = self.tag_for(suite, kernel);
        let recipe = self.recipe_hash()?;
        let base = self.base.ensure(suite).await?;
        let started = std::time::Instant::now();
        let built = self.build(kernel, suite, &base, &tag, &recipe).await;
        let (role, elapsed) = (self.recipe.role, started.elapsed());
        self.settings
            .metrics
            .image_prepared(role, built.is_ok(), elapsed);
        built
    }

    async fn build(
        &self,
        kernel: &KernelRelease,
        suite: &str,
        base: &str,
        tag: &str,
        recipe: &str,
    ) -> Result<ReadyImage, ImageError> {
        let build = ImageBuild {
            tag: tag.to_string(),
            dockerfile: "Dockerfile".into(),
            context: self.context_tar()?,
            args: BTreeMap::from([
                ("BASE".to_string(), base.to_string()),
                ("KREL".to_string(), kernel.to_string()),
                ("SUITE".to_string(), suite.to_string()),
            ]),
            labels: Labels::from([
                ("kmodforge.recipe".to_string(), recipe.to_string()),
                ("kmodforge.suite".to_string(), suite.to_string()),
            ]),
        };
        let role = self.recipe.role;
        tracing::info!(%kernel, %tag, role, "building image");
        let started = std::time::Instant::now();
        let permit = self.settings.permit().await?;
        let built = run_build(self.engine.as_ref(), build).await?;
        drop(permit);
        if let Err(f) = built {
            return Err(self.build_failure(kernel, suite, &f.message, f.code, &f.log));
        }
        let id = self.engine.inspect_image(tag).await?.id;
        tracing::info!(%kernel, %id, role, secs = started.elapsed().as_secs_f64(), "image ready");
        Ok(ReadyImage {
            kernel: kernel.clone(),
            suite: suite.to_string(),
            image: ImageRef {
                id,
                tag: tag.to_string(),
            },
        })
    }

    fn build_failure(
        &self,
        kernel: &KernelRelease,
        suite: &str,
        message: &str,
        code: Option<i64>,
        log: &[u8],
    ) -> ImageError {
        // The classic builder reports a RUN step's exit status in errorDetail.code
        // (older engines only in the message), so accept either form.
        let unknown = code == Some(UNKNOWN_KERNEL_EXIT)
            || message.ends_with(&format!("non-zero code: {UNKNOWN_KERNEL_EXIT}"));
        if unknown {
            return ImageError::UnknownKernel {
                kernel: kernel.to_string(),
                package: (self.recipe.package)(kernel),
                suite: suite.to_string(),
            };
        }
        ImageError::Build {
            role: self.recipe.role,
            kernel: kernel.to_string(),
            message: message.trim().to_string(),
            log_tail: crate::builds::log::tail_of(log, 20),
        }
    }

    fn recipe_dir(&self) -> PathBuf {
        self.settings.images_dir.join(self.recipe.dir)
    }

    /// sha256 over the recipe files (path + content, sorted).
    pub fn recipe_hash(&self) -> Result<String, ImageError> {
        let mut hasher = Sha256::new();
        for (rel, bytes) in self.recipe_files()? {
            hasher.update(rel.as_bytes());
            hasher.update([0]);
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(&bytes);
        }
        Ok(hex::encode(hasher.finalize())[..16].to_string())
    }

    fn recipe_files(&self) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
        let dir = self.recipe_dir();
        let mut files = Vec::new();
        collect_files(&dir, &dir, &mut files).map_err(|source| ImageError::Recipe {
            dir: dir.clone(),
            source,
        })?;
        files.sort();
        Ok(files)
    }

    fn context_tar(&self) -> Result<Vec<u8>, ImageError> {
        let dir = self.recipe_dir();
        let err = |source| ImageError::Recipe {
            dir: dir.clone(),
            source,
        };
        let files = self.recipe_files()?;
        let entries = files.iter().map(|(rel, bytes)| {
            let exec = rel.ends_with(".sh") || !rel.contains('.');
            (
                rel.as_str(),
                if exec { 0o755 } else { 0o644 },
                bytes.as_slice(),
            )
        });
        flat_tar(entries).map_err(err)
    }
}

/// Builder images, and the derived images with a module's Debian packages.
pub struct BuilderImages {
    images: KernelImages,
    sandbox: Sandbox,
    /// `CONFIG_CC_VERSION_TEXT` by image ID, read once from the image.
    compilers: Mutex<HashMap<String, Option<String>>>,
    /// Per-tag locks of the images with packages.
    package_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BuilderImages {
    pub fn new(sandbox: Sandbox, settings: ImageSettings, base: Arc<BaseImages>) -> Self {
        BuilderImages {
            images: KernelImages::new(sandbox.engine().clone(), BUILDER, settings, base),
            sandbox,
            compilers: Mutex::new(HashMap::new()),
            package_locks: Mutex::new(HashMap::new()),
        }
    }

    fn engine(&self) -> &dyn ContainerEngine {
        self.sandbox.engine().as_ref()
    }

    /// Kernels whose builder image is ready (checked against the engine).
    pub async fn list(&self) -> Result<Vec<KernelInfo>, ImageError> {
        let recipe = self.images.recipe_hash()?;
        let selector = LabelSelector::default().eq("kmodforge.recipe", &recipe);
        let mut out = Vec::new();
        for img in self.engine().list_images(&selector).await? {
            let Some(krel) = img.labels.get("kmodforge.kernel") else {
                continue;
            };
            let Ok(kernel) = KernelRelease::parse(krel) else {
                continue;
            };
            let suite = img
                .labels
                .get("kmodforge.suite")
                .cloned()
                .unwrap_or_default();
            out.push(KernelInfo {
                image: ImageRef {
                    id: img.id.clone(),
                    tag: self.images.tag_for(&suite, &kernel),
                },
                compiler: self.compiler_of(&img.id).await,
                kernel,
                suite,
                verifier: None,
            });
        }
        out.sort_by(|a, b| a.kernel.cmp(&b.kernel));
        Ok(out)
    }

    /// The compiler an image carries (its kernel's `CONFIG_CC_VERSION_TEXT`),
    /// read once per image from `/etc/kmodforge/kernel.env` in a sandbox.
    pub async fn compiler_of(&self, image_id: &str) -> Option<String> {
        if let Some(c) = self
            .compilers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image_id)
        {
            return c.clone();
        }
        let job_id = format!("kinfo-{:016x}", rand::random::<u64>());
        let spec = ContainerSpec {
            job_id: &job_id,
            role: "job",
            image_id,
            source_dirs: &[],
            ro_volumes: &[],
        };
        let container = self.sandbox.create(&spec).await.ok()?;
        let out = container
            .read(&["cat", "/etc/kmodforge/kernel.env"], 64 * 1024)
            .await;
        container.remove().await;
        let text = parse_cc_text(&String::from_utf8_lossy(&out.ok()?.stdout));
        let mut map = self.compilers.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(image_id.to_string(), text.clone());
        text
    }

    /// Forgets the builder image resolved for `kernel` (see [`KernelImages::forget`]).
    pub fn forget(&self, kernel: &KernelRelease) {
        self.images.forget(kernel);
    }

    /// The builder image for `kernel` if it is ready in the engine (never builds).
    pub async fn existing(&self, kernel: &KernelRelease) -> Option<KernelInfo> {
        self.images.existing(kernel).await.map(kernel_info)
    }

    /// Returns the builder image for `kernel`, building it if needed (once).
    pub async fn ensure(&self, kernel: &KernelRelease) -> Result<KernelInfo, ImageError> {
        self.images.ensure(kernel).await.map(kernel_info)
    }

    /// The builder image of `base` plus Debian `packages` (a module's settings),
    /// built once per (image, package set) and kept like builder images.
    pub async fn with_packages(
        &self,
        base: &KernelInfo,
        packages: &[String],
    ) -> Result<KernelInfo, ImageError> {
        if packages.is_empty() {
            return Ok(base.clone());
        }
        let mut hasher = Sha256::new();
        hasher.update(base.image.id.as_bytes());
        for p in packages {
            hasher.update([0]);
            hasher.update(p.as_bytes());
        }
        let digest = hex::encode(hasher.finalize());
        let tag = format!("{}-pkgs-{}", base.image.tag, &digest[..12]);
        let info = |id: String| KernelInfo {
            image: ImageRef {
                id,
                tag: tag.clone(),
            },
            ..base.clone()
        };
        let lock = {
            let mut locks = self.package_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(tag.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Ok(img) = self.engine().inspect_image(&tag).await {
            let from_base = img.labels.get("kmodforge.base").map(String::as_str)
                == Some(base.image.id.as_str());
            if from_base && !img.id.is_empty() {
                return Ok(info(img.id));
            }
        }
        // Debian package names were validated (no spaces or shell characters).
        let list = packages.join(" ");
        let dockerfile = format!(
            "FROM {base}\nUSER root\nRUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -qq --no-install-recommends {list} && rm -rf /var/lib/apt/lists/*\n\
             USER builder\n",
            base = base.image.id
        );
        let context =
            flat_tar([("Dockerfile", 0o644, dockerfile.as_bytes())]).map_err(|source| {
                ImageError::Recipe {
                    dir: PathBuf::from("(generated Dockerfile)"),
                    source,
                }
            })?;
        let build = ImageBuild {
            tag: tag.clone(),
            dockerfile: "Dockerfile".into(),
            context,
            args: BTreeMap::new(),
            labels: Labels::from([
                // Not a kernel's builder image: keep it out of `GET /v1/kernels`.
                ("kmodforge.recipe".to_string(), "packages".to_string()),
                ("kmodforge.base".to_string(), base.image.id.clone()),
                ("kmodforge.packages".to_string(), list.clone()),
            ]),
        };
        tracing::info!(kernel = %base.kernel, %tag, packages = %list, "building builder image with packages");
        let started = std::time::Instant::now();
        let permit = self.images.settings.permit().await?;
        let built = run_build(self.engine(), build).await?;
        drop(permit);
        let metrics = &self.images.settings.metrics;
        metrics.image_prepared("packages", built.is_ok(), started.elapsed());
        if let Err(f) = built {
            return Err(ImageError::Packages {
                kernel: base.kernel.to_string(),
                packages: list,
                message: apt_error(&f.log).unwrap_or_else(|| f.message.trim().to_string()),
                log_tail: crate::builds::log::tail_of(&f.log, 20),
            });
        }
        let img = self.engine().inspect_image(&tag).await?;
        tracing::info!(%tag, secs = started.elapsed().as_secs_f64(), "builder image with packages ready");
        Ok(info(img.id))
    }
}

/// Runs one image build; the inner error is the build's own failure (a step
/// failed), the outer one the engine's.
async fn run_build(
    engine: &dyn ContainerEngine,
    build: ImageBuild,
) -> Result<Result<(), StepFailure>, ImageError> {
    let mut stream = engine.build_image(build);
    let mut log = Vec::<u8>::new();
    while let Some(event) = stream.next().await {
        match event? {
            BuildEvent::Log(text) => log.extend_from_slice(text.as_bytes()),
            BuildEvent::Failed { message, code } => {
                return Ok(Err(StepFailure { message, code, log }))
            }
        }
    }
    Ok(Ok(()))
}

/// The recipe's files: everything in its directory but the documentation and the
/// recipe's own tests (`README.md`, `test-*`, `testdata/`), so that editing those
/// neither rebuilds images nor ships them.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "README.md" || name == "testdata" || name.starts_with("test-") {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .map_err(std::io::Error::other)?
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read(&path)?));
        }
    }
    Ok(())
}

fn kernel_info(ready: ReadyImage) -> KernelInfo {
    KernelInfo {
        kernel: ready.kernel,
        suite: ready.suite,
        image: ready.image,
        compiler: None,
        verifier: None,
    }
}

/// `CC_VERSION_TEXT='...'` from `/etc/kmodforge/kernel.env`.
fn parse_cc_text(env: &str) -> Option<String> {
    env.lines()
        .find_map(|l| l.strip_prefix("CC_VERSION_TEXT="))
        .map(|v| v.trim().trim_matches('\'').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_text_from_kernel_env() {
        let env = "KREL='6.1.0-47-amd64'\nCC='gcc-12'\nCC_VERSION_TEXT='gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0'\n";
        assert_eq!(
            parse_cc_text(env).as_deref(),
            Some("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
        );
        assert_eq!(parse_cc_text("KREL='x'\n"), None);
    }

    #[test]
    fn tags_name_suite_and_kernel() {
        let k = KernelRelease::parse("6.1.0-47-amd64").expect("valid");
        let settings = ImageSettings {
            images_dir: PathBuf::from("/nonexistent"),
            base_image: "debian:{suite}-slim".into(),
            work: Arc::new(tokio::sync::Semaphore::new(1)),
            metrics: Default::default(),
        };
        let engine: Arc<dyn ContainerEngine> = crate::engine::fake::FakeEngine::new();
        let base = BaseImages::new(engine.clone(), settings.clone());
        let builder = KernelImages::new(engine.clone(), BUILDER, settings.clone(), base.clone());
        let verifier = KernelImages::new(engine, VERIFIER, settings, base);
        assert_eq!(
            builder.tag_for("bookworm", &k),
            "kmodforge-builder:debian-bookworm-6.1.0-47-amd64"
        );
        assert_eq!(
            verifier.tag_for("bookworm", &k),
            "kmodforge-verifier:debian-bookworm-6.1.0-47-amd64"
        );
        assert_eq!((VERIFIER.package)(&k), "linux-image-6.1.0-47-amd64");
    }
}
