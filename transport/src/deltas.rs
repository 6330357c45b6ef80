//! Per-file deltas in a pull: the wanted release's delta index, and the choice, file by file,
//! between a delta from a content the node holds and the chunks it lacks.
//!
//! A file is rebuilt from a delta when the delta's stored bytes are fewer than its missing chunks'
//! (a chunk that several new files share is charged to each in part). A delta that an
//! interrupted pull staged costs nothing. The chunks that no file built from chunks needs any more
//! leave the plan.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use osdeploy_store::delta::index::{DeltaEntry, DeltaIndex, MetadataEntry};
use osdeploy_store::layout;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::{CommitId, FileId, ObjectId, StoreError};

use crate::error::TransportError;
use crate::index::PackEntries;
use crate::plan::{Cost, FileSource, ObjectLocations, PullPlan, Survey, WholeFile};
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
