//! Where a node finds the deltas into a release: the metadata delta from a release it holds, and
//! the release's file deltas. A pull and `delta --remote` read them from a remote, `delta FROM TO`
//! from a local archive repository ([`DeltaFiles`]); [`delta_sources`] makes the same choice over
//! either, so a local plan is the plan a node makes when that repository is served.

use std::collections::HashSet;
use std::fs;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use osdeploy_store::delta::index::{DeltaEntry, DeltaIndex, MetadataEntry};
use osdeploy_store::delta::metadata::{MetadataDelta, RebuiltMetadata, base_stream};
use osdeploy_store::delta::published::PublishedDeltas;
use osdeploy_store::fsutil::atomic_write;
use osdeploy_store::layout;
use osdeploy_store::object::{Commit, ObjectKind};
use osdeploy_store::summary::Summary;
use osdeploy_store::{CommitId, ObjectId, Repo, StoreError};

use crate::client::Client;
use crate::deltas::DeltaCatalog;
use crate::error::TransportError;
use crate::fetch::fetch;
use crate::index::{CacheWrites, PackEntries, RemoteIndex, download};
use crate::plan::{PackRead, WholeFile};
use crate::remote::index_cache;
use crate::staging::Staging;
use crate::summary;

/// The read that fetches a metadata delta.
fn metadata_read(entry: &MetadataEntry) -> PackRead {
    PackRead { pack: entry.pack, offset: entry.entry.offset, len: entry.entry.span(), objects: 1 }
}

/// What a metadata delta brought before the walk.
pub(crate) struct PrefetchedMetadata {
    /// The read that fetched it.
    pub read: PackRead,
    /// The objects it brought: metadata, and the chunks it carries.
    pub objects: Vec<(ObjectId, ObjectKind)>,
    /// Where the chunks lie that a node holding its starting release can lack, by pack (empty
    /// when the delta does not list them: the pull then loads the pack indexes).
    pub chunk_locations: Vec<Arc<PackEntries>>,
    /// The file deltas from its starting release's contents (None when the delta does not list
    /// them: the release's delta index does).
    pub deltas: Option<Vec<DeltaEntry>>,
}

/// The deltas a pull may use: the file deltas into the wanted release (with the download of its
/// delta index, when that was needed), and the metadata delta applied before the walk.
#[derive(Default)]
pub(crate) struct DeltaSources {
    /// The file deltas, and the download of the delta index that listed them.
    pub catalog: Option<(DeltaCatalog, Option<WholeFile>)>,
    /// The metadata delta, fetched and applied.
    pub metadata_delta: Option<PrefetchedMetadata>,
}

/// The files deltas are read from.
pub(crate) trait DeltaFiles {
    /// The metadata delta `entry` (its pack among `delta_packs`), applied to the release it
    /// starts from.
    async fn metadata_delta(
        &mut self,
        entry: &MetadataEntry,
        delta_packs: &RemoteIndex,
    ) -> Result<PrefetchedMetadata, TransportError>;

    /// The delta index of release `to`, if there is one, with the download a node makes for it
    /// (None when it holds it already).
    async fn delta_index(&mut self, to: &CommitId)
    -> Result<Option<(DeltaCatalog, Option<WholeFile>)>, TransportError>;
}

