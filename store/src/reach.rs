//! The set of objects reachable from the refs: what fsck checks for presence and prune keeps.

use std::collections::HashSet;

use crate::error::{Result, StoreError};
use crate::id::{CommitId, ObjectId};
use crate::object::{EntryKind, ObjectKind};
use crate::repo::Repo;

/// Reachable objects, and problems met while walking (missing or corrupt objects).
#[derive(Default)]
pub struct Reachable {
    /// Every reachable object that was found.
    pub objects: HashSet<(ObjectId, ObjectKind)>,
    /// Commits whose parent is absent (history cut short, e.g. by a shallow pull).
    pub missing_parents: Vec<CommitId>,
    /// Missing or corrupt objects.
    pub errors: Vec<String>,
}

/// Walks every commit reachable from `roots` (and their parents), every tree, file and chunk.
pub fn reachable(repo: &Repo, roots: &[CommitId]) -> Result<Reachable> {
    let mut r = Reachable::default();
    let mut commits: Vec<CommitId> = roots.to_vec();
    let mut trees = Vec::new();
    while let Some(id) = commits.pop() {
        if !r.objects.insert((id.0, ObjectKind::Commit)) {
            continue;
        }
        match repo.commit_object(&id) {
            Ok(c) => {
                trees.push(c.root);
                if let Some(p) = c.parent {
                    if repo.has(ObjectKind::Commit, &p.0)? {
                        commits.push(p);
                    } else {
                        r.missing_parents.push(id);
                    }
                }
            }
            Err(e) => note(&mut r, e)?,
        }
    }
    while let Some(tree_id) = trees.pop() {
        if !r.objects.insert((tree_id.0, ObjectKind::DirTree)) {
            continue;
        }
        let tree = match repo.tree(&tree_id) {
            Ok(t) => t,
            Err(e) => {
                note(&mut r, e)?;
                continue;
            }
        };
        for entry in tree.entries {
            match entry.kind {
                EntryKind::Dir(sub) => trees.push(sub),
                EntryKind::File { file, .. } => {
                    if !r.objects.insert((file.0, ObjectKind::File)) {
                        continue;
                    }
                    match repo.file_object(&file) {
                        Ok(object) => {
                            for (chunk, _) in object.chunks {
                                if r.objects.insert((chunk.0, ObjectKind::Chunk))
                                    && !repo.has(ObjectKind::Chunk, &chunk.0)?
                                {
                                    r.errors.push(format!("chunk object {chunk} of file object {file} is missing"));
                                }
                            }
                        }
                        Err(e) => note(&mut r, e)?,
                    }
                }
                _ => {}
            }
        }
    }
    Ok(r)
}

/// Records object-level problems; passes I/O and index failures up.
fn note(r: &mut Reachable, e: StoreError) -> Result<()> {
    match e {
        StoreError::ObjectMissing { .. }
        | StoreError::HashMismatch { .. }
        | StoreError::Corrupt { .. }
        | StoreError::TooLarge { .. }
        | StoreError::UnsupportedVersion { .. } => {
            r.errors.push(e.to_string());
            Ok(())
        }
        other => Err(other),
    }
}
