//! The deltas an archive repository publishes under [`layout::DELTAS`]: delta packs (standard
//! packs of delta objects, with standard pack indexes for fsck and mirrors) and one delta index per
//! release.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::compress::Codec;
use crate::delta::index::{DeltaEntry, DeltaIndex, MetadataEntry};
use crate::delta::metadata::MetadataDelta;
use crate::delta::object::DeltaObject;
use crate::error::{IoContext, Result, StoreError};
use crate::id::{CommitId, ObjectId};
use crate::layout;
use crate::pack::{self, IndexEntry};
use crate::summary::{SummaryDeltaIndex, SummaryMetadataDelta, SummaryPack};

/// A published delta pack.
#[derive(Debug)]
pub struct DeltaPack {
    /// Its id (blake3 of its bytes).
    pub id: ObjectId,
    /// Its size.
    pub size: u64,
    /// The blake3 of its pack index file.
    pub index_hash: ObjectId,
    /// Its entries, sorted by (id, kind).
    pub entries: Vec<IndexEntry>,
}

/// A published delta index.
#[derive(Debug)]
pub struct PublishedIndex {
    /// The blake3 of the file (its name).
    pub hash: ObjectId,
    /// The file's size.
    pub size: u64,
    /// Its content.
    pub index: DeltaIndex,
}

/// Everything under `deltas/`.
#[derive(Debug, Default)]
pub struct PublishedDeltas {
    dir: PathBuf,
    /// Delta packs by id.
    pub packs: BTreeMap<ObjectId, DeltaPack>,
    /// Delta indexes by release. A release has at most one (generation replaces it).
    pub indexes: BTreeMap<CommitId, PublishedIndex>,
}

impl PublishedDeltas {
    /// Loads the delta packs' indexes and the delta indexes of the repository at `repo` (none when
    /// the directory does not exist). A damaged file is an error naming it.
    pub fn load(repo: &Path) -> Result<PublishedDeltas> {
        let dir = repo.join(layout::DELTAS);
        let mut published = PublishedDeltas { dir: dir.clone(), ..Default::default() };
        let names = match fs::read_dir(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(published),
            Err(e) => return Err(e).at(&dir),
        };
        let mut paths: Vec<PathBuf> = names.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let what = path.display().to_string();
            match path.extension().and_then(|x| x.to_str()) {
                Some("idx") => {
                    let bytes = fs::read(&path).at(&path)?;
                    let index = pack::decode_index(&bytes, &what)?;
                    let pack = DeltaPack {
                        id: index.pack,
                        size: index.pack_size,
                        index_hash: ObjectId::of(&bytes),
                        entries: index.entries,
                    };
                    published.packs.insert(pack.id, pack);
                }
                Some("dix") => {
                    let bytes = fs::read(&path).at(&path)?;
                    let index = DeltaIndex::decode(&bytes, &what)?;
                    let hash = ObjectId::of(&bytes);
                    if path.file_name().and_then(|n| n.to_str()) != Some(&layout::delta_index_name(&hash)) {
                        return Err(StoreError::Corrupt { what, reason: format!("its bytes hash to {hash}") });
                    }
                    let size = bytes.len() as u64;
                    // Generation removes the index it replaces, which the new one includes; if a crash
                    // left both, the larger is the newer.
                    let newer = PublishedIndex { hash, size, index };
                    match published.indexes.get(&newer.index.to) {
                        Some(other) if other.index.len() >= newer.index.len() => {}
                        _ => {
                            published.indexes.insert(newer.index.to, newer);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(published)
    }

    /// The delta index of release `to`, if it has one.
    pub fn index_of(&self, to: &CommitId) -> Option<&PublishedIndex> {
        self.indexes.get(to)
    }

    /// Reads and verifies a delta object.
    pub fn read(&self, delta: &DeltaEntry) -> Result<DeltaObject> {
        DeltaObject::decode(delta.entry.id, &self.read_entry(&delta.pack, &delta.entry)?)
    }

    /// Reads and verifies a metadata delta.
    pub fn read_metadata(&self, delta: &MetadataEntry) -> Result<MetadataDelta> {
        MetadataDelta::decode(delta.entry.id, &self.read_entry(&delta.pack, &delta.entry)?)
    }

    /// The bytes of the object `entry` in delta pack `pack`.
    fn read_entry(&self, pack: &ObjectId, entry: &IndexEntry) -> Result<Vec<u8>> {
        let path = self.dir.join(layout::pack_name(pack));
        let file = File::open(&path).at(&path)?;
        pack::read_entry(&file, entry, &path)
    }

    /// What the summary lists: the delta indexes, the delta packs, and the metadata deltas into
    /// `heads` (the branches' commits: what nodes pull), each of which a node holding the release
    /// it starts from fetches instead of the delta index.
    pub fn summary_entries(
        &self,
        heads: &BTreeSet<CommitId>,
    ) -> (Vec<SummaryDeltaIndex>, Vec<SummaryPack>, Vec<SummaryMetadataDelta>) {
        let indexes = self
            .indexes
            .values()
            .map(|p| SummaryDeltaIndex {
                entries: p.index.entries.len() as u64,
                index: p.hash,
                size: p.size,
                to: p.index.to,
            })
            .collect();
        let packs = self
            .packs
            .values()
            .map(|p| SummaryPack { id: p.id, index: p.index_hash, objects: p.entries.len() as u64, size: p.size })
            .collect();
        let metadata = heads
            .iter()
            .filter_map(|to| self.indexes.get(to))
            .flat_map(|p| p.index.metadata.iter().map(|m| (p.index.to, m)))
            .filter(|(_, m)| m.entry.codec == Codec::Raw && m.entry.stored_len == m.entry.raw_len)
            .map(|(to, m)| SummaryMetadataDelta {
                from: m.from,
                id: m.entry.id,
                offset: m.entry.offset,
                pack: m.pack,
                size: m.entry.stored_len,
                to,
            })
            .collect();
        (indexes, packs, metadata)
    }

    /// The directory they live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
