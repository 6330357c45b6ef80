//! Delta index files (docs/format.md §7): for one release, every delta that rebuilds one of its
//! file contents from a content of an earlier release, with where the delta lies.
//!
//! A node pulling release C fetches C's delta index alone (listed with its hash in the signed
//! summary) and learns from it which of its own contents can be turned into C's: it needs no
//! index of the delta packs. The file is named by its blake3, like pack indexes.

use crate::codec::{Decoder, Encoder};
use crate::compress::Codec;
use crate::error::{Result, StoreError};
use crate::id::{CommitId, FileId, ObjectId};
use crate::object::ObjectKind;
use crate::pack::{ENTRY_HEADER_LEN, IndexEntry, raw_limit};

/// Magic of a delta index file.
pub const DELTA_INDEX_MAGIC: &[u8; 4] = b"osdx";
/// Delta index format version.
pub const DELTA_INDEX_VERSION: u8 = 1;
/// Most delta packs one index may refer to.
const MAX_PACKS: u32 = 1 << 16;
/// Most entries one index may hold.
const MAX_ENTRIES: u32 = 1 << 24;

/// One delta a release's index lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaEntry {
    /// The content it rebuilds (a file of the release).
    pub target: FileId,
    /// The content it starts from.
    pub base: FileId,
    /// The delta pack holding it.
    pub pack: ObjectId,
    /// Where it lies in that pack.
    pub entry: IndexEntry,
}

/// A release metadata delta an index lists (see [`crate::delta::metadata`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetadataEntry {
    /// The release it starts from.
    pub from: CommitId,
    /// The delta pack holding it.
    pub pack: ObjectId,
    /// Where it lies in that pack.
    pub entry: IndexEntry,
}

/// The deltas that lead to one release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaIndex {
    /// The release.
    pub to: CommitId,
    /// Its file deltas, sorted by (target, base), each pair once.
    pub entries: Vec<DeltaEntry>,
    /// Its metadata deltas, sorted by the release they start from, one each.
    pub metadata: Vec<MetadataEntry>,
}

impl DeltaIndex {
    /// How many deltas it lists, of files and of metadata.
    pub fn len(&self) -> usize {
        self.entries.len() + self.metadata.len()
    }

    /// True when it lists no delta.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encodes the index: header, the packs referred to, then the entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut packs: Vec<ObjectId> =
            self.entries.iter().map(|e| e.pack).chain(self.metadata.iter().map(|m| m.pack)).collect();
        packs.sort_unstable();
        packs.dedup();
        let mut enc = Encoder::default();
        enc.buf.extend_from_slice(DELTA_INDEX_MAGIC);
        enc.u8(DELTA_INDEX_VERSION);
        enc.id(&self.to.0);
        enc.u32(packs.len() as u32);
        for pack in &packs {
            enc.id(pack);
        }
        enc.u32(self.entries.len() as u32);
        for e in &self.entries {
            enc.id(&e.target.0);
            enc.id(&e.base.0);
            encode_location(&mut enc, &packs, &e.pack, &e.entry);
        }
        enc.u32(self.metadata.len() as u32);
        for m in &self.metadata {
            enc.id(&m.from.0);
            encode_location(&mut enc, &packs, &m.pack, &m.entry);
        }
        enc.buf
    }

    /// Decodes and validates an index read from `what` (a path or URL, for errors): pack
    /// references, sizes within limits, sort order.
    pub fn decode(bytes: &[u8], what: &str) -> Result<DeltaIndex> {
        let what = format!("delta index {what}");
        let corrupt = |reason: String| StoreError::Corrupt { what: what.clone(), reason };
        let mut d = Decoder::new(bytes);
        if d.take(4).map_err(corrupt)? != DELTA_INDEX_MAGIC {
            return Err(corrupt("bad magic, expected \"osdx\"".into()));
        }
        let version = d.u8().map_err(corrupt)?;
        if version != DELTA_INDEX_VERSION {
            return Err(StoreError::UnsupportedVersion {
                what: what.clone(),
                found: version.into(),
                supported: DELTA_INDEX_VERSION.into(),
            });
        }
        let to = CommitId(d.id().map_err(corrupt)?);
        let pack_count = d.u32().map_err(corrupt)?;
        if pack_count > MAX_PACKS {
            return Err(corrupt(format!("{pack_count} packs, above the limit of {MAX_PACKS}")));
        }
        let packs = (0..pack_count).map(|_| d.id()).collect::<std::result::Result<Vec<_>, _>>().map_err(corrupt)?;
        let count = d.u32().map_err(corrupt)?;
        if count > MAX_ENTRIES {
            return Err(corrupt(format!("{count} entries, above the limit of {MAX_ENTRIES}")));
        }
        let mut entries: Vec<DeltaEntry> = Vec::with_capacity(count.min(1 << 16) as usize);
        for i in 0..count {
            let bad = |reason: String| corrupt(format!("entry {i}: {reason}"));
            let target = FileId(d.id().map_err(corrupt)?);
            let base = FileId(d.id().map_err(corrupt)?);
            let (pack, entry) = decode_location(&mut d, &packs, ObjectKind::Delta).map_err(bad)?;
            if target == base {
                return Err(bad(format!("delta {} has the same base and target", entry.id)));
            }
            if entries.last().is_some_and(|p| (p.target, p.base) >= (target, base)) {
                return Err(bad("out of order or duplicated".into()));
            }
            entries.push(DeltaEntry { target, base, pack, entry });
        }
        let count = d.u32().map_err(corrupt)?;
        if count > MAX_PACKS {
            return Err(corrupt(format!("{count} metadata deltas, above the limit of {MAX_PACKS}")));
        }
        let mut metadata: Vec<MetadataEntry> = Vec::new();
        for i in 0..count {
            let bad = |reason: String| corrupt(format!("metadata delta {i}: {reason}"));
            let from = CommitId(d.id().map_err(corrupt)?);
            let (pack, entry) = decode_location(&mut d, &packs, ObjectKind::MetadataDelta).map_err(bad)?;
            if from == to || metadata.last().is_some_and(|p| p.from >= from) {
                return Err(bad("out of order, duplicated or from the release itself".into()));
            }
            metadata.push(MetadataEntry { from, pack, entry });
        }
        d.finish().map_err(corrupt)?;
        Ok(DeltaIndex { to, entries, metadata })
    }
}

