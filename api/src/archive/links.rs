//! Proving that every symlink of the final tree stays inside it; the ones that
//! do not are dropped (and reported), never extracted.
//!
//! A link stays when both checks pass:
//! - lexical: the target, read from the link's directory with `..` popping one
//!   component, never climbs above the root;
//! - resolved: the target walked like the kernel would once the tree is extracted,
//!   following the symlinks it meets (`d/up/..` with `d/up -> ..` climbs from the
//!   root, which the lexical reading misses). Components missing from the tree are
//!   taken as directories a build could create later, so their `..` pops lexically.
//!
//! Each symlink is resolved once and memoized, so the cost is linear in the size
//! of the link targets whatever the nesting.

use std::collections::HashMap;

use super::tree::{Node, Tree};
use super::ArchiveError;

/// Nested symlinks followed while resolving one target; Linux gives up at 40 too.
const MAX_LINK_DEPTH: u32 = 40;

/// Whether `target`, read from the directory of the link at `link_path`, climbs
/// above the tree root (or is absolute), without following any link.
pub(super) fn escapes_lexically(link_path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true;
    }
    let mut depth = link_path.matches('/').count();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if depth == 0 => return true,
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

/// A symlink taken out of the tree because it points outside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedLink {
    pub path: String,
    pub target: String,
}

/// Removes every symlink that leads outside the tree (absolute, climbing above the
/// root, or doing so through other links) and returns them. Such links are common
/// in real packages (Debian's `README.gz -> ../../share/doc/...` dangles once the
/// tree is copied anywhere); dropping them keeps the tree safe without refusing it.
/// Removing a link can change where others lead, so this runs to a fixed point.
/// A cycle or a chain deeper than the kernel follows is still an error.
pub(super) fn drop_escaping(tree: &mut Tree) -> Result<Vec<DroppedLink>, ArchiveError> {
    let mut dropped = Vec::new();
    loop {
        let escaping = escaping_links(tree)?;
        if escaping.is_empty() {
            dropped.sort_by(|a: &DroppedLink, b| a.path.cmp(&b.path));
            return Ok(dropped);
        }
        for path in escaping {
            if let Some(Node::Symlink { target }) = tree.remove(&path) {
                dropped.push(DroppedLink { path, target });
            }
        }
    }
}

/// The paths of the symlinks of `tree` (parent directories all explicit) that escape.
fn escaping_links(tree: &Tree) -> Result<Vec<String>, ArchiveError> {
    let mut resolver = Resolver::new(tree);
    let mut escaping = Vec::new();
    for (id, (path, node)) in tree.iter().enumerate() {
        let Node::Symlink { target } = node else {
            continue;
        };
        if escapes_lexically(path, target) {
            escaping.push(path.clone());
            continue;
        }
        match resolver.resolve(id + 1, 0) {
            Ok(_) => {}
            Err(Failure::Escapes) => escaping.push(path.clone()),
            Err(Failure::TooDeep) => {
                return Err(ArchiveError::LinkLoop {
                    path: path.clone(),
                    target: target.clone(),
                    limit: MAX_LINK_DEPTH,
                })
            }
        }
    }
    Ok(escaping)
}

/// Node 0 is the root; tree entry `i` (in order) is node `i + 1`.
const ROOT: usize = 0;

/// A place during resolution: an existing node, plus how many not-existing
/// components were walked below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    node: usize,
    missing: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Escapes,
    TooDeep,
}

#[derive(Debug, Clone, Copy)]
enum Memo {
    Unvisited,
    InProgress,
    Done(Place),
}

struct Resolver<'t> {
    /// Parent of each node (the root is its own parent, never used).
    parents: Vec<usize>,
    /// Target of each node that is a symlink.
    targets: Vec<Option<&'t str>>,
    children: HashMap<(usize, &'t str), usize>,
    memo: Vec<Memo>,
}

impl<'t> Resolver<'t> {
    fn new(tree: &'t Tree) -> Self {
        let ids: HashMap<&str, usize> = tree
            .keys()
            .enumerate()
            .map(|(i, path)| (path.as_str(), i + 1))
            .collect();
        let mut resolver = Resolver {
            parents: vec![ROOT],
            targets: vec![None],
            children: HashMap::with_capacity(tree.len()),
            memo: vec![Memo::Unvisited; tree.len() + 1],
        };
        for (i, (path, node)) in tree.iter().enumerate() {
            // Every parent has an entry (`tree::add_parents` ran), so the root
            // fallback is never taken.
            let (parent, name) = match path.rsplit_once('/') {
                Some((parent, name)) => (ids.get(parent).copied().unwrap_or(ROOT), name),
                None => (ROOT, path.as_str()),
            };
            resolver.parents.push(parent);
            resolver.targets.push(match node {
                Node::Symlink { target } => Some(target.as_str()),
                _ => None,
            });
            resolver.children.insert((parent, name), i + 1);
        }
        resolver
    }

