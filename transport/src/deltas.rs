//! Per-file deltas in a pull: the wanted release's delta index, and the choice, file by file,
//! between a delta from a content the node holds and the chunks it lacks.
//!
//! A file is rebuilt from a delta when the delta's stored bytes are fewer than its missing chunks'
//! (a chunk that several new files share is charged to each in part). A delta that an
//! interrupted pull staged costs nothing. The chunks that no file built from chunks needs any more
//! leave the plan.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::Arc;

use osdeploy_store::delta::index::{DeltaEntry, DeltaIndex, MetadataEntry};
use osdeploy_store::delta::metadata::{MetadataDelta, base_stream};
use osdeploy_store::delta::published::PublishedDeltas;
use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::layout;
use osdeploy_store::object::Commit;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::summary::Summary;
use osdeploy_store::{CommitId, FileId, ObjectId, Repo, StoreError};

use crate::client::Client;
use crate::error::TransportError;
use crate::fetch::fetch;
use crate::index::{CacheWrites, PackEntries, RemoteIndex, download};
use crate::plan::{Cost, FileSource, ObjectLocations, PackRead, PullPlan, Survey, WholeFile};
use crate::remote::index_cache;
use crate::staging::Staging;
use crate::summary;
use crate::survey::Holdings;

/// Whether a pull or plan may use deltas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeltaUse {
    /// Use a delta wherever it is cheaper than the chunks.
    #[default]
    WhereCheaper,
    /// Fetch chunks only (`--no-deltas`).
    Never,
}

/// The deltas leading to one release: file deltas by target content, and metadata deltas.
#[derive(Debug, Default)]
pub struct DeltaCatalog {
    by_target: HashMap<FileId, Vec<DeltaEntry>>,
    metadata: Vec<MetadataEntry>,
}

impl DeltaCatalog {
    /// The catalog of one release's delta index.
    pub fn new(index: DeltaIndex) -> Self {
        let mut by_target: HashMap<FileId, Vec<DeltaEntry>> = HashMap::new();
        for entry in index.entries {
            by_target.entry(entry.target).or_default().push(entry);
        }
        DeltaCatalog { by_target, metadata: index.metadata }
    }

    /// The deltas that rebuild `target`.
    pub fn candidates(&self, target: &FileId) -> &[DeltaEntry] {
        self.by_target.get(target).map(Vec::as_slice).unwrap_or_default()
    }

    /// The catalog a metadata delta makes: itself and the file deltas it lists.
    pub fn of_metadata_delta(to: CommitId, entry: MetadataEntry, deltas: Vec<DeltaEntry>) -> Self {
        DeltaCatalog::new(DeltaIndex { to, entries: deltas, metadata: vec![entry] })
    }

    /// The smallest metadata delta from a release `held` says the node holds.
    pub fn metadata_from(
        &self,
        mut held: impl FnMut(&CommitId) -> Result<bool, StoreError>,
    ) -> Result<Option<&MetadataEntry>, StoreError> {
        let mut best: Option<&MetadataEntry> = None;
        for m in &self.metadata {
            if best.is_none_or(|b| m.entry.span() < b.entry.span()) && held(&m.from)? {
                best = Some(m);
            }
        }
        Ok(best)
    }

    /// The entries of the delta packs the catalog's deltas lie in, as pack entries the fetch can
    /// check ranges against (a node never downloads a delta pack's own index).
    pub fn pack_entries(&self) -> Vec<Arc<PackEntries>> {
        let mut by_pack: HashMap<ObjectId, Vec<_>> = HashMap::new();
        let files = self.by_target.values().flatten().map(|d| (d.pack, d.entry));
        for (pack, entry) in files.chain(self.metadata.iter().map(|m| (m.pack, m.entry))) {
            by_pack.entry(pack).or_default().push(entry);
        }
        by_pack
            .into_iter()
            .map(|(pack, mut entries)| {
                entries.sort_by_key(|e| (e.id, e.kind));
                entries.dedup_by_key(|e| (e.id, e.kind));
                Arc::new(PackEntries { pack, path: layout::delta_pack_file(&pack), index_bytes: 0, entries })
            })
            .collect()
    }
}

/// The read that fetches a metadata delta.
pub fn metadata_read(entry: &MetadataEntry) -> PackRead {
    PackRead { pack: entry.pack, offset: entry.entry.offset, len: entry.entry.span(), objects: 1 }
}

