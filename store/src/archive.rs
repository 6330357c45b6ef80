//! Archive repositories (origins and mirrors): every object zstd-compressed in pack files.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::compress::compress;
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::{crash_point, fsync_dir, syncfs};
use crate::id::{FileId, ObjectId};
use crate::layout;
use crate::object::{FileObject, ObjectKind};
use crate::pack::{self, FinishedPack, IndexEntry, PackWriter};
use crate::write::WriteStats;

/// A pack rolls over to a new one past this size: large enough that a release's objects form
/// long runs (few Range requests), small enough that prune can drop or rewrite packs cheaply.
pub const PACK_TARGET_SIZE: u64 = 64 << 20;
/// New chunks are compressed in parallel batches of about this many bytes, then appended in
/// order; this bounds memory whatever the tree size.
const COMPRESS_BATCH_BYTES: usize = 32 << 20;

/// One published pack.
#[derive(Debug)]
pub struct PackInfo {
    /// Its id (blake3 of its bytes).
    pub id: ObjectId,
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// How many objects it holds.
    pub objects: usize,
    file: OnceLock<File>,
}

/// Read access to the packs of an archive repository.
pub struct ArchiveStore {
    packs_dir: PathBuf,
    packs: Vec<PackInfo>,
    map: HashMap<(ObjectId, ObjectKind), (u32, IndexEntry)>,
    /// Index files whose pack is missing or of the wrong size (reported by fsck, removed by prune).
    pub broken_indexes: Vec<(PathBuf, String)>,
}

impl ArchiveStore {
    /// Loads every pack index under `packs_dir`.
    pub fn load(packs_dir: &Path) -> Result<Self> {
        let mut store = ArchiveStore {
            packs_dir: packs_dir.into(),
            packs: Vec::new(),
            map: HashMap::new(),
            broken_indexes: Vec::new(),
        };
        let mut names: Vec<PathBuf> = fs::read_dir(packs_dir)
            .at(packs_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "idx"))
            .collect();
        names.sort();
        for index_path in names {
            let bytes = fs::read(&index_path).at(&index_path)?;
            // A damaged index must not make the whole repository unreadable: fsck reports it,
            // reads of its objects fail as missing, prune removes it.
            let index = match pack::decode_index(&bytes, &index_path.display().to_string()) {
                Ok(index) => index,
                Err(e) => {
                    store.broken_indexes.push((index_path, e.to_string()));
                    continue;
                }
            };
            let pack_path = index_path.with_extension("pack");
            let named = index_path.file_stem().and_then(|s| s.to_str()).and_then(ObjectId::from_hex);
            let problem = match fs::metadata(&pack_path) {
                _ if named != Some(index.pack) => Some(format!("names pack {}, not its file name", index.pack)),
                Ok(m) if m.len() != index.pack_size => Some(format!(
                    "pack is {} bytes, the index says {}{}",
                    m.len(),
                    index.pack_size,
                    if m.len() < index.pack_size { " (truncated)" } else { "" }
                )),
                Ok(_) => None,
                Err(e) => Some(format!("pack {}: {e}", pack_path.display())),
            };
            if let Some(problem) = problem {
                store.broken_indexes.push((index_path, problem));
                continue;
            }
            store.register(index.pack, pack_path, index.pack_size, index.entries);
        }
        Ok(store)
    }

    fn register(&mut self, id: ObjectId, path: PathBuf, size: u64, entries: Vec<IndexEntry>) {
        let slot = self.packs.len() as u32;
        self.packs.push(PackInfo { id, path, size, objects: entries.len(), file: OnceLock::new() });
        for e in entries {
            self.map.entry((e.id, e.kind)).or_insert((slot, e));
        }
    }

    /// True when the object is in some pack.
    pub fn has(&self, kind: ObjectKind, id: &ObjectId) -> bool {
        self.map.contains_key(&(*id, kind))
    }

    /// A file's whole content: its chunks in order, each verified, checked against the file
    /// object's size.
    pub fn file_content(&self, id: &FileId) -> Result<Vec<u8>> {
        let object = FileObject::decode(id.0, &self.get(ObjectKind::File, &id.0)?)?;
        let mut content = Vec::with_capacity(object.size as usize);
        for (chunk, _) in &object.chunks {
            content.extend_from_slice(&self.get(ObjectKind::Chunk, &chunk.0)?);
        }
        if content.len() as u64 != object.size {
            return Err(StoreError::Corrupt {
                what: format!("file object {id}"),
                reason: format!("its chunks hold {} bytes, the object says {}", content.len(), object.size),
            });
        }
        Ok(content)
    }

    /// Reads, decompresses and verifies an object.
    pub fn get(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>> {
        let (slot, entry) = self.map.get(&(*id, kind)).ok_or_else(|| self.missing(kind, id))?;
        let info = &self.packs[*slot as usize];
        let file = match info.file.get() {
            Some(f) => f,
            None => {
                let f = File::open(&info.path).at(&info.path)?;
                info.file.get_or_init(|| f)
            }
        };
        pack::read_entry(file, entry, &info.path)
    }

    /// The error for an object that no usable pack holds. When some pack indexes could not be
    /// used, the object may be in one of their packs: the message says which and why, instead of
    /// a bare "missing" that hides a truncated or hostile pack.
    fn missing(&self, kind: ObjectKind, id: &ObjectId) -> StoreError {
        if self.broken_indexes.is_empty() {
            return StoreError::ObjectMissing { kind, id: *id };
        }
        let damage: Vec<String> =
            self.broken_indexes.iter().map(|(path, problem)| format!("{}: {problem}", path.display())).collect();
        StoreError::Corrupt {
            what: format!("repository {}", self.packs_dir.parent().unwrap_or(&self.packs_dir).display()),
            reason: format!(
                "{kind} object {id} is missing; it may be in a pack whose index cannot be used \
                 (`osdeploy fsck` lists the damage): {}",
                damage.join("; ")
            ),
        }
    }

    /// Where an object lies.
    pub fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(&PackInfo, &IndexEntry)> {
        self.map.get(&(*id, kind)).map(|(slot, e)| (&self.packs[*slot as usize], e))
    }

    /// The metadata objects (every kind but chunks) stored in pack `pack`.
    pub fn metadata_of_pack(&self, pack: &ObjectId) -> Vec<(ObjectId, ObjectKind)> {
        let Some(slot) = self.packs.iter().position(|p| p.id == *pack) else {
            return Vec::new();
        };
        self.map
            .iter()
            .filter(|((_, kind), (s, _))| *s as usize == slot && *kind != ObjectKind::Chunk)
            .map(|(key, _)| *key)
            .collect()
    }

    /// Ids of every stored object of `kind`.
    pub fn ids(&self, kind: ObjectKind) -> impl Iterator<Item = ObjectId> + '_ {
        self.map.keys().filter(move |(_, k)| *k == kind).map(|(id, _)| *id)
    }

    /// The published packs.
    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// The directory holding the packs.
    pub fn packs_dir(&self) -> &Path {
        &self.packs_dir
    }
}

