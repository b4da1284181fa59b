//! The build cache key: which inputs make two builds interchangeable.
//!
//! The key is a sha256 over a domain-separated, versioned, canonical JSON encoding
//! ([`crate::canonical`], shared by every hashed key of the service) of
//! everything that decides the output: the source archive digest, the kernel and arch,
//! the builder image, the evaluated build plan, the build options and the module-signing
//! certificate. Canonical means
//! object keys sorted at every level and no insignificant whitespace, independent of
//! serde_json's `preserve_order` feature. Changing what goes into the key, or how, must
//! bump [`DOMAIN`], so old and new keys can never collide.

use serde::Serialize;
use serde_json::Value;

use crate::dkms::BuildPlan;
use crate::names::{Arch, ArtifactKey, KernelRelease, SourceDigest};

/// Prefix hashed before the JSON: names the purpose and the encoding version.
pub const DOMAIN: &str = "kmodforge-cache-key-v2\n";

/// The inputs of a build, borrowed.
#[derive(Clone, Debug, Serialize)]
pub struct CacheKeyParts<'a> {
    /// sha256 of the module source archive.
    pub source_digest: &'a SourceDigest,
    /// Target kernel.
    pub kernel: &'a KernelRelease,
    /// Target architecture.
    pub arch: &'a Arch,
    /// The builder image's content id (`sha256:…`), not a mutable tag.
    pub builder_image_id: &'a str,
    /// The evaluated plan (make command, modules, patches, …).
    pub plan: &'a BuildPlan,
    /// Build options that change the output.
    pub options: &'a Value,
    /// sha256 of the module-signing certificate the modules are signed with
    /// (`None`: unsigned): a new key means new artifacts.
    pub signing_certificate: Option<&'a str>,
}

/// The cache key of a build: sha256(DOMAIN ‖ canonical JSON of `parts`), the encoding of
/// [`crate::canonical`].
pub fn cache_key(parts: &CacheKeyParts<'_>) -> ArtifactKey {
    ArtifactKey::from_sha256(crate::canonical::digest(DOMAIN, parts))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dkms::ModuleSpec;
    use serde_json::json;

    fn plan() -> BuildPlan {
        BuildPlan {
            package_name: "acpi-call".into(),
            package_version: "1.2.2".into(),
            modules: vec![ModuleSpec {
                built_name: "acpi_call".into(),
                built_location: String::new(),
                dest_name: "acpi_call".into(),
                dest_location: "/updates/dkms".into(),
                strip: true,
            }],
            make: "make -j2 KERNELRELEASE=6.1.0-47-amd64 -C /lib/modules/6.1.0-47-amd64/build M=/var/lib/dkms/acpi-call/1.2.2/build".into(),
            patches: vec![],
            pre_build: None,
            post_build: None,
            build_depends: vec![],
            autoinstall: true,
            no_weak_modules: false,
            obsolete_by: None,
            warnings: vec![],
        }
    }

    struct Inputs {
        digest: SourceDigest,
        kernel: KernelRelease,
        arch: Arch,
        image: String,
        plan: BuildPlan,
        options: Value,
        signing: Option<String>,
    }

    impl Inputs {
        fn new() -> Self {
            Inputs {
                digest: SourceDigest::from_sha256([7; 32]),
                kernel: KernelRelease::parse("6.1.0-47-amd64").unwrap(),
                arch: Arch::host_default(),
                image: "sha256:abc".into(),
                plan: plan(),
                options: json!({"sign": false, "compress": "none"}),
                signing: Some("a".repeat(64)),
            }
        }

        fn key(&self) -> ArtifactKey {
            cache_key(&CacheKeyParts {
                source_digest: &self.digest,
                kernel: &self.kernel,
                arch: &self.arch,
                builder_image_id: &self.image,
                plan: &self.plan,
                options: &self.options,
                signing_certificate: self.signing.as_deref(),
            })
        }
    }

    #[test]
    fn stable_for_equal_input() {
        assert_eq!(Inputs::new().key(), Inputs::new().key());
        assert_eq!(Inputs::new().key().as_str().len(), 64);
    }

    #[test]
    fn option_key_order_does_not_matter() {
        let mut a = Inputs::new();
        a.options = serde_json::from_str(r#"{"a":1,"b":{"y":2,"x":3}}"#).unwrap();
        let mut b = Inputs::new();
        b.options = serde_json::from_str(r#"{"b":{"x":3,"y":2},"a":1}"#).unwrap();
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = Inputs::new().key();
        let changes: [fn(&mut Inputs); 9] = [
            |i| i.digest = SourceDigest::from_sha256([8; 32]),
            |i| i.kernel = KernelRelease::parse("6.1.0-56-amd64").unwrap(),
            |i| i.arch = Arch::parse("aarch64").unwrap(),
            |i| i.image = "sha256:abd".into(),
            |i| i.plan.make.push_str(" V=1"),
            |i| i.plan.modules[0].strip = false,
            |i| i.options = json!({"sign": true, "compress": "none"}),
            |i| i.signing = None,
            |i| i.signing = Some("b".repeat(64)),
        ];
        for (n, change) in changes.iter().enumerate() {
            let mut inputs = Inputs::new();
            change(&mut inputs);
            assert_ne!(inputs.key(), base, "change #{n} did not change the key");
        }
    }
}
