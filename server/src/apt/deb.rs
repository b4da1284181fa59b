//! Debian binary packages: writing one (`ar` of `debian-binary`,
//! `control.tar.gz`, `data.tar.gz`, the order dpkg requires) and reading the
//! control file of an uploaded one.
//!
//! What is written is deterministic: the same files, control text and time give
//! the same bytes (owners root, fixed modes, the given mtime, gzip without a
//! time stamp), so every replica makes the same package for the same artifact.

use std::io::Read;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::flat_tar::root_header;

/// One file of a package's data, its path relative to `/`.
pub struct DebFile {
    pub path: String,
    pub mode: u32,
    pub data: bytes::Bytes,
}

/// What goes into a package.
pub struct DebSpec {
    /// The `DEBIAN/control` text (without `Installed-Size`, which is computed).
    pub control: String,
    pub files: Vec<DebFile>,
    /// Maintainer scripts: (`postinst`, text), ...
    pub scripts: Vec<(&'static str, String)>,
    /// Modification time of every member and entry (Unix seconds).
    pub mtime: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("writing the package: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Debian package: {0}")]
    NotADeb(String),
}

/// The package's bytes and its `Installed-Size` (KiB) as written into control.
pub fn build(spec: &DebSpec) -> Result<(Vec<u8>, u64), DebError> {
    let installed_kib: u64 = spec
        .files
        .iter()
        .map(|f| (f.data.len() as u64).div_ceil(1024))
        .sum::<u64>()
        .max(1);
    let data = data_tar(spec)?;
    let mut control = spec.control.trim_end().to_string();
    control.push_str(&format!("\nInstalled-Size: {installed_kib}\n"));
    let md5sums: String = spec
        .files
        .iter()
        .map(|f| {
            let digest = openssl::hash::hash(openssl::hash::MessageDigest::md5(), &f.data)
                .map(|d| hex::encode(&*d))
                .unwrap_or_default();
            format!("{digest}  {}\n", f.path.trim_start_matches('/'))
        })
        .collect();
    let mut members: Vec<(&str, u32, Vec<u8>)> = vec![
        ("./control", 0o644, control.into_bytes()),
        ("./md5sums", 0o644, md5sums.into_bytes()),
    ];
    for (name, text) in &spec.scripts {
        members.push((script_path(name), 0o755, text.clone().into_bytes()));
    }
    let control_tar = tar_gz(|b| {
        dir(b, "./", spec.mtime)?;
        for (path, mode, data) in &members {
            file(b, path, *mode, data, spec.mtime)?;
        }
        Ok(())
    })?;
    let mut out = b"!<arch>\n".to_vec();
    ar_member(&mut out, "debian-binary", spec.mtime, b"2.0\n");
    ar_member(&mut out, "control.tar.gz", spec.mtime, &control_tar);
    ar_member(&mut out, "data.tar.gz", spec.mtime, &data);
    Ok((out, installed_kib))
}

/// The tar path of a maintainer script (a fixed set of names).
fn script_path(name: &str) -> &'static str {
    match name {
        "preinst" => "./preinst",
        "prerm" => "./prerm",
        "postrm" => "./postrm",
        _ => "./postinst",
    }
}

fn data_tar(spec: &DebSpec) -> Result<Vec<u8>, DebError> {
    tar_gz(|b| {
        // Every parent directory once, in order, then the files.
        let mut dirs: Vec<String> = vec!["./".into()];
        for f in &spec.files {
            let rel = f.path.trim_start_matches('/');
            let mut acc = String::from("./");
            let parts: Vec<&str> = rel.split('/').collect();
            for p in &parts[..parts.len().saturating_sub(1)] {
                acc.push_str(p);
                acc.push('/');
                if !dirs.contains(&acc) {
                    dirs.push(acc.clone());
                }
            }
        }
        for d in &dirs {
            dir(b, d, spec.mtime)?;
        }
        for f in &spec.files {
            let path = format!("./{}", f.path.trim_start_matches('/'));
            file(b, &path, f.mode, &f.data, spec.mtime)?;
        }
        Ok(())
    })
}

type TarBuilder = tar::Builder<GzEncoder<Vec<u8>>>;

