//! The survey of a pull: the one walk of a commit's tree that finds what a node lacks.
//!
//! From the top, level by level, it fetches the metadata objects the node does not hold (a held
//! dirtree or file object is complete, so the walk never descends into one), and for every new
//! file decides where its content comes from: its chunks, of which it lists those the node holds
//! nowhere. The result is a [`Survey`], from which [`crate::plan::PullPlan::new`] builds the plan.
//! `pull`, `pull --dry-run`, `delta --remote` and `delta` all walk here; they differ in what the
//! node is taken to hold ([`Holdings`]) and where metadata is read from ([`MetadataSource`]: a
//! remote over HTTP, or the packs of a local archive repository).

use std::collections::HashSet;

use osdeploy_store::archive::ArchiveStore;
use osdeploy_store::object::{Commit, DirTree, EntryKind, FileObject, ObjectKind};
use osdeploy_store::{CommitId, FileId, ObjectId, Repo, StoreError};

use crate::client::Client;
use crate::error::TransportError;
use crate::fetch::fetch;
use crate::index::RemoteIndex;
use crate::plan::{CoalesceOptions, FileSource, ObjectLocations, PackRead, PlannedFile, Survey, plan_reads};
use crate::staging::Staging;

/// What the node holds, as the walk asks it.
pub trait Holdings {
    /// True when the node holds the object (a held dirtree or file object is complete).
    fn holds(&self, kind: ObjectKind, id: &ObjectId) -> Result<bool, TransportError>;
    /// True when an interrupted pull left this file's complete content, not yet recorded.
    fn has_unrecorded_content(&self, _id: &FileId, _object: &FileObject) -> Result<bool, TransportError> {
        Ok(false)
    }
}

impl Holdings for Repo {
    fn holds(&self, kind: ObjectKind, id: &ObjectId) -> Result<bool, TransportError> {
        Ok(self.has(kind, id)?)
    }

    fn has_unrecorded_content(&self, id: &FileId, object: &FileObject) -> Result<bool, TransportError> {
        Ok(match self.bare() {
            Some(bare) => bare.has_unrecorded_content(id, object)?,
            None => false,
        })
    }
}

/// A node holding exactly these objects (another commit's, for a plan between two commits).
impl Holdings for HashSet<(ObjectId, ObjectKind)> {
    fn holds(&self, kind: ObjectKind, id: &ObjectId) -> Result<bool, TransportError> {
        Ok(self.contains(&(*id, kind)))
    }
}

/// Where the walk reads metadata from.
pub trait MetadataSource {
    /// Where the source's objects lie.
    type Locations: ObjectLocations;
    /// Where the source's objects lie.
    fn locations(&self) -> &Self::Locations;
    /// True when the object was fetched already (by this walk, or a pull that was interrupted).
    fn has(&self, kind: ObjectKind, id: &ObjectId) -> bool;
    /// True when an interrupted pull left what it had fetched.
    fn resumed(&self) -> bool;
    /// Fetches `objects` by `reads`.
    fn fetch(
        &mut self,
        reads: &[PackRead],
        objects: HashSet<(ObjectId, ObjectKind)>,
    ) -> impl Future<Output = Result<(), TransportError>>;
    /// A fetched object's bytes.
    fn get(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>, TransportError>;
}

/// A remote over HTTP: metadata is fetched into a staging area.
pub struct Remote<'a> {
    /// The connection.
    pub client: &'a Client,
    /// The remote's pack indexes.
    pub index: &'a RemoteIndex,
    /// Where fetched objects go.
    pub staged: &'a mut Staging,
    /// Range requests in flight at once.
    pub in_flight: usize,
}

impl MetadataSource for Remote<'_> {
    type Locations = RemoteIndex;

    fn locations(&self) -> &RemoteIndex {
        self.index
    }

    fn has(&self, kind: ObjectKind, id: &ObjectId) -> bool {
        self.staged.has(kind, id)
    }

    fn resumed(&self) -> bool {
        self.staged.resumed()
    }

    async fn fetch(
        &mut self,
        reads: &[PackRead],
        objects: HashSet<(ObjectId, ObjectKind)>,
    ) -> Result<(), TransportError> {
        let keep_all = |staged: &mut Staging, _| Ok(staged.settle(|_, _| true)?);
        fetch(self.client, self.index, reads, objects, self.staged, self.in_flight, keep_all).await
    }

    fn get(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>, TransportError> {
        Ok(self.staged.get(kind, id)?)
    }
}

/// Metadata at hand — a local archive repository's, or what a pull has staged — planned as a
/// node would fetch it: "fetching" only notes what would be fetched.
pub struct AtHand<'a, L, R> {
    /// Where the objects lie.
    pub locations: &'a L,
    /// Reads an object at hand.
    pub read: R,
    /// Objects the walk has "fetched" (and, at the start, those that arrived some other way).
    pub fetched: HashSet<(ObjectId, ObjectKind)>,
}