/// Writes new objects of one transaction into new packs.
pub struct ArchiveWriter<'s> {
    store: &'s ArchiveStore,
    tmp: PathBuf,
    level: i32,
    compressor: Option<Compressor>,
    meta: Option<PackWriter>,
    added: HashSet<(ObjectId, ObjectKind)>,
    batch: Vec<(ObjectId, Vec<u8>)>,
    batch_bytes: usize,
    /// What this transaction added and reused.
    pub stats: WriteStats,
}

impl<'s> ArchiveWriter<'s> {
    /// Starts a transaction whose packs are written in `tmp` at zstd `level`.
    pub fn new(store: &'s ArchiveStore, tmp: &Path, level: i32) -> Self {
        ArchiveWriter {
            store,
            tmp: tmp.into(),
            level,
            compressor: None,
            meta: None,
            added: HashSet::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            stats: WriteStats::default(),
        }
    }

    /// True when the object is stored or added by this transaction.
    pub fn has(&self, kind: ObjectKind, id: &ObjectId) -> bool {
        self.added.contains(&(*id, kind)) || self.store.has(kind, id)
    }

    /// Adds a chunk unless it is already present; compression happens in batches.
    pub fn add_chunk(&mut self, id: ObjectId, raw: &[u8]) -> Result<()> {
        if self.has(ObjectKind::Chunk, &id) {
            self.stats.chunks_reused += 1;
            self.stats.bytes_reused += raw.len() as u64;
            return Ok(());
        }
        self.added.insert((id, ObjectKind::Chunk));
        self.stats.chunks_new += 1;
        self.stats.bytes_new += raw.len() as u64;
        self.batch_bytes += raw.len();
        self.batch.push((id, raw.to_vec()));
        if self.batch_bytes >= COMPRESS_BATCH_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Hands the batch to the compressor thread, which compresses it on all cores while this
    /// thread goes on reading and chunking.
    fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let compressor = match &mut self.compressor {
            Some(c) => c,
            None => self.compressor.insert(Compressor::start(self.tmp.clone(), self.level)),
        };
        if compressor.batches.send(batch).is_err() {
            // The thread stopped on an error; finishing it reports that error.
            let failed = self.compressor.take().expect("compressor exists");
            failed.finish()?;
        }
        Ok(())
    }