fn tar_gz(fill: impl FnOnce(&mut TarBuilder) -> std::io::Result<()>) -> Result<Vec<u8>, DebError> {
    let gz = GzEncoder::new(Vec::new(), Compression::best());
    let mut b = tar::Builder::new(gz);
    b.mode(tar::HeaderMode::Deterministic);
    fill(&mut b)?;
    Ok(b.into_inner()?.finish()?)
}

fn dir(b: &mut TarBuilder, path: &str, mtime: u64) -> std::io::Result<()> {
    let mut h = root_header(tar::EntryType::Directory, 0o755, 0, mtime)?;
    b.append_data(&mut h, path, std::io::empty())
}

fn file(b: &mut TarBuilder, path: &str, mode: u32, data: &[u8], mtime: u64) -> std::io::Result<()> {
    let mut h = root_header(tar::EntryType::Regular, mode, data.len() as u64, mtime)?;
    b.append_data(&mut h, path, data)
}

/// One `ar` member: a 60-byte header, the data, a newline to an even length.
fn ar_member(out: &mut Vec<u8>, name: &str, mtime: u64, data: &[u8]) {
    let head = format!(
        "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
        name,
        mtime,
        0,
        0,
        "100644",
        data.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(b'\n');
    }
}

/// The members of an `ar` archive: (name, data).
fn ar_members(deb: &[u8]) -> Result<Vec<(String, &[u8])>, DebError> {
    let bad = |why: &str| DebError::NotADeb(why.to_string());
    let mut rest = deb
        .strip_prefix(b"!<arch>\n")
        .ok_or_else(|| bad("it does not start with the ar signature"))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 60 {
            return Err(bad("a truncated ar member header"));
        }
        let (head, tail) = rest.split_at(60);
        if &head[58..60] != b"`\n" {
            return Err(bad("a malformed ar member header"));
        }
        let name = String::from_utf8_lossy(&head[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = std::str::from_utf8(&head[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad("an ar member size that is not a number"))?;
        if size > tail.len() {
            return Err(bad("an ar member longer than the file"));
        }
        out.push((name, &tail[..size]));
        let next = (size + size % 2).min(tail.len());
        rest = &tail[next..];
    }
    Ok(out)
}

/// Limit on a control archive's unpacked control file (dpkg's own are a few KiB).
const CONTROL_MAX: u64 = 1024 * 1024;

/// The `control` file of a `.deb` (control.tar.gz, .xz or uncompressed).
pub fn read_control(deb: &[u8]) -> Result<String, DebError> {
    let members = ar_members(deb)?;
    match members.first() {
        Some((name, data)) if name == "debian-binary" && data.starts_with(b"2.") => {}
        _ => {
            return Err(DebError::NotADeb(
                "its first member is not debian-binary 2.x".into(),
            ))
        }
    }
    let (name, data) = members
        .iter()
        .find(|(n, _)| n.starts_with("control.tar"))
        .ok_or_else(|| DebError::NotADeb("it has no control.tar member".into()))?;
    let tar_bytes: Vec<u8> = match name.as_str() {
        "control.tar" => data.to_vec(),
        "control.tar.gz" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(*data)
                .take(16 * CONTROL_MAX)
                .read_to_end(&mut out)?;
            out
        }
        "control.tar.xz" => {
            let mut out = Vec::new();
            let mut input = std::io::BufReader::new(*data);
            lzma_rs::xz_decompress(&mut input, &mut out)
                .map_err(|e| DebError::NotADeb(format!("control.tar.xz: {e}")))?;
            out
        }
        other => {
            return Err(DebError::NotADeb(format!(
                "{other} is not supported (use gzip or xz)"
            )))
        }
    };
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == "./control" || path == "control" {
            let mut text = String::new();
            entry.by_ref().take(CONTROL_MAX).read_to_string(&mut text)?;
            return Ok(text);
        }
    }
    Err(DebError::NotADeb(
        "its control archive has no control file".into(),
    ))
}

/// Parses a control stanza into (field, value) pairs, continuation lines joined
/// with `\n`.
pub fn parse_stanza(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}
