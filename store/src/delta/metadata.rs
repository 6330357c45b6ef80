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

use std::collections::HashSet;

use crate::codec::Encoder;
use crate::delta::codec::{self, DeltaCodec, EncodeOptions};
use crate::error::{Result, StoreError};
use crate::id::{CommitId, ObjectId};
use crate::object::{Commit, DirTree, EntryKind, MAX_METADATA_LEN, ObjectKind, decode, header};

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
    /// Encodes `objects` (kind, encoding) against `base` (a [`base_stream`]).
    pub fn new(from: CommitId, to: CommitId, base: &[u8], objects: &[(ObjectKind, Vec<u8>)]) -> Result<Self> {
        let mut target = Vec::new();
        for (kind, bytes) in objects {
            target.push(*kind as u8);
            target.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            target.extend_from_slice(bytes);
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

    /// Rebuilds the objects from `base` (the base stream of `from`): each returned with its kind
    /// and id, the blake3 of its bytes. Any malformed record is an error naming the delta.
    pub fn apply(&self, base: &[u8]) -> Result<Vec<(ObjectKind, ObjectId, Vec<u8>)>> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: format!("metadata delta {} → {}", self.from, self.to),
            reason,
        };
        let stream = codec::decode(DeltaCodec::ZstdPatch, base, &self.payload, self.target_size, &codec::no_files)
            .map_err(corrupt)?;
        let mut objects = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let (Some(&kind), Some(len)) = (rest.first(), rest.get(1..5)) else {
                return Err(corrupt(format!("a record is cut off at byte {}", stream.len() - rest.len())));
            };
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let kind = ObjectKind::from_u8(kind)
                .filter(|k| matches!(k, ObjectKind::Commit | ObjectKind::DirTree | ObjectKind::File))
                .ok_or_else(|| corrupt(format!("a record of kind {kind} is not metadata")))?;
            let bytes = rest.get(5..5 + len).ok_or_else(|| corrupt(format!("the {kind} record is cut off")))?;
            objects.push((kind, ObjectId::of(bytes), bytes.to_vec()));
            rest = &rest[5 + len..];
        }
        Ok(objects)
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
