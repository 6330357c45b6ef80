//! Release metadata deltas (docs/deltas.md): all the metadata objects a release brings to a node
//! holding an earlier release — the changed dirtrees, the new file objects, the commit — in one
//! delta against the earlier release's own metadata.
//!
//! Encoded one by one, metadata objects would cost more in framing and index entries than they
//! save (a dirtree changes by a few ids), so they travel together: the *target* is the sequence
//! of the new objects (`[kind u8][length u32 LE][encoding]`, in the order of [`new_metadata`]),
//! encoded with zstd against the *base stream*, the earlier release's dirtrees and file objects
//! in tree order ([`base_stream`]), which a node that holds the release rebuilds from its
//! repository. Every object rebuilt is verified by its id.
//!
//! After the objects come the bytes of the few new chunks such a node would otherwise fetch in
//! ranges of their own — those of new files without a delta from the earlier release, smallest
//! files first, up to [`MAX_INLINE_CHUNKS`] (`[CHUNK][length u32 LE][chunk]`, each verified by
//! its id) — and where the new chunks lie: one record per pack, a pack index of the chunks of the
//! new release that the earlier release lacks (`[LOCATIONS][length u32 LE][pack index]`). A node
//! holding the earlier release then needs no pack index at all, and usually no chunk read. Last
//! come the file deltas from the earlier release's contents to the new release's, as a delta index
//! (`[DELTAS][length u32 LE][delta index]`): with the metadata delta listed in the summary, such a
//! node needs no delta index either. The ids cost little, as zstd finds each in the file object or
//! dirtree that names it earlier in the stream.

use std::collections::HashSet;

use crate::codec::Encoder;
use crate::delta::codec::{self, DeltaCodec, EncodeOptions};
use crate::delta::index::{DeltaEntry, DeltaIndex};
use crate::error::{Result, StoreError};
use crate::id::{CommitId, ObjectId};
use crate::object::{Commit, DirTree, EntryKind, MAX_CHUNK_LEN, MAX_METADATA_LEN, ObjectKind, decode, header};
use crate::pack::{self, PackIndex};

/// The record tag of a pack index of chunks, after the objects.
const LOCATIONS: u8 = 0x80;
/// The record tag of a chunk's bytes, after the objects.
const CHUNK: u8 = 0x81;
/// The record tag of the file deltas from the starting release's contents, after the objects.
const DELTAS: u8 = 0x82;

/// Most chunk bytes a metadata delta carries: small files travel in it, large ones in ranges.
pub const MAX_INLINE_CHUNKS: u64 = 4 << 20;

/// Largest metadata stream a delta may rebuild.
pub const MAX_METADATA_STREAM: u64 = 1 << 30;

/// A delta from one release's metadata to the metadata another release adds to it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MetadataDelta {
    /// The release the node holds.
    pub from: CommitId,
    /// The release whose new metadata it rebuilds.
    pub to: CommitId,
    /// The size of the rebuilt record sequence.
    pub target_size: u64,
    /// The zstd-patch payload.
    pub payload: Vec<u8>,
}

impl MetadataDelta {
    /// Encodes `target` against `base` (a [`base_stream`]).
    pub fn new(from: CommitId, to: CommitId, base: &[u8], target: &NewMetadata<'_>) -> Result<Self> {
        let mut stream = Vec::new();
        let mut record = |tag: u8, bytes: &[u8]| {
            stream.push(tag);
            stream.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            stream.extend_from_slice(bytes);
        };
        for (kind, bytes) in target.objects {
            record(*kind as u8, bytes);
        }
        for chunk in target.chunks {
            record(CHUNK, chunk);
        }
        for index in target.locations {
            record(LOCATIONS, &pack::encode_index(index.pack, index.pack_size, &index.entries));
        }
        let deltas = DeltaIndex { to, entries: target.deltas.to_vec(), metadata: Vec::new() };
        record(DELTAS, &deltas.encode());
        let target = stream;
        // Metadata is mostly ids: the highest level finds the most of them in the base.
        let options = EncodeOptions { large_input: usize::MAX, ..EncodeOptions::default() };
        let payload = codec::encode(DeltaCodec::ZstdPatch, base, &target, &options)
            .map_err(|error| StoreError::Io { path: format!("(metadata delta {from} → {to})").into(), error })?;
        Ok(MetadataDelta { from, to, target_size: target.len() as u64, payload })
    }

