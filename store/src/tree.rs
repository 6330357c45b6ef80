//! Walking and looking up paths in committed trees.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::id::{CommitId, TreeId};
use crate::name::escaped;
use crate::object::{Commit, Entry, EntryKind, Meta, ObjectKind};
use crate::repo::Repo;

/// Splits a user-given path ("/usr/bin", "usr/bin/", "" or "/") into components.
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect()
}

/// The metadata and kind of `path` (bytes: names need not be UTF-8) in a commit; the root is
/// reported as a directory.
pub fn lookup(repo: &Repo, commit_id: &CommitId, commit: &Commit, path: impl AsRef<[u8]>) -> Result<(Meta, EntryKind)> {
    let path = path.as_ref();
    let mut meta = commit.root_meta.clone();
    let mut kind = EntryKind::Dir(commit.root);
    let parts = components(path);
    for (i, part) in parts.iter().enumerate() {
        let EntryKind::Dir(tree_id) = kind else {
            return Err(StoreError::PathNotFound { commit: commit_id.0, path: escaped(&parts[..i].join(&b'/')) });
        };
        let tree = repo.tree(&tree_id)?;
        let entry =
            tree.get(part).ok_or_else(|| StoreError::PathNotFound { commit: commit_id.0, path: escaped(path) })?;
        meta = entry.meta.clone();
        kind = entry.kind.clone();
    }
    Ok((meta, kind))
}

/// Writes the content of the regular file at `path` in a commit to `out`, chunk by chunk; returns
/// its size.
pub fn write_file(
    repo: &Repo,
    commit_id: &CommitId,
    commit: &Commit,
    path: impl AsRef<[u8]>,
    out: &mut impl std::io::Write,
) -> Result<u64> {
    let (_, kind) = lookup(repo, commit_id, commit, path.as_ref())?;
    let EntryKind::File { file, .. } = kind else {
        return Err(StoreError::WrongType {
            commit: commit_id.0,
            path: escaped(path.as_ref()),
            found: kind.type_name(),
            expected: "file",
        });
    };
    let object = repo.file_object(&file)?;
    for (chunk, _) in &object.chunks {
        let bytes = repo.read(ObjectKind::Chunk, &chunk.0)?;
        out.write_all(&bytes).map_err(|error| StoreError::Io { path: PathBuf::from("(output)"), error })?;
    }
    Ok(object.size)
}

/// Calls `visit` for every entry below `tree`, parents before children, in name order, with the
/// entry's path relative to the tree.
pub fn walk(repo: &Repo, tree: &TreeId, visit: &mut dyn FnMut(&Path, &Entry) -> Result<()>) -> Result<()> {
    fn inner(
        repo: &Repo,
        tree: &TreeId,
        prefix: &Path,
        visit: &mut dyn FnMut(&Path, &Entry) -> Result<()>,
    ) -> Result<()> {
        for entry in repo.tree(tree)?.entries {
            let path: PathBuf = prefix.join(OsStr::from_bytes(&entry.name));
            visit(&path, &entry)?;
            if let EntryKind::Dir(sub) = &entry.kind {
                inner(repo, sub, &path, visit)?;
            }
        }
        Ok(())
    }
    inner(repo, tree, Path::new(""), visit)
}