/// What a metadata delta brought before the walk.
pub struct PrefetchedMetadata {
    /// The read that fetched it.
    pub read: PackRead,
    /// The objects it staged: metadata, and the chunks it carries.
    pub objects: Vec<(ObjectId, ObjectKind)>,
    /// Where the chunks lie that a node holding its starting release can lack, by pack (empty
    /// when the delta does not list them: the pull then loads the pack indexes).
    pub chunk_locations: Vec<Arc<PackEntries>>,
    /// The file deltas from its starting release's contents (None when the delta does not list
    /// them: the release's delta index does).
    pub deltas: Option<Vec<DeltaEntry>>,
}

/// Fetches the metadata delta `entry` into `staged` and stages every object it rebuilds, so that
/// the walk finds the release's new metadata fetched already. `read_base` returns the objects of
/// the release the delta starts from; `packs` are the remote's packs (id, size), which the chunk
/// locations it lists must name.
pub async fn prefetch_metadata(
    client: &Client,
    index: &RemoteIndex,
    staged: &mut Staging,
    entry: &MetadataEntry,
    packs: &[(ObjectId, u64)],
    read_base: impl Fn(ObjectKind, &ObjectId) -> Result<Vec<u8>, StoreError>,
) -> Result<PrefetchedMetadata, TransportError> {
    let read = metadata_read(entry);
    let id = entry.entry.id;
    // An interrupted pull may have staged it already.
    if !staged.has(ObjectKind::MetadataDelta, &id) {
        let wanted = HashSet::from([(id, ObjectKind::MetadataDelta)]);
        let keep = |staged: &mut Staging, _| Ok(staged.settle(|_, _| true)?);
        fetch(client, index, std::slice::from_ref(&read), wanted, staged, 1, keep).await?;
    }
    let delta = MetadataDelta::decode(id, &staged.get(ObjectKind::MetadataDelta, &id)?)?;
    let invalid = |reason: String| TransportError::Invalid {
        what: format!("metadata delta {id}"),
        url: client.remote_name().into(),
        reason,
    };
    if delta.from != entry.from {
        return Err(invalid(format!("it starts from {}, the delta index says {}", delta.from, entry.from)));
    }
    let from = Commit::decode(entry.from.0, &read_base(ObjectKind::Commit, &entry.from.0)?)?;
    let rebuilt = delta.apply(&base_stream(&from, &read_base)?.bytes)?;
    let mut chunk_locations = Vec::new();
    for located in rebuilt.chunk_locations {
        match packs.iter().find(|(pack, _)| *pack == located.pack) {
            Some((_, size)) if *size == located.pack_size => {}
            Some((_, size)) => {
                let pack = located.pack;
                return Err(invalid(format!(
                    "it says pack {pack} has {} bytes, the summary {size}",
                    located.pack_size
                )));
            }
            None => {
                return Err(invalid(format!("it locates chunks in pack {}, which the summary lacks", located.pack)));
            }
        }
        let path = layout::pack_file(&located.pack);
        chunk_locations.push(Arc::new(PackEntries {
            pack: located.pack,
            path,
            index_bytes: 0,
            entries: located.entries,
        }));
    }
    let mut objects = Vec::new();
    for (kind, id, bytes) in rebuilt.objects {
        staged.put(kind, id, &bytes);
        objects.push((id, kind));
    }
    for (id, bytes) in rebuilt.chunks {
        staged.put(ObjectKind::Chunk, id, &bytes);
        objects.push((id, ObjectKind::Chunk));
    }
    staged.settle(|_, _| true)?;
    Ok(PrefetchedMetadata { read, objects, chunk_locations, deltas: rebuilt.deltas.map(|d| d.entries) })
}

/// The deltas a pull may use: the file deltas into the wanted release (with the download of its
/// delta index, when that was needed), and the metadata delta applied before the walk.
#[derive(Default)]
pub struct DeltaSources {
    /// The file deltas, and the download of the delta index that listed them.
    pub catalog: Option<(DeltaCatalog, Option<WholeFile>)>,
    /// The metadata delta, fetched and applied.
    pub metadata_delta: Option<PrefetchedMetadata>,
}

