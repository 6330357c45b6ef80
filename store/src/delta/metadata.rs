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
//! holding the earlier release then needs no pack index at all, and usually no chunk read. The
//! ids cost little, as zstd finds each in the file object that names it earlier in the stream.

use std::collections::HashSet;

use crate::codec::Encoder;
use crate::delta::codec::{self, DeltaCodec, EncodeOptions};
use crate::error::{Result, StoreError};
use crate::id::{CommitId, ObjectId};
use crate::object::{Commit, DirTree, EntryKind, MAX_CHUNK_LEN, MAX_METADATA_LEN, ObjectKind, decode, header};
use crate::pack::{self, PackIndex};

/// The record tag of a pack index of chunks, after the objects.
const LOCATIONS: u8 = 0x80;
/// The record tag of a chunk's bytes, after the objects.
const CHUNK: u8 = 0x81;

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
    /// Encodes `objects` (kind, encoding), `chunks` (their bytes) and `locations` (the chunks of
    /// `to` that `from` lacks, by pack) against `base` (a [`base_stream`]).
    pub fn new(
        from: CommitId,
        to: CommitId,
        base: &[u8],
        objects: &[(ObjectKind, Vec<u8>)],
        chunks: &[Vec<u8>],
        locations: &[PackIndex],
    ) -> Result<Self> {
        let mut target = Vec::new();
        let mut record = |tag: u8, bytes: &[u8]| {
            target.push(tag);
            target.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            target.extend_from_slice(bytes);
        };
        for (kind, bytes) in objects {
            record(*kind as u8, bytes);
        }
        for chunk in chunks {
            record(CHUNK, chunk);
        }
        for index in locations {
            record(LOCATIONS, &pack::encode_index(index.pack, index.pack_size, &index.entries));
        }
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
        let mut rebuilt = RebuiltMetadata::default();
        let mut rest = &stream[..];
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
                _ => {}
            }
            if !rebuilt.chunk_locations.is_empty() || !rebuilt.chunks.is_empty() {
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

/// What a metadata delta rebuilds.
#[derive(Debug, Default)]
pub struct RebuiltMetadata {
    /// The new metadata objects: kind, id (the blake3 of the bytes) and bytes.
    pub objects: Vec<(ObjectKind, ObjectId, Vec<u8>)>,
    /// Chunks it carries: id (the blake3 of the bytes) and bytes.
    pub chunks: Vec<(ObjectId, Vec<u8>)>,
    /// Where the new chunks lie, by pack (empty in a delta made before locations were listed).
    pub chunk_locations: Vec<PackIndex>,
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
        let delta = MetadataDelta::new(from, to, b"base stream", &objects, &chunks, &located).unwrap();
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
        // Made before locations were listed: still valid, with none.
        let plain = MetadataDelta::new(from, to, b"base stream", &objects, &[], &[]).unwrap();
        let rebuilt = plain.apply(b"base stream").unwrap();
        assert!(rebuilt.chunk_locations.is_empty() && rebuilt.chunks.is_empty());
    }

    #[test]
    fn locations_of_anything_but_chunks_are_refused() {
        let (from, to) = (CommitId(ObjectId::of(b"from")), CommitId(ObjectId::of(b"to")));
        let objects = vec![(ObjectKind::File, b"file".to_vec())];
        let delta = MetadataDelta::new(from, to, b"", &objects, &[], &locations(ObjectKind::File)).unwrap();
        let error = delta.apply(b"").unwrap_err().to_string();
        assert!(error.contains("not a chunk") && error.contains(&from.to_string()), "{error}");
    }
}
