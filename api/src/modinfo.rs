//! Reading a kernel module's `.modinfo` section, and the vermagic check.
//!
//! A `.ko` is an ELF relocatable whose `.modinfo` section holds NUL-separated
//! `key=value` strings (`license=GPL`, `vermagic=6.1.0-47-amd64 SMP preempt …`,
//! `depends=hid,usbcore`, …). This is what `modinfo` prints, read without running it.
//! Values are decoded as UTF-8 lossily: they are reported, never executed.

use object::{Object, ObjectSection};
use serde::{Deserialize, Serialize};

use crate::names::KernelRelease;

/// The `.modinfo` fields of one module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModInfo {
    /// `name=` (set by kbuild since Linux 5.x).
    pub name: Option<String>,
    /// `vermagic=`, e.g. `6.1.0-47-amd64 SMP preempt mod_unload modversions `.
    pub vermagic: Option<String>,
    /// `version=` (MODULE_VERSION).
    pub version: Option<String>,
    /// `srcversion=`.
    pub srcversion: Option<String>,
    /// `depends=`, split on `,`; empty when absent or empty.
    pub depends: Vec<String>,
    /// `license=`.
    pub license: Option<String>,
    /// Every `key=value` of `.modinfo`, in order (repeated keys such as `alias` included).
    pub fields: Vec<(String, String)>,
}

/// Why `.modinfo` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    /// The bytes are not an ELF file the `object` crate can parse.
    #[error("not an ELF object ({len} bytes): {source}")]
    NotElf {
        /// Input length, for context.
        len: usize,
        /// The parser's error.
        #[source]
        source: object::Error,
    },
    /// The ELF file has no `.modinfo` section, so it is not a kernel module.
    #[error("ELF object has no .modinfo section: not a kernel module")]
    NoModinfo,
    /// The `.modinfo` section's data lies outside the file.
    #[error("cannot read the .modinfo section: {0}")]
    BadSection(#[source] object::Error),
}

/// Reads the `.modinfo` section of an ELF kernel module.
///
/// Empty strings (alignment padding) and strings without `=` are skipped. For the named
/// fields the first occurrence wins.
pub fn parse_modinfo(elf: &[u8]) -> Result<ModInfo, ModinfoError> {
    let file = object::File::parse(elf).map_err(|source| ModinfoError::NotElf {
        len: elf.len(),
        source,
    })?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or(ModinfoError::NoModinfo)?;
    let data = section.data().map_err(ModinfoError::BadSection)?;
    Ok(from_fields(split_fields(data)))
}

/// `key=value` pairs from NUL-separated strings.
fn split_fields(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (key, value) = text.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

fn from_fields(fields: Vec<(String, String)>) -> ModInfo {
    let first = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let depends = first("depends").map(|d| {
        d.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    });
    ModInfo {
        name: first("name"),
        vermagic: first("vermagic"),
        version: first("version"),
        srcversion: first("srcversion"),
        depends: depends.unwrap_or_default(),
        license: first("license"),
        fields,
    }
}

/// Whether a module's vermagic is for `kernel`: equal to the release, or the release
/// followed by a space (a kernel's vermagic is `"<release> SMP preempt mod_unload …"`).
pub fn vermagic_targets(vermagic: &str, kernel: &KernelRelease) -> bool {
    let krel = kernel.as_str();
    vermagic == krel
        || vermagic
            .strip_prefix(krel)
            .is_some_and(|rest| rest.starts_with(' '))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    const MODINFO_C: &str = r#"
#define MI(id, s) static const char id[] __attribute__((section(".modinfo"), used, aligned(1))) = s
MI(a, "license=GPL");
MI(b, "vermagic=6.1.0-47-amd64 SMP preempt mod_unload modversions ");
MI(c, "version=1.2.3");
MI(d, "srcversion=506D03DD5F4C99969E8F871");
MI(e, "depends=hid,usbcore");
MI(f, "alias=usb:v046Dp*");
MI(g, "alias=usb:v046Ep*");
MI(h, "name=fake_mod");
int fake_init(void) { return 0; }
"#;

    /// Compiles `source` with `gcc -c` into a fresh temp dir and returns the object's bytes.
    fn compile(source: &str, tag: &str) -> Vec<u8> {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("kmodforge-modinfo-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let (c, o) = (dir.join("m.c"), dir.join("m.o"));
        std::fs::write(&c, source).expect("write C source");
        let status = Command::new("gcc")
            .arg("-c")
            .arg(&c)
            .arg("-o")
            .arg(&o)
            .status()
            .expect("gcc must be installed for this test");
        assert!(status.success(), "gcc failed");
        let bytes = std::fs::read(&o).expect("read object");
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
        bytes
    }

    #[test]
    fn reads_a_real_elf_object() {
        let info = parse_modinfo(&compile(MODINFO_C, "full")).unwrap();
        assert_eq!(
            info.vermagic.as_deref(),
            Some("6.1.0-47-amd64 SMP preempt mod_unload modversions ")
        );
        assert_eq!(info.version.as_deref(), Some("1.2.3"));
        assert_eq!(info.srcversion.as_deref(), Some("506D03DD5F4C99969E8F871"));
        assert_eq!(info.license.as_deref(), Some("GPL"));
        assert_eq!(info.name.as_deref(), Some("fake_mod"));
        assert_eq!(info.depends, vec!["hid", "usbcore"]);
        let aliases: Vec<_> = info
            .fields
            .iter()
            .filter(|(k, _)| k == "alias")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(aliases, vec!["usb:v046Dp*", "usb:v046Ep*"]);
        assert_eq!(info.fields.len(), 8);
    }

    #[test]
    fn empty_depends_and_missing_fields() {
        let src =
            r#"static const char a[] __attribute__((section(".modinfo"), used)) = "depends=";"#;
        let info = parse_modinfo(&compile(src, "empty")).unwrap();
        assert_eq!(info.depends, Vec::<String>::new());
        assert_eq!(info.version, None);
        assert_eq!(info.fields, vec![("depends".to_owned(), String::new())]);
    }

    #[test]
    fn elf_without_modinfo_is_rejected() {
        let err = parse_modinfo(&compile("int x(void) { return 1; }", "none")).unwrap_err();
        assert!(matches!(err, ModinfoError::NoModinfo), "{err}");
    }

    #[test]
    fn garbage_is_rejected() {
        let inputs: [&[u8]; 4] = [
            b"",
            b"not an elf at all",
            b"\x7fELF\x02\x01\x01",
            &[0xff; 4096],
        ];
        for input in inputs {
            let err = parse_modinfo(input).unwrap_err();
            assert!(matches!(err, ModinfoError::NotElf { .. }), "{err}");
        }
    }

    #[test]
    fn truncated_elf_is_an_error_not_a_panic() {
        let bytes = compile(MODINFO_C, "trunc");
        for len in [16, 64, bytes.len() / 2, bytes.len() - 1] {
            assert!(parse_modinfo(&bytes[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn vermagic_table() {
        let k = KernelRelease::parse("6.1.0-47-amd64").unwrap();
        let cases = [
            ("6.1.0-47-amd64 SMP preempt mod_unload modversions ", true),
            ("6.1.0-47-amd64", true),
            ("6.1.0-47-amd64-rt SMP", false),
            ("6.1.0-4 SMP", false),
            ("6.1.0-56-amd64 SMP preempt mod_unload modversions ", false),
            ("", false),
            (" 6.1.0-47-amd64 SMP", false),
        ];
        for (vermagic, expected) in cases {
            assert_eq!(vermagic_targets(vermagic, &k), expected, "{vermagic:?}");
        }
    }
}
