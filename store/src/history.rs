//! A branch's history: a commit and its ancestors, as far as the repository holds them.

use crate::error::Result;
use crate::id::CommitId;
use crate::object::{Commit, ObjectKind};
use crate::repo::Repo;

/// One step of a history.
#[derive(Debug)]
pub enum Ancestor {
    /// A commit the repository holds.
    Held(CommitId, Box<Commit>),
    /// The first ancestor the repository does not hold (a node keeps only what it pulled); the
    /// history ends here.
    Missing(CommitId),
}

impl Ancestor {
    /// The commit's id.
    pub fn id(&self) -> CommitId {
        match self {
            Ancestor::Held(id, _) | Ancestor::Missing(id) => *id,
        }
    }
}

/// The history of a commit, newest first: the commit, its parent, and so on (see [`ancestry`]).
pub struct Ancestry<'r> {
    repo: &'r Repo,
    next: Option<CommitId>,
}

/// The history of `from`: it, its parent, and so on while the repository holds them.
pub fn ancestry(repo: &Repo, from: CommitId) -> Ancestry<'_> {
    Ancestry { repo, next: Some(from) }
}

impl Iterator for Ancestry<'_> {
    type Item = Result<Ancestor>;

    fn next(&mut self) -> Option<Self::Item> {
        let id = self.next.take()?;
        Some((|| {
            if !self.repo.has(ObjectKind::Commit, &id.0)? {
                return Ok(Ancestor::Missing(id));
            }
            let commit = self.repo.commit_object(&id)?;
            self.next = commit.parent;
            Ok(Ancestor::Held(id, Box::new(commit)))
        })())
    }
}

/// True when `older` is an ancestor of `newer` (its parent, grandparent, …) as far as the
/// repository holds history.
pub fn is_ancestor(repo: &Repo, older: &CommitId, newer: &CommitId) -> Result<bool> {
    for ancestor in ancestry(repo, *newer).skip(1) {
        if ancestor?.id() == *older {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{CommitOptions, commit};
    use crate::repo::RepoMode;

    #[test]
    fn walks_parents_and_stops_where_the_repository_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, path) = (tmp.path().join("src"), tmp.path().join("repo"));
        std::fs::create_dir_all(&src).unwrap();
        let mut repo = Repo::init(&path, RepoMode::Archive, 3, Default::default()).unwrap();
        let mut ids = Vec::new();
        for version in ["1", "2", "3"] {
            std::fs::write(src.join("v"), version).unwrap();
            let options = CommitOptions { version: version.into(), ..CommitOptions::on("main".parse().unwrap()) };
            ids.push(commit(&mut repo, &src, &options, &mut |_| {}).unwrap().id);
        }
        let seen: Vec<CommitId> = ancestry(&repo, ids[2]).map(|a| a.unwrap().id()).collect();
        assert_eq!(seen, [ids[2], ids[1], ids[0]]);
        assert!(is_ancestor(&repo, &ids[0], &ids[2]).unwrap());
        assert!(!is_ancestor(&repo, &ids[2], &ids[0]).unwrap());
        assert!(!is_ancestor(&repo, &ids[2], &ids[2]).unwrap(), "a commit is not its own ancestor");
    }
}