    /// Where the symlink `node` leads, walking its target from its directory.
    fn resolve(&mut self, node: usize, depth: u32) -> Result<Place, Failure> {
        match self.memo[node] {
            Memo::Done(place) => return Ok(place),
            Memo::InProgress => return Err(Failure::TooDeep),
            Memo::Unvisited if depth >= MAX_LINK_DEPTH => return Err(Failure::TooDeep),
            Memo::Unvisited => {}
        }
        let target = self.targets[node].unwrap_or(".");
        if target.starts_with('/') {
            return Err(Failure::Escapes);
        }
        self.memo[node] = Memo::InProgress;
        let mut place = Place {
            node: self.parents[node],
            missing: 0,
        };
        for component in target.split('/') {
            place = match component {
                "" | "." => place,
                ".." => self.up(place)?,
                name => self.down(place, name, depth)?,
            };
        }
        self.memo[node] = Memo::Done(place);
        Ok(place)
    }

    fn up(&self, place: Place) -> Result<Place, Failure> {
        match place {
            Place { missing: 1.., .. } => Ok(Place {
                missing: place.missing - 1,
                ..place
            }),
            Place { node: ROOT, .. } => Err(Failure::Escapes),
            Place { node, .. } => Ok(Place {
                node: self.parents[node],
                missing: 0,
            }),
        }
    }

    fn down(&mut self, place: Place, name: &str, depth: u32) -> Result<Place, Failure> {
        if place.missing > 0 {
            return Ok(Place {
                missing: place.missing + 1,
                ..place
            });
        }
        match self.children.get(&(place.node, name)).copied() {
            None => Ok(Place {
                missing: 1,
                ..place
            }),
            Some(child) if self.targets[child].is_some() => self.resolve(child, depth + 1),
            Some(child) => Ok(Place {
                node: child,
                missing: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Links<'a> = &'a [(&'a str, &'a str)];

    fn tree(links: Links<'_>, dirs: &[&str]) -> Tree {
        let mut tree = Tree::new();
        for dir in dirs {
            tree.insert((*dir).to_owned(), Node::Dir);
        }
        for (path, target) in links {
            tree.insert(
                (*path).to_owned(),
                Node::Symlink {
                    target: (*target).to_owned(),
                },
            );
        }
        tree
    }

    #[test]
    fn lexical_escapes() {
        let cases = [
            ("a", "b", false),
            ("a", "..", true),
            ("d/a", "..", false),
            ("d/a", "../..", true),
            ("d/a", "x/../../y", false),
            ("d/a", "x/../../../y", true),
            ("a", "./.", false),
            ("a", "/etc", true),
        ];
        for (path, target, escapes) in cases {
            assert_eq!(
                escapes_lexically(path, target),
                escapes,
                "{path} -> {target}"
            );
        }
    }

    #[test]
    fn resolution_through_links() {
        // (symlinks, directories, whether the tree passes)
        let cases: [(Links, &[&str], bool); 7] = [
            // d/up -> .. is the root, so d/up/.. is above it.
            (&[("d/up", ".."), ("x", "d/up/..")], &["d"], false),
            (&[("d/up", ".."), ("x", "d/up/d")], &["d"], true),
            // dot -> . keeps the root, its .. escapes, seen only when followed.
            (
                &[("d/up", ".."), ("dot", "."), ("d/x", "up/dot/..")],
                &["d"],
                false,
            ),
            (&[("a", "b"), ("b", "a")], &[], false),
            (&[("abs", "/usr/src"), ("x", "abs/y")], &[], false),
            (&[("a", "missing/deep/../.."), ("b", "c")], &[], true),
            (
                &[("deep", "a/b/c"), ("x", "deep/..")],
                &["a", "a/b", "a/b/c"],
                true,
            ),
        ];
        for (links, dirs, ok) in cases {
            let mut t = tree(links, dirs);
            let kept = matches!(drop_escaping(&mut t), Ok(d) if d.is_empty());
            assert_eq!(kept, ok, "{links:?}");
        }
    }
}
