//! Pull plans: what a node must fetch for a commit — the metadata it lacks, the files it must
//! build and where each file's content comes from, and the pack ranges to request, coalesced.
//!
//! One [`PullPlan`] value is built from a survey of the wanted commit (see [`crate::survey`]: the
//! summary, the pack indexes and the new release's metadata), printed by `osdeploy delta` and
//! `osdeploy pull --dry-run`, and executed by `osdeploy pull`, so what a pull moves is what its plan
//! says. Objects lie at known byte ranges of packs (their pack index says where); ranges in the
//! same pack that are close are merged into one request, accepting a small gap of unneeded bytes,
//! up to a maximum request size.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use osdeploy_store::archive::ArchiveStore;
use osdeploy_store::delta::index::DeltaEntry;
use osdeploy_store::layout;
use osdeploy_store::object::{FileObject, ObjectKind};
use osdeploy_store::pack::IndexEntry;
use osdeploy_store::summary::Summary;
use osdeploy_store::{CommitId, FileId, ObjectId, Repo, StoreError};
use serde::Serialize;

use crate::delta_sources::{DeltaSources, LocalDeltaFiles};
use crate::deltas::DeltaUse;
use crate::error::TransportError;

/// How ranges are merged into requests.
#[derive(Clone, Copy, Debug)]
pub struct CoalesceOptions {
    /// Neighbouring ranges of one pack separated by at most this many unneeded bytes are merged.
    pub max_gap: u64,
    /// No merged request grows beyond this many bytes.
    pub max_request: u64,
}

impl Default for CoalesceOptions {
    /// 64 KiB of gap (about one chunk: cheaper to fetch than a new request on any real link) and
    /// 16 MiB requests (several in flight keep a fast link busy; a failed one is cheap to redo).
    fn default() -> Self {
        CoalesceOptions { max_gap: 64 << 10, max_request: 16 << 20 }
    }
}

/// One HTTP Range request into a pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackRead {
    /// The pack's id.
    pub pack: ObjectId,
    /// First byte.
    pub offset: u64,
    /// Length in bytes (entry headers and merged gaps included).
    pub len: u64,
    /// Objects it carries.
    pub objects: u64,
}

/// A file fetched whole (not a pack range): the summary and signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WholeFile {
    /// Its path in the repository (and URL relative to the remote's).
    pub name: String,
    /// Its size.
    pub bytes: u64,
}

/// Where the content of one new file comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSource {
    /// Its chunks: those the node holds are read from its files, the others are fetched.
    Chunks,
    /// An interrupted pull left its complete content in the repository: it is recorded as it is.
    Adopted,
    /// A delta from a content the node holds (see [`crate::deltas`]).
    Delta(DeltaEntry),
}

/// A file of the wanted commit that the node does not hold.
#[derive(Clone, Debug)]
pub struct PlannedFile {
    /// Its file object's id.
    pub id: FileId,
    /// Its file object.
    pub object: FileObject,
    /// Where its content comes from.
    pub source: FileSource,
}

/// What a survey found the node lacks (the input of [`PullPlan::new`]).
#[derive(Clone, Debug, Default)]
pub struct Survey {
    /// New commit and dirtree objects.
    pub new_metadata: Vec<(ObjectId, ObjectKind)>,
    /// New files, with their sources.
    pub files: Vec<PlannedFile>,
    /// Chunks of new files that the node does not hold, each once.
    pub missing_chunks: Vec<ObjectId>,
    /// Chunks of new files the node holds already.
    pub chunks_reused: u64,
    /// Their uncompressed size.
    pub reused_bytes_raw: u64,
    /// Every metadata object (commit, dirtree, file) fetched for the plan.
    pub metadata_fetched: Vec<(ObjectId, ObjectKind)>,
    /// The reads that fetched them.
    pub metadata_reads: Vec<PackRead>,
    /// Deltas to fetch, each once (chosen by [`crate::deltas::choose`]; none staged already).
    pub deltas: Vec<DeltaEntry>,
    /// Stored bytes of the metadata delta that brought the new metadata, if one did.
    pub metadata_delta_bytes: u64,
    /// The packs holding objects of the wanted commit that the node lacks (metadata, chunks,
    /// and what a metadata delta brought): a pull loads every index it lacks before it knows what
    /// it reads, so a plan between two commits counts these indexes, read from or not.
    pub new_packs: BTreeSet<ObjectId>,
}

