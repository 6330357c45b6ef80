//! A repository on disk: layout, config, locks, refs, object access in either mode.
//!
//! ```text
//! REPO/config            JSON: format version, mode, compression level, chunker parameters
//! REPO/refs/heads/B      a branch: the commit id as 64 hex digits and a newline
//! REPO/tmp/              transaction scratch space, emptied when a writer opens the repo
//! REPO/lock, gc.lock     flock(2) files: writers exclusive on lock; prune exclusive on gc.lock
//! REPO/packs/            archive mode: <id>.pack + <id>.idx
//! REPO/summary           archive mode: refs and packs for clients (JSON)
//! REPO/objects/, REPO/index.sqlite   bare mode: whole-file content + index
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::archive::ArchiveStore;
use crate::archive::ArchiveWriter;
use crate::bare::BareWriter;
use crate::bare::{BareStore, IndexAccess};
use crate::chunker::ChunkerParams;
use crate::delta::published::PublishedDeltas;
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::{FlockGuard, atomic_write, clear_dir_at, fsync_dir};
use crate::id::{CommitId, FileId, ObjectId, TreeId};
use crate::layout;
use crate::name::RefName;
use crate::object::{Commit, DirTree, FileObject, ObjectKind};
use crate::pack::FinishedPack;
use crate::summary::{SUMMARY_FORMAT_VERSION, Summary, SummaryPack, SummaryRef};
use crate::write::{ObjectWriter, WriteStats};

/// The repository format version this build reads and writes.
pub const REPO_FORMAT_VERSION: u32 = 1;
/// The default zstd level of archive repositories; see docs/benchmarks.md ("compression level").
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// How a repository stores objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum RepoMode {
    /// Compressed packs, for origins and mirrors (what is served over HTTP).
    Archive,
    /// Whole uncompressed files for reflink checkout, plus the SQLite index (nodes).
    Bare,
}

impl RepoMode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoMode::Archive => "archive",
            RepoMode::Bare => "bare",
        }
    }
}

/// The contents of `REPO/config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Repository format version.
    pub format_version: u32,
    /// Storage mode.
    pub mode: RepoMode,
    /// zstd level for new objects (archive mode).
    pub compression_level: i32,
    /// Chunker parameters for new files.
    pub chunker: ChunkerParams,
}

/// How a command uses the repository, which decides the locks it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads only; fails only while a prune runs.
    Read,
    /// Adds objects and moves refs; one writer at a time.
    Write,
    /// Deletes objects; excludes readers and writers.
    Prune,
}

enum Store {
    Archive(ArchiveStore),
    Bare(BareStore),
}

/// A repository's object store, by mode: match on it instead of asking for one mode and
/// assuming it.
pub enum Objects<'r> {
    /// Packs (origins, mirrors).
    Archive(&'r ArchiveStore),
    /// Whole-file content and the SQLite index (nodes).
    Bare(&'r BareStore),
}

/// An open repository.
pub struct Repo {
    path: PathBuf,
    config: RepoConfig,
    store: Store,
    _locks: Vec<FlockGuard>,
}

fn lock(path: &Path, op: FlockOperation) -> Result<FlockGuard> {
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).at(path)?;
    take(path, file, op)
}

/// A reader's shared hold on `gc.lock`, which needs only read access to the file (flock(2) does not
/// need write access): readers work on a read-only mount and for users who may not write the
/// repository. When the file cannot be read (a repository whose owner keeps it private), the reader
/// goes on without the lock: a prune running meanwhile makes its reads fail by name, and every
/// object it reads is still verified, so it can never report wrong content.
fn reader_lock(path: &Path) -> Result<Option<FlockGuard>> {
    match fs::File::open(path) {
        Ok(file) => take(path, file, FlockOperation::NonBlockingLockShared).map(Some),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied) => {
            tracing::debug!("{}: {e}; reading without the prune lock", path.display());
            Ok(None)
        }
        Err(e) => Err(e).at(path),
    }
}

fn take(path: &Path, file: fs::File, op: FlockOperation) -> Result<FlockGuard> {
    match FlockGuard::lock(file, op) {
        Ok(guard) => Ok(guard),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::Locked { path: path.into() }),
        Err(e) => Err(e).at(path),
    }
}

