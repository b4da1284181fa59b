//! DKMS binaries-only bundles: the tarball `dkms mktarball --binaries-only` writes
//! and `dkms ldtarball` loads (DKMS 3.0.10, Debian bookworm), for several kernels
//! at once (`dkms mktarball` itself keeps only the first, dkms#415).
//!
//! The layout, as `make_tarball` builds it in a temporary directory and packs it
//! with `tar -C $tmp -caf NAME.dkms.tar.gz .`:
//!
//! ```text
//! ./dkms_binaries_only/PACKAGE_NAME        "<module>\n"
//! ./dkms_binaries_only/PACKAGE_VERSION     "<version>\n"
//! ./dkms_binaries_only/dkms.conf           the module's dkms.conf
//! ./dkms_main_tree/<kernel>/<arch>/log/make.log
//! ./dkms_main_tree/<kernel>/<arch>/module/<DEST_MODULE_NAME>.ko
//! ```
//!
//! `load_tarball` takes PACKAGE_NAME and PACKAGE_VERSION from the bundled
//! `dkms.conf` (it sources it: the two marker files are not read), copies it to
//! `/var/lib/dkms/<module>/<version>/source/` unless `/usr/src/<module>-<version>`
//! exists, and copies `dkms_main_tree/<kernel>/<arch>/` to
//! `/var/lib/dkms/<module>/<version>/<kernel>/<arch>/`: only the first kernel's
//! (in glob order), as its loop variables are `local -r` (the bug dkms#415 fixed in
//! `make_tarball` only; with `--force`, every further kernel's files are copied
//! over the first's). `dkms status` then calls a kernel's modules built when
//! `module/` holds `<DEST_MODULE_NAME>.ko` for every module of the `dkms.conf`,
//! which are the artifact's file names.
//!
//! Every entry is owned by root (0:0), directories 0755 and files 0644, with a
//! fixed mtime (the build time of the artifact it belongs to); the gzip header has
//! no name and mtime 0. The same artifacts give the same bytes.
//!
//! The writer is fed one kernel at a time and hands out the compressed bytes
//! made so far ([`BundleWriter::take`]), so a server streams a bundle of many
//! kernels holding one kernel's files at a time.

use std::borrow::Cow;
use std::io::{self, Write};

use crate::flat_tar::root_header;
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use kmodforge_api::dkms::Declared;
use tar::{EntryType, Header};

/// The mktarball layout's top-level folders.
const BINARIES_ONLY: &str = "./dkms_binaries_only";
const MAIN_TREE: &str = "./dkms_main_tree";

/// One kernel's part of a bundle: `dkms_main_tree/<kernel>/<arch>/`.
pub struct KernelPart<'a> {
    pub kernel: &'a str,
    pub arch: &'a str,
    /// Seconds since the epoch for this part's entries.
    pub mtime: u64,
    /// `log/make.log`, when the build's log is still stored.
    pub make_log: Option<&'a [u8]>,
    /// `module/<file>`: the `.ko` files as built (and signed), by their DKMS names.
    pub modules: &'a [(&'a str, &'a [u8])],
}

/// Writes a bundle into a gzip stream held in memory; [`BundleWriter::take`]
/// empties it between parts.
pub struct BundleWriter {
    tar: tar::Builder<GzEncoder<Vec<u8>>>,
}

