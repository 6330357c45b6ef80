//! Delta planning: the objects a node lacks, located in packs, coalesced into Range requests.
//!
//! A node that holds commit FROM (and therefore every object FROM reaches) needs, for commit TO,
//! the metadata objects and chunks that TO reaches and FROM does not. Each lies at a known byte
//! range of a pack (its pack index says where); ranges in the same pack that are close are merged
//! into one request, accepting a small gap of unneeded bytes, up to a maximum request size. The
//! same plan drives `osdeploy delta` (print it) and the pull (fetch it).

use std::collections::{BTreeMap, HashSet};

use osdeploy_store::archive::ArchiveStore;
use osdeploy_store::object::{EntryKind, ObjectKind};
use osdeploy_store::pack::IndexEntry;
use osdeploy_store::{CommitId, ObjectId, Repo, StoreError};
use serde::Serialize;

/// How ranges are merged into requests.
#[derive(Clone, Copy, Debug)]
pub struct CoalesceOptions {
    /// Neighbouring ranges of one pack separated by at most this many unneeded bytes are merged.
    pub max_gap: u64,
    /// No merged request grows beyond this many bytes.
    pub max_request: u64,
}

impl Default for CoalesceOptions {
    /// 64 KiB of gap (about one chunk: cheaper to fetch than a new request on any real link) and
    /// 16 MiB requests (several in flight keep a fast link busy; a failed one is cheap to redo).
    fn default() -> Self {
        CoalesceOptions { max_gap: 64 << 10, max_request: 16 << 20 }
    }
}

/// One HTTP Range request into a pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackRead {
    /// The pack's id.
    pub pack: String,
    /// First byte.
    pub offset: u64,
    /// Length in bytes (entry headers and merged gaps included).
    pub len: u64,
    /// Objects it carries.
    pub objects: u64,
}

/// What a node holding `from` must fetch for `to`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeltaPlan {
    /// The commit the node holds, if any.
    pub from: Option<String>,
    /// The commit it wants.
    pub to: String,
    /// New metadata objects (commit, dirtrees, file objects).
    pub metadata_objects: u64,
    /// Their stored size, entry headers included.
    pub metadata_bytes: u64,
    /// New chunks.
    pub chunks: u64,
    /// Their uncompressed size.
    pub chunk_bytes_raw: u64,
    /// Stored (compressed) bytes of everything needed (chunks and metadata), entry headers
    /// included, gaps excluded.
    pub needed_bytes: u64,
    /// Chunks of `to` the node already holds.
    pub chunks_reused: u64,
    /// Their uncompressed size.
    pub reused_bytes_raw: u64,
    /// Pack index files to fetch (one request each), and their bytes.
    pub index_files: u64,
    /// Bytes of those index files.
    pub index_bytes: u64,
    /// Coalesced Range requests into packs.
    pub reads: Vec<PackRead>,
    /// Range requests + index requests + the summary (and, when signed, its signature and the
    /// commit's).
    pub requests: u64,
    /// Bytes on the wire: ranges (gaps included) + index files + summary (+ signatures).
    pub transfer_bytes: u64,
}

/// Where a repository being planned keeps its objects: a local archive repository, or a
/// remote's pack indexes (`osdeploy delta --remote`).
pub trait ObjectLocations {
    /// The pack holding an object, and the object's entry there.
    fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(ObjectId, IndexEntry)>;
    /// The size of a pack's index file.
    fn index_bytes(&self, pack: &ObjectId) -> Result<u64, StoreError>;
}

impl ObjectLocations for ArchiveStore {
    fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(ObjectId, IndexEntry)> {
        ArchiveStore::locate(self, kind, id).map(|(pack, entry)| (pack.id, *entry))
    }

    fn index_bytes(&self, pack: &ObjectId) -> Result<u64, StoreError> {
        let path = self.packs_dir().join(format!("{}.idx", pack.to_hex()));
        std::fs::metadata(&path).map(|m| m.len()).map_err(|error| StoreError::Io { path, error })
    }
}

/// Plans the transfer from `from` (None: the node holds nothing) to `to` in an archive repository.
pub fn plan(
    repo: &Repo,
    from: Option<CommitId>,
    to: CommitId,
    options: CoalesceOptions,
) -> Result<DeltaPlan, StoreError> {
    let archive = repo.archive().ok_or_else(|| StoreError::NotARepository {
        path: repo.path().into(),
        reason: "delta plans are computed on an archive repository (what nodes pull from)".into(),
    })?;
    let have = match from {
        Some(f) => only_commit(repo, f)?,
        None => HashSet::new(),
    };
    let want = only_commit(repo, to)?;
    // The files every pull fetches whole: the summary and, from a signed repository, its
    // signature and the wanted commit's.
    let whole_files: Vec<u64> = ["summary".to_string(), "summary.sig".into(), format!("signatures/{to}.sig")]
        .iter()
        .filter_map(|name| std::fs::metadata(repo.path().join(name)).ok().map(|m| m.len()))
        .collect();
    let mut plan = DeltaPlan { from: from.map(|f| f.to_string()), to: to.to_string(), ..Default::default() };
    plan_objects(archive, &have, &want, &whole_files, options, &mut plan)?;
    Ok(plan)
}