impl Repo {
    /// Creates a repository at `path` (a new or empty directory).
    pub fn init(path: &Path, mode: RepoMode, compression_level: i32, chunker: ChunkerParams) -> Result<Repo> {
        chunker.validate().map_err(|reason| StoreError::NotARepository { path: path.into(), reason })?;
        if !(1..=22).contains(&compression_level) {
            return Err(StoreError::NotARepository {
                path: path.into(),
                reason: format!("compression level {compression_level} is outside zstd's 1..=22"),
            });
        }
        fs::create_dir_all(path).at(path)?;
        if fs::read_dir(path).at(path)?.next().is_some() {
            return Err(StoreError::NotARepository {
                path: path.into(),
                reason: "the directory is not empty; init needs a new or empty directory".into(),
            });
        }
        for dir in [layout::HEADS, layout::TMP] {
            fs::create_dir_all(path.join(dir)).at(path.join(dir))?;
        }
        match mode {
            RepoMode::Archive => fs::create_dir_all(path.join(layout::PACKS)).at(path.join(layout::PACKS))?,
            RepoMode::Bare => drop(BareStore::open(path, IndexAccess::Create)?),
        }
        let config = RepoConfig { format_version: REPO_FORMAT_VERSION, mode, compression_level, chunker };
        let text = serde_json::to_string_pretty(&config).expect("config serializes") + "\n";
        // The config is written last: a directory without it is not a repository yet.
        atomic_write(&path.join(layout::CONFIG), &path.join(layout::TMP), text.as_bytes())?;
        let repo = Repo::open(path, Access::Write)?;
        repo.write_summary()?;
        Ok(repo)
    }