    /// The canonical encoding (its blake3 is the object's id).
    pub fn encode(&self) -> Vec<u8> {
        let mut e: Encoder = header(ObjectKind::MetadataDelta);
        e.id(&self.from.0);
        e.id(&self.to.0);
        e.u64(self.target_size);
        e.bytes32(&self.payload);
        e.buf
    }

    /// Decodes the metadata delta `id`.
    pub fn decode(id: ObjectId, data: &[u8]) -> Result<MetadataDelta> {
        decode(ObjectKind::MetadataDelta, id, data, |d| {
            let from = CommitId(d.id()?);
            let to = CommitId(d.id()?);
            let target_size = d.u64()?;
            if target_size > MAX_METADATA_STREAM {
                return Err(format!("target size {target_size} exceeds the limit of {MAX_METADATA_STREAM}"));
            }
            let payload = d.bytes32(MAX_METADATA_LEN as usize)?.to_vec();
            Ok(MetadataDelta { from, to, target_size, payload })
        })
    }

    /// Rebuilds the objects, chunks and chunk locations from `base` (the base stream of `from`):
    /// each object and chunk with its id, the blake3 of its bytes. Any malformed record is an
    /// error naming the delta.
    pub fn apply(&self, base: &[u8]) -> Result<RebuiltMetadata> {
        let what = format!("metadata delta {} → {}", self.from, self.to);
        let corrupt = |reason: String| StoreError::Corrupt { what: what.clone(), reason };
        let stream = codec::decode(DeltaCodec::ZstdPatch, base, &self.payload, self.target_size, &codec::no_files)
            .map_err(corrupt)?;
        let rebuilt = RebuiltMetadata::parse(&stream, &what)?;
        if let Some(deltas) = rebuilt.deltas.as_ref().filter(|d| d.to != self.to) {
            return Err(corrupt(format!("its file deltas lead to {}", deltas.to)));
        }
        Ok(rebuilt)
    }
}

/// What a metadata delta rebuilds.
#[derive(Debug, Default)]
pub struct RebuiltMetadata {
    /// The new metadata objects: kind, id (the blake3 of the bytes) and bytes.
    pub objects: Vec<(ObjectKind, ObjectId, Vec<u8>)>,
    /// Chunks it carries: id (the blake3 of the bytes) and bytes.
    pub chunks: Vec<(ObjectId, Vec<u8>)>,
    /// Where the new chunks lie, by pack (empty in a delta made before locations were listed).
    pub chunk_locations: Vec<PackIndex>,
    /// The file deltas from the starting release's contents (None in a delta made before they
    /// were listed: the release's delta index lists them).
    pub deltas: Option<DeltaIndex>,
}

/// What a metadata delta encodes (see the module's doc).
pub struct NewMetadata<'a> {
    /// The new metadata objects: kind and encoding, in walk order ([`new_metadata`]).
    pub objects: &'a [(ObjectKind, Vec<u8>)],
    /// The bytes of the chunks it carries.
    pub chunks: &'a [Vec<u8>],
    /// Where the chunks lie that the starting release lacks, by pack.
    pub locations: &'a [PackIndex],
    /// The file deltas from the starting release's contents, sorted by (target, base).
    pub deltas: &'a [DeltaEntry],
}