/// Fills `plan` with what fetching `want` costs a node that holds `have`, besides the files
/// fetched whole (`whole_files`: their sizes).
pub fn plan_objects(
    locations: &impl ObjectLocations,
    have: &HashSet<(ObjectId, ObjectKind)>,
    want: &HashSet<(ObjectId, ObjectKind)>,
    whole_files: &[u64],
    options: CoalesceOptions,
    plan: &mut DeltaPlan,
) -> Result<(), StoreError> {
    let mut by_pack: BTreeMap<ObjectId, Vec<(u64, u64)>> = BTreeMap::new();
    for key @ (id, kind) in want {
        let (pack, entry) = locations.locate(*kind, id).ok_or(StoreError::ObjectMissing { kind: *kind, id: *id })?;
        if have.contains(key) {
            if *kind == ObjectKind::Chunk {
                plan.chunks_reused += 1;
                plan.reused_bytes_raw += u64::from(entry.raw_len);
            }
            continue;
        }
        match kind {
            ObjectKind::Chunk => {
                plan.chunks += 1;
                plan.chunk_bytes_raw += u64::from(entry.raw_len);
            }
            _ => {
                plan.metadata_objects += 1;
                plan.metadata_bytes += entry.span();
            }
        }
        plan.needed_bytes += entry.span();
        by_pack.entry(pack).or_default().push((entry.offset, entry.span()));
    }
    for (pack, mut spans) in by_pack {
        plan.index_files += 1;
        plan.index_bytes += locations.index_bytes(&pack)?;
        spans.sort_unstable();
        plan.reads.extend(coalesce(&pack.to_hex(), &spans, options));
    }
    plan.requests = plan.reads.len() as u64 + plan.index_files + whole_files.len() as u64;
    plan.transfer_bytes =
        plan.reads.iter().map(|r| r.len).sum::<u64>() + plan.index_bytes + whole_files.iter().sum::<u64>();
    Ok(())
}

/// The objects one commit reaches (not its ancestors: a node holds one deployed tree).
fn only_commit(repo: &Repo, commit: CommitId) -> Result<HashSet<(ObjectId, ObjectKind)>, StoreError> {
    let c = repo.commit_object(&commit)?;
    let mut own = HashSet::from([(commit.0, ObjectKind::Commit)]);
    collect_tree(repo, &c.root, &mut own)?;
    Ok(own)
}

fn collect_tree(
    repo: &Repo,
    tree: &osdeploy_store::TreeId,
    out: &mut HashSet<(ObjectId, ObjectKind)>,
) -> Result<(), StoreError> {
    if !out.insert((tree.0, ObjectKind::DirTree)) {
        return Ok(());
    }
    for entry in repo.tree(tree)?.entries {
        match entry.kind {
            EntryKind::Dir(sub) => collect_tree(repo, &sub, out)?,
            EntryKind::File { file, .. } if out.insert((file.0, ObjectKind::File)) => {
                for (chunk, _) in repo.file_object(&file)?.chunks {
                    out.insert((chunk.0, ObjectKind::Chunk));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Merges sorted `(offset, len)` spans of one pack into reads (see [`CoalesceOptions`]).
pub fn coalesce(pack: &str, spans: &[(u64, u64)], options: CoalesceOptions) -> Vec<PackRead> {
    let mut reads: Vec<PackRead> = Vec::new();
    for &(offset, len) in spans {
        if let Some(last) = reads.last_mut() {
            let end = last.offset + last.len;
            if offset >= end && offset - end <= options.max_gap && offset + len - last.offset <= options.max_request {
                last.len = offset + len - last.offset;
                last.objects += 1;
                continue;
            }
        }
        reads.push(PackRead { pack: pack.to_string(), offset, len, objects: 1 });
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_across_small_gaps_up_to_the_request_limit() {
        let opts = CoalesceOptions { max_gap: 10, max_request: 100 };
        let reads = coalesce("p", &[(0, 20), (25, 20), (60, 10), (70, 50), (120, 10)], opts);
        let got: Vec<(u64, u64, u64)> = reads.iter().map(|r| (r.offset, r.len, r.objects)).collect();
        // 0..45 merges (gap 5); 60 starts new (gap 15); 70..120 merges with 60 (gap 0, 60 bytes);
        // 120..130 would make 70 bytes: merged.
        assert_eq!(got, vec![(0, 45, 2), (60, 70, 3)]);
        let reads = coalesce("p", &[(0, 60), (60, 60)], opts);
        assert_eq!(reads.len(), 2, "the merged read would exceed max_request");
    }
}