impl<L, R> MetadataSource for AtHand<'_, L, R>
where
    L: ObjectLocations,
    R: Fn(ObjectKind, &ObjectId) -> Result<Vec<u8>, StoreError>,
{
    type Locations = L;

    fn locations(&self) -> &L {
        self.locations
    }

    fn has(&self, kind: ObjectKind, id: &ObjectId) -> bool {
        self.fetched.contains(&(*id, kind))
    }

    fn resumed(&self) -> bool {
        false
    }

    async fn fetch(
        &mut self,
        _reads: &[PackRead],
        objects: HashSet<(ObjectId, ObjectKind)>,
    ) -> Result<(), TransportError> {
        self.fetched.extend(objects);
        Ok(())
    }

    fn get(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>, TransportError> {
        Ok((self.read)(kind, id)?)
    }
}

/// Walks `commit` of a local archive repository as a pull by a node holding `holdings` would,
/// `prefetched` having arrived already (by a metadata delta).
pub fn walk_local(
    repo: &Repo,
    archive: &ArchiveStore,
    holdings: &HashSet<(ObjectId, ObjectKind)>,
    prefetched: HashSet<(ObjectId, ObjectKind)>,
    commit: CommitId,
    coalesce: CoalesceOptions,
) -> Result<Survey, StoreError> {
    let source = AtHand { locations: archive, read: |kind, id: &ObjectId| repo.read(kind, id), fetched: prefetched };
    let walked = walk(source, holdings, commit, coalesce);
    // Nothing in a local walk waits: polled once, the future is done.
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let corrupt =
        |reason: String| StoreError::Corrupt { what: format!("repository {}", repo.path().display()), reason };
    match std::pin::pin!(walked).poll(&mut context) {
        std::task::Poll::Ready(walked) => walked.map_err(|e| match e {
            TransportError::Store(e) => e,
            other => corrupt(other.to_string()),
        }),
        std::task::Poll::Pending => Err(corrupt("a local walk waited for something".into())),
    }
}

/// Walks `commit`, fetching from `source` the metadata that neither `holdings` nor the source
/// has. A release's metadata lies together in a pack of its own: the first time the walk needs
/// an object of a pack, every absent metadata object of that pack comes along in one range, so a
/// tree costs a request per release it reuses, not one per level. Files whose content an
/// interrupted pull left are adopted instead of fetched.
pub async fn walk(
    mut source: impl MetadataSource,
    holdings: &impl Holdings,
    commit: CommitId,
    coalesce: CoalesceOptions,
) -> Result<Survey, TransportError> {
    let mut survey = Survey::default();
    let mut level = vec![(commit.0, ObjectKind::Commit)];
    let mut seen: HashSet<(ObjectId, ObjectKind)> = level.iter().copied().collect();
    let mut wanted_chunks = HashSet::new();
    let mut prefetched = HashSet::new();
    while !level.is_empty() {
        let mut lacking = HashSet::new();
        for (id, kind) in &level {
            if !absent(&source, holdings, *kind, id)? {
                continue;
            }
            lacking.insert((*id, *kind));
            if let Some((pack, _)) = source.locations().locate(*kind, id)
                && prefetched.insert(pack)
            {
                for (id, kind) in source.locations().metadata_of_pack(&pack) {
                    if absent(&source, holdings, kind, &id)? {
                        lacking.insert((id, kind));
                    }
                }
            }
        }
        let objects: Vec<_> = lacking.iter().copied().collect();
        let reads = plan_reads(source.locations(), &objects, coalesce)?;
        source.fetch(&reads, lacking).await?;
        survey.metadata_fetched.extend(objects);
        survey.metadata_reads.extend(reads);

        let mut next = Vec::new();
        for (id, kind) in level {
            if holdings.holds(kind, &id)? {
                continue; // held objects are complete, with everything below them
            }
            let bytes = source.get(kind, &id)?;
            if kind != ObjectKind::File {
                next.extend(children(kind, id, &bytes)?.into_iter().filter(|child| seen.insert(*child)));
                survey.new_metadata.push((id, kind));
                continue;
            }
            let object = FileObject::decode(id, &bytes)?;
            let source_of_content = if source.resumed() && holdings.has_unrecorded_content(&FileId(id), &object)? {
                FileSource::Adopted
            } else {
                for (chunk, len) in &object.chunks {
                    if !wanted_chunks.insert(chunk.0) {
                        continue;
                    }
                    // Staged chunks arrived in this pull (in a metadata delta, or before an
                    // interruption): neither missing nor held before.
                    if source.has(ObjectKind::Chunk, &chunk.0) {
                        continue;
                    }
                    if holdings.holds(ObjectKind::Chunk, &chunk.0)? {
                        survey.chunks_reused += 1;
                        survey.reused_bytes_raw += u64::from(*len);
                    } else {
                        survey.missing_chunks.push(chunk.0);
                    }
                }
                FileSource::Chunks
            };
            survey.files.push(PlannedFile { id: FileId(id), object, source: source_of_content });
        }
        level = next;
    }
    let new_objects = survey.metadata_fetched.iter().copied();
    let chunks = survey.missing_chunks.iter().map(|id| (*id, ObjectKind::Chunk));
    for (id, kind) in new_objects.chain(chunks) {
        if let Some((pack, _)) = source.locations().locate(kind, &id) {
            survey.new_packs.insert(pack);
        }
    }
    Ok(survey)
}

/// True when neither the source has fetched the object nor the node holds it.
fn absent(
    source: &impl MetadataSource,
    holdings: &impl Holdings,
    kind: ObjectKind,
    id: &ObjectId,
) -> Result<bool, TransportError> {
    Ok(!source.has(kind, id) && !holdings.holds(kind, id)?)
}

/// The objects a commit or dirtree names (its root tree; its subdirectories and files).
fn children(kind: ObjectKind, id: ObjectId, bytes: &[u8]) -> Result<Vec<(ObjectId, ObjectKind)>, TransportError> {
    Ok(match kind {
        ObjectKind::Commit => vec![(Commit::decode(id, bytes)?.root.0, ObjectKind::DirTree)],
        ObjectKind::DirTree => DirTree::decode(id, bytes)?
            .entries
            .into_iter()
            .filter_map(|entry| match entry.kind {
                EntryKind::Dir(t) => Some((t.0, ObjectKind::DirTree)),
                EntryKind::File { file, .. } => Some((file.0, ObjectKind::File)),
                _ => None,
            })
            .collect(),
        ObjectKind::File | ObjectKind::Chunk | ObjectKind::Delta | ObjectKind::MetadataDelta => Vec::new(),
    })
}
