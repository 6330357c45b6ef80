//! The summary an archive repository publishes ([`crate::layout::SUMMARY`]): every branch with
//! its commit, and every pack with the hash of its index, so that a client reading plain files
//! over HTTP finds everything else. Written by the repository, read by clients and mirrors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compress::Codec;
use crate::delta::index::MetadataEntry;
use crate::object::ObjectKind;
use crate::pack::{ENTRY_HEADER_LEN, IndexEntry, PACK_HEADER_LEN, raw_limit};
use crate::{CommitId, ObjectId, RefName, Result, StoreError};

/// The summary format this osdeploy writes and reads.
pub const SUMMARY_FORMAT_VERSION: u32 = 1;

/// One branch as the summary offers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryRef {
    /// The branch's commit.
    pub commit: CommitId,
    /// The commit's timestamp (seconds since the epoch).
    pub timestamp: i64,
    /// The commit's version string.
    pub version: String,
}

/// One pack as the summary lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryPack {
    /// The pack's id: the blake3 of the pack file.
    pub id: ObjectId,
    /// The blake3 of the pack's index file (a client verifies and caches indexes through it).
    pub index: ObjectId,
    /// Objects in the pack.
    pub objects: u64,
    /// The pack's size in bytes.
    pub size: u64,
}

/// A release's delta index as the summary lists it (see [`crate::delta::index`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryDeltaIndex {
    /// Deltas it lists.
    pub entries: u64,
    /// The blake3 of the index file (its name).
    pub index: ObjectId,
    /// The index file's size in bytes.
    pub size: u64,
    /// The release its deltas lead to.
    pub to: CommitId,
}

/// A metadata delta into a branch's commit, as the summary lists it: a node holding the release it
/// starts from fetches it first and needs no delta index, as it also lists the file deltas from
/// that release (see [`crate::delta::metadata`]). Stored raw in its delta pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryMetadataDelta {
    /// The release it starts from.
    pub from: CommitId,
    /// Its object id.
    pub id: ObjectId,
    /// Where its pack entry begins in the delta pack.
    pub offset: u64,
    /// The delta pack holding it.
    pub pack: ObjectId,
    /// Its size in the pack (after the entry header).
    pub size: u32,
    /// The release it leads to.
    pub to: CommitId,
}

impl SummaryMetadataDelta {
    /// Its entry, as the release's delta index lists it.
    pub fn entry(&self) -> MetadataEntry {
        let entry = IndexEntry {
            id: self.id,
            kind: ObjectKind::MetadataDelta,
            codec: Codec::Raw,
            offset: self.offset,
            stored_len: self.size,
            raw_len: self.size,
        };
        MetadataEntry { from: self.from, pack: self.pack, entry }
    }
}

/// A repository's summary. Fields are in alphabetical order, as they appear in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The delta index of each release that has one, sorted by release (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delta_indexes: Vec<SummaryDeltaIndex>,
    /// Every delta pack, sorted by id (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delta_packs: Vec<SummaryPack>,
    /// [`SUMMARY_FORMAT_VERSION`].
    pub format_version: u32,
    /// The metadata deltas into the branches' commits, sorted by (to, from) (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata_deltas: Vec<SummaryMetadataDelta>,
    /// Every pack, sorted by id.
    pub packs: Vec<SummaryPack>,
    /// Branch → commit.
    pub refs: BTreeMap<RefName, SummaryRef>,
}

#[derive(Deserialize)]
struct VersionOnly {
    format_version: Option<u32>,
}

impl Summary {
    /// The metadata delta into `to` from the release that makes it smallest among those `held`
    /// says the node holds.
    pub fn metadata_delta(
        &self,
        to: &CommitId,
        mut held: impl FnMut(&CommitId) -> Result<bool>,
    ) -> Result<Option<&SummaryMetadataDelta>> {
        let mut best: Option<&SummaryMetadataDelta> = None;
        for m in self.metadata_deltas.iter().filter(|m| m.to == *to) {
            if best.is_none_or(|b| m.size < b.size) && held(&m.from)? {
                best = Some(m);
            }
        }
        Ok(best)
    }

