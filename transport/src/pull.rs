//! `pull`: fetch a branch's newest commit from a remote archive repository, moving only the
//! objects the local repository lacks, in few coalesced Range requests.
//!
//! Walk: summary → pack indexes (cached, immutable) → the commit and, level by level, the
//! dirtrees and file objects the repository lacks (a dirtree already held implies its whole
//! subtree) → the chunks of new files that no local file holds → coalesced Range requests, several
//! in flight, every object verified (size limit, blake3) as it arrives and staged durably → one
//! write transaction (new files assembled from old local chunks and fetched ones) → the ref
//! `REMOTE/BRANCH`, last. A killed pull resumes from its staging area.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::sync::atomic::Ordering;
use std::time::Instant;

use osdeploy_store::fsutil::{atomic_write, crash_point};
use osdeploy_store::object::{Commit, DirTree, EntryKind, FileObject, ObjectKind};
use osdeploy_store::pack::{self, ENTRY_HEADER_LEN, IndexEntry};
use osdeploy_store::{CommitId, FileId, ObjectId, Repo, StoreError};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::client::Client;
use crate::error::TransportError;
use crate::plan::{CoalesceOptions, PackRead, coalesce};
use crate::remote::{Remote, index_cache, staging};
use crate::staging::Staging;

/// How a pull fetches.
#[derive(Clone, Copy, Debug)]
pub struct PullOptions {
    /// Range requests in flight at once.
    pub in_flight: usize,
    /// How ranges are merged.
    pub coalesce: CoalesceOptions,
    /// Accept a commit older than the one already pulled from the remote.
    pub allow_downgrade: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { in_flight: 4, coalesce: CoalesceOptions::default(), allow_downgrade: false }
    }
}

/// What a pull did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PullStats {
    /// The commit now held.
    pub commit: String,
    /// The local ref written (`REMOTE/BRANCH`).
    pub r#ref: String,
    /// HTTP requests sent.
    pub requests: u64,
    /// Body bytes received.
    pub bytes_fetched: u64,
    /// Metadata objects fetched.
    pub metadata_fetched: u64,
    /// Chunks fetched.
    pub chunks_fetched: u64,
    /// New files assembled.
    pub files_new: u64,
    /// Seconds taken.
    pub seconds: f64,
}

#[derive(Deserialize)]
struct SummaryRef {
    commit: String,
    timestamp: i64,
}

#[derive(Deserialize)]
struct SummaryPack {
    id: String,
}

#[derive(Deserialize)]
struct Summary {
    refs: BTreeMap<String, SummaryRef>,
    packs: Vec<SummaryPack>,
}

/// Where every object of the remote lies.
type RemoteIndex = HashMap<(ObjectId, ObjectKind), (ObjectId, IndexEntry)>;

/// Pulls `branch` of `remote` into `repo` (opened for writing).
pub fn pull(repo: &mut Repo, remote: &Remote, branch: &str, options: PullOptions) -> Result<PullStats, TransportError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TransportError::Config(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(pull_async(repo, remote, branch, options))
}

/// True when `older` is `newer`'s parent, grandparent, … as far as this repository holds history.
fn is_ancestor(repo: &Repo, older: &CommitId, newer: &CommitId) -> Result<bool, TransportError> {
    let mut next = repo.commit_object(newer)?.parent;
    while let Some(id) = next {
        if id == *older {
            return Ok(true);
        }
        if !repo.has(ObjectKind::Commit, &id.0)? {
            return Ok(false);
        }
        next = repo.commit_object(&id)?.parent;
    }
    Ok(false)
}

fn trusted_keys(remote: &Remote) -> Result<Vec<ed25519_dalek::VerifyingKey>, TransportError> {
    remote
        .keys
        .iter()
        .map(|hex| {
            crate::sign::public_from_hex(hex)
                .ok_or_else(|| TransportError::Config(format!("remote {}: {hex:?} is not a public key", remote.name)))
        })
        .collect()
}

