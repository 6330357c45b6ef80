//! `pull`: fetch a branch's newest commit from a remote archive repository, moving only the
//! objects the local repository lacks, in few coalesced Range requests.
//!
//! Walk: summary → pack indexes (verified through the summary, cached) → the commit and, level by
//! level, the dirtrees and file objects the repository lacks (a dirtree already held implies its
//! whole subtree) → the chunks of new files that no local file holds → coalesced Range requests,
//! several in flight, every object verified (size limit, blake3) as it arrives → new files written
//! as their last chunk arrives (see [`crate::staging`] for what is kept for a rerun) → one write
//! transaction → the ref `REMOTE/BRANCH`, last. A killed pull resumes from what it kept.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use osdeploy_store::fsutil::crash_point;
use osdeploy_store::object::{Commit, DirTree, EntryKind, FileObject, ObjectKind};
use osdeploy_store::{CommitId, FileId, ObjectId, Repo};
use serde::Serialize;

use crate::assemble::Assembler;
use crate::client::{Client, HttpOptions, Progress};
use crate::error::TransportError;
use crate::fetch::{fetch, fetch_metadata};
use crate::index::RemoteIndex;
use crate::plan::CoalesceOptions;
use crate::remote::{Remote, staging};
use crate::staging::Staging;
use crate::summary::{fetch_summary, verify_commit};

/// How a pull fetches.
#[derive(Clone, Copy, Debug)]
pub struct PullOptions {
    /// Range requests in flight at once.
    pub in_flight: usize,
    /// How ranges are merged.
    pub coalesce: CoalesceOptions,
    /// Accept a commit older than the one already pulled from the remote.
    pub allow_downgrade: bool,
    /// Timeouts and rate limit.
    pub http: HttpOptions,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            in_flight: 4,
            coalesce: CoalesceOptions::default(),
            allow_downgrade: false,
            http: HttpOptions::default(),
        }
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
    /// Chunks of new files found in the repository (or staged by an interrupted pull).
    pub chunks_reused: u64,
    /// New files assembled.
    pub files_new: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// Pulls `branch` of `remote` into `repo` (opened for writing), counting into `progress`.
pub fn pull(
    repo: &mut Repo,
    remote: &Remote,
    branch: &str,
    options: PullOptions,
    progress: Arc<Progress>,
) -> Result<PullStats, TransportError> {
    runtime()?.block_on(pull_async(repo, remote, branch, options, progress))
}

/// The async runtime transport commands run on.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, TransportError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TransportError::Config(format!("cannot start the async runtime: {e}")))
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

/// The objects a commit or dirtree names (its root tree; its subdirectories and files).
pub(crate) fn children(
    kind: ObjectKind,
    id: ObjectId,
    bytes: &[u8],
) -> Result<Vec<(ObjectId, ObjectKind)>, TransportError> {
    Ok(match kind {
        ObjectKind::Commit => vec![(Commit::decode(id, bytes)?.root.0, ObjectKind::DirTree)],
        ObjectKind::DirTree => DirTree::decode(id, bytes)?
            .entries
            .into_iter()
            .filter_map(|entry| match entry.kind {
                EntryKind::Dir(t) => Some((t.0, ObjectKind::DirTree)),
                EntryKind::File { file, .. } => Some((file.0, ObjectKind::File)),
                _ => None,
            })
            .collect(),
        ObjectKind::File | ObjectKind::Chunk => Vec::new(),
    })
}

/// What the walk found the repository lacks.
#[derive(Default)]
struct Missing {
    /// New commit and dirtrees, staged.
    metadata: Vec<(ObjectId, ObjectKind)>,
    /// New file objects (also staged).
    files: Vec<(FileId, FileObject)>,
    /// New file objects whose content a killed pull left complete in the repository.
    adopted: Vec<(FileId, FileObject)>,
    /// Chunks of new files that neither the repository nor the staging area holds.
    chunks: Vec<(ObjectId, ObjectKind)>,
    /// Chunks of new files already held or staged.
    chunks_reused: u64,
    /// Metadata objects fetched.
    metadata_fetched: u64,
}

