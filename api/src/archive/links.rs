//! Proving that every symlink of the final tree stays inside it.
//!
//! Two checks, both must pass:
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
/// above the tree root, without following any link.
pub(super) fn escapes_lexically(link_path: &str, target: &str) -> bool {
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

/// Checks every symlink of a tree whose parent directories are all explicit.
pub(super) fn check(tree: &Tree) -> Result<(), ArchiveError> {
    let mut resolver = Resolver::new(tree);
    for (id, (path, node)) in tree.iter().enumerate() {
        let Node::Symlink { target } = node else {
            continue;
        };
        let escape = || ArchiveError::LinkEscapes {
            path: path.clone(),
            target: target.clone(),
            link: "symlink",
        };
        if escapes_lexically(path, target) {
            return Err(escape());
        }
        match resolver.resolve(id + 1, 0) {
            Ok(_) => {}
            Err(Failure::Escapes) => return Err(escape()),
            Err(Failure::TooDeep) => {
                return Err(ArchiveError::LinkLoop {
                    path: path.clone(),
                    target: target.clone(),
                    limit: MAX_LINK_DEPTH,
                })
            }
        }
    }
    Ok(())
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
        let cases: [(Links, &[&str], bool); 6] = [
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
            (&[("a", "missing/deep/../.."), ("b", "c")], &[], true),
            (
                &[("deep", "a/b/c"), ("x", "deep/..")],
                &["a", "a/b", "a/b/c"],
                true,
            ),
        ];
        for (links, dirs, ok) in cases {
            assert_eq!(check(&tree(links, dirs)).is_ok(), ok, "{links:?}");
        }
    }
}