/// Writes where an object lies: its pack's number in `packs`, then its pack entry.
fn encode_location(enc: &mut Encoder, packs: &[ObjectId], pack: &ObjectId, entry: &IndexEntry) {
    enc.u32(packs.binary_search(pack).expect("every pack is listed") as u32);
    enc.id(&entry.id);
    enc.u8(entry.codec as u8);
    enc.u64(entry.offset);
    enc.u32(entry.stored_len);
    enc.u32(entry.raw_len);
}

/// Reads where an object of `kind` lies (see [`encode_location`]), checking its sizes.
fn decode_location(
    d: &mut Decoder,
    packs: &[ObjectId],
    kind: ObjectKind,
) -> std::result::Result<(ObjectId, IndexEntry), String> {
    let slot = d.u32()?;
    let pack = *packs.get(slot as usize).ok_or_else(|| format!("pack {slot} is not listed"))?;
    let id = d.id()?;
    let codec = d.u8()?;
    let codec = Codec::from_u8(codec).ok_or_else(|| format!("unknown codec {codec}"))?;
    let entry = IndexEntry { id, kind, codec, offset: d.u64()?, stored_len: d.u32()?, raw_len: d.u32()? };
    if entry.raw_len > raw_limit(kind) || entry.stored_len > entry.raw_len {
        return Err(format!("{kind} {id} declares impossible sizes"));
    }
    if entry.offset.checked_add(ENTRY_HEADER_LEN + u64::from(entry.stored_len)).is_none() {
        return Err(format!("{kind} {id} lies past any pack"));
    }
    Ok((pack, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeltaIndex {
        let id = |s: &[u8]| ObjectId::of(s);
        let entry = |n: u64| IndexEntry {
            id: id(&n.to_le_bytes()),
            kind: ObjectKind::Delta,
            codec: Codec::Raw,
            offset: 8 + n * 100,
            stored_len: 50,
            raw_len: 50,
        };
        let mut entries = vec![
            DeltaEntry { target: FileId(id(b"t1")), base: FileId(id(b"b1")), pack: id(b"p1"), entry: entry(0) },
            DeltaEntry { target: FileId(id(b"t1")), base: FileId(id(b"b2")), pack: id(b"p2"), entry: entry(1) },
            DeltaEntry { target: FileId(id(b"t2")), base: FileId(id(b"b1")), pack: id(b"p1"), entry: entry(2) },
        ];
        entries.sort_by_key(|e| (e.target, e.base));
        let metadata = vec![MetadataEntry {
            from: CommitId(id(b"a")),
            pack: id(b"p3"),
            entry: IndexEntry { kind: ObjectKind::MetadataDelta, ..entry(3) },
        }];
        DeltaIndex { to: CommitId(id(b"c")), entries, metadata }
    }

    #[test]
    fn round_trips() {
        let index = sample();
        assert_eq!(DeltaIndex::decode(&index.encode(), "x").unwrap(), index);
    }

    #[test]
    fn refuses_disorder_bad_packs_and_truncation() {
        let mut index = sample();
        index.entries.swap(0, 2);
        let err = DeltaIndex::decode(&index.encode(), "http://o/x").unwrap_err().to_string();
        assert!(err.contains("delta index http://o/x") && err.contains("out of order"), "{err}");
        let bytes = sample().encode();
        let err = DeltaIndex::decode(&bytes[..bytes.len() - 3], "x").unwrap_err().to_string();
        assert!(err.contains("delta index x is corrupt"), "{err}");
        // Pack slot of the first entry (after magic, version, commit, 3 packs, count, 2 ids).
        let mut bad = sample().encode();
        let at = 4 + 1 + 32 + 4 + 3 * 32 + 4 + 64;
        bad[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
        let err = DeltaIndex::decode(&bad, "x").unwrap_err().to_string();
        assert!(err.contains("pack 7 is not listed"), "{err}");
    }
}
