//! `osdeploy delta generate`: deltas that lead from the files of earlier releases to a new one.
//!
//! For each earlier release, every new content of the release is paired with the old content it
//! most likely evolved from ([`crate::delta::pairing`]); each pair is encoded with every codec
//! ([`crate::delta::codec`]) on all cores, and kept only when the delta is smaller than the chunks
//! a node holding that release would otherwise fetch. Deltas already published for the same
//! pair are reused, so a transition present in several releases is stored once. For each earlier
//! release, the metadata the new release adds is encoded as one metadata delta
//! ([`crate::delta::metadata`]). The new deltas go into a delta pack, and the release's delta
//! index lists them with the reused ones.
//! Everything is written under `tmp/`, synced, then renamed into place, index last, then the
//! summary: a killed run leaves at most an unreferenced pack, which prune removes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::archive::{ArchiveStore, PACK_TARGET_SIZE};
use crate::chunker::Chunker;
use crate::compress::Codec;
use crate::delta::codec::{DeltaCodec, EncodeOptions, encode_best};
use crate::delta::index::{DeltaEntry, DeltaIndex, MetadataEntry};
use crate::delta::metadata::{MAX_INLINE_CHUNKS, MetadataDelta, NewMetadata, base_stream, new_metadata};
use crate::delta::object::{DeltaObject, MAX_DELTA_TARGET};
use crate::delta::pairing::{PairRule, TreeFile, pair};
use crate::delta::published::PublishedDeltas;
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::{crash_point, fsync_dir, syncfs, unique_tmp_name};
use crate::id::{ChunkId, CommitId, FileId, ObjectId};
use crate::layout;
use crate::object::{EntryKind, FileObject, ObjectKind};
use crate::pack::{ENTRY_HEADER_LEN, FinishedPack, INDEX_ENTRY_LEN, PackIndex, PackWriter};
use crate::repo::Repo;
use crate::tree::walk;

/// Pairs encoded at once: bounds memory (each holds two contents) while keeping all cores busy.
const BATCH_BYTES: u64 = 256 << 20;

/// How deltas are generated.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerateOptions {
    /// Codec settings.
    pub codec: EncodeOptions,
}

/// What a generation did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenerateStats {
    /// The release the deltas lead to.
    pub to: CommitId,
    /// The releases they start from.
    pub from: Vec<CommitId>,
    /// Distinct (old content → new content) pairs found.
    pub pairs: u64,
    /// Pairs by the rule that paired them.
    pub pairs_by_rule: BTreeMap<PairRule, u64>,
    /// Pairs encoded by this run.
    pub encoded: u64,
    /// Pairs whose delta was published already (reused, not encoded again).
    pub reused: u64,
    /// Pairs whose delta was not smaller than the chunks it replaces (dropped).
    pub not_smaller: u64,
    /// Pairs skipped because a content exceeds the delta size limit.
    pub too_large: u64,
    /// Deltas the release's index lists.
    pub listed: u64,
    /// Listed deltas by codec.
    pub by_codec: BTreeMap<DeltaCodec, u64>,
    /// Their stored bytes (entry headers included).
    pub delta_bytes: u64,
    /// Metadata deltas the release's index lists (one per earlier release at most).
    pub metadata_deltas: u64,
    /// Stored bytes of the metadata deltas this run encoded.
    pub metadata_delta_bytes: u64,
    /// What the metadata objects, index entries and chunk reads they replace cost.
    pub metadata_bytes: u64,
    /// Chunks of small files without a delta that the metadata deltas carry.
    pub chunks_in_metadata_deltas: u64,
    /// What the same files cost as chunks, from the release that costs the most.
    pub chunk_bytes: u64,
    /// Size of the release's delta index.
    pub index_bytes: u64,
    /// New delta packs written.
    pub packs_written: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// One pair to encode, and what its target costs as chunks.
struct Job {
    base: FileId,
    target: FileId,
    target_size: u64,
    base_size: u64,
    chunk_cost: u64,
}