/// Finds the deltas into `commit` that start from releases `held` says the node holds: the
/// metadata delta the `offered` summary lists, which says where the chunks lie and which file
/// deltas there are (then neither a pack index nor the delta index is fetched); else the release's
/// delta index and the metadata delta it lists. `read_base` reads the held releases' objects; the
/// delta index is read from and written to a repository's index `cache` as it allows. A metadata
/// delta that does not apply is a warning (the walk then fetches metadata as objects), and is
/// tried once. A pull and `delta --remote` both find their deltas so.
pub async fn delta_sources(
    client: &Client,
    offered: &Summary,
    commit: CommitId,
    staged: &mut Staging,
    held: impl Fn(&CommitId) -> Result<bool, StoreError>,
    read_base: impl Fn(ObjectKind, &ObjectId) -> Result<Vec<u8>, StoreError>,
    cache: Option<(&Repo, CacheWrites)>,
) -> Result<DeltaSources, TransportError> {
    let packs = summary::pack_sizes(offered);
    let unusable =
        |e: TransportError| tracing::warn!("the metadata delta is unusable, metadata is fetched as objects: {e}");
    let mut sources = DeltaSources::default();
    let mut tried = None;
    if let Some(listed) = offered.metadata_delta(&commit, &held)? {
        let entry = listed.entry();
        tried = Some(entry.entry.id);
        let alone = RemoteIndex { packs: DeltaCatalog::of_metadata_delta(commit, entry, Vec::new()).pack_entries() };
        match prefetch_metadata(client, &alone, staged, &entry, &packs, &read_base).await {
            Ok(mut prefetched) => {
                if let Some(files) = prefetched.deltas.take() {
                    sources.catalog = Some((DeltaCatalog::of_metadata_delta(commit, entry, files), None));
                }
                sources.metadata_delta = Some(prefetched);
            }
            Err(e) => unusable(e),
        }
    }
    if sources.catalog.is_none() {
        let (repo, writes) = cache.unzip();
        let writes = writes.unwrap_or(CacheWrites::Forbidden);
        sources.catalog = remote_catalog(client, offered, &commit, repo, writes).await?;
    }
    if sources.metadata_delta.is_none()
        && let Some((catalog, _)) = &sources.catalog
        && let Some(entry) = catalog.metadata_from(&held)?
        && tried != Some(entry.entry.id)
    {
        let delta_packs = RemoteIndex { packs: catalog.pack_entries() };
        match prefetch_metadata(client, &delta_packs, staged, entry, &packs, &read_base).await {
            Ok(prefetched) => sources.metadata_delta = Some(prefetched),
            Err(e) => unusable(e),
        }
    }
    Ok(sources)
}

/// The delta index of release `to` from a local archive repository, if it has one.
pub fn local_catalog(repo: &Repo, to: &CommitId) -> Result<Option<DeltaCatalog>, StoreError> {
    let published = PublishedDeltas::load(repo.path())?;
    Ok(published.indexes.into_values().find(|p| p.index.to == *to).map(|p| DeltaCatalog::new(p.index)))
}

/// The delta index of release `to` that the remote's summary lists, from `cache` (a repository's
/// index cache, written when `writes` allows) or downloaded, verified against the summary's hash.
/// Returns it with the download it cost (None when cached).
pub async fn remote_catalog(
    client: &Client,
    summary: &Summary,
    to: &CommitId,
    cache: Option<&Repo>,
    writes: CacheWrites,
) -> Result<Option<(DeltaCatalog, Option<WholeFile>)>, TransportError> {
    let Some(listed) = summary.delta_indexes.iter().find(|d| d.to == *to) else {
        return Ok(None);
    };
    let name = layout::delta_index_file(&listed.index);
    let cached = cache.map(|repo| index_cache(repo).join(layout::delta_index_name(&listed.index)));
    let held = cached.as_ref().and_then(|path| fs::read(path).ok()).filter(|b| ObjectId::of(b) == listed.index);
    let (bytes, fetched) = match held {
        Some(bytes) => (bytes, None),
        None => {
            let bytes = download(client, &name, &listed.index, listed.size).await?;
            if let (Some(repo), Some(path), CacheWrites::Allowed) = (cache, &cached, writes) {
                let dir = index_cache(repo);
                fs::create_dir_all(&dir).map_err(|error| StoreError::Io { path: dir, error })?;
                atomic_write(path, &repo.path().join(layout::TMP), &bytes)?;
            }
            let file = WholeFile { name: name.clone(), bytes: bytes.len() as u64 };
            (bytes, Some(file))
        }
    };
    let index = DeltaIndex::decode(&bytes, &name).map_err(|e| TransportError::Invalid {
        what: name.clone(),
        url: client.remote_name().into(),
        reason: format!("{e} (although it matches the summary's hash)"),
    })?;
    if index.to != *to {
        return Err(TransportError::Invalid {
            what: name,
            url: client.remote_name().into(),
            reason: format!("it lists deltas to {}, the summary says {to}", index.to),
        });
    }
    Ok(Some((DeltaCatalog::new(index), fetched)))
}