/// Finds the deltas into `commit` that start from releases `held` says the node holds: the
/// metadata delta the `offered` summary lists, which says where the chunks lie and which file
/// deltas there are (then neither a pack index nor the delta index is fetched); else the release's
/// delta index and the metadata delta it lists. A metadata delta that does not apply is a warning
/// (the walk then fetches metadata as objects), and is tried once.
pub(crate) async fn delta_sources(
    files: &mut impl DeltaFiles,
    offered: Option<&Summary>,
    commit: CommitId,
    held: impl Fn(&CommitId) -> Result<bool, StoreError>,
) -> Result<DeltaSources, TransportError> {
    let unusable =
        |e: TransportError| tracing::warn!("the metadata delta is unusable, metadata is fetched as objects: {e}");
    let mut sources = DeltaSources::default();
    let mut tried = None;
    let listed = match offered {
        Some(summary) => summary.metadata_delta(&commit, &held)?,
        None => None,
    };
    if let Some(listed) = listed {
        let entry = listed.entry();
        tried = Some(entry.entry.id);
        let alone = RemoteIndex { packs: DeltaCatalog::of_metadata_delta(commit, entry, Vec::new()).pack_entries() };
        match files.metadata_delta(&entry, &alone).await {
            Ok(mut prefetched) => {
                if let Some(deltas) = prefetched.deltas.take() {
                    sources.catalog = Some((DeltaCatalog::of_metadata_delta(commit, entry, deltas), None));
                }
                sources.metadata_delta = Some(prefetched);
            }
            Err(e) => unusable(e),
        }
    }
    if sources.catalog.is_none() {
        sources.catalog = files.delta_index(&commit).await?;
    }
    if sources.metadata_delta.is_none()
        && let Some((catalog, _)) = &sources.catalog
        && let Some(entry) = catalog.metadata_from(&held)?
        && tried != Some(entry.entry.id)
    {
        let delta_packs = RemoteIndex { packs: catalog.pack_entries() };
        match files.metadata_delta(entry, &delta_packs).await {
            Ok(prefetched) => sources.metadata_delta = Some(prefetched),
            Err(e) => unusable(e),
        }
    }
    Ok(sources)
}

/// Applies metadata delta `delta` (listed as `entry`) to the release it starts from, whose objects
/// `read_base` returns.
fn apply_metadata_delta(
    delta: &MetadataDelta,
    entry: &MetadataEntry,
    read_base: impl Fn(ObjectKind, &ObjectId) -> Result<Vec<u8>, StoreError>,
) -> Result<RebuiltMetadata, TransportError> {
    if delta.from != entry.from {
        return Err(TransportError::Store(StoreError::Corrupt {
            what: format!("metadata delta {}", entry.entry.id),
            reason: format!("it starts from {}, the delta index says {}", delta.from, entry.from),
        }));
    }
    let from = Commit::decode(entry.from.0, &read_base(ObjectKind::Commit, &entry.from.0)?)?;
    Ok(delta.apply(&base_stream(&from, &read_base)?.bytes)?)
}

/// A remote's delta files: what a pull fetches (the metadata delta staged, and every object it
/// rebuilds, so that the walk finds the release's new metadata fetched already).
pub(crate) struct RemoteDeltaFiles<'a, R> {
    /// The client of the remote.
    pub client: &'a Client,
    /// The remote's summary.
    pub summary: &'a Summary,
    /// Where fetched objects are staged.
    pub staged: &'a mut Staging,
    /// Reads the objects of the releases the node holds.
    pub read_base: R,
    /// A repository's index cache the delta index is read from, and written to as allowed.
    pub cache: Option<(&'a Repo, CacheWrites)>,
}

impl<R: Fn(ObjectKind, &ObjectId) -> Result<Vec<u8>, StoreError>> DeltaFiles for RemoteDeltaFiles<'_, R> {
    async fn metadata_delta(
        &mut self,
        entry: &MetadataEntry,
        delta_packs: &RemoteIndex,
    ) -> Result<PrefetchedMetadata, TransportError> {
        let read = metadata_read(entry);
        let id = entry.entry.id;
        // An interrupted pull may have staged it already.
        if !self.staged.has(ObjectKind::MetadataDelta, &id) {
            let wanted = HashSet::from([(id, ObjectKind::MetadataDelta)]);
            let keep = |staged: &mut Staging, _| Ok(staged.settle(|_, _| true)?);
            fetch(self.client, delta_packs, std::slice::from_ref(&read), wanted, self.staged, 1, keep).await?;
        }
        let delta = MetadataDelta::decode(id, &self.staged.get(ObjectKind::MetadataDelta, &id)?)?;
        let rebuilt = apply_metadata_delta(&delta, entry, &self.read_base)?;
        // The packs it locates chunks in are the remote's (id and size).
        let packs = summary::pack_sizes(self.summary);
        let invalid = |reason: String| TransportError::Invalid {
            what: format!("metadata delta {id}"),
            url: self.client.remote_name().into(),
            reason,
        };
        for located in &rebuilt.chunk_locations {
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
                    let pack = located.pack;
                    return Err(invalid(format!("it locates chunks in pack {pack}, which the summary lacks")));
                }
            }
        }
        for (kind, id, bytes) in &rebuilt.objects {
            self.staged.put(*kind, *id, bytes);
        }
        for (id, bytes) in &rebuilt.chunks {
            self.staged.put(ObjectKind::Chunk, *id, bytes);
        }
        self.staged.settle(|_, _| true)?;
        Ok(prefetched(read, rebuilt))
    }

    async fn delta_index(
        &mut self,
        to: &CommitId,
    ) -> Result<Option<(DeltaCatalog, Option<WholeFile>)>, TransportError> {
        let (repo, writes) = self.cache.unzip();
        remote_catalog(self.client, self.summary, to, repo, writes.unwrap_or(CacheWrites::Forbidden)).await
    }
}