impl Default for BundleWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BundleWriter {
    pub fn new() -> Self {
        let gz = GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), Compression::default());
        BundleWriter {
            tar: tar::Builder::new(gz),
        }
    }

    /// `./`, the binaries-only marker with its `dkms.conf`, and `./dkms_main_tree/`:
    /// what precedes the kernels.
    pub fn begin(
        &mut self,
        module: &str,
        version: &str,
        dkms_conf: &[u8],
        mtime: u64,
    ) -> io::Result<()> {
        self.dir(".", mtime)?;
        self.dir(BINARIES_ONLY, mtime)?;
        self.file(
            &format!("{BINARIES_ONLY}/PACKAGE_NAME"),
            format!("{module}\n").as_bytes(),
            mtime,
        )?;
        self.file(
            &format!("{BINARIES_ONLY}/PACKAGE_VERSION"),
            format!("{version}\n").as_bytes(),
            mtime,
        )?;
        self.file(&format!("{BINARIES_ONLY}/dkms.conf"), dkms_conf, mtime)?;
        self.dir(MAIN_TREE, mtime)
    }

    /// One kernel's built modules and log.
    pub fn kernel(&mut self, part: &KernelPart<'_>) -> io::Result<()> {
        let kernel_dir = format!("{MAIN_TREE}/{}", part.kernel);
        let base = format!("{kernel_dir}/{}", part.arch);
        self.dir(&kernel_dir, part.mtime)?;
        self.dir(&base, part.mtime)?;
        if let Some(log) = part.make_log {
            self.dir(&format!("{base}/log"), part.mtime)?;
            self.file(&format!("{base}/log/make.log"), log, part.mtime)?;
        }
        self.dir(&format!("{base}/module"), part.mtime)?;
        for (file, data) in part.modules {
            self.file(&format!("{base}/module/{file}"), data, part.mtime)?;
        }
        Ok(())
    }

    /// The compressed bytes written so far (the stream goes on).
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.tar.get_mut().get_mut())
    }

    /// The tar's end and the gzip trailer: the last bytes of the bundle.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        let mut gz = self.tar.into_inner()?;
        gz.flush()?;
        gz.finish()
    }

    fn dir(&mut self, path: &str, mtime: u64) -> io::Result<()> {
        let h = root_header(EntryType::Directory, 0o755, 0, mtime)?;
        self.append(h, &format!("{path}/"), &[])
    }

    fn file(&mut self, path: &str, data: &[u8], mtime: u64) -> io::Result<()> {
        let h = root_header(EntryType::Regular, 0o644, data.len() as u64, mtime)?;
        self.append(h, path, data)
    }

    /// Appends an entry under `path` byte for byte, `./` included, as GNU tar
    /// writes it (the tar crate's path setters drop the `./`): a name that does
    /// not fit the header's 100 bytes goes first in a `././@LongLink` entry.
    fn append(&mut self, mut h: Header, path: &str, data: &[u8]) -> io::Result<()> {
        let name = path.as_bytes();
        if name.len() > NAME_FIELD {
            let mut long = root_header(EntryType::GNULongName, 0o644, name.len() as u64 + 1, 0)?;
            set_name(&mut long, b"././@LongLink");
            long.set_cksum();
            let mut text = name.to_vec();
            text.push(0);
            self.tar.append(&long, text.as_slice())?;
        }
        set_name(&mut h, &name[..name.len().min(NAME_FIELD)]);
        h.set_cksum();
        self.tar.append(&h, data)
    }
}

/// The name field of a tar header, in bytes.
const NAME_FIELD: usize = 100;