    /// The file's bytes: pretty-printed JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        (serde_json::to_string_pretty(self).expect("a summary serializes") + "\n").into_bytes()
    }

    /// Parses a summary, named `what` in errors ("the summary /srv/repo/summary"); a format
    /// version other than [`SUMMARY_FORMAT_VERSION`] is refused before anything else is read.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Summary> {
        let what = what.to_owned();
        let corrupt = |e: serde_json::Error| StoreError::Corrupt { what: what.clone(), reason: e.to_string() };
        let version = serde_json::from_slice::<VersionOnly>(bytes).map_err(corrupt)?.format_version.unwrap_or(0);
        if version != SUMMARY_FORMAT_VERSION {
            return Err(StoreError::UnsupportedVersion {
                what: what.clone(),
                found: version,
                supported: SUMMARY_FORMAT_VERSION,
            });
        }
        let summary: Summary = serde_json::from_slice(bytes).map_err(corrupt)?;
        summary.check_metadata_deltas().map_err(|reason| StoreError::Corrupt { what, reason })?;
        Ok(summary)
    }

    /// Each listed metadata delta lies inside a listed delta pack, within the size limit.
    fn check_metadata_deltas(&self) -> std::result::Result<(), String> {
        for m in &self.metadata_deltas {
            if m.size > raw_limit(ObjectKind::MetadataDelta) {
                return Err(format!("metadata delta {} is listed with {} bytes, above the limit", m.id, m.size));
            }
            let end = m.offset.checked_add(ENTRY_HEADER_LEN + u64::from(m.size));
            let pack = self.delta_packs.iter().find(|p| p.id == m.pack);
            if pack.is_none_or(|p| m.offset < PACK_HEADER_LEN || end.is_none_or(|end| end > p.size)) {
                return Err(format!("metadata delta {} is listed outside the delta packs", m.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        let id = ObjectId::of(b"x");
        Summary {
            delta_indexes: vec![SummaryDeltaIndex { entries: 2, index: ObjectId::of(b"d"), size: 9, to: CommitId(id) }],
            delta_packs: vec![SummaryPack {
                id: ObjectId::of(b"dp"),
                index: ObjectId::of(b"di"),
                objects: 2,
                size: 80,
            }],
            format_version: SUMMARY_FORMAT_VERSION,
            metadata_deltas: vec![SummaryMetadataDelta {
                from: CommitId(ObjectId::of(b"old")),
                id: ObjectId::of(b"m"),
                offset: 8,
                pack: ObjectId::of(b"dp"),
                size: 30,
                to: CommitId(id),
            }],
            packs: vec![SummaryPack { id, index: ObjectId::of(b"i"), objects: 3, size: 100 }],
            refs: BTreeMap::from([(
                RefName::new("stable").unwrap(),
                SummaryRef { commit: CommitId(id), timestamp: 7, version: "1".into() },
            )]),
        }
    }

    #[test]
    fn round_trips_and_keeps_its_field_order() {
        let bytes = sample().to_bytes();
        assert_eq!(Summary::parse(&bytes, "the summary s").unwrap(), sample());
        let text = String::from_utf8(bytes).unwrap();
        let at = |key: &str| text.find(key).unwrap();
        assert!(at("delta_indexes") < at("delta_packs") && at("delta_packs") < at("format_version"), "{text}");
        assert!(at("format_version") < at("\"packs") && at("\"packs") < at("refs"), "{text}");
    }

    #[test]
    fn refuses_metadata_deltas_outside_the_delta_packs_or_too_large() {
        for (offset, size) in [(0, 30), (9, 30), (8, 1 << 30)] {
            let mut summary = sample();
            summary.metadata_deltas[0].offset = offset;
            summary.metadata_deltas[0].size = size;
            let parsed = Summary::parse(&summary.to_bytes(), "the summary s");
            // The sample's delta pack has 80 bytes: 8 + 42 + 30 fit, nothing more.
            let err = parsed.unwrap_err().to_string();
            assert!(err.contains("the summary s is corrupt") && err.contains("metadata delta"), "{err}");
        }
        Summary::parse(&sample().to_bytes(), "the summary s").unwrap();
    }

    #[test]
    fn refuses_unknown_versions_and_bad_ids() {
        let mut newer = sample();
        newer.format_version = 2;
        let err = Summary::parse(&newer.to_bytes(), "the summary http://o/summary").unwrap_err().to_string();
        assert!(err.contains("the summary http://o/summary has format version 2"), "{err}");
        let err = Summary::parse(br#"{"refs": {}, "packs": []}"#, "the summary s").unwrap_err().to_string();
        assert!(err.contains("format version 0"), "{err}");
        let bad = String::from_utf8(sample().to_bytes()).unwrap().replace(&ObjectId::of(b"x").to_hex(), "xyz");
        let err = Summary::parse(bad.as_bytes(), "the summary s").unwrap_err().to_string();
        assert!(err.contains("the summary s is corrupt") && err.contains("\"xyz\" is not an object id"), "{err}");
        let bad = String::from_utf8(sample().to_bytes()).unwrap().replace("\"stable\"", "\"../stable\"");
        let err = Summary::parse(bad.as_bytes(), "the summary s").unwrap_err().to_string();
        assert!(err.contains("the summary s is corrupt") && err.contains("invalid ref name \"../stable\""), "{err}");
    }
}
