//! The builder image's `/usr` on read-only named volumes.
//!
//! Docker engines whose storage driver is `fuse-overlayfs` (rootless setups, kernels
//! without overlay support, like this project's machines) serve every file of an
//! image through FUSE. A module build opens thousands of headers and starts hundreds
//! of compilers and shell tools, and FUSE makes it slow: `make` of acpi-call took
//! 2.36 s in a container against 1.36 s on the host, and openafs's configure + make
//! 475 s against DKMS's ~200 s. With the image's `/usr` on named volumes (the
//! engine's own filesystem), the same container make took 1.53 s.
//!
//! So for each builder image, the directories under `/usr` (and, one level deeper,
//! under `/usr/src`, which must stay a plain directory of the image so that the
//! per-module tmpfs mount points `/usr/src/<m>-<v>` can be created in it) and `/etc`
//! are copied once into named volumes, by Docker's own copy-on-first-mount, and
//! mounted read-only into every build container. `/etc` because every process start
//! reads `/etc/ld.so.cache`: through fuse-overlayfs that was 4 of the 16.5 FUSE
//! requests a process start costs (`bench/fuse-requests.sh`; issue 16,
//! docs/BUILD-PROFILE.md). The engine still mounts its own `/etc/hosts`,
//! `/etc/hostname` and `/etc/resolv.conf` over the read-only volume. The copy is checked (same entry count as
//! the image) before use; anything that goes wrong falls back to building without
//! volumes, which is slower but the same. Volumes are named and labelled by image ID,
//! so a new image gets new volumes and a build never sees another image's files.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kmodforge_api::wire::KernelInfo;
use tokio::sync::OnceCell;

use crate::engine::{ContainerEngine, Labels};
use crate::sandbox::{ContainerSpec, Sandbox, SOURCE_TREE};

/// Label naming the image a volume was copied from.
pub(crate) const IMAGE_LABEL: &str = "kmodforge.image";
/// Label naming the directory of the image a volume holds (its mount target).
pub(crate) const TARGET_LABEL: &str = "kmodforge.target";
/// The image's `/etc`, on a volume unless `KMODFORGE_EXPERIMENT_NO_ETC_VOLUME=1`.
const ETC: &str = "/etc";

/// (volume name, mount target) pairs for one image.
pub type UsrVolumes = Vec<(String, String)>;

/// Per-image volume sets, prepared once.
pub struct UsrVolumeCache {
    engine: Arc<dyn ContainerEngine>,
    sandbox: Sandbox,
    enabled: bool,
    cells: Mutex<HashMap<String, Arc<OnceCell<UsrVolumes>>>>,
}