/// What a metadata delta fetched by `read` brought, once `rebuilt`.
fn prefetched(read: PackRead, rebuilt: RebuiltMetadata) -> PrefetchedMetadata {
    let objects = rebuilt.objects.iter().map(|(kind, id, _)| (*id, *kind));
    let chunks = rebuilt.chunks.iter().map(|(id, _)| (*id, ObjectKind::Chunk));
    let chunk_locations = rebuilt
        .chunk_locations
        .into_iter()
        .map(|located| {
            let path = layout::pack_file(&located.pack);
            Arc::new(PackEntries { pack: located.pack, path, index_bytes: 0, entries: located.entries })
        })
        .collect();
    PrefetchedMetadata {
        read,
        objects: objects.chain(chunks).collect(),
        chunk_locations,
        deltas: rebuilt.deltas.map(|d| d.entries),
    }
}

/// The delta index of release `to` that the remote's summary lists, from `cache` (a repository's
/// index cache, written when `writes` allows) or downloaded, verified against the summary's hash.
/// Returns it with the download it cost (None when cached).
async fn remote_catalog(
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

/// A local archive repository's delta files: what a node would fetch from it when it is served.
pub(crate) struct LocalDeltaFiles<'a> {
    repo: &'a Repo,
    published: PublishedDeltas,
}

impl<'a> LocalDeltaFiles<'a> {
    /// The delta files `repo` publishes.
    pub fn open(repo: &'a Repo) -> Result<Self, StoreError> {
        Ok(LocalDeltaFiles { repo, published: PublishedDeltas::load(repo.path())? })
    }

    /// [`delta_sources`] over these files. Nothing in them waits, so the search runs to its end
    /// on the caller's thread.
    pub fn sources(
        &mut self,
        offered: Option<&Summary>,
        commit: CommitId,
        held: impl Fn(&CommitId) -> Result<bool, StoreError>,
    ) -> Result<DeltaSources, TransportError> {
        let search = pin!(delta_sources(self, offered, commit, held));
        match search.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(sources) => sources,
            Poll::Pending => unreachable!("reading a local repository's deltas never waits"),
        }
    }
}

impl DeltaFiles for LocalDeltaFiles<'_> {
    async fn metadata_delta(
        &mut self,
        entry: &MetadataEntry,
        _delta_packs: &RemoteIndex,
    ) -> Result<PrefetchedMetadata, TransportError> {
        let delta = self.published.read_metadata(entry)?;
        let rebuilt = apply_metadata_delta(&delta, entry, |kind, id: &ObjectId| self.repo.read(kind, id))?;
        Ok(prefetched(metadata_read(entry), rebuilt))
    }

    async fn delta_index(
        &mut self,
        to: &CommitId,
    ) -> Result<Option<(DeltaCatalog, Option<WholeFile>)>, TransportError> {
        Ok(self.published.index_of(to).map(|index| {
            let download = WholeFile { name: layout::delta_index_file(&index.hash), bytes: index.size };
            (DeltaCatalog::new(index.index.clone()), Some(download))
        }))
    }
}