/// The plan `build` makes of `survey` once deltas from `catalog` (if any: with the download of its
/// delta index, when not cached) are chosen, with `without_deltas`, what the same pull would cost
/// with chunks only (when the caller planned it). `build` is given the files to fetch whole
/// besides its own.
pub fn choose_and_plan(
    mut survey: Survey,
    without_deltas: Option<Cost>,
    catalog: Option<(&DeltaCatalog, Option<WholeFile>)>,
    holdings: &impl Holdings,
    staged: impl Fn(&ObjectId) -> bool,
    locations: &impl ObjectLocations,
    build: impl Fn(Survey, Option<WholeFile>) -> Result<PullPlan, StoreError>,
) -> Result<PullPlan, TransportError> {
    let Some((catalog, index_download)) = catalog else { return Ok(build(survey, None)?) };
    choose(&mut survey, catalog, holdings, staged, locations)?;
    let mut plan = build(survey, index_download)?;
    plan.without_deltas = without_deltas;
    Ok(plan)
}

/// Chooses, for every new file built from chunks, a delta from a content the node holds when
/// that is cheaper (see the module's doc), and drops the chunks no file needs any more.
/// `staged` tells which deltas an interrupted pull left.
pub fn choose(
    survey: &mut Survey,
    catalog: &DeltaCatalog,
    holdings: &impl Holdings,
    staged: impl Fn(&ObjectId) -> bool,
    locations: &impl ObjectLocations,
) -> Result<(), TransportError> {
    let missing: HashSet<ObjectId> = survey.missing_chunks.iter().copied().collect();
    let mut users: HashMap<ObjectId, u64> = HashMap::new();
    for file in survey.files.iter().filter(|f| f.source == FileSource::Chunks) {
        for chunk in unique_missing(&file.object.chunks, &missing) {
            *users.entry(chunk).or_default() += 1;
        }
    }
    let mut fetched = HashSet::new();
    for file in survey.files.iter_mut().filter(|f| f.source == FileSource::Chunks) {
        let mut best: Option<(u64, &DeltaEntry)> = None;
        for delta in catalog.candidates(&file.id) {
            if !holdings.holds(ObjectKind::File, &delta.base.0)? {
                continue;
            }
            let cost =
                if staged(&delta.entry.id) || fetched.contains(&delta.entry.id) { 0 } else { delta.entry.span() };
            if best.is_none_or(|(b, _)| cost < b) {
                best = Some((cost, delta));
            }
        }
        let Some((delta_cost, delta)) = best else { continue };
        let mut chunk_cost = 0;
        for chunk in unique_missing(&file.object.chunks, &missing) {
            let (_, entry) = locations
                .locate(ObjectKind::Chunk, &chunk)
                .ok_or(StoreError::ObjectMissing { kind: ObjectKind::Chunk, id: chunk })?;
            chunk_cost += entry.span().div_ceil(users[&chunk]);
        }
        if delta_cost < chunk_cost {
            if delta_cost > 0 {
                fetched.insert(delta.entry.id);
            }
            file.source = FileSource::Delta(*delta);
        }
    }
    let still_needed: HashSet<ObjectId> = survey
        .files
        .iter()
        .filter(|f| f.source == FileSource::Chunks)
        .flat_map(|f| unique_missing(&f.object.chunks, &missing))
        .collect();
    survey.missing_chunks.retain(|c| still_needed.contains(c));
    let mut to_fetch = HashSet::new();
    survey.deltas = survey
        .files
        .iter()
        .filter_map(|f| match f.source {
            FileSource::Delta(d) if !staged(&d.entry.id) && to_fetch.insert(d.entry.id) => Some(d),
            _ => None,
        })
        .collect();
    Ok(())
}

/// The missing chunks of a file, each once.
fn unique_missing<'a>(
    chunks: &'a [(osdeploy_store::ChunkId, u32)],
    missing: &'a HashSet<ObjectId>,
) -> impl Iterator<Item = ObjectId> + 'a {
    let mut seen = HashSet::new();
    chunks.iter().map(|(c, _)| c.0).filter(move |c| missing.contains(c) && seen.insert(*c))
}
