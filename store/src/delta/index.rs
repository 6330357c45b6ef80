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

/// The deltas that lead to one release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaIndex {
    /// The release.
    pub to: CommitId,
    /// Its deltas, sorted by (target, base), each pair once.
    pub entries: Vec<DeltaEntry>,
}

impl DeltaIndex {
    /// Encodes the index: header, the packs referred to, then the entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut packs: Vec<ObjectId> = self.entries.iter().map(|e| e.pack).collect();
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
            enc.u32(packs.binary_search(&e.pack).expect("listed above") as u32);
            enc.id(&e.entry.id);
            enc.u8(e.entry.codec as u8);
            enc.u64(e.entry.offset);
            enc.u32(e.entry.stored_len);
            enc.u32(e.entry.raw_len);
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
            let slot = d.u32().map_err(corrupt)?;
            let pack = *packs.get(slot as usize).ok_or_else(|| bad(format!("pack {slot} is not listed")))?;
            let id = d.id().map_err(corrupt)?;
            let codec = d.u8().map_err(corrupt)?;
            let codec = Codec::from_u8(codec).ok_or_else(|| bad(format!("unknown codec {codec}")))?;
            let entry = IndexEntry {
                id,
                kind: ObjectKind::Delta,
                codec,
                offset: d.u64().map_err(corrupt)?,
                stored_len: d.u32().map_err(corrupt)?,
                raw_len: d.u32().map_err(corrupt)?,
            };
            if entry.raw_len > raw_limit(ObjectKind::Delta) || entry.stored_len > entry.raw_len {
                return Err(bad(format!("delta {id} declares impossible sizes")));
            }
            if entry.offset.checked_add(ENTRY_HEADER_LEN + u64::from(entry.stored_len)).is_none() {
                return Err(bad(format!("delta {id} lies past any pack")));
            }
            if target == base {
                return Err(bad(format!("delta {id} has the same base and target")));
            }
            if entries.last().is_some_and(|p| (p.target, p.base) >= (target, base)) {
                return Err(bad("out of order or duplicated".into()));
            }
            entries.push(DeltaEntry { target, base, pack, entry });
        }
        d.finish().map_err(corrupt)?;
        Ok(DeltaIndex { to, entries })
    }
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
        DeltaIndex { to: CommitId(id(b"c")), entries }
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
        // Pack slot of the first entry (after magic, version, commit, 2 packs, count, 2 ids).
        let mut bad = sample().encode();
        let at = 4 + 1 + 32 + 4 + 2 * 32 + 4 + 64;
        bad[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
        let err = DeltaIndex::decode(&bad, "x").unwrap_err().to_string();
        assert!(err.contains("pack 7 is not listed"), "{err}");
    }
}