impl RebuiltMetadata {
    /// Parses a metadata delta's target stream (`what` names the delta in errors): the object
    /// records, then chunk and location records.
    pub fn parse(stream: &[u8], what: &str) -> Result<RebuiltMetadata> {
        let corrupt = |reason: String| StoreError::Corrupt { what: what.to_string(), reason };
        let mut rebuilt = RebuiltMetadata::default();
        let mut rest = stream;
        while !rest.is_empty() {
            let (Some(&tag), Some(len)) = (rest.first(), rest.get(1..5)) else {
                return Err(corrupt(format!("a record is cut off at byte {}", stream.len() - rest.len())));
            };
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let bytes = rest.get(5..5 + len).ok_or_else(|| corrupt(format!("a record of tag {tag} is cut off")))?;
            rest = &rest[5 + len..];
            match tag {
                LOCATIONS => {
                    let index = pack::decode_index(bytes, &format!("in {what}"))?;
                    if let Some(e) = index.entries.iter().find(|e| e.kind != ObjectKind::Chunk) {
                        return Err(corrupt(format!("its locations list {} {}, not a chunk", e.kind, e.id)));
                    }
                    rebuilt.chunk_locations.push(index);
                    continue;
                }
                CHUNK if bytes.len() > MAX_CHUNK_LEN as usize => {
                    return Err(corrupt(format!(
                        "a chunk of {} bytes exceeds the limit of {MAX_CHUNK_LEN}",
                        bytes.len()
                    )));
                }
                CHUNK => {
                    rebuilt.chunks.push((ObjectId::of(bytes), bytes.to_vec()));
                    continue;
                }
                DELTAS if rebuilt.deltas.is_some() => return Err(corrupt("it lists its file deltas twice".into())),
                DELTAS => {
                    let deltas = DeltaIndex::decode(bytes, &format!("in {what}"))?;
                    if !deltas.metadata.is_empty() {
                        return Err(corrupt("its file deltas list metadata deltas".into()));
                    }
                    rebuilt.deltas = Some(deltas);
                    continue;
                }
                _ => {}
            }
            if !rebuilt.chunk_locations.is_empty() || !rebuilt.chunks.is_empty() || rebuilt.deltas.is_some() {
                return Err(corrupt("an object record follows the chunks".into()));
            }
            let kind = ObjectKind::from_u8(tag)
                .filter(|k| matches!(k, ObjectKind::Commit | ObjectKind::DirTree | ObjectKind::File))
                .ok_or_else(|| corrupt(format!("a record of kind {tag} is not metadata")))?;
            rebuilt.objects.push((kind, ObjectId::of(bytes), bytes.to_vec()));
        }
        Ok(rebuilt)
    }
}

/// A release's metadata as a metadata delta's base.
pub struct BaseStream {
    /// The encodings of its dirtrees and file objects, each once, in tree order (a directory,
    /// its files in name order, then its subdirectories in name order).
    pub bytes: Vec<u8>,
    /// Those objects.
    pub objects: HashSet<(ObjectId, ObjectKind)>,
}