    /// Opens the repository at `path`, taking the locks `access` needs.
    pub fn open(path: &Path, access: Access) -> Result<Repo> {
        let not_repo = |reason: String| StoreError::NotARepository { path: path.into(), reason };
        let config_path = path.join(layout::CONFIG);
        let text = match fs::read_to_string(&config_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_repo("no config file (create one with `osdeploy init`)".into()));
            }
            Err(e) => return Err(e).at(&config_path),
        };
        let version: serde_json::Value = serde_json::from_str(&text).map_err(|e| not_repo(format!("config: {e}")))?;
        let found = version.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if found != u64::from(REPO_FORMAT_VERSION) {
            return Err(StoreError::UnsupportedVersion {
                what: format!("repository {}", path.display()),
                found: found as u32,
                supported: REPO_FORMAT_VERSION,
            });
        }
        let config: RepoConfig = serde_json::from_str(&text).map_err(|e| not_repo(format!("config: {e}")))?;
        let mut locks = Vec::new();
        let gc_lock = path.join(layout::GC_LOCK);
        match access {
            Access::Read => locks.extend(reader_lock(&gc_lock)?),
            Access::Write | Access::Prune => {
                locks.push(lock(&path.join(layout::LOCK), FlockOperation::NonBlockingLockExclusive)?);
                // Only a writer may clear what an interrupted writer left behind.
                clear_dir_at(&path.join(layout::TMP))?;
                let gc = match access {
                    Access::Prune => FlockOperation::NonBlockingLockExclusive,
                    _ => FlockOperation::NonBlockingLockShared,
                };
                locks.push(lock(&gc_lock, gc)?);
            }
        }
        let index = if access == Access::Read { IndexAccess::Read } else { IndexAccess::Write };
        let store = match config.mode {
            RepoMode::Archive => Store::Archive(ArchiveStore::load(&path.join(layout::PACKS))?),
            RepoMode::Bare => Store::Bare(BareStore::open(path, index)?),
        };
        Ok(Repo { path: path.into(), config, store, _locks: locks })
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The object store, by mode.
    pub fn objects(&self) -> Objects<'_> {
        match &self.store {
            Store::Archive(a) => Objects::Archive(a),
            Store::Bare(b) => Objects::Bare(b),
        }
    }

    /// The archive store, in archive mode.
    pub fn archive(&self) -> Option<&ArchiveStore> {
        match &self.store {
            Store::Archive(a) => Some(a),
            Store::Bare(_) => None,
        }
    }

    /// The bare store, in bare mode.
    pub fn bare(&self) -> Option<&BareStore> {
        match &self.store {
            Store::Bare(b) => Some(b),
            Store::Archive(_) => None,
        }
    }

    /// Reads and verifies an object's bytes.
    pub fn read(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>> {
        match &self.store {
            Store::Archive(a) => a.get(kind, id),
            Store::Bare(b) => b.get(kind, id),
        }
    }

    /// True when the repository has the object.
    pub fn has(&self, kind: ObjectKind, id: &ObjectId) -> Result<bool> {
        match &self.store {
            Store::Archive(a) => Ok(a.has(kind, id)),
            Store::Bare(b) => b.has(kind, id),
        }
    }

    /// Reads a commit object.
    pub fn commit_object(&self, id: &CommitId) -> Result<Commit> {
        Commit::decode(id.0, &self.read(ObjectKind::Commit, &id.0)?)
    }

    /// Reads a dirtree object.
    pub fn tree(&self, id: &TreeId) -> Result<DirTree> {
        DirTree::decode(id.0, &self.read(ObjectKind::DirTree, &id.0)?)
    }

    /// Reads a file object.
    pub fn file_object(&self, id: &FileId) -> Result<FileObject> {
        FileObject::decode(id.0, &self.read(ObjectKind::File, &id.0)?)
    }

    /// A file's whole content: its chunks in order (archive), or its content file (bare), checked
    /// against the file object's size.
    pub fn file_content(&self, id: &FileId) -> Result<Vec<u8>> {
        let b = match &self.store {
            Store::Archive(a) => return a.file_content(id),
            Store::Bare(b) => b,
        };
        let object = self.file_object(id)?;
        crate::bare::read_content(&b.content_path(id), id, object.size)
    }

    /// Every stored commit id.
    pub fn commit_ids(&self) -> Result<Vec<ObjectId>> {
        match &self.store {
            Store::Archive(a) => Ok(a.ids(ObjectKind::Commit).collect()),
            Store::Bare(b) => b.ids(ObjectKind::Commit),
        }
    }

    /// Runs `f` on one consistent snapshot of the repository (cheaper for many reads).
    pub fn snapshot<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.store {
            Store::Archive(_) => f(),
            Store::Bare(b) => b.snapshot(f),
        }
    }

    /// Runs one write transaction (needs [`Access::Write`]): `work` adds objects through the
    /// writer and may read the repository meanwhile; then everything it added is made durable and
    /// readable through this handle, at once. Nothing is reachable before a ref names it, and an
    /// error from `work` publishes nothing.
    pub fn transaction<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&mut ObjectWriter<'_>, &Repo) -> std::result::Result<T, E>,
    ) -> std::result::Result<(T, WriteStats), E> {
        let mut writer = self.writer();
        let value = work(&mut writer, self)?;
        let (stats, packs) = writer.finish(&self.path)?;
        self.register_packs(packs);
        Ok((value, stats))
    }

    /// [`Self::transaction`] for work that waits (a pull writes what it fetches).
    pub async fn transaction_async<T, E: From<StoreError>>(
        &mut self,
        work: impl AsyncFnOnce(&mut ObjectWriter<'_>, &Repo) -> std::result::Result<T, E>,
    ) -> std::result::Result<(T, WriteStats), E> {
        let mut writer = self.writer();
        let value = work(&mut writer, self).await?;
        let (stats, packs) = writer.finish(&self.path)?;
        self.register_packs(packs);
        Ok((value, stats))
    }

    fn writer(&self) -> ObjectWriter<'_> {
        let tmp = self.path.join(layout::TMP);
        match &self.store {
            Store::Archive(a) => {
                ObjectWriter::Archive(Box::new(ArchiveWriter::new(a, &tmp, self.config.compression_level)))
            }
            Store::Bare(b) => ObjectWriter::Bare(BareWriter::new(b, &tmp)),
        }
    }

    /// Makes packs published in the repository readable through this handle: those of a
    /// transaction, and those a mirror copies whole.
    pub fn register_packs(&mut self, packs: Vec<FinishedPack>) {
        if let Store::Archive(a) = &mut self.store {
            a.add_published(packs);
        }
    }

    fn ref_path(&self, name: &RefName) -> PathBuf {
        self.path.join(layout::HEADS).join(name.as_str())
    }

    /// The commit a branch points to, if the branch exists.
    pub fn read_ref(&self, name: &RefName) -> Result<Option<CommitId>> {
        let path = self.ref_path(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(e).at(&path),
        };
        let id = ObjectId::from_hex(text.trim()).ok_or_else(|| StoreError::Corrupt {
            what: format!("ref {name} ({})", path.display()),
            reason: "does not hold a 64-digit commit id".into(),
        })?;
        Ok(Some(CommitId(id)))
    }

    /// Points a branch at a commit, atomically and durably; in archive mode the summary follows.
    pub fn write_ref(&self, name: &RefName, id: &CommitId) -> Result<()> {
        self.write_ref_without_summary(name, id)?;
        self.write_summary()
    }

    /// Points a branch at a commit, atomically and durably, leaving the summary alone: for a caller
    /// that moves several refs and then publishes a summary of its own (a mirror).
    pub fn write_ref_without_summary(&self, name: &RefName, id: &CommitId) -> Result<()> {
        atomic_write(&self.ref_path(name), &self.path.join(layout::TMP), format!("{}\n", id.0).as_bytes())
    }

    /// Every branch, sorted by name.
    pub fn refs(&self) -> Result<BTreeMap<RefName, CommitId>> {
        let mut out = BTreeMap::new();
        let root = self.path.join(layout::HEADS);
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).at(&dir)? {
                let path = entry.at(&dir)?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = RefName::new(path.strip_prefix(&root).expect("below refs/heads").to_string_lossy())?;
                if let Some(id) = self.read_ref(&name)? {
                    out.insert(name, id);
                }
            }
        }
        Ok(out)
    }

    /// Resolves a branch name, a full commit id or a unique prefix of one.
    pub fn resolve(&self, spec: &str) -> Result<CommitId> {
        if let Ok(name) = RefName::new(spec)
            && let Some(id) = self.read_ref(&name)?
        {
            return Ok(id);
        }
        let lower = spec.to_ascii_lowercase();
        if let Some(id) = ObjectId::from_hex(&lower) {
            if self.has(ObjectKind::Commit, &id)? {
                return Ok(CommitId(id));
            }
        } else if lower.len() >= 4 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<ObjectId> =
                self.commit_ids()?.into_iter().filter(|id| id.to_hex().starts_with(&lower)).collect();
            match matches.len() {
                1 => return Ok(CommitId(matches[0])),
                0 => {}
                count => {
                    return Err(StoreError::AmbiguousCommit { spec: spec.into(), count });
                }
            }
        }
        Err(StoreError::CommitNotFound { spec: spec.into() })
    }

    /// Rewrites `REPO/summary` (archive mode): every ref with its commit's version and timestamp,
    /// and every pack, so that a client reading plain files over HTTP finds everything else.
    pub fn write_summary(&self) -> Result<()> {
        match self.summary_bytes()? {
            Some(text) => atomic_write(&self.path.join(layout::SUMMARY), &self.path.join(layout::TMP), &text),
            None => Ok(()),
        }
    }

    /// The summary [`Repo::write_summary`] writes, without writing it (`None` in bare mode): a
    /// mirror signs it before publishing it.
    pub fn summary_bytes(&self) -> Result<Option<Vec<u8>>> {
        let Store::Archive(archive) = &self.store else {
            return Ok(None);
        };
        let mut refs = BTreeMap::new();
        for (name, id) in self.refs()? {
            let commit = self.commit_object(&id)?;
            refs.insert(name, SummaryRef { commit: id, timestamp: commit.timestamp, version: commit.version });
        }
        let mut packs = Vec::new();
        for p in archive.packs() {
            // The index's hash lets a client verify (and cache) indexes through the signed summary.
            let index_path = archive.packs_dir().join(layout::index_name(&p.id));
            let index = ObjectId::of(&fs::read(&index_path).at(&index_path)?);
            packs.push(SummaryPack { id: p.id, index, objects: p.objects as u64, size: p.size });
        }
        packs.sort_by_key(|p| p.id);
        let heads = refs.values().map(|r| r.commit).collect();
        let (delta_indexes, delta_packs, metadata_deltas) = PublishedDeltas::load(&self.path)?.summary_entries(&heads);
        let summary = Summary {
            delta_indexes,
            delta_packs,
            format_version: SUMMARY_FORMAT_VERSION,
            metadata_deltas,
            packs,
            refs,
        };
        Ok(Some(summary.to_bytes()))
    }

    /// Deletes a branch.
    pub fn delete_ref(&self, name: &RefName) -> Result<()> {
        self.delete_ref_without_summary(name)?;
        self.write_summary()
    }

    /// Deletes a branch, leaving the summary alone (see [`Repo::write_ref_without_summary`]).
    pub fn delete_ref_without_summary(&self, name: &RefName) -> Result<()> {
        let path = self.ref_path(name);
        fs::remove_file(&path).at(&path)?;
        fsync_dir(path.parent().expect("ref has a parent"))
    }
}

impl Repo {
    /// Re-reads the pack indexes after packs were added or removed behind this handle's back.
    pub(crate) fn reload_archive(&mut self) -> Result<()> {
        if let Store::Archive(a) = &mut self.store {
            *a = ArchiveStore::load(&self.path.join(layout::PACKS))?;
        }
        Ok(())
    }
}
