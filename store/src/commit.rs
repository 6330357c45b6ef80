//! `commit`: a source directory → chunks, file, dirtree and commit objects → a branch.
//!
//! Write order is the crash-safety contract: every object of the commit is made durable and
//! published (packs, or content + index) before the branch ref is moved, and the ref is
//! replaced atomically. A crash at any instant leaves, at worst, unreferenced objects, which the
//! rerun reuses and prune removes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::chunker::Chunker;
use crate::error::{Result, StoreError};
use crate::fsutil::crash_point;
use crate::id::{CommitId, FileId, TreeId};
use crate::name::RefName;
use crate::object::{Commit, DirTree, Entry, EntryKind, ObjectKind, TreeStats};
use crate::repo::Repo;
use crate::scan::{ScanDir, ScanKind, ScanTotals, scan};
use crate::write::{ObjectWriter, WriteStats};

/// What the commit records besides the tree.
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// Branch to commit on; its current commit becomes the parent.
    pub branch: RefName,
    /// Version string (e.g. "2026.11.1").
    pub version: String,
    /// One-line subject.
    pub subject: String,
    /// Longer description.
    pub body: String,
    /// Free metadata.
    pub metadata: BTreeMap<String, String>,
    /// Timestamp; the current time when `None`.
    pub timestamp: Option<i64>,
}

impl CommitOptions {
    /// A commit on `branch` with an empty version, subject, body and metadata, at the current time.
    pub fn on(branch: RefName) -> CommitOptions {
        CommitOptions {
            branch,
            version: String::new(),
            subject: String::new(),
            body: String::new(),
            metadata: BTreeMap::new(),
            timestamp: None,
        }
    }
}

/// Progress of a running commit, reported after every file.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitProgress {
    /// Distinct files read so far.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Totals of the whole tree (known once the scan is done).
    pub totals: ScanTotals,
    /// Storage counters so far.
    pub write: WriteStats,
}

/// The result of a commit.
#[derive(Clone, Debug)]
pub struct CommitOutcome {
    /// The new commit's id.
    pub id: CommitId,
    /// The commit object.
    pub commit: Commit,
    /// What was stored and what was deduplicated.
    pub stats: WriteStats,
}

struct Builder<'w, 'r> {
    writer: &'w mut ObjectWriter<'r>,
    chunker: Chunker,
    links: HashMap<(u64, u64), u32>,
    groups: HashMap<(u64, u64), (u32, FileId)>,
    next_group: u32,
    stats: TreeStats,
    progress: CommitProgress,
    report: &'w mut dyn FnMut(&CommitProgress),
}

impl Builder<'_, '_> {
    fn store_dir(&mut self, dir: &ScanDir) -> Result<TreeId> {
        self.stats.dirs += 1;
        let mut entries = Vec::with_capacity(dir.entries.len());
        for e in &dir.entries {
            let kind = match &e.kind {
                ScanKind::File { path, size, inode } => {
                    self.stats.files += 1;
                    let shared = inode.filter(|key| self.links.get(key).is_some_and(|&n| n > 1));
                    match shared.and_then(|key| self.groups.get(&key)) {
                        Some(&(hardlink, file)) => EntryKind::File { file, hardlink },
                        None => {
                            let (file, _) = self.writer.add_file(path, &self.chunker)?;
                            self.stats.bytes += size;
                            self.progress.files += 1;
                            self.progress.bytes += size;
                            self.progress.write = self.writer.stats();
                            (self.report)(&self.progress);
                            let hardlink = match shared {
                                Some(key) => {
                                    self.next_group += 1;
                                    self.groups.insert(key, (self.next_group, file));
                                    self.next_group
                                }
                                None => 0,
                            };
                            EntryKind::File { file, hardlink }
                        }
                    }
                }
                ScanKind::Dir(sub) => EntryKind::Dir(self.store_dir(sub)?),
                ScanKind::Symlink(target) => {
                    self.stats.symlinks += 1;
                    EntryKind::Symlink(target.clone())
                }
                ScanKind::CharDevice(rdev) => {
                    self.stats.specials += 1;
                    EntryKind::CharDevice(*rdev)
                }
                ScanKind::BlockDevice(rdev) => {
                    self.stats.specials += 1;
                    EntryKind::BlockDevice(*rdev)
                }
                ScanKind::Fifo => {
                    self.stats.specials += 1;
                    EntryKind::Fifo
                }
                ScanKind::Socket => {
                    self.stats.specials += 1;
                    EntryKind::Socket
                }
            };
            entries.push(Entry { name: e.name.clone(), meta: e.meta.clone(), kind });
        }
        let tree = DirTree { entries };
        Ok(TreeId(self.writer.add_metadata(ObjectKind::DirTree, &tree.encode())?))
    }
}

