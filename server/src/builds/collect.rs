//! Turning the module tar that came out of the sandbox into a stored artifact.
//!
//! Every `.ko` is parsed in Rust (its `.modinfo` section), its vermagic checked
//! against the target kernel, stored as a content-addressed blob, and only then
//! is the manifest recorded: the manifest is the commit point, so a crash
//! midway leaves at worst unreferenced blobs, never a manifest without files.
//! Modules are signed here, in the server process, after the checks (the
//! sandbox stripped them already, as DKMS does before signing), and the stored
//! blob is the signed file: nothing changes it afterwards.

use std::collections::BTreeMap;
use std::io::Read;

use kmodforge_api::dkms::BuildPlan;
use kmodforge_api::modinfo::{parse_modinfo, vermagic_targets};
use kmodforge_api::names::{
    Arch, ArtifactKey, KernelRelease, ModuleName, ModuleVersion, SourceDigest,
};
use kmodforge_api::wire::{ArtifactFile, BlobRef, DependencyRef, FailureKind, ImageRef, Manifest};

use crate::keys::{Keys, ModuleSigningKey};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{what}: built module missing: {file} (BUILT_MODULE_NAME in dkms.conf)")]
    Missing { what: String, file: String },
    #[error("{what}: {file} was built for another kernel: vermagic {vermagic:?} does not start with {kernel:?}")]
    WrongVermagic {
        what: String,
        file: String,
        vermagic: String,
        kernel: String,
    },
    #[error("{what}: {file} is not a kernel module: {reason}")]
    NotAModule {
        what: String,
        file: String,
        reason: String,
    },
    #[error("{what}: reading the module tar from the sandbox: {reason}")]
    BadTar { what: String, reason: String },
    #[error("{what}: signing {file}: {reason}")]
    Sign {
        what: String,
        file: String,
        reason: String,
    },
    #[error("{what}: storing {file}: {reason}")]
    Store {
        what: String,
        file: String,
        reason: String,
        /// The store's disk is full (not the module's fault, nor a service outage).
        full: bool,
    },
}

impl CollectError {
    pub fn kind(&self) -> FailureKind {
        match self {
            CollectError::Missing { .. } => FailureKind::MissingModule,
            CollectError::WrongVermagic { .. } => FailureKind::WrongVermagic,
            CollectError::NotAModule { .. } => FailureKind::CompileError,
            CollectError::Store { full: true, .. } => FailureKind::InsufficientStorage,
            CollectError::BadTar { .. }
            | CollectError::Store { .. }
            | CollectError::Sign { .. } => FailureKind::Infrastructure,
        }
    }
}

/// The exported-symbols file `kmf build` keeps beside the modules.
pub const SYMVERS: &str = "Module.symvers";

/// What is known about the build whose modules are collected.
pub struct CollectInput<'a> {
    pub build_id: &'a str,
    pub name: &'a ModuleName,
    pub version: &'a ModuleVersion,
    pub kernel: &'a KernelRelease,
    pub arch: &'a Arch,
    pub source_digest: &'a SourceDigest,
    pub image: &'a ImageRef,
    pub plan: &'a BuildPlan,
    pub key: &'a ArtifactKey,
    pub build_seconds: f64,
    /// Debian packages of the builder image (the module's settings).
    pub packages: &'a [String],
    pub dependencies: Vec<DependencyRef>,
    /// File names of the DKMS overrides that applied.
    pub overrides: Vec<String>,
    /// Signs the modules; `None`: the artifact stays unsigned.
    pub signer: Option<&'a ModuleSigningKey>,
    /// Attests the manifest.
    pub keys: &'a Keys,
}

impl CollectInput<'_> {
    fn what(&self) -> String {
        format!("{}/{} for {}", self.name, self.version, self.kernel)
    }
}

/// Reads the flat tar of `<dest_name>.ko` files into a map by file name.
fn read_tar(
    input: &CollectInput<'_>,
    bytes: &[u8],
) -> Result<BTreeMap<String, Vec<u8>>, CollectError> {
    let bad = |e: std::io::Error| CollectError::BadTar {
        what: input.what(),
        reason: e.to_string(),
    };
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(bad)?;
        files.insert(name, data);
    }
    Ok(files)
}

/// Verifies and stores the modules; records and returns the manifest.
pub async fn collect_artifact(
    store: &Store,
    input: &CollectInput<'_>,
    tar: &[u8],
) -> Result<Manifest, CollectError> {
    let mut files = read_tar(input, tar)?;
    let mut out = Vec::new();
    for spec in &input.plan.modules {
        let file = format!("{}.ko", spec.dest_name);
        let data = files.remove(&file).ok_or_else(|| CollectError::Missing {
            what: input.what(),
            file: format!("{}{}.ko", spec.built_location, spec.built_name),
        })?;
        let modinfo = parse_modinfo(&data).map_err(|e| CollectError::NotAModule {
            what: input.what(),
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let vermagic = modinfo.vermagic.clone().unwrap_or_default();
        if !vermagic_targets(&vermagic, input.kernel) {
            return Err(CollectError::WrongVermagic {
                what: input.what(),
                file,
                vermagic,
                kernel: input.kernel.to_string(),
            });
        }
        let data = match input.signer {
            None => data,
            Some(k) => k.sign(&data).map_err(|e| CollectError::Sign {
                what: input.what(),
                file: file.clone(),
                reason: e.to_string(),
            })?,
        };
        out.push((file, spec.dest_location.clone(), data, modinfo));
    }
    let store_err = |file: &str, e: crate::store::BlobError| CollectError::Store {
        what: input.what(),
        file: file.to_string(),
        full: matches!(e, crate::store::BlobError::Full { .. }),
        reason: e.to_string(),
    };
    let symvers = match files.remove(SYMVERS) {
        Some(data) => Some(BlobRef {
            sha256: store
                .objects
                .put_blob(&data)
                .await
                .map_err(|e| store_err(SYMVERS, e))?,
            size: data.len() as u64,
        }),
        None => None,
    };
    let mut artifact_files = Vec::new();
    for (file, dest_location, data, modinfo) in out {
        let sha256 = store
            .objects
            .put_blob(&data)
            .await
            .map_err(|e| store_err(&file, e))?;
        artifact_files.push(ArtifactFile {
            file,
            dest_location,
            size: data.len() as u64,
            sha256,
            modinfo,
        });
    }
    let mut manifest = Manifest {
        key: input.key.clone(),
        name: input.name.clone(),
        version: input.version.clone(),
        kernel: input.kernel.clone(),
        arch: input.arch.clone(),
        source_digest: input.source_digest.clone(),
        builder_image: input.image.clone(),
        files: artifact_files,
        plan: input.plan.clone(),
        build_id: input.build_id.to_string(),
        built_at: super::now_rfc3339(),
        build_seconds: input.build_seconds,
        symvers,
        packages: input.packages.to_vec(),
        dependencies: input.dependencies.clone(),
        overrides: input.overrides.clone(),
        boot_check: None,
        module_signing: Some(Keys::signing_facts(input.signer)),
        attestation: None,
    };
    input
        .keys
        .attest(&mut manifest)
        .map_err(|e| CollectError::Sign {
            what: input.what(),
            file: "manifest".into(),
            reason: e.to_string(),
        })?;
    store
        .records
        .put_artifact(&manifest)
        .await
        .map_err(|e| CollectError::Store {
            what: input.what(),
            file: "manifest".into(),
            full: e.is_disk_full(),
            reason: e.to_string(),
        })?;
    Ok(manifest)
}
