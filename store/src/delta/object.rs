//! Delta objects: one file content encoded against another (docs/format.md §7).
//!
//! A delta object names its base and its target by their file object ids, so it serves every pair
//! of releases that contains that transition, and is addressed like every object: by the blake3
//! of its encoding. Applying one is verified against the target's file object, chunk by chunk,
//! so a wrong delta can never produce wrong content.

use crate::codec::Encoder;
use crate::delta::codec::{self, DeltaCodec, FileReader};
use crate::delta::gzip;
use crate::error::{Result, StoreError};
use crate::id::{FileId, ObjectId};
use crate::object::{FileObject, MAX_METADATA_LEN, ObjectKind, decode, header};

/// Largest target a delta may rebuild: applying holds the base and the target in memory.
pub const MAX_DELTA_TARGET: u64 = 256 << 20;

/// A delta from `base` content to `target` content.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeltaObject {
    /// The content the node holds.
    pub base: FileId,
    /// The content it rebuilds.
    pub target: FileId,
    /// The target's size in bytes.
    pub target_size: u64,
    /// How `payload` encodes the target.
    pub codec: DeltaCodec,
    /// The encoded difference.
    pub payload: Vec<u8>,
}

impl DeltaObject {
    /// The canonical encoding (its blake3 is the object's id).
    pub fn encode(&self) -> Vec<u8> {
        let mut e: Encoder = header(ObjectKind::Delta);
        e.id(&self.base.0);
        e.id(&self.target.0);
        e.u64(self.target_size);
        e.u8(self.codec as u8);
        e.bytes32(&self.payload);
        e.buf
    }

    /// Decodes the delta object `id`, refusing unknown codecs and oversized targets.
    pub fn decode(id: ObjectId, data: &[u8]) -> Result<DeltaObject> {
        decode(ObjectKind::Delta, id, data, |d| {
            let base = FileId(d.id()?);
            let target = FileId(d.id()?);
            let target_size = d.u64()?;
            if target_size > MAX_DELTA_TARGET {
                return Err(format!("target size {target_size} exceeds the limit of {MAX_DELTA_TARGET}"));
            }
            let codec = d.u8()?;
            let codec = DeltaCodec::from_u8(codec).ok_or_else(|| format!("unknown delta codec {codec}"))?;
            let payload = d.bytes32(MAX_METADATA_LEN as usize)?.to_vec();
            Ok(DeltaObject { base, target, target_size, codec, payload })
        })
    }

    /// True when applying it reads its base: a gzip delta may encode against nothing (an
    /// initramfs whose members are named), and its base need not be read.
    pub fn reads_base(&self) -> bool {
        match self.codec {
            DeltaCodec::Gzip | DeltaCodec::GzipTree => gzip::reads_base(&self.payload),
            _ => true,
        }
    }

    /// True when applying it reads files of the target release ([`DeltaCodec::GzipTree`]).
    pub fn reads_release_files(&self) -> bool {
        self.codec == DeltaCodec::GzipTree
    }

    /// The files of the target release that applying it reads (none but for
    /// [`DeltaCodec::GzipTree`]), each once.
    pub fn release_files(&self) -> Result<Vec<FileId>> {
        if !self.reads_release_files() {
            return Ok(Vec::new());
        }
        gzip::named_files(&self.payload)
            .map_err(|reason| StoreError::Corrupt { what: format!("delta {} → {}", self.base, self.target), reason })
    }

    /// Rebuilds the target from the base content and checks it against the target's file object:
    /// its size, and the blake3 of every chunk. Any failure names the delta.
    pub fn apply(&self, base: &[u8], target: &FileObject) -> Result<Vec<u8>> {
        self.apply_with(base, target, &codec::no_files)
    }