    /// Adds an encoded metadata object (file, dirtree, commit) unless present; returns its id.
    /// Metadata goes to its own pack so that a client fetches all of it in one request.
    pub fn add_metadata(&mut self, kind: ObjectKind, raw: &[u8]) -> Result<ObjectId> {
        let id = ObjectId::of(raw);
        if self.has(kind, &id) {
            return Ok(id);
        }
        self.added.insert((id, kind));
        self.stats.metadata_new += 1;
        let (codec, stored) = compress(raw, self.level);
        self.stats.bytes_stored += stored.len() as u64;
        let writer = match &mut self.meta {
            Some(w) => w,
            None => self.meta.insert(PackWriter::create(&self.tmp)?),
        };
        writer.append(kind, id, codec, raw.len() as u32, &stored)?;
        Ok(id)
    }

    /// Makes every pack of the transaction durable (one syncfs), then publishes it under
    /// `packs/` (pack before index, so an index never names a missing pack).
    pub fn finish(mut self, repo_path: &Path) -> Result<(Vec<FinishedPack>, WriteStats)> {
        self.flush_batch()?;
        let mut finished = Vec::new();
        if let Some(compressor) = self.compressor.take() {
            let (packs, stored) = compressor.finish()?;
            self.stats.bytes_stored += stored;
            finished = packs;
        }
        if let Some(meta) = self.meta.take() {
            finished.push(meta.finish()?);
        }
        crash_point("archive:before-sync");
        syncfs(repo_path)?;
        let packs_dir = self.store.packs_dir.clone();
        for pack in &finished {
            let pack_path = packs_dir.join(layout::pack_name(&pack.id));
            fs::rename(&pack.pack_tmp, &pack_path).at(&pack_path)?;
            crash_point("archive:between-pack-and-index");
            let index_path = packs_dir.join(layout::index_name(&pack.id));
            fs::rename(&pack.index_tmp, &index_path).at(&index_path)?;
        }
        fsync_dir(&packs_dir)?;
        Ok((finished, self.stats))
    }
}

impl ArchiveStore {
    /// Makes packs published by [`ArchiveWriter::finish`] readable through this store.
    pub fn add_published(&mut self, packs: Vec<FinishedPack>) {
        for p in packs {
            let path = self.packs_dir.join(layout::pack_name(&p.id));
            self.register(p.id, path, p.size, p.entries);
        }
    }
}

/// A thread that compresses batches of new chunks (in parallel, with rayon) and appends them to
/// data packs in the order received, rolling packs at [`PACK_TARGET_SIZE`]. The channel holds one
/// batch, so at most three batches are in memory.
struct Compressor {
    batches: std::sync::mpsc::SyncSender<Vec<(ObjectId, Vec<u8>)>>,
    thread: std::thread::JoinHandle<Result<(Vec<FinishedPack>, u64)>>,
}

impl Compressor {
    fn start(tmp: PathBuf, level: i32) -> Self {
        let (batches, receive) = std::sync::mpsc::sync_channel::<Vec<(ObjectId, Vec<u8>)>>(1);
        let thread = std::thread::spawn(move || {
            let mut finished = Vec::new();
            let mut writer: Option<PackWriter> = None;
            let mut stored_total = 0u64;
            for batch in receive {
                let packed: Vec<_> = batch.par_iter().map(|(_, raw)| compress(raw, level)).collect();
                for ((id, raw), (codec, stored)) in batch.iter().zip(packed) {
                    stored_total += stored.len() as u64;
                    let w = match &mut writer {
                        Some(w) => w,
                        None => writer.insert(PackWriter::create(&tmp)?),
                    };
                    w.append(ObjectKind::Chunk, *id, codec, raw.len() as u32, &stored)?;
                    if w.len() >= PACK_TARGET_SIZE {
                        finished.push(writer.take().expect("pack is open").finish()?);
                    }
                }
            }
            if let Some(w) = writer {
                finished.push(w.finish()?);
            }
            Ok((finished, stored_total))
        });
        Compressor { batches, thread }
    }

    /// Waits for the thread; returns the data packs and the bytes stored.
    fn finish(self) -> Result<(Vec<FinishedPack>, u64)> {
        drop(self.batches);
        self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}