fn set_name(h: &mut Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

/// The file name `dkms mktarball` gives such a bundle:
/// `<module>-<version>-kernel<k1>-<arch1>-kernel<k2>-<arch2>.dkms.tar.gz`, with
/// `manykernels` for the list once it is 200 characters or more.
pub fn tarball_name(module: &str, version: &str, kernels: &[(&str, &str)]) -> String {
    let list = kernels
        .iter()
        .map(|(k, a)| format!("kernel{k}-{a}"))
        .collect::<Vec<_>>()
        .join("-");
    // DKMS measures `echo $list | wc -m`: the list and its newline, over 200.
    let list = if list.chars().count() + 1 > 200 {
        "manykernels".to_owned()
    } else {
        list
    };
    format!("{module}-{version}-{list}.dkms.tar.gz")
}

/// The `dkms.conf` to bundle. `dkms ldtarball` loads the bundle under the
/// PACKAGE_NAME and PACKAGE_VERSION the file gives when sourced; when they are not
/// plainly the module's registered name and version (a placeholder such as
/// `#MODULE_VERSION#`, a value computed at evaluation time, another name), two
/// assignments appended at its end say them, as a later assignment in the same
/// file wins. Otherwise the file is bundled byte for byte.
pub fn bundled_conf<'a>(
    conf: &'a [u8],
    declared: &Declared,
    module: &str,
    version: &str,
) -> Cow<'a, [u8]> {
    let plain = !declared.dynamic
        && declared.package_name.as_deref() == Some(module)
        && declared.package_version.as_deref() == Some(version);
    if plain {
        return Cow::Borrowed(conf);
    }
    let mut out = conf.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    // Names and versions are [A-Za-z0-9._+~:-]: nothing to escape inside quotes.
    out.extend_from_slice(
        format!(
            "# kmodforge: the module name and version these binaries were built as\n\
             PACKAGE_NAME=\"{module}\"\nPACKAGE_VERSION=\"{version}\"\n"
        )
        .as_bytes(),
    );
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use kmodforge_api::dkms::scan_declared;

    use super::*;

    type Entry = (String, EntryType, u32, u64, Vec<u8>);

    /// A module file name that makes its path longer than a tar header's name field.
    const LONG: &str = "a_module_with_a_rather_long_name_for_the_header_field.ko";

    fn entries(gz: &[u8]) -> Vec<Entry> {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut tar)
            .expect("gzip");
        let mut archive = tar::Archive::new(tar.as_slice());
        archive
            .entries()
            .expect("tar")
            .map(|e| {
                let mut e = e.expect("entry");
                let h = e.header().clone();
                assert_eq!((h.uid().ok(), h.gid().ok()), (Some(0), Some(0)));
                assert_eq!(h.username().ok().flatten(), Some("root"));
                let path = e.path().expect("path").to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).expect("data");
                let mode = h.mode().expect("mode");
                (path, h.entry_type(), mode, h.mtime().expect("mtime"), data)
            })
            .collect()
    }

    fn bundle(parts: &[KernelPart<'_>]) -> Vec<u8> {
        let mut w = BundleWriter::new();
        let mut out = Vec::new();
        w.begin("kmf-renamed", "1.0", b"PACKAGE_NAME=kmf-renamed\n", 7)
            .expect("begin");
        out.extend(w.take());
        for p in parts {
            w.kernel(p).expect("kernel");
            out.extend(w.take());
        }
        out.extend(w.finish().expect("finish"));
        out
    }

    #[test]
    fn the_layout_is_mktarball_binaries_only() {
        let a = [("base-current.ko", &b"A1"[..]), ("user.ko", b"A2")];
        let b = [("base-current.ko", &b"B1"[..]), (LONG, b"B3")];
        let part = |kernel, mtime, make_log, modules| KernelPart {
            kernel,
            arch: "x86_64",
            mtime,
            make_log,
            modules,
        };
        let parts = [
            part("6.1.0-47-amd64", 100, Some(&b"log a"[..]), &a[..]),
            part("6.1.0-56-amd64", 200, None, &b[..]),
        ];
        let got = entries(&bundle(&parts));
        let dir = |p: &str, t| (format!("./{p}"), EntryType::Directory, 0o755, t, vec![]);
        let file =
            |p: &str, t, d: &[u8]| (format!("./{p}"), EntryType::Regular, 0o644, t, d.to_vec());
        let (k1, k2) = (
            "dkms_main_tree/6.1.0-47-amd64",
            "dkms_main_tree/6.1.0-56-amd64",
        );
        let want: Vec<Entry> = vec![
            dir("", 7),
            dir("dkms_binaries_only/", 7),
            file("dkms_binaries_only/PACKAGE_NAME", 7, b"kmf-renamed\n"),
            file("dkms_binaries_only/PACKAGE_VERSION", 7, b"1.0\n"),
            file(
                "dkms_binaries_only/dkms.conf",
                7,
                b"PACKAGE_NAME=kmf-renamed\n",
            ),
            dir("dkms_main_tree/", 7),
            dir(&format!("{k1}/"), 100),
            dir(&format!("{k1}/x86_64/"), 100),
            dir(&format!("{k1}/x86_64/log/"), 100),
            file(&format!("{k1}/x86_64/log/make.log"), 100, b"log a"),
            dir(&format!("{k1}/x86_64/module/"), 100),
            file(&format!("{k1}/x86_64/module/base-current.ko"), 100, b"A1"),
            file(&format!("{k1}/x86_64/module/user.ko"), 100, b"A2"),
            dir(&format!("{k2}/"), 200),
            dir(&format!("{k2}/x86_64/"), 200),
            dir(&format!("{k2}/x86_64/module/"), 200),
            file(&format!("{k2}/x86_64/module/base-current.ko"), 200, b"B1"),
            file(&format!("{k2}/x86_64/module/{LONG}"), 200, b"B3"),
        ];
        assert!(want[want.len() - 1].0.len() > NAME_FIELD, "a GNU long name");
        assert_eq!(got, want);
        // Deterministic: the same parts give the same bytes.
        assert_eq!(bundle(&parts), bundle(&parts));
    }

    #[test]
    fn names_follow_mktarball() {
        assert_eq!(
            tarball_name(
                "kmf-hello",
                "1.0",
                &[("6.1.0-47-amd64", "x86_64"), ("6.1.0-56-amd64", "x86_64")]
            ),
            "kmf-hello-1.0-kernel6.1.0-47-amd64-x86_64-kernel6.1.0-56-amd64-x86_64.dkms.tar.gz"
        );
        let many: Vec<(&str, &str)> = (0..10).map(|_| ("6.1.0-47-amd64", "x86_64")).collect();
        assert_eq!(tarball_name("m", "1", &many), "m-1-manykernels.dkms.tar.gz");
    }

    #[test]
    fn a_conf_naming_the_module_is_kept_byte_for_byte() {
        let conf = b"PACKAGE_NAME=\"kmf-hello\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=kmf_hello\n";
        let declared = scan_declared(std::str::from_utf8(conf).expect("utf-8"));
        assert!(matches!(
            bundled_conf(conf, &declared, "kmf-hello", "1.0"),
            Cow::Borrowed(c) if c == conf
        ));
    }

    #[test]
    fn a_placeholder_version_is_said_at_the_end() {
        let conf = b"PACKAGE_NAME=\"drv\"\nPACKAGE_VERSION=\"#MODULE_VERSION#\"";
        let declared = scan_declared(std::str::from_utf8(conf).expect("utf-8"));
        let got = bundled_conf(conf, &declared, "drv", "2.1");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("PACKAGE_NAME=\"drv\"\nPACKAGE_VERSION=\"#MODULE_VERSION#\"\n"));
        assert!(
            text.ends_with("PACKAGE_NAME=\"drv\"\nPACKAGE_VERSION=\"2.1\"\n"),
            "{text}"
        );
    }
}