    /// [`Self::apply`], reading the release files a gzip-tree delta names with `files`.
    pub fn apply_with(&self, base: &[u8], target: &FileObject, files: &FileReader<'_>) -> Result<Vec<u8>> {
        let failed =
            |reason: String| StoreError::Corrupt { what: format!("delta {} → {}", self.base, self.target), reason };
        if target.size != self.target_size {
            return Err(failed(format!("it rebuilds {} bytes, the file object has {}", self.target_size, target.size)));
        }
        let content = codec::decode(self.codec, base, &self.payload, self.target_size, files).map_err(failed)?;
        check_content(&content, target).map_err(failed)?;
        Ok(content)
    }
}

/// Checks `content` against a file object: its size, and every chunk's blake3.
pub fn check_content(content: &[u8], object: &FileObject) -> std::result::Result<(), String> {
    if content.len() as u64 != object.size {
        return Err(format!("{} bytes, expected {}", content.len(), object.size));
    }
    let mut at = 0usize;
    for (chunk, len) in &object.chunks {
        let Some(bytes) = content.get(at..at + *len as usize) else {
            return Err(format!("the chunks cover more than {} bytes", content.len()));
        };
        if ObjectId::of(bytes) != chunk.0 {
            return Err(format!("bytes {at}..{} do not hash to chunk {}", at + *len as usize, chunk.0));
        }
        at += *len as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;

    fn file_of(content: &[u8]) -> FileObject {
        let (a, b) = content.split_at(content.len() / 2);
        FileObject {
            size: content.len() as u64,
            chunks: vec![(ChunkId(ObjectId::of(a)), a.len() as u32), (ChunkId(ObjectId::of(b)), b.len() as u32)],
        }
    }

    fn delta(base: &[u8], target: &[u8]) -> DeltaObject {
        let (codec, payload) = codec::encode_best(base, target, &Default::default(), None).unwrap();
        DeltaObject {
            base: FileId(ObjectId::of(base)),
            target: FileId(ObjectId::of(target)),
            target_size: target.len() as u64,
            codec,
            payload,
        }
    }

    #[test]
    fn round_trips_and_applies_verified() {
        let base = b"the quick brown fox jumps over the lazy dog, again and again".repeat(50);
        let mut target = base.clone();
        target[100..110].copy_from_slice(b"0123456789");
        let d = delta(&base, &target);
        let bytes = d.encode();
        let id = ObjectId::of(&bytes);
        assert_eq!(DeltaObject::decode(id, &bytes).unwrap(), d);
        assert_eq!(d.apply(&base, &file_of(&target)).unwrap(), target);
    }

    #[test]
    fn a_wrong_base_or_target_is_refused_by_name() {
        // Incompressible content, so that the delta must draw on the base.
        let base: Vec<u8> = (0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let target = [&base[..3000], &[9u8; 1000]].concat();
        let d = delta(&base, &target);
        let mut other = base.clone();
        other[10] ^= 1;
        let err = d.apply(&other, &file_of(&target)).unwrap_err().to_string();
        assert!(err.contains(&format!("delta {} → {}", d.base, d.target)), "{err}");
        let mut wrong = file_of(&target);
        wrong.chunks[1].0 = ChunkId(ObjectId::of(b"x"));
        let err = d.apply(&base, &wrong).unwrap_err().to_string();
        assert!(err.contains("do not hash to chunk"), "{err}");
    }

    #[test]
    fn decode_refuses_unknown_codecs_and_huge_targets() {
        let mut d = delta(b"abc", b"abd");
        d.target_size = MAX_DELTA_TARGET + 1;
        let bytes = d.encode();
        let err = DeltaObject::decode(ObjectId::of(&bytes), &bytes).unwrap_err().to_string();
        assert!(err.contains("exceeds the limit"), "{err}");
        let mut bytes = delta(b"abc", b"abd").encode();
        bytes[6 + 64 + 8] = 99;
        let err = DeltaObject::decode(ObjectId::of(&bytes), &bytes).unwrap_err().to_string();
        assert!(err.contains("unknown delta codec 99"), "{err}");
    }
}