fn signature_error(remote: &Remote, what: &str, problem: &str) -> TransportError {
    TransportError::Signature {
        remote: remote.name.clone(),
        what: what.into(),
        problem: problem.into(),
        keys: if remote.keys.is_empty() { "none".into() } else { remote.keys.join(", ") },
    }
}

fn invalid(what: impl Into<String>, url: &str, reason: impl Into<String>) -> TransportError {
    TransportError::Invalid { what: what.into(), url: url.into(), reason: reason.into() }
}

async fn pull_async(
    repo: &mut Repo,
    remote: &Remote,
    branch: &str,
    options: PullOptions,
) -> Result<PullStats, TransportError> {
    let started = Instant::now();
    let client = Client::new(remote)?;
    let summary_bytes = client.get("summary").await?;
    let summary: Summary =
        serde_json::from_slice(&summary_bytes).map_err(|e| invalid("summary", &remote.urls[0], e.to_string()))?;
    let trusted = trusted_keys(remote)?;
    if !remote.insecure {
        let signatures =
            client.get("summary.sig").await.map_err(|_| signature_error(remote, "its summary", "is not signed"))?;
        if !crate::sign::verify(&summary_bytes, &signatures, &trusted) {
            return Err(signature_error(remote, "its summary", "is not signed by a trusted key"));
        }
    }
    let offered = summary.refs.get(branch).ok_or_else(|| TransportError::NoSuchBranch {
        remote: remote.name.clone(),
        branch: branch.into(),
        available: summary.refs.keys().cloned().collect::<Vec<_>>().join(", "),
    })?;
    let commit_hex = &offered.commit;
    let commit = CommitId(ObjectId::from_hex(commit_hex).ok_or_else(|| {
        invalid("summary", &remote.urls[0], format!("branch {branch} names {commit_hex:?}, not a commit id"))
    })?);
    if !remote.insecure {
        let signatures = client
            .get(&format!("signatures/{commit}.sig"))
            .await
            .map_err(|_| signature_error(remote, &format!("commit {commit}"), "is not signed"))?;
        if !crate::sign::verify(commit.to_string().as_bytes(), &signatures, &trusted) {
            return Err(signature_error(remote, &format!("commit {commit}"), "is not signed by a trusted key"));
        }
    }
    let local_ref = format!("{}/{branch}", remote.name);
    if let Some(held) = repo.read_ref(&local_ref)?
        && held != commit
        && !options.allow_downgrade
    {
        let held_time = repo.commit_object(&held)?.timestamp;
        if offered.timestamp < held_time || is_ancestor(repo, &commit, &held)? {
            return Err(TransportError::Downgrade {
                remote: remote.name.clone(),
                branch: branch.into(),
                offered: commit.to_string(),
                offered_time: offered.timestamp,
                held: held.to_string(),
                held_time,
            });
        }
    }
    let index = load_indexes(repo, &client, &summary).await?;
    let mut staged = Staging::open(staging(repo))?;
    let mut stats =
        PullStats { commit: commit.to_string(), r#ref: format!("{}/{branch}", remote.name), ..Default::default() };

    // A release's new metadata lies together in the pack that holds its commit: fetch all of it
    // that the repository lacks in one go, so that the walk below rarely needs another request.
    if !repo.has(ObjectKind::Commit, &commit.0)?
        && let Some((commit_pack, _)) = index.get(&(commit.0, ObjectKind::Commit))
    {
        let mut prefetch = Vec::new();
        for ((id, kind), (pack, _)) in &index {
            if pack == commit_pack && *kind != ObjectKind::Chunk && !staged.has(*kind, id) && !repo.has(*kind, id)? {
                prefetch.push((*id, *kind));
            }
        }
        stats.metadata_fetched += prefetch.len() as u64;
        fetch(&client, &index, &prefetch, &mut staged, options).await?;
    }

    // Metadata, level by level.
    let mut level = vec![(commit.0, ObjectKind::Commit)];
    let mut seen: HashSet<(ObjectId, ObjectKind)> = level.iter().copied().collect();
    let mut metadata: Vec<(ObjectKind, Vec<u8>)> = Vec::new();
    let mut files: Vec<(FileId, FileObject)> = Vec::new();
    while !level.is_empty() {
        let mut missing = Vec::new();
        for (id, kind) in &level {
            if !repo.has(*kind, id)? && !staged.has(*kind, id) {
                missing.push((*id, *kind));
            }
        }
        stats.metadata_fetched += missing.len() as u64;
        fetch(&client, &index, &missing, &mut staged, options).await?;
        let mut next = Vec::new();
        for (id, kind) in level {
            if repo.has(kind, &id)? {
                continue; // held objects are complete, with everything below them
            }
            let bytes = staged.get(kind, &id)?;
            match kind {
                ObjectKind::Commit => next.push((Commit::decode(id, &bytes)?.root.0, ObjectKind::DirTree)),
                ObjectKind::DirTree => {
                    for entry in DirTree::decode(id, &bytes)?.entries {
                        let child = match entry.kind {
                            EntryKind::Dir(t) => (t.0, ObjectKind::DirTree),
                            EntryKind::File { file, .. } => (file.0, ObjectKind::File),
                            _ => continue,
                        };
                        if seen.insert(child) {
                            next.push(child);
                        }
                    }
                }
                ObjectKind::File => files.push((FileId(id), FileObject::decode(id, &bytes)?)),
                ObjectKind::Chunk => unreachable!("chunks are not walked"),
            }
            if kind != ObjectKind::File {
                metadata.push((kind, bytes));
            }
        }
        level = next;
    }

    // Chunks that neither the repository nor the staging area holds.
    let mut wanted = HashSet::new();
    for (_, file) in &files {
        for (chunk, _) in &file.chunks {
            if !staged.has(ObjectKind::Chunk, &chunk.0) && !repo.has(ObjectKind::Chunk, &chunk.0)? {
                wanted.insert((chunk.0, ObjectKind::Chunk));
            }
        }
    }
    let wanted: Vec<_> = wanted.into_iter().collect();
    stats.chunks_fetched = wanted.len() as u64;
    fetch(&client, &index, &wanted, &mut staged, options).await?;
    crash_point("pull:before-store");

    // One write transaction: files assembled from local and fetched chunks, then the trees and
    // the commit, then the ref.
    let mut writer = repo.writer();
    for (id, file) in &files {
        writer.add_file_object(*id, file, |chunk| {
            if staged.has(ObjectKind::Chunk, &chunk.0) {
                staged.get(ObjectKind::Chunk, &chunk.0)
            } else {
                repo.read(ObjectKind::Chunk, &chunk.0)
            }
        })?;
    }
    stats.files_new = files.len() as u64;
    for (kind, bytes) in &metadata {
        writer.add_metadata(*kind, bytes)?;
    }
    let (_, packs) = writer.finish(repo.path())?;
    repo.register_packs(packs);
    crash_point("pull:before-ref");
    repo.write_ref(&stats.r#ref, &commit)?;
    staged.clear()?;
    stats.requests = client.requests.load(Ordering::Relaxed);
    stats.bytes_fetched = client.bytes.load(Ordering::Relaxed);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Fetches the remote's pack indexes this repository has not cached yet, verifies them and
/// returns where every remote object lies.
async fn load_indexes(repo: &Repo, client: &Client, summary: &Summary) -> Result<RemoteIndex, TransportError> {
    let cache = index_cache(repo);
    fs::create_dir_all(&cache).map_err(|e| StoreError::Io { path: cache.clone(), error: e })?;
    let mut index = RemoteIndex::new();
    for p in &summary.packs {
        let pack_id =
            ObjectId::from_hex(&p.id).ok_or_else(|| invalid("summary", "summary", format!("pack id {:?}", p.id)))?;
        let path = cache.join(format!("{}.idx", p.id));
        let name = format!("packs/{}.idx", p.id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                let b = client.get(&name).await?;
                atomic_write(&path, &repo.path().join("tmp"), &b)?;
                b
            }
        };
        let decoded = pack::decode_index(&bytes, &name)?;
        if decoded.pack != pack_id {
            let _ = fs::remove_file(&path);
            return Err(invalid(name, "remote", format!("describes pack {}, not {pack_id}", decoded.pack)));
        }
        for e in decoded.entries {
            index.insert((e.id, e.kind), (pack_id, e));
        }
    }
    Ok(index)
}

/// Fetches `wanted` objects with coalesced Range requests, `in_flight` at a time, verifying and
/// staging each as its range arrives.
async fn fetch(
    client: &Client,
    index: &RemoteIndex,
    wanted: &[(ObjectId, ObjectKind)],
    staged: &mut Staging,
    options: PullOptions,
) -> Result<(), TransportError> {
    let mut by_pack: BTreeMap<ObjectId, Vec<(u64, u64)>> = BTreeMap::new();
    for (id, kind) in wanted {
        let (pack, entry) = index.get(&(*id, *kind)).ok_or_else(|| {
            invalid("the remote's pack indexes", "remote", format!("no pack holds {kind} object {id}"))
        })?;
        by_pack.entry(*pack).or_default().push((entry.offset, entry.span()));
    }
    let mut reads: Vec<PackRead> = Vec::new();
    for (pack, mut spans) in by_pack {
        spans.sort_unstable();
        reads.extend(coalesce(&pack.to_hex(), &spans, options.coalesce));
    }
    let wanted: HashSet<(ObjectId, ObjectKind)> = wanted.iter().copied().collect();
    let mut pending = reads.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < options.in_flight.max(1) {
            let Some(read) = pending.next() else { break };
            let client = client.clone();
            tasks.spawn(async move {
                let body = client.get_range(&format!("packs/{}.pack", read.pack), read.offset, read.len).await;
                (read, body)
            });
        }
        let Some(done) = tasks.join_next().await else { break };
        let (read, body) = done.map_err(|e| TransportError::Config(format!("fetch task failed: {e}")))?;
        store_range(index, &read, &body?, &wanted, staged)?;
    }
    Ok(())
}

/// Splits a fetched range into its entries, checks each against the index, and stages the
/// wanted ones once they verify.
fn store_range(
    index: &RemoteIndex,
    read: &PackRead,
    body: &[u8],
    wanted: &HashSet<(ObjectId, ObjectKind)>,
    staged: &mut Staging,
) -> Result<(), TransportError> {
    let what = format!("pack {} bytes {}+{}", read.pack, read.offset, read.len);
    let mut pos = 0usize;
    while pos < body.len() {
        let header = body
            .get(pos..pos + ENTRY_HEADER_LEN as usize)
            .ok_or_else(|| invalid(what.clone(), "remote", format!("an entry header at {pos} is cut off")))?;
        let kind = ObjectKind::from_u8(header[0])
            .ok_or_else(|| invalid(what.clone(), "remote", format!("unknown kind {} at {pos}", header[0])))?;
        let id = ObjectId(header[10..42].try_into().expect("32 bytes"));
        let (_, entry) =
            index.get(&(id, kind)).filter(|(_, e)| e.offset == read.offset + pos as u64).ok_or_else(|| {
                invalid(what.clone(), "remote", format!("{kind} {id} at {pos} is not where the index says"))
            })?;
        let end = pos + entry.span() as usize;
        let bytes = body.get(pos..end).ok_or_else(|| invalid(what.clone(), "remote", "the last entry is cut off"))?;
        if wanted.contains(&(id, kind)) && !staged.has(kind, &id) {
            let raw = pack::decode_entry(bytes, entry, &what)?;
            staged.put(kind, id, &raw)?;
        }
        pos = end;
    }
    Ok(())
}