/// The base stream of a release. `read` returns an object's verified bytes.
pub fn base_stream(commit: &Commit, read: impl Fn(ObjectKind, &ObjectId) -> Result<Vec<u8>>) -> Result<BaseStream> {
    let mut stream = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![commit.root.0];
    while let Some(tree) = stack.pop() {
        if !seen.insert((tree, ObjectKind::DirTree)) {
            continue;
        }
        let bytes = read(ObjectKind::DirTree, &tree)?;
        let dirtree = DirTree::decode(tree, &bytes)?;
        stream.extend_from_slice(&bytes);
        let mut subdirs = Vec::new();
        for entry in &dirtree.entries {
            match &entry.kind {
                EntryKind::File { file, .. } if seen.insert((file.0, ObjectKind::File)) => {
                    stream.extend_from_slice(&read(ObjectKind::File, &file.0)?);
                }
                EntryKind::Dir(sub) => subdirs.push(sub.0),
                _ => {}
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(BaseStream { bytes: stream, objects: seen })
}

/// The metadata objects of release `to` that a node holding the objects `held` (an earlier
/// release's [`BaseStream::objects`]) lacks, in the order a pull's walk meets them (the commit,
/// then level by level): what a metadata delta rebuilds. `read` returns an object's verified bytes.
pub fn new_metadata(
    held: &HashSet<(ObjectId, ObjectKind)>,
    to: CommitId,
    read: impl Fn(ObjectKind, &ObjectId) -> Result<Vec<u8>>,
) -> Result<Vec<(ObjectKind, Vec<u8>)>> {
    let mut objects = Vec::new();
    let mut level = vec![(to.0, ObjectKind::Commit)];
    let mut seen: HashSet<(ObjectId, ObjectKind)> = level.iter().copied().collect();
    while !level.is_empty() {
        let mut next = Vec::new();
        for (id, kind) in level {
            if held.contains(&(id, kind)) {
                continue;
            }
            let bytes = read(kind, &id)?;
            match kind {
                ObjectKind::Commit => next.push((Commit::decode(id, &bytes)?.root.0, ObjectKind::DirTree)),
                ObjectKind::DirTree => {
                    for entry in DirTree::decode(id, &bytes)?.entries {
                        match entry.kind {
                            EntryKind::Dir(t) => next.push((t.0, ObjectKind::DirTree)),
                            EntryKind::File { file, .. } => next.push((file.0, ObjectKind::File)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
            objects.push((kind, bytes));
        }
        level = next.into_iter().filter(|child| seen.insert(*child)).collect();
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Codec;
    use crate::id::FileId;
    use crate::pack::IndexEntry;

    fn locations(kind: ObjectKind) -> Vec<PackIndex> {
        let entry = |n: u8, offset| IndexEntry {
            id: ObjectId::of(&[n]),
            kind,
            codec: Codec::Zstd,
            offset,
            stored_len: 100,
            raw_len: 300,
        };
        let mut entries = vec![entry(1, 8), entry(2, 150)];
        entries.sort_by_key(|e| (e.id, e.kind));
        vec![PackIndex { pack: ObjectId::of(b"pack"), pack_size: 1000, entries }]
    }

    #[test]
    fn rebuilds_objects_and_chunk_locations() {
        let (from, to) = (CommitId(ObjectId::of(b"from")), CommitId(ObjectId::of(b"to")));
        let objects = vec![(ObjectKind::DirTree, b"tree".to_vec()), (ObjectKind::File, b"file".to_vec())];
        let located = locations(ObjectKind::Chunk);
        let chunks = vec![b"chunk one".to_vec(), b"chunk two".to_vec()];
        let deltas = vec![DeltaEntry {
            target: FileId(ObjectId::of(b"file")),
            base: FileId(ObjectId::of(b"old file")),
            pack: ObjectId::of(b"delta pack"),
            entry: IndexEntry { kind: ObjectKind::Delta, ..located[0].entries[0] },
        }];
        let target = NewMetadata { objects: &objects, chunks: &chunks, locations: &located, deltas: &deltas };
        let delta = MetadataDelta::new(from, to, b"base stream", &target).unwrap();
        let encoded = delta.encode();
        let decoded = MetadataDelta::decode(ObjectId::of(&encoded), &encoded).unwrap();
        let rebuilt = decoded.apply(b"base stream").unwrap();
        let ids: Vec<_> = rebuilt.objects.iter().map(|(kind, id, bytes)| (*kind, *id, bytes.clone())).collect();
        assert_eq!(
            ids,
            vec![
                (ObjectKind::DirTree, ObjectId::of(b"tree"), b"tree".to_vec()),
                (ObjectKind::File, ObjectId::of(b"file"), b"file".to_vec())
            ]
        );
        let carried: Vec<_> = chunks.iter().map(|c| (ObjectId::of(c), c.clone())).collect();
        assert_eq!(rebuilt.chunks, carried);
        assert_eq!(rebuilt.chunk_locations.len(), 1);
        assert_eq!(rebuilt.chunk_locations[0].entries, located[0].entries);
        assert_eq!(rebuilt.deltas, Some(DeltaIndex { to, entries: deltas, metadata: Vec::new() }));
        // Made before chunks, locations and file deltas were listed: object records only.
        let stream = [&[ObjectKind::File as u8][..], &4u32.to_le_bytes(), b"file"].concat();
        let older = RebuiltMetadata::parse(&stream, "an older delta").unwrap();
        assert!(older.chunk_locations.is_empty() && older.chunks.is_empty() && older.deltas.is_none());
        // No file delta from the release: an empty list, not none.
        let plain = NewMetadata { objects: &objects, chunks: &[], locations: &[], deltas: &[] };
        let rebuilt = MetadataDelta::new(from, to, b"base stream", &plain).unwrap().apply(b"base stream").unwrap();
        assert!(rebuilt.chunk_locations.is_empty() && rebuilt.chunks.is_empty());
        assert_eq!(rebuilt.deltas.map(|d| d.entries.len()), Some(0));
    }

    #[test]
    fn locations_of_anything_but_chunks_are_refused() {
        let (from, to) = (CommitId(ObjectId::of(b"from")), CommitId(ObjectId::of(b"to")));
        let objects = vec![(ObjectKind::File, b"file".to_vec())];
        let located = locations(ObjectKind::File);
        let target = NewMetadata { objects: &objects, chunks: &[], locations: &located, deltas: &[] };
        let delta = MetadataDelta::new(from, to, b"", &target).unwrap();
        let error = delta.apply(b"").unwrap_err().to_string();
        assert!(error.contains("not a chunk") && error.contains(&from.to_string()), "{error}");
    }
}
