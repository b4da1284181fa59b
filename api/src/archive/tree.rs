//! The in-memory source tree and the steps from "entries read" to "normalized tree":
//! find `dkms.conf`, strip the top-level folder, make every parent directory explicit.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::ArchiveError;

/// One entry of the tree. Hard links are already copies; modes are reduced to the
/// exec bit; owners and times are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Node {
    Dir,
    File { exec: bool, data: Vec<u8> },
    Symlink { target: String },
}

/// Entries by normalized path (`a/b`, no leading `./`, no trailing `/`). A `String`
/// key orders by bytes, which is the canonical order, and puts parents first.
pub(super) type Tree = BTreeMap<String, Node>;

/// The file DKMS reads; its folder is the source root.
pub(super) const DKMS_CONF: &str = "dkms.conf";

/// The top-level folder to strip, if `dkms.conf` is not at the root but inside the
/// single top-level entry, which is a directory (like `/usr/src/<name>-<version>/`).
pub(super) fn locate_root(tree: &Tree) -> Result<Option<String>, ArchiveError> {
    if tree.is_empty() {
        return Err(ArchiveError::Empty);
    }
    if let Some(Node::File { .. }) = tree.get(DKMS_CONF) {
        return Ok(None);
    }
    let top: HashSet<&str> = tree.keys().map(|path| first_component(path)).collect();
    let single = match top.iter().next() {
        Some(name) if top.len() == 1 => *name,
        _ => {
            return Err(ArchiveError::NoDkmsConf {
                top_level: top.len(),
            })
        }
    };
    let is_dir = matches!(tree.get(single), None | Some(Node::Dir));
    match tree.get(&format!("{single}/{DKMS_CONF}")) {
        Some(Node::File { .. }) if is_dir => Ok(Some(single.to_owned())),
        _ => Err(ArchiveError::NoDkmsConf { top_level: 1 }),
    }
}

/// Re-roots the tree at `prefix`, which [`locate_root`] found to hold every entry.
pub(super) fn strip(tree: Tree, prefix: &str) -> Tree {
    tree.into_iter()
        .filter_map(|(path, node)| {
            let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
            Some((rest.to_owned(), node))
        })
        .collect()
}

/// Adds a directory entry for every parent that has none, and rejects entries that
/// lie below a file or symlink (extracting them would write through the link).
///
/// The tree, implicit directories included, must stay within `max_entries`: this
/// bounds the directories a few deep paths could otherwise create.
pub(super) fn add_parents(tree: &mut Tree, max_entries: u64) -> Result<(), ArchiveError> {
    let index: HashMap<&str, &Node> = tree
        .iter()
        .map(|(path, node)| (path.as_str(), node))
        .collect();
    let mut missing: HashSet<&str> = HashSet::new();
    for path in tree.keys() {
        let mut current = path.as_str();
        // Walk up until a known directory: its own parents are (or were) walked too.
        while let Some((parent, _)) = current.rsplit_once('/') {
            match index.get(parent) {
                Some(Node::Dir) => break,
                Some(_) => {
                    return Err(ArchiveError::PathConflict {
                        path: path.clone(),
                        parent: parent.to_owned(),
                    })
                }
                None if !missing.insert(parent) => break,
                None if (index.len() + missing.len()) as u64 > max_entries => {
                    return Err(ArchiveError::TooManyEntries {
                        path: parent.to_owned(),
                        limit: max_entries,
                    })
                }
                None => current = parent,
            }
        }
    }
    let missing: Vec<String> = missing.into_iter().map(str::to_owned).collect();
    drop(index);
    tree.extend(missing.into_iter().map(|path| (path, Node::Dir)));
    Ok(())
}

fn first_component(path: &str) -> &str {
    path.split_once('/').map_or(path, |(first, _)| first)
}
