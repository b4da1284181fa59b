//! Small tars the server writes itself (module tars for clients and sandboxes,
//! image build contexts): regular files only, mtime 0, no owners, so equal
//! contents give equal bytes.

/// A tar of `(path, mode, data)` entries, in the given order.
pub fn flat_tar<'a>(
    entries: impl IntoIterator<Item = (&'a str, u32, &'a [u8])>,
) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        builder.append_data(&mut header, path, data)?;
    }
    builder.into_inner()
}

/// A header of an entry owned by root (uid and gid 0, names `root`), for the
/// deterministic archives the server hands out (Debian packages, DKMS bundles).
pub fn root_header(
    kind: tar::EntryType,
    mode: u32,
    size: u64,
    mtime: u64,
) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("root")?;
    h.set_groupname("root")?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    #[test]
    fn entries_come_back_in_order_with_their_modes() -> std::io::Result<()> {
        let tar = super::flat_tar([("a.ko", 0o644, &b"x"[..]), ("run.sh", 0o755, &b"#!"[..])])?;
        let mut archive = tar::Archive::new(tar.as_slice());
        let got: Vec<(String, u32, u64)> = archive
            .entries()?
            .map(|e| {
                let e = e?;
                let path = e.path()?.to_string_lossy().into_owned();
                Ok((path, e.header().mode()?, e.header().mtime()?))
            })
            .collect::<std::io::Result<_>>()?;
        assert_eq!(
            got,
            [("a.ko".into(), 0o644, 0), ("run.sh".into(), 0o755, 0)]
        );
        Ok(())
    }
}