impl Survey {
    /// Counts the metadata delta that staged `objects` before the walk (its read first).
    pub fn add_metadata_delta(
        &mut self,
        read: Option<PackRead>,
        objects: impl IntoIterator<Item = (ObjectId, ObjectKind)>,
        locations: &impl ObjectLocations,
    ) {
        if let Some(read) = read {
            self.metadata_delta_bytes = read.len;
            self.metadata_reads.insert(0, read);
            let packs = objects.into_iter().filter_map(|(id, kind)| locations.locate(kind, &id)).map(|(pack, _)| pack);
            self.new_packs.extend(packs);
        }
    }

    /// The objects this survey found the node lacks: for a node holding nothing, the commit's
    /// whole tree.
    pub fn objects(&self) -> HashSet<(ObjectId, ObjectKind)> {
        let mut all: HashSet<_> = self.new_metadata.iter().copied().collect();
        all.extend(self.files.iter().map(|f| (f.id.0, ObjectKind::File)));
        all.extend(self.missing_chunks.iter().map(|id| (*id, ObjectKind::Chunk)));
        all
    }
}

/// What a node must fetch for commit `to`, and how.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PullPlan {
    /// The commit the node holds for this branch, if any.
    pub from: Option<CommitId>,
    /// The commit it wants.
    pub to: CommitId,
    /// New metadata objects (commit, dirtrees, file objects) fetched as objects.
    pub metadata_objects: u64,
    /// Stored bytes of the metadata delta that brings the new metadata instead (entry header
    /// included; 0 when there is none).
    pub metadata_delta_bytes: u64,
    /// Their stored size, entry headers included.
    pub metadata_bytes: u64,
    /// New files to build.
    pub files_new: u64,
    /// Of those, files whose content an interrupted pull left complete.
    pub files_adopted: u64,
    /// Of those, files rebuilt from a delta.
    pub files_from_deltas: u64,
    /// Deltas fetched.
    pub deltas: u64,
    /// Their stored size, entry headers included.
    pub delta_bytes: u64,
    /// New chunks.
    pub chunks: u64,
    /// Their uncompressed size.
    pub chunk_bytes_raw: u64,
    /// Stored (compressed) bytes of everything needed (chunks, deltas and metadata), entry
    /// headers included, gaps excluded.
    pub needed_bytes: u64,
    /// Chunks of `to` the node already holds.
    pub chunks_reused: u64,
    /// Their uncompressed size.
    pub reused_bytes_raw: u64,
    /// Pack index files the node fetches (one request each).
    pub index_files: u64,
    /// Bytes of those index files.
    pub index_bytes: u64,
    /// Files fetched whole: the summary and, from a signed repository, its signature and the
    /// wanted commit's; the release's delta index when it is used and not cached.
    pub whole_files: Vec<WholeFile>,
    /// Coalesced Range requests into packs: the metadata's, the deltas', then the chunks'.
    pub reads: Vec<PackRead>,
    /// Range requests + index requests + whole files.
    pub requests: u64,
    /// Bytes on the wire: ranges (gaps included) + index files + whole files.
    pub transfer_bytes: u64,
    /// What the same pull would cost with chunks only, when deltas were considered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub without_deltas: Option<Cost>,
    /// The new commit and dirtree objects, stored last.
    #[serde(skip)]
    pub new_metadata: Vec<(ObjectId, ObjectKind)>,
    /// The new files and their sources.
    #[serde(skip)]
    pub files: Vec<PlannedFile>,
    /// The chunks to fetch.
    #[serde(skip)]
    pub missing_chunks: Vec<ObjectId>,
    /// The deltas to fetch.
    #[serde(skip)]
    pub delta_entries: Vec<DeltaEntry>,
    /// Where in `reads` the delta reads begin.
    #[serde(skip)]
    pub first_delta_read: usize,
    /// Where in `reads` the chunk reads begin.
    #[serde(skip)]
    pub first_chunk_read: usize,
}

/// What a plan costs on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// Bytes transferred.
    pub transfer_bytes: u64,
    /// Requests sent.
    pub requests: u64,
}