/// Generates the deltas from each release in `from` to `to` in the archive repository `repo`
/// (opened for writing), replacing `to`'s delta index, and rewrites the summary. `progress` is
/// told (pairs done, pairs in all) as encoding goes.
pub fn generate(
    repo: &Repo,
    from: &[CommitId],
    to: CommitId,
    options: &GenerateOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<GenerateStats> {
    let started = Instant::now();
    let archive = repo.archive().ok_or_else(|| StoreError::NotARepository {
        path: repo.path().into(),
        reason: "deltas are generated in an archive repository (what nodes pull from)".into(),
    })?;
    let published = PublishedDeltas::load(repo.path())?;
    let previous = published.index_of(&to).map(|p| &p.index);
    let mut stats = GenerateStats { to, from: from.to_vec(), ..Default::default() };
    let from: Vec<CommitId> = from.iter().copied().filter(|f| *f != to).collect();
    let new_files = tree_files(repo, &to)?;
    let (jobs, held_chunks) = pair_contents(repo, archive, &from, &new_files, &mut stats)?;
    let encoder = PairEncoder { archive, release: ReleaseFiles::new(repo, &new_files), options };
    // Deltas an earlier run listed for this release stay listed.
    let mut listed = previous.map(|p| p.entries.clone()).unwrap_or_default();
    let new_deltas = encode_files(&encoder, &published, &jobs, progress, &mut stats, &mut listed)?;
    // File deltas go into packs first: the metadata deltas list where they lie.
    let mut packs = write_packs(repo, &new_deltas)?;
    let listings: HashMap<ObjectId, Listing> = new_deltas.iter().map(|d| (d.id, d.listing)).collect();
    for pack in &packs {
        for e in &pack.entries {
            if let Listing::File { target, base } = listings[&e.id] {
                listed.push(DeltaEntry { target, base, pack: pack.id, entry: *e });
            }
        }
    }
    listed.sort_by_key(|e| (e.target, e.base));
    listed.dedup_by_key(|e| (e.target, e.base));
    // Each earlier release's metadata delta is encoded again, as the file deltas from its contents
    // may have grown; one that comes out the same is the published one.
    let mut metadata = previous.map(|p| p.metadata.clone()).unwrap_or_default();
    let mut new_metadata = Vec::new();
    for old in &from {
        let Some(delta) = encode_metadata(repo, archive, old, to, &held_chunks[old], &listed, &mut stats)? else {
            continue;
        };
        if metadata.iter().any(|m| m.from == *old && m.entry.id == delta.id) {
            continue;
        }
        metadata.retain(|m| m.from != *old);
        new_metadata.push(delta);
    }
    let metadata_packs = write_packs(repo, &new_metadata)?;
    let listings: HashMap<ObjectId, Listing> = new_metadata.iter().map(|d| (d.id, d.listing)).collect();
    for pack in &metadata_packs {
        for e in &pack.entries {
            if let Listing::Metadata { from } = listings[&e.id] {
                metadata.push(MetadataEntry { from, pack: pack.id, entry: *e });
            }
        }
    }
    packs.extend(metadata_packs);
    stats.packs_written = packs.len() as u64;
    metadata.sort_by_key(|m| m.from);
    stats.listed = listed.len() as u64;
    stats.metadata_deltas = metadata.len() as u64;
    let index = DeltaIndex { to, entries: listed, metadata }.encode();
    stats.index_bytes = index.len() as u64;
    publish(repo, packs, &index, published.index_of(&to).map(|p| p.hash))?;
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// The chunks each earlier release holds.
type HeldChunks = HashMap<CommitId, HashSet<ChunkId>>;

/// The (old content → new content) pairs of `to` against each release in `from`, each with the
/// most its new content costs as chunks; and the chunks each release in `from` holds.
fn pair_contents(
    repo: &Repo,
    archive: &ArchiveStore,
    from: &[CommitId],
    new_files: &[TreeFile],
    stats: &mut GenerateStats,
) -> Result<(Vec<Job>, HeldChunks)> {
    let mut jobs: BTreeMap<(FileId, FileId), Job> = BTreeMap::new();
    let mut held_chunks = HashMap::new();
    for old in from {
        let old_files = tree_files(repo, old)?;
        let old_chunks: &HashSet<ChunkId> = held_chunks.entry(*old).or_insert(chunks_of(repo, &old_files)?);
        for pairing in pair(&old_files, new_files) {
            let cost = chunk_cost(repo, archive, &pairing.target, old_chunks)?;
            match jobs.entry((pairing.target, pairing.base)) {
                std::collections::btree_map::Entry::Occupied(mut job) => {
                    job.get_mut().chunk_cost = job.get().chunk_cost.max(cost);
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    *stats.pairs_by_rule.entry(pairing.rule).or_default() += 1;
                    slot.insert(Job {
                        base: pairing.base,
                        target: pairing.target,
                        target_size: repo.file_object(&pairing.target)?.size,
                        base_size: repo.file_object(&pairing.base)?.size,
                        chunk_cost: cost,
                    });
                }
            }
        }
    }
    stats.pairs = jobs.len() as u64;
    Ok((jobs.into_values().collect(), held_chunks))
}

/// Encodes the pairs on all cores (reusing published deltas), and returns the new deltas smaller
/// than their chunks; reused ones go straight to `listed`. Those that read files of the release
/// come first, then those of the files they read: a pull receives them in that order, and starts
/// the first ones as soon as it has rebuilt the files they read, while it rebuilds the others.
fn encode_files(
    encoder: &PairEncoder,
    published: &PublishedDeltas,
    jobs: &[Job],
    progress: &(dyn Fn(u64, u64) + Sync),
    stats: &mut GenerateStats,
    listed: &mut Vec<DeltaEntry>,
) -> Result<Vec<NewDelta>> {
    let known: HashMap<(FileId, FileId), DeltaEntry> =
        published.indexes.values().flat_map(|p| p.index.entries.iter().map(|e| ((e.base, e.target), *e))).collect();
    let total = jobs.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let tick = || progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total);
    let (mut reading, mut new_deltas) = (Vec::new(), Vec::new());
    for batch in batches(jobs) {
        let encoded: Vec<Result<Outcome>> = batch
            .par_iter()
            .map(|job| {
                let outcome = encoder.encode(job, known.get(&(job.base, job.target)));
                tick();
                outcome
            })
            .collect();
        for (job, outcome) in batch.iter().zip(encoded) {
            match outcome? {
                Outcome::TooLarge => stats.too_large += 1,
                Outcome::Reused(entry) if entry.entry.span() < job.chunk_cost => {
                    stats.reused += 1;
                    count(stats, job, entry.entry.span(), published_codec(published, &entry)?);
                    listed.push(entry);
                }
                Outcome::Reused(_) => stats.not_smaller += 1,
                Outcome::Encoded { id, bytes, codec } => {
                    stats.encoded += 1;
                    let span = ENTRY_HEADER_LEN + bytes.len() as u64;
                    if span < job.chunk_cost {
                        count(stats, job, span, codec);
                        let listing = Listing::File { target: job.target, base: job.base };
                        let delta = NewDelta { kind: ObjectKind::Delta, id, bytes, listing };
                        match codec {
                            DeltaCodec::GzipTree => reading.push(delta),
                            _ => new_deltas.push(delta),
                        }
                    } else {
                        stats.not_smaller += 1;
                    }
                }
            }
        }
    }
    in_pull_order(reading, new_deltas)
}

/// `reading` (deltas that read files of the release), then the deltas of the files they read,
/// then the others, each group in its order.
fn in_pull_order(reading: Vec<NewDelta>, others: Vec<NewDelta>) -> Result<Vec<NewDelta>> {
    let mut read = HashSet::new();
    for delta in &reading {
        read.extend(DeltaObject::decode(delta.id, &delta.bytes)?.release_files()?);
    }
    let is_read = |d: &NewDelta| matches!(d.listing, Listing::File { target, .. } if read.contains(&target));
    let (first, rest): (Vec<_>, Vec<_>) = others.into_iter().partition(is_read);
    Ok(reading.into_iter().chain(first).chain(rest).collect())
}

/// The metadata delta from `old` to `to`, when smaller than the metadata objects, pack index
/// entries and chunk reads it replaces. `held_chunks` are the chunks `old` holds; `listed` are the
/// file deltas leading to `to`, sorted by (target, base): it lists those from `old`'s contents.
fn encode_metadata(
    repo: &Repo,
    archive: &ArchiveStore,
    old: &CommitId,
    to: CommitId,
    held_chunks: &HashSet<ChunkId>,
    listed: &[DeltaEntry],
    stats: &mut GenerateStats,
) -> Result<Option<NewDelta>> {
    let read = |kind, id: &ObjectId| repo.read(kind, id);
    let base = base_stream(&repo.commit_object(old)?, read)?;
    let objects = new_metadata(&base.objects, to, read)?;
    let mut replaced = 0;
    for (kind, bytes) in &objects {
        let id = ObjectId::of(bytes);
        let (_, entry) = archive.locate(*kind, &id).ok_or(StoreError::ObjectMissing { kind: *kind, id })?;
        replaced += entry.span() + INDEX_ENTRY_LEN as u64;
    }
    let new_files = objects
        .iter()
        .filter(|(kind, _)| *kind == ObjectKind::File)
        .map(|(_, bytes)| {
            let id = ObjectId::of(bytes);
            Ok((FileId(id), FileObject::decode(id, bytes)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let locations = new_chunk_locations(archive, held_chunks, &new_files)?;
    replaced += locations.iter().map(|index| (index.entries.len() * INDEX_ENTRY_LEN) as u64).sum::<u64>();
    let deltas: Vec<DeltaEntry> =
        listed.iter().filter(|d| base.objects.contains(&(d.base.0, ObjectKind::File))).copied().collect();
    let with_delta: HashSet<FileId> = deltas.iter().map(|d| d.target).collect();
    // Listed here, they spare a node holding `old` the release's delta index.
    replaced += DeltaIndex { to, entries: deltas.clone(), metadata: Vec::new() }.encode().len() as u64;
    let mut chunks = Vec::new();
    for chunk in inline_chunks(held_chunks, &new_files, &with_delta) {
        let (_, entry) = archive
            .locate(ObjectKind::Chunk, &chunk.0)
            .ok_or(StoreError::ObjectMissing { kind: ObjectKind::Chunk, id: chunk.0 })?;
        replaced += entry.span();
        chunks.push(repo.read(ObjectKind::Chunk, &chunk.0)?);
    }
    let target = NewMetadata { objects: &objects, chunks: &chunks, locations: &locations, deltas: &deltas };
    let delta = MetadataDelta::new(*old, to, &base.bytes, &target)?;
    let bytes = delta.encode();
    let span = ENTRY_HEADER_LEN + bytes.len() as u64;
    if span >= replaced || bytes.len() as u64 > u64::from(crate::pack::raw_limit(ObjectKind::MetadataDelta)) {
        return Ok(None);
    }
    stats.metadata_delta_bytes += span;
    stats.metadata_bytes += replaced;
    stats.chunks_in_metadata_deltas += chunks.len() as u64;
    Ok(Some(NewDelta {
        kind: ObjectKind::MetadataDelta,
        id: ObjectId::of(&bytes),
        bytes,
        listing: Listing::Metadata { from: *old },
    }))
}

/// Where the chunks of `new_files` lie that are not in `held_chunks`: every chunk a node holding
/// that release can lack, by pack.
fn new_chunk_locations(
    archive: &ArchiveStore,
    held_chunks: &HashSet<ChunkId>,
    new_files: &[(FileId, FileObject)],
) -> Result<Vec<PackIndex>> {
    let mut by_pack: BTreeMap<ObjectId, PackIndex> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (chunk, _) in new_files.iter().flat_map(|(_, f)| &f.chunks) {
        if held_chunks.contains(chunk) || !seen.insert(*chunk) {
            continue;
        }
        let (pack, entry) = archive
            .locate(ObjectKind::Chunk, &chunk.0)
            .ok_or(StoreError::ObjectMissing { kind: ObjectKind::Chunk, id: chunk.0 })?;
        by_pack
            .entry(pack.id)
            .or_insert_with(|| PackIndex { pack: pack.id, pack_size: pack.size, entries: Vec::new() })
            .entries
            .push(*entry);
    }
    let mut indexes: Vec<PackIndex> = by_pack.into_values().collect();
    for index in &mut indexes {
        index.entries.sort_by_key(|e| (e.id, e.kind));
    }
    Ok(indexes)
}

/// The chunks a node holding the release would fetch in ranges of their own: those not in
/// `held_chunks` of the new files that have no delta (`with_delta`), smallest files first, up to
/// [`MAX_INLINE_CHUNKS`] bytes.
fn inline_chunks(
    held_chunks: &HashSet<ChunkId>,
    new_files: &[(FileId, FileObject)],
    with_delta: &HashSet<FileId>,
) -> Vec<ChunkId> {
    let mut candidates: Vec<(u64, Vec<ChunkId>)> = Vec::new();
    let mut seen = HashSet::new();
    for (_, file) in new_files.iter().filter(|(id, _)| !with_delta.contains(id)) {
        let missing: Vec<(ChunkId, u32)> =
            file.chunks.iter().copied().filter(|(c, _)| !held_chunks.contains(c) && seen.insert(*c)).collect();
        let bytes = missing.iter().map(|(_, len)| u64::from(*len)).sum();
        candidates.push((bytes, missing.into_iter().map(|(c, _)| c).collect()));
    }
    candidates.sort_by_key(|(bytes, chunks)| (*bytes, chunks.first().copied()));
    let mut total = 0;
    let mut chunks = Vec::new();
    for (bytes, missing) in candidates {
        if total + bytes > MAX_INLINE_CHUNKS {
            break;
        }
        total += bytes;
        chunks.extend(missing);
    }
    chunks
}

/// What a new delta object is listed as in the release's delta index.
#[derive(Clone, Copy)]
enum Listing {
    File { target: FileId, base: FileId },
    Metadata { from: CommitId },
}

/// A delta encoded by this run, to be written.
struct NewDelta {
    kind: ObjectKind,
    id: ObjectId,
    bytes: Vec<u8>,
    listing: Listing,
}

enum Outcome {
    TooLarge,
    Reused(DeltaEntry),
    Encoded { id: ObjectId, bytes: Vec<u8>, codec: DeltaCodec },
}

/// What encoding one pair needs.
struct PairEncoder<'a> {
    archive: &'a ArchiveStore,
    release: ReleaseFiles,
    options: &'a GenerateOptions,
}

impl PairEncoder<'_> {
    /// Encodes `job`'s pair, unless `known` is its published delta.
    fn encode(&self, job: &Job, known: Option<&DeltaEntry>) -> Result<Outcome> {
        if let Some(entry) = known {
            return Ok(Outcome::Reused(*entry));
        }
        if job.target_size > MAX_DELTA_TARGET || job.base_size > MAX_DELTA_TARGET {
            return Ok(Outcome::TooLarge);
        }
        let base = self.archive.file_content(&job.base)?;
        let target = self.archive.file_content(&job.target)?;
        let (codec, payload) =
            encode_best(&base, &target, &self.options.codec, Some(&|content| self.release.lookup(content))).map_err(
                |error| StoreError::Io { path: format!("(delta {} → {})", job.base, job.target).into(), error },
            )?;
        let object =
            DeltaObject { base: job.base, target: job.target, target_size: target.len() as u64, codec, payload };
        let bytes = object.encode();
        if bytes.len() as u64 > u64::from(crate::pack::raw_limit(ObjectKind::Delta)) {
            return Ok(Outcome::TooLarge);
        }
        Ok(Outcome::Encoded { id: ObjectId::of(&bytes), bytes, codec })
    }
}

fn count(stats: &mut GenerateStats, job: &Job, span: u64, codec: DeltaCodec) {
    *stats.by_codec.entry(codec).or_default() += 1;
    stats.delta_bytes += span;
    stats.chunk_bytes += job.chunk_cost;
}

/// The codec of a published delta (read from its pack: the index does not record it).
fn published_codec(published: &PublishedDeltas, entry: &DeltaEntry) -> Result<DeltaCodec> {
    Ok(published.read(entry)?.codec)
}

/// Consecutive jobs whose contents add up to about [`BATCH_BYTES`].
fn batches(jobs: &[Job]) -> Vec<&[Job]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, job) in jobs.iter().enumerate() {
        bytes += job.base_size + job.target_size;
        if bytes >= BATCH_BYTES {
            out.push(&jobs[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < jobs.len() {
        out.push(&jobs[start..]);
    }
    out
}

/// Every regular file of a commit with its path and size.
fn tree_files(repo: &Repo, commit: &CommitId) -> Result<Vec<TreeFile>> {
    let root = repo.commit_object(commit)?.root;
    let mut files = Vec::new();
    let mut sizes: HashMap<FileId, u64> = HashMap::new();
    walk(repo, &root, &mut |path, entry| {
        if let EntryKind::File { file, .. } = &entry.kind {
            let size = match sizes.get(file) {
                Some(size) => *size,
                None => *sizes.entry(*file).or_insert(repo.file_object(file)?.size),
            };
            files.push(TreeFile { path: path.as_os_str().as_bytes().to_vec(), file: *file, size });
        }
        Ok(())
    })?;
    Ok(files)
}

/// The files of the target release, to recognise their contents inside other files (the
/// members of an initramfs).
struct ReleaseFiles {
    chunker: Chunker,
    sizes: HashSet<u64>,
    ids: HashSet<FileId>,
}

impl ReleaseFiles {
    fn new(repo: &Repo, files: &[TreeFile]) -> ReleaseFiles {
        ReleaseFiles {
            chunker: Chunker::new(repo.config().chunker),
            sizes: files.iter().map(|f| f.size).collect(),
            ids: files.iter().map(|f| f.file).collect(),
        }
    }

    /// The release file whose content is `content`: its file object is computed as a commit
    /// would, and looked up.
    fn lookup(&self, content: &[u8]) -> Option<FileId> {
        if !self.sizes.contains(&(content.len() as u64)) {
            return None;
        }
        let mut chunks = Vec::new();
        let size = self
            .chunker
            .split(content, Path::new("(member of a file)"), |chunk| {
                chunks.push((ChunkId(ObjectId::of(chunk)), chunk.len() as u32));
                Ok(())
            })
            .ok()?;
        let id = FileId(ObjectId::of(&FileObject { size, chunks }.encode()));
        self.ids.contains(&id).then_some(id)
    }
}

/// Every chunk of the given files.
fn chunks_of(repo: &Repo, files: &[TreeFile]) -> Result<HashSet<ChunkId>> {
    let mut seen = HashSet::new();
    let mut chunks = HashSet::new();
    for f in files {
        if seen.insert(f.file) {
            chunks.extend(repo.file_object(&f.file)?.chunks.into_iter().map(|(c, _)| c));
        }
    }
    Ok(chunks)
}

/// The stored bytes of `target`'s chunks that a node holding `held` chunks lacks.
fn chunk_cost(repo: &Repo, archive: &ArchiveStore, target: &FileId, held: &HashSet<ChunkId>) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut cost = 0;
    for (chunk, _) in repo.file_object(target)?.chunks {
        if held.contains(&chunk) || !seen.insert(chunk) {
            continue;
        }
        let (_, entry) = archive
            .locate(ObjectKind::Chunk, &chunk.0)
            .ok_or(StoreError::ObjectMissing { kind: ObjectKind::Chunk, id: chunk.0 })?;
        cost += entry.span();
    }
    Ok(cost)
}

/// Writes the new delta objects, in their order, into packs in `tmp/`.
fn write_packs(repo: &Repo, deltas: &[NewDelta]) -> Result<Vec<FinishedPack>> {
    let tmp = repo.path().join(layout::TMP);
    let mut packs = Vec::new();
    let mut writer: Option<PackWriter> = None;
    let mut written = HashSet::new();
    for NewDelta { kind, id, bytes, .. } in deltas {
        if !written.insert(*id) {
            continue;
        }
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(PackWriter::create(&tmp)?),
        };
        w.append(*kind, *id, Codec::Raw, bytes.len() as u32, bytes)?;
        if w.len() >= PACK_TARGET_SIZE {
            packs.push(writer.take().expect("just used").finish()?);
        }
    }
    if let Some(w) = writer {
        packs.push(w.finish()?);
    }
    Ok(packs)
}

/// Makes the packs and the index durable, renames them into `deltas/` (packs first, the index
/// last), drops the index it replaces, and rewrites the summary.
fn publish(repo: &Repo, packs: Vec<FinishedPack>, index: &[u8], replaced: Option<ObjectId>) -> Result<()> {
    let dir = repo.path().join(layout::DELTAS);
    fs::create_dir_all(&dir).at(&dir)?;
    let tmp = repo.path().join(layout::TMP);
    let index_tmp = tmp.join(unique_tmp_name("delta-index"));
    fs::write(&index_tmp, index).at(&index_tmp)?;
    syncfs(&tmp)?;
    crash_point("delta:before-publish");
    for pack in packs {
        let to = dir.join(layout::index_name(&pack.id));
        fs::rename(&pack.index_tmp, &to).at(&to)?;
        let to = dir.join(layout::pack_name(&pack.id));
        fs::rename(&pack.pack_tmp, &to).at(&to)?;
    }
    let hash = ObjectId::of(index);
    let to = dir.join(layout::delta_index_name(&hash));
    fs::rename(&index_tmp, &to).at(&to)?;
    fsync_dir(&dir)?;
    crash_point("delta:published");
    if let Some(old) = replaced.filter(|old| *old != hash) {
        let path = dir.join(layout::delta_index_name(&old));
        fs::remove_file(&path).at(&path)?;
        fsync_dir(&dir)?;
    }
    repo.write_summary()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::tree_refs::TreeRef;

    fn file(n: u8) -> FileId {
        FileId(ObjectId::of(&[n]))
    }

    /// A delta to `target`; a gzip-tree one (its payload framing, then references) when it names
    /// files.
    fn delta(target: FileId, names: &[FileId]) -> NewDelta {
        let (codec, payload) = if names.is_empty() {
            (DeltaCodec::ZstdPatch, b"diff".to_vec())
        } else {
            let mut payload = vec![0u8];
            payload.extend_from_slice(&[0u8; 16 + 12]);
            payload.extend_from_slice(&(names.len() as u32).to_le_bytes());
            for (at, name) in names.iter().enumerate() {
                TreeRef { offset: at as u64, len: 1, file: *name }.encode(&mut payload);
            }
            (DeltaCodec::GzipTree, payload)
        };
        let object = DeltaObject { base: file(0), target, target_size: 1, codec, payload };
        let bytes = object.encode();
        NewDelta {
            kind: ObjectKind::Delta,
            id: ObjectId::of(&bytes),
            bytes,
            listing: Listing::File { target, base: file(0) },
        }
    }

    fn targets(deltas: &[NewDelta]) -> Vec<FileId> {
        deltas.iter().map(|d| if let Listing::File { target, .. } = d.listing { target } else { panic!() }).collect()
    }

    #[test]
    fn deltas_that_read_files_come_first_then_the_files_they_read() {
        let reading = vec![delta(file(9), &[file(3), file(1)])];
        let others = vec![delta(file(1), &[]), delta(file(2), &[]), delta(file(3), &[]), delta(file(4), &[])];
        let ordered = in_pull_order(reading, others).unwrap();
        assert_eq!(targets(&ordered), [file(9), file(1), file(3), file(2), file(4)]);
    }
}