impl UsrVolumeCache {
    pub fn new(sandbox: Sandbox, enabled: bool) -> Self {
        UsrVolumeCache {
            engine: sandbox.engine().clone(),
            sandbox,
            enabled,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the volumes prepared for `image_id` (retention removed them).
    pub fn forget(&self, image_id: &str) {
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(image_id);
    }

    /// The volumes to mount for builds in `image` (empty: build from the image alone).
    pub async fn for_image(&self, image: &KernelInfo) -> UsrVolumes {
        if !self.enabled {
            return Vec::new();
        }
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            cells.entry(image.image.id.clone()).or_default().clone()
        };
        cell.get_or_init(|| async {
            match self.prepare(image).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(image = %image.image.id, error = %e,
                        "cannot put the image's /usr on volumes; building from the image's own filesystem");
                    Vec::new()
                }
            }
        })
        .await
        .clone()
    }

    async fn prepare(&self, image: &KernelInfo) -> Result<UsrVolumes, VolumeError> {
        let started = std::time::Instant::now();
        let targets = self.targets(&image.image.id).await?;
        let short = image
            .image
            .id
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>();
        let volumes: UsrVolumes = targets
            .iter()
            .map(|t| {
                (
                    format!("kmodforge-usr-{short}{}", volume_suffix(t)),
                    t.clone(),
                )
            })
            .collect();
        for (name, target) in &volumes {
            let labels = Labels::from([
                ("kmodforge".to_string(), "1".to_string()),
                (IMAGE_LABEL.to_string(), image.image.id.clone()),
                ("kmodforge.tag".to_string(), image.image.tag.clone()),
                (TARGET_LABEL.to_string(), target.clone()),
            ]);
            self.engine
                .create_volume(name, &labels)
                .await
                .map_err(|source| VolumeError::Create {
                    name: name.clone(),
                    source,
                })?;
        }
        // Docker copies the image's content into each empty volume when a container
        // first mounts it; then the copy is compared with the image.
        let expected = self.count(&image.image.id, &targets, &[]).await?;
        let copied = self.count(&image.image.id, &targets, &volumes).await?;
        if copied != expected {
            for (name, _) in &volumes {
                let _ = self.engine.remove_volume(name).await;
            }
            return Err(VolumeError::Incomplete { copied, expected });
        }
        tracing::info!(image = %image.image.id, volumes = volumes.len(), entries = expected,
            secs = started.elapsed().as_secs_f64(), "image /usr on read-only volumes");
        Ok(volumes)
    }

    /// The directories to put on volumes: `/usr/*` but `/usr/src`, `/usr/src/*`, and
    /// `/etc` (unless the experiment switch keeps it on the image's filesystem).
    async fn targets(&self, image_id: &str) -> Result<Vec<String>, VolumeError> {
        let mut script = format!(
            "find /usr -mindepth 1 -maxdepth 1 -type d ! -path {SOURCE_TREE} -print; \
             find {SOURCE_TREE} -mindepth 1 -maxdepth 1 -type d -print"
        );
        let etc = !self.sandbox.experiments().no_etc_volume;
        if etc {
            script.push_str(&format!("; find {ETC} -maxdepth 0 -type d -print"));
        }
        let out = self.run(image_id, &[], &script).await?;
        let targets = volume_targets(&out, etc);
        if targets.is_empty() {
            return Err(VolumeError::NoTargets);
        }
        Ok(targets)
    }

    /// Number of entries below `targets`, read with `volumes` mounted.
    async fn count(
        &self,
        image_id: &str,
        targets: &[String],
        volumes: &[(String, String)],
    ) -> Result<u64, VolumeError> {
        let script = format!("find {} | wc -l", targets.join(" "));
        let out = self.run(image_id, volumes, &script).await?;
        out.trim().parse().map_err(|_| VolumeError::Output(out))
    }

    async fn run(
        &self,
        image_id: &str,
        volumes: &[(String, String)],
        script: &str,
    ) -> Result<String, VolumeError> {
        let job_id = format!("usrvol-{:016x}", rand::random::<u64>());
        let spec = ContainerSpec {
            job_id: &job_id,
            role: "job",
            image_id,
            source_dirs: &[],
            ro_volumes: volumes,
        };
        let container = self.sandbox.create(&spec).await?;
        let out = container.read(&["sh", "-c", script], 1 << 20).await;
        container.remove().await;
        let out = out?;
        if out.exit_code != Some(0) {
            return Err(VolumeError::Script {
                script: script.to_string(),
                exit: out.exit_code,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Why an image's `/usr` could not be put on volumes (the build then reads the image's own
/// filesystem).
#[derive(Debug, thiserror::Error)]
enum VolumeError {
    #[error("creating volume {name}: {source}")]
    Create {
        name: String,
        source: crate::engine::EngineError,
    },
    #[error(
        "the volumes hold {copied} entries, the image {expected} (an interrupted copy?); removed them"
    )]
    Incomplete { copied: u64, expected: u64 },
    #[error("no directories under /usr")]
    NoTargets,
    #[error("unexpected count output {0:?}")]
    Output(String),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{script:?} exited {exit:?}")]
    Script { script: String, exit: Option<i64> },
}

/// The mount targets among the directories `targets`'s script printed, sorted.
fn volume_targets(out: &str, etc: bool) -> Vec<String> {
    let mut targets: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("/usr/") || (etc && *l == ETC))
        // A mount target with a space, `:` or `,` would need quoting; Debian has none.
        .filter(|l| !l.contains([' ', ':', ',']))
        .map(str::to_string)
        .collect();
    targets.sort();
    targets
}

/// `-usr-lib`, `-usr-src-linux-headers-6.1.0-47-amd64`: the target in volume-name
/// characters (`[a-zA-Z0-9_.-]`).
fn volume_suffix(target: &str) -> String {
    target
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' | '-' => c,
            _ => '-',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn volume_names_are_docker_names() {
        assert_eq!(super::volume_suffix("/usr/lib"), "-usr-lib");
        assert_eq!(
            super::volume_suffix("/usr/src/linux-headers-6.1.0-47-amd64"),
            "-usr-src-linux-headers-6.1.0-47-amd64"
        );
        assert_eq!(super::volume_suffix("/usr/src/a+b"), "-usr-src-a-b");
        assert_eq!(super::volume_suffix("/etc"), "-etc");
    }

    #[test]
    fn targets_are_usr_dirs_and_etc() {
        let out =
            "/usr/lib\n/usr/bin\n/usr/src/linux-headers-6.1.0-47-amd64\n/usr/a b\n/etc\n/var\n";
        assert_eq!(
            super::volume_targets(out, true),
            [
                "/etc",
                "/usr/bin",
                "/usr/lib",
                "/usr/src/linux-headers-6.1.0-47-amd64"
            ]
        );
        assert!(!super::volume_targets(out, false).contains(&"/etc".to_string()));
    }
}