/// Pack index files a node fetches.
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexFetches {
    /// How many.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Which pack indexes a plan counts.
#[derive(Clone, Copy, Debug)]
pub enum Indexes {
    /// Those a node's survey fetched (the ones not in its cache).
    Fetched(IndexFetches),
    /// Those of the packs the plan reads: what a node lacks when the indexes it holds are
    /// exactly those of the packs it needs nothing from (a plan between two commits).
    OfReads,
    /// None: the metadata delta said where every chunk the node can lack lies.
    None,
}

impl PullPlan {
    /// Builds the plan from a survey: the chunk reads are coalesced here, everything else is
    /// counted.
    pub fn new(
        from: Option<CommitId>,
        to: CommitId,
        survey: Survey,
        locations: &impl ObjectLocations,
        indexes: Indexes,
        whole_files: Vec<WholeFile>,
        options: CoalesceOptions,
    ) -> Result<PullPlan, StoreError> {
        // Each chunk is located once: for its read and for the counts.
        let chunks = survey
            .missing_chunks
            .iter()
            .map(|id| locate(locations, ObjectKind::Chunk, id))
            .collect::<Result<Vec<_>, _>>()?;
        let chunk_reads = coalesce_located(&chunks, options);
        let deltas: Vec<_> = survey.deltas.iter().map(|d| (d.pack, d.entry)).collect();
        let delta_reads = coalesce_located(&deltas, options);
        let mut plan = PullPlan {
            from,
            to,
            files_new: survey.files.len() as u64,
            files_adopted: survey.files.iter().filter(|f| f.source == FileSource::Adopted).count() as u64,
            files_from_deltas: survey.files.iter().filter(|f| matches!(f.source, FileSource::Delta(_))).count() as u64,
            deltas: deltas.len() as u64,
            delta_bytes: deltas.iter().map(|(_, e)| e.span()).sum(),
            chunks: survey.missing_chunks.len() as u64,
            chunks_reused: survey.chunks_reused,
            reused_bytes_raw: survey.reused_bytes_raw,
            first_delta_read: survey.metadata_reads.len(),
            first_chunk_read: survey.metadata_reads.len() + delta_reads.len(),
            ..Default::default()
        };
        for (id, kind) in &survey.metadata_fetched {
            let (_, entry) = locate(locations, *kind, id)?;
            plan.metadata_objects += 1;
            plan.metadata_bytes += entry.span();
        }
        for (_, entry) in &chunks {
            plan.chunk_bytes_raw += u64::from(entry.raw_len);
            plan.needed_bytes += entry.span();
        }
        plan.metadata_delta_bytes = survey.metadata_delta_bytes;
        plan.needed_bytes += plan.metadata_bytes + plan.metadata_delta_bytes + plan.delta_bytes;
        plan.reads = survey.metadata_reads;
        // A node needs no index of a delta pack: the release's delta index says where deltas lie
        // (the metadata delta's read comes first).
        let indexes = match indexes {
            Indexes::Fetched(fetches) => fetches,
            Indexes::None => IndexFetches::default(),
            Indexes::OfReads => {
                let object_reads = &plan.reads[usize::from(survey.metadata_delta_bytes > 0)..];
                let packs = object_reads.iter().chain(&chunk_reads).map(|r| r.pack);
                indexes_of_packs(packs.chain(survey.new_packs.iter().copied()), locations)?
            }
        };
        plan.reads.extend(delta_reads);
        plan.reads.extend(chunk_reads);
        (plan.index_files, plan.index_bytes) = (indexes.files, indexes.bytes);
        plan.requests = (plan.reads.len() + whole_files.len()) as u64 + plan.index_files;
        plan.transfer_bytes = plan.reads.iter().map(|r| r.len).sum::<u64>()
            + plan.index_bytes
            + whole_files.iter().map(|f| f.bytes).sum::<u64>();
        plan.whole_files = whole_files;
        plan.new_metadata = survey.new_metadata;
        plan.files = survey.files;
        plan.missing_chunks = survey.missing_chunks;
        plan.delta_entries = survey.deltas;
        Ok(plan)
    }

    /// What this plan costs on the wire.
    pub fn cost(&self) -> Cost {
        Cost { transfer_bytes: self.transfer_bytes, requests: self.requests }
    }

    /// The delta reads (executed by the pull first).
    pub fn delta_reads(&self) -> &[PackRead] {
        &self.reads[self.first_delta_read..self.first_chunk_read]
    }

    /// The chunk reads (executed by the pull; the metadata's were done by the survey).
    pub fn chunk_reads(&self) -> &[PackRead] {
        &self.reads[self.first_chunk_read..]
    }
}

/// Where a repository being planned keeps its objects: a local archive repository, or a
/// remote's pack indexes.
pub trait ObjectLocations {
    /// The pack holding an object, and the object's entry there.
    fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(ObjectId, IndexEntry)>;
    /// The size of a pack's index file.
    fn index_bytes(&self, pack: &ObjectId) -> Result<u64, StoreError>;
    /// The metadata objects (every kind but chunks) a pack holds.
    fn metadata_of_pack(&self, pack: &ObjectId) -> Vec<(ObjectId, ObjectKind)>;
}

impl ObjectLocations for ArchiveStore {
    fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(ObjectId, IndexEntry)> {
        ArchiveStore::locate(self, kind, id).map(|(pack, entry)| (pack.id, *entry))
    }

    fn index_bytes(&self, pack: &ObjectId) -> Result<u64, StoreError> {
        let path = self.packs_dir().join(layout::index_name(pack));
        std::fs::metadata(&path).map(|m| m.len()).map_err(|error| StoreError::Io { path, error })
    }

    fn metadata_of_pack(&self, pack: &ObjectId) -> Vec<(ObjectId, ObjectKind)> {
        ArchiveStore::metadata_of_pack(self, pack)
    }
}

fn indexes_of_packs(
    packs: impl Iterator<Item = ObjectId>,
    locations: &impl ObjectLocations,
) -> Result<IndexFetches, StoreError> {
    let packs: BTreeSet<ObjectId> = packs.collect();
    let mut fetches = IndexFetches::default();
    for pack in packs {
        fetches.files += 1;
        fetches.bytes += locations.index_bytes(&pack)?;
    }
    Ok(fetches)
}

fn locate(
    locations: &impl ObjectLocations,
    kind: ObjectKind,
    id: &ObjectId,
) -> Result<(ObjectId, IndexEntry), StoreError> {
    locations.locate(kind, id).ok_or(StoreError::ObjectMissing { kind, id: *id })
}

/// The coalesced reads that fetch `wanted`, pack by pack (see [`CoalesceOptions`]).
pub fn plan_reads(
    locations: &impl ObjectLocations,
    wanted: &[(ObjectId, ObjectKind)],
    options: CoalesceOptions,
) -> Result<Vec<PackRead>, StoreError> {
    let located = wanted.iter().map(|(id, kind)| locate(locations, *kind, id)).collect::<Result<Vec<_>, _>>()?;
    Ok(coalesce_located(&located, options))
}

/// The coalesced reads of objects already located (pack, entry).
fn coalesce_located(located: &[(ObjectId, IndexEntry)], options: CoalesceOptions) -> Vec<PackRead> {
    let mut by_pack: BTreeMap<ObjectId, Vec<(u64, u64)>> = BTreeMap::new();
    for (pack, entry) in located {
        by_pack.entry(*pack).or_default().push((entry.offset, entry.span()));
    }
    let mut reads = Vec::new();
    for (pack, mut spans) in by_pack {
        spans.sort_unstable();
        reads.extend(coalesce(pack, &spans, options));
    }
    reads
}

/// Plans the transfer from `from` (None: the node holds nothing) to `to` in a local archive
/// repository: the plan a node holding exactly `from` makes when the repository is served
/// (the same walk as a pull's, reading metadata from the local packs).
pub fn plan(
    repo: &Repo,
    from: Option<CommitId>,
    to: CommitId,
    options: CoalesceOptions,
    deltas: DeltaUse,
) -> Result<PullPlan, StoreError> {
    let archive = repo.archive().ok_or_else(|| StoreError::NotARepository {
        path: repo.path().into(),
        reason: "delta plans are computed on an archive repository (what nodes pull from)".into(),
    })?;
    let survey_of =
        |commit, holdings, prefetched| crate::survey::walk_local(repo, archive, &holdings, prefetched, commit, options);
    let have = match from {
        Some(f) => survey_of(f, HashSet::new(), HashSet::new())?.objects(),
        None => HashSet::new(),
    };
    // The files every pull fetches whole: the summary and, from a signed repository, its
    // signature and the wanted commit's.
    let names = [layout::SUMMARY.to_string(), layout::SUMMARY_SIGNATURE.into(), layout::commit_signature(&to)];
    let whole_files: Vec<WholeFile> = names
        .into_iter()
        .filter_map(|name| std::fs::metadata(repo.path().join(&name)).ok().map(|m| WholeFile { name, bytes: m.len() }))
        .collect();
    // A node that holds a release finds its deltas as a pull does.
    let summary_path = repo.path().join(layout::SUMMARY);
    let summary = match std::fs::read(&summary_path) {
        Ok(bytes) => Some(Summary::parse(&bytes, &format!("the summary {}", summary_path.display()))?),
        Err(_) => None,
    };
    let DeltaSources { catalog, metadata_delta } = match (deltas, from) {
        (DeltaUse::WhereCheaper, Some(from)) => LocalDeltaFiles::open(repo)?
            .sources(summary.as_ref(), to, |c| Ok(*c == from))
            .map_err(|e| store_error(repo, e))?,
        _ => DeltaSources::default(),
    };
    // A metadata delta that says where the chunks lie spares the node every pack index.
    let indexes = match &metadata_delta {
        Some(m) if !m.chunk_locations.is_empty() => Indexes::None,
        _ => Indexes::OfReads,
    };
    let (metadata_read, prefetched) = metadata_delta.map(|m| (m.read, m.objects.into_iter().collect())).unzip();
    let prefetched: HashSet<_> = prefetched.unwrap_or_default();
    let build = |survey, indexes, extra: Option<WholeFile>| {
        let files = whole_files.iter().cloned().chain(extra).collect();
        PullPlan::new(from, to, survey, archive, indexes, files, options)
    };
    // What a node fetching chunks only (and no metadata delta) would walk.
    let mut survey = survey_of(to, have.clone(), prefetched.clone())?;
    let without_deltas = match (&catalog, prefetched.is_empty()) {
        (None, _) => None,
        (Some(_), true) => Some(build(survey.clone(), Indexes::OfReads, None)?.cost()),
        (Some(_), false) => Some(build(survey_of(to, have.clone(), HashSet::new())?, Indexes::OfReads, None)?.cost()),
    };
    survey.add_metadata_delta(metadata_read, prefetched, archive);
    let catalog = catalog.as_ref().map(|(c, d)| (c, d.clone()));
    let build = |survey, extra| build(survey, indexes, extra);
    crate::deltas::choose_and_plan(survey, without_deltas, catalog, &have, |_| false, archive, build)
        .map_err(|e| store_error(repo, e))
}

/// A local plan's error as `repo`'s: reading the repository is all it does.
fn store_error(repo: &Repo, error: TransportError) -> StoreError {
    match error {
        TransportError::Store(e) => e,
        other => {
            StoreError::Corrupt { what: format!("repository {}", repo.path().display()), reason: other.to_string() }
        }
    }
}

/// Merges sorted `(offset, len)` spans of one pack into reads (see [`CoalesceOptions`]).
pub fn coalesce(pack: ObjectId, spans: &[(u64, u64)], options: CoalesceOptions) -> Vec<PackRead> {
    let mut reads: Vec<PackRead> = Vec::new();
    for &(offset, len) in spans {
        if let Some(last) = reads.last_mut() {
            let end = last.offset + last.len;
            if offset >= end && offset - end <= options.max_gap && offset + len - last.offset <= options.max_request {
                last.len = offset + len - last.offset;
                last.objects += 1;
                continue;
            }
        }
        reads.push(PackRead { pack, offset, len, objects: 1 });
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_across_small_gaps_up_to_the_request_limit() {
        let opts = CoalesceOptions { max_gap: 10, max_request: 100 };
        let pack = ObjectId::of(b"p");
        let reads = coalesce(pack, &[(0, 20), (25, 20), (60, 10), (70, 50), (120, 10)], opts);
        let got: Vec<(u64, u64, u64)> = reads.iter().map(|r| (r.offset, r.len, r.objects)).collect();
        // 0..45 merges (gap 5); 60 starts new (gap 15); 70..120 merges with 60 (gap 0, 60 bytes);
        // 120..130 would make 70 bytes: merged.
        assert_eq!(got, vec![(0, 45, 2), (60, 70, 3)]);
        let reads = coalesce(pack, &[(0, 60), (60, 60)], opts);
        assert_eq!(reads.len(), 2, "the merged read would exceed max_request");
    }
}
