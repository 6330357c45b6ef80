//! `diff`: the paths added, removed or modified between two commits.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::id::TreeId;
use crate::object::{Commit, Entry, EntryKind};
use crate::repo::Repo;
use crate::tree::walk;

/// How a path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the new tree.
    Added,
    /// Only in the old tree.
    Removed,
    /// In both, different.
    Modified,
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Path relative to the root, without a leading '/', escaped as [`crate::name::escaped`] says.
    pub path: String,
    /// Added, removed or modified.
    pub change: ChangeKind,
    /// For modifications, what differs: "type", "content", "target", "metadata" (comma-joined).
    pub what: String,
}

/// The changes from commit `old` to commit `new`, in path order (identical subtrees are skipped
/// by id); a change of the root
/// directory's own metadata comes first, as the path "".
pub fn diff_commits(repo: &Repo, old: &Commit, new: &Commit) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    if old.root_meta != new.root_meta {
        out.push(Change { path: String::new(), change: ChangeKind::Modified, what: "metadata".into() });
    }
    diff_trees(repo, &old.root, &new.root, Path::new(""), &mut out)?;
    Ok(out)
}

fn path_string(p: &Path) -> String {
    crate::name::escaped_path(p)
}

fn push_all(repo: &Repo, entry: &Entry, path: &Path, change: ChangeKind, out: &mut Vec<Change>) -> Result<()> {
    out.push(Change { path: path_string(path), change, what: String::new() });
    if let EntryKind::Dir(sub) = &entry.kind {
        walk(repo, sub, &mut |rel, _| {
            out.push(Change { path: path_string(&path.join(rel)), change, what: String::new() });
            Ok(())
        })?;
    }
    Ok(())
}

fn diff_trees(repo: &Repo, old: &TreeId, new: &TreeId, prefix: &Path, out: &mut Vec<Change>) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let (a, b) = (repo.tree(old)?, repo.tree(new)?);
    let (mut i, mut j) = (0, 0);
    while i < a.entries.len() || j < b.entries.len() {
        let order = match (a.entries.get(i), b.entries.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                let e = &a.entries[i];
                push_all(repo, e, &prefix.join(OsStr::from_bytes(&e.name)), ChangeKind::Removed, out)?;
                i += 1;
            }
            Ordering::Greater => {
                let e = &b.entries[j];
                push_all(repo, e, &prefix.join(OsStr::from_bytes(&e.name)), ChangeKind::Added, out)?;
                j += 1;
            }
            Ordering::Equal => {
                let (x, y) = (&a.entries[i], &b.entries[j]);
                let path = prefix.join(OsStr::from_bytes(&x.name));
                let mut what = Vec::new();
                match (&x.kind, &y.kind) {
                    (EntryKind::File { file: f1, .. }, EntryKind::File { file: f2, .. }) if f1 != f2 => {
                        what.push("content")
                    }
                    (EntryKind::Symlink(t1), EntryKind::Symlink(t2)) if t1 != t2 => what.push("target"),
                    (EntryKind::CharDevice(d1), EntryKind::CharDevice(d2))
                    | (EntryKind::BlockDevice(d1), EntryKind::BlockDevice(d2))
                        if d1 != d2 =>
                    {
                        what.push("device")
                    }
                    (k1, k2) if std::mem::discriminant(k1) != std::mem::discriminant(k2) => what.push("type"),
                    _ => {}
                }
                if x.meta != y.meta {
                    what.push("metadata");
                }
                if what.contains(&"type") {
                    push_all(repo, x, &path, ChangeKind::Removed, out)?;
                    push_all(repo, y, &path, ChangeKind::Added, out)?;
                } else {
                    if !what.is_empty() {
                        out.push(Change {
                            path: path_string(&path),
                            change: ChangeKind::Modified,
                            what: what.join(","),
                        });
                    }
                    if let (EntryKind::Dir(t1), EntryKind::Dir(t2)) = (&x.kind, &y.kind) {
                        diff_trees(repo, t1, t2, &path, out)?;
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}