async fn pull_async(
    repo: &mut Repo,
    remote: &Remote,
    branch: &str,
    options: PullOptions,
    progress: Arc<Progress>,
) -> Result<PullStats, TransportError> {
    let started = Instant::now();
    let client = Client::new(remote, options.http, progress.clone())?;
    let summary = fetch_summary(&client, remote).await?.summary;
    let (commit, offered_time) = summary.branch(remote, branch)?;
    verify_commit(&client, remote, &commit).await?;
    let local_ref = format!("{}/{branch}", remote.name);
    if let Some(held) = repo.read_ref(&local_ref)?
        && held != commit
        && !options.allow_downgrade
    {
        let held_time = repo.commit_object(&held)?.timestamp;
        if offered_time < held_time || is_ancestor(repo, &commit, &held)? {
            return Err(TransportError::Downgrade {
                remote: remote.name.clone(),
                branch: branch.into(),
                offered: commit.to_string(),
                offered_time,
                held: held.to_string(),
                held_time,
            });
        }
    }
    let index = crate::index::load(repo, &client, &summary.packs()?).await?;
    tracing::debug!("indexes loaded after {:.3}s", started.elapsed().as_secs_f64());
    let mut staged = Staging::open(staging(repo))?;
    let missing = walk(repo, &client, &index, &mut staged, commit, options).await?;
    tracing::debug!("walk done after {:.2}s: {} new files", started.elapsed().as_secs_f64(), missing.files.len());
    // Files are written while the fetch goes on, each as soon as its last chunk is staged; then
    // one write transaction records them with the trees and the commit, and the ref goes last.
    let mut writer = repo.writer();
    let files_new = missing.files.len() as u64;
    let mut assembler = Assembler::new(missing.files, &missing.chunks);
    assembler.write_ready(&mut writer, &staged, repo)?;
    fetch(&client, &index, &missing.chunks, &mut staged, options.in_flight, options.coalesce, |staged, ids| {
        assembler.staged(&ids);
        assembler.write_ready(&mut writer, staged, repo)?;
        // Chunks no file waits for any more are in their files now: they need no staged copy.
        Ok(staged.settle(|kind, id| kind != ObjectKind::Chunk || assembler.needs(id))?)
    })
    .await?;
    tracing::debug!(
        "{} chunks fetched and the new files written after {:.2}s",
        missing.chunks.len(),
        started.elapsed().as_secs_f64()
    );
    assembler.finish()?;
    crash_point("pull:before-store");
    for (id, object) in &missing.adopted {
        writer.adopt_file_object(*id, object);
    }
    for (id, kind) in &missing.metadata {
        writer.add_metadata(*kind, &staged.get(*kind, id)?)?;
    }
    // In a bare repository the staged chunks are in the new files now; dropped before the sync,
    // their pages need never reach the disk (killed from here on, a rerun adopts the files).
    if repo.bare().is_some() {
        staged.clear_chunks()?;
    }
    crash_point("pull:after-assembly");
    let (_, packs) = writer.finish(repo.path())?;
    tracing::debug!("stored after {:.2}s", started.elapsed().as_secs_f64());
    repo.register_packs(packs);
    crash_point("pull:before-ref");
    repo.write_ref(&local_ref, &commit)?;
    staged.clear()?;
    Ok(PullStats {
        commit: commit.to_string(),
        r#ref: local_ref,
        requests: progress.requests.load(Ordering::Relaxed),
        bytes_fetched: progress.bytes.load(Ordering::Relaxed),
        metadata_fetched: missing.metadata_fetched,
        chunks_fetched: missing.chunks.len() as u64,
        chunks_reused: missing.chunks_reused,
        files_new,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Walks `commit` from the top, fetching (into `staged`) the metadata the repository lacks; a
/// held dirtree or file object is complete, so the walk never descends into one.
async fn walk(
    repo: &Repo,
    client: &Client,
    index: &RemoteIndex,
    staged: &mut Staging,
    commit: CommitId,
    options: PullOptions,
) -> Result<Missing, TransportError> {
    let mut missing = Missing::default();
    // Tens of thousands of lookups follow: one read snapshot instead of a lock for each.
    let _snapshot = repo.bare().map(|bare| bare.batch_reads()).transpose()?;
    let absent = |staged: &Staging, kind, id: &ObjectId| -> Result<bool, TransportError> {
        Ok(!staged.has(kind, id) && !repo.has(kind, id)?)
    };
    let mut level = vec![(commit.0, ObjectKind::Commit)];
    let mut seen: HashSet<(ObjectId, ObjectKind)> = level.iter().copied().collect();
    let mut wanted_chunks = HashSet::new();
    let mut prefetched = HashSet::new();
    while !level.is_empty() {
        missing.metadata_fetched +=
            fetch_metadata(client, index, &level, staged, &mut prefetched, absent, options).await?;
        let mut next = Vec::new();
        for (id, kind) in level {
            if repo.has(kind, &id)? {
                continue; // held objects are complete, with everything below them
            }
            let bytes = staged.get(kind, &id)?;
            match kind {
                ObjectKind::Commit | ObjectKind::DirTree => {
                    next.extend(children(kind, id, &bytes)?.into_iter().filter(|child| seen.insert(*child)));
                }
                ObjectKind::File => {
                    let object = FileObject::decode(id, &bytes)?;
                    if staged.resumed()
                        && let Some(bare) = repo.bare()
                        && bare.has_unrecorded_content(&FileId(id), &object)?
                    {
                        missing.adopted.push((FileId(id), object));
                        continue;
                    }
                    for (chunk, _) in &object.chunks {
                        if !wanted_chunks.insert(chunk.0) {
                            continue;
                        }
                        if absent(staged, ObjectKind::Chunk, &chunk.0)? {
                            missing.chunks.push((chunk.0, ObjectKind::Chunk));
                        } else {
                            missing.chunks_reused += 1;
                        }
                    }
                    missing.files.push((FileId(id), object));
                }
                ObjectKind::Chunk => unreachable!("chunks are not walked"),
            }
            if kind != ObjectKind::File {
                missing.metadata.push((id, kind));
            }
        }
        level = next;
    }
    Ok(missing)
}