/// Commits the tree at `source` on `options.branch`. `report` is called after every file.
pub fn commit(
    repo: &mut Repo,
    source: &Path,
    options: &CommitOptions,
    report: &mut dyn FnMut(&CommitProgress),
) -> Result<CommitOutcome> {
    let parent = repo.read_ref(&options.branch)?;
    let mut totals = ScanTotals::default();
    let mut links = HashMap::new();
    let root = scan(source, &mut totals, &mut links)?;
    let chunker = Chunker::new(repo.config().chunker);
    let ((id, commit), stats) = repo.transaction(|writer, _| {
        let mut builder = Builder {
            writer: &mut *writer,
            chunker,
            links,
            groups: HashMap::new(),
            next_group: 0,
            stats: TreeStats::default(),
            progress: CommitProgress { totals, ..Default::default() },
            report,
        };
        let root_tree = builder.store_dir(&root)?;
        let commit = Commit {
            root: root_tree,
            root_meta: root.meta.clone(),
            parent,
            timestamp: options.timestamp.unwrap_or_else(now),
            version: options.version.clone(),
            subject: options.subject.clone(),
            body: options.body.clone(),
            metadata: options.metadata.clone(),
            stats: builder.stats,
        };
        let id = CommitId(writer.add_metadata(ObjectKind::Commit, &commit.encode())?);
        crash_point("commit:before-finish");
        Ok::<_, StoreError>((id, commit))
    })?;
    crash_point("commit:before-ref");
    repo.write_ref(&options.branch, &id)?;
    Ok(CommitOutcome { id, commit, stats })
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;
    use crate::chunker::tests::pseudo_random;
    use crate::object::FileObject;
    use crate::repo::RepoMode;

    #[test]
    fn archive_packs_hold_chunks_in_tree_order_and_metadata_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("b")).unwrap();
        std::fs::write(src.join("a"), pseudo_random(700_000, 10)).unwrap();
        std::fs::write(src.join("b/c"), pseudo_random(500_000, 20)).unwrap();
        std::fs::write(src.join("d"), pseudo_random(300_000, 30)).unwrap();
        let mut repo = Repo::init(&tmp.path().join("repo"), RepoMode::Archive, 3, ChunkerParams::default()).unwrap();
        let options = CommitOptions::on("main".parse().unwrap());
        let outcome = commit(&mut repo, &src, &options, &mut |_| {}).unwrap();
        let archive = repo.archive().unwrap();
        let root = repo.tree(&outcome.commit.root).unwrap();
        // walk order: a, b/c, d
        let mut files: Vec<FileObject> = Vec::new();
        for name in ["a", "d"] {
            let EntryKind::File { file, .. } = root.get(name.as_bytes()).unwrap().kind else { panic!() };
            files.push(repo.file_object(&file).unwrap());
        }
        let EntryKind::Dir(b) = root.get(b"b").unwrap().kind else { panic!() };
        let EntryKind::File { file: c, .. } = repo.tree(&b).unwrap().entries[0].kind else { panic!() };
        files.insert(1, repo.file_object(&c).unwrap());
        let mut last_offset = 0u64;
        let mut data_pack = None;
        for (chunk, _) in files.iter().flat_map(|f| f.chunks.iter()) {
            let (pack, entry) = archive.locate(ObjectKind::Chunk, &chunk.0).unwrap();
            let pack_id = *data_pack.get_or_insert(pack.id);
            assert_eq!(pack.id, pack_id, "one release's chunks share a data pack");
            assert!(entry.offset > last_offset, "chunk {chunk} at {} is not after {last_offset}", entry.offset);
            last_offset = entry.offset;
        }
        for (kind, id) in [(ObjectKind::Commit, outcome.id.0), (ObjectKind::DirTree, outcome.commit.root.0)] {
            let (pack, _) = archive.locate(kind, &id).unwrap();
            assert_ne!(Some(pack.id), data_pack, "{kind} objects live in the metadata pack");
        }
    }
}
