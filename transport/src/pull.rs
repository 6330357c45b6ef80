//! `pull`: fetch a branch's newest commit from a remote archive repository, moving only the
//! objects the local repository lacks, in few coalesced Range requests — a plan, then its
//! execution.
//!
//! Survey: summary → pack indexes (verified through the summary, cached) → the commit and, level
//! by level, the dirtrees and file objects the repository lacks ([`crate::survey`]) → a
//! [`PullPlan`]. Execution: the plan's chunk reads, several in flight, every object verified
//! (size limit, blake3) as it arrives → new files written as their last chunk arrives (see
//! [`crate::staging`] for what is kept for a rerun) → one write transaction → the ref
//! `REMOTE/BRANCH`, last. A killed pull resumes from what it kept. `pull --dry-run` stops after
//! the survey and writes nothing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use std::collections::HashSet;

use osdeploy_store::fsutil::{crash_point, unique_tmp_name};
use osdeploy_store::history::is_ancestor;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::write::ObjectWriter;
use osdeploy_store::{CommitId, ObjectId, RefName, Repo, StoreError};
use serde::Serialize;

use crate::assemble::Assembler;
use crate::client::{Client, HttpOptions, Progress};
use crate::delta_sources::{DeltaSources, RemoteDeltaFiles, delta_sources};
use crate::deltas::{self, DeltaUse};
use crate::error::TransportError;
use crate::fetch::fetch;
use crate::index::{CacheWrites, RemoteIndex};
use crate::plan::{
    CoalesceOptions, FileSource, IndexFetches, Indexes, PackRead, PlannedFile, PullPlan, WholeFile, plan_reads,
};
use crate::rebuild::DeltaBuilder;
use crate::remote::{Remote, staging};
use crate::staging::Staging;
use crate::summary::{self, fetch_summary, verify_commit};
use crate::survey;

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
    /// Whether files may be rebuilt from deltas.
    pub deltas: DeltaUse,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            in_flight: 4,
            coalesce: CoalesceOptions::default(),
            allow_downgrade: false,
            http: HttpOptions::default(),
            deltas: DeltaUse::default(),
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug, Serialize)]
pub struct PullStats {
    /// The commit now held.
    pub commit: CommitId,
    /// The local ref written (`REMOTE/BRANCH`).
    pub r#ref: RefName,
    /// HTTP requests sent.
    pub requests: u64,
    /// Body bytes received.
    pub bytes_fetched: u64,
    /// Metadata objects fetched.
    pub metadata_fetched: u64,
    /// Pack index files downloaded (none when a metadata delta said where the chunks lie).
    pub index_files: u64,
    /// Their bytes.
    pub index_bytes: u64,
    /// Chunks fetched.
    pub chunks_fetched: u64,
    /// Files rebuilt from deltas.
    pub files_from_deltas: u64,
    /// Files whose delta failed to apply or verify, fetched as chunks instead.
    pub delta_fallbacks: u64,
    /// Chunks of new files found in the repository (or staged by an interrupted pull, or carried
    /// by the metadata delta).
    pub chunks_reused: u64,
    /// New files assembled.
    pub files_new: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// Pulls `branch` of `remote` into `repo` (opened for writing), counting into `progress`.
pub async fn pull(
    repo: &mut Repo,
    remote: &Remote,
    branch: &RefName,
    options: PullOptions,
    progress: Arc<Progress>,
) -> Result<PullStats, TransportError> {
    let started = Instant::now();
    let client = Client::new(remote, options.http, progress.clone())?;
    let mut staged = Staging::open(staging(repo))?;
    let surveyed = make_plan(repo, &client, remote, branch, &mut staged, options, CacheWrites::Allowed).await?;
    tracing::debug!("survey done after {:.2}s: {} new files", started.elapsed().as_secs_f64(), surveyed.plan.files_new);
    let plan = &surveyed.plan;
    let mut stats = PullStats {
        commit: plan.to,
        r#ref: surveyed.local_ref.clone(),
        metadata_fetched: plan.metadata_objects,
        index_files: plan.index_files,
        index_bytes: plan.index_bytes,
        chunks_fetched: plan.chunks,
        chunks_reused: plan.chunks_reused,
        files_new: plan.files_new,
        files_from_deltas: plan.files_from_deltas,
        delta_fallbacks: 0,
        requests: 0,
        bytes_fetched: 0,
        seconds: 0.0,
    };
    stats.delta_fallbacks = execute(repo, &client, surveyed, staged, options).await?;
    stats.files_from_deltas -= stats.delta_fallbacks;
    stats.requests = progress.requests.load(Ordering::Relaxed);
    stats.bytes_fetched = progress.bytes.load(Ordering::Relaxed);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// `pull --dry-run`: the plan a pull of `branch` would execute now. Nothing is written: indexes
/// not in the cache and the new metadata are fetched into memory and `scratch` (a directory
/// removed afterwards). A staging area an interrupted pull left is not consulted.
pub async fn plan_pull(
    repo: &Repo,
    remote: &Remote,
    branch: &RefName,
    options: PullOptions,
    scratch: &Path,
) -> Result<PullPlan, TransportError> {
    let dir = scratch.join(unique_tmp_name("pull-plan"));
    let result = async {
        let client = Client::new(remote, options.http, Arc::new(Progress::default()))?;
        let mut staged = Staging::open(dir.clone())?;
        Ok(make_plan(repo, &client, remote, branch, &mut staged, options, CacheWrites::Forbidden).await?.plan)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A surveyed pull: its plan, and what executing it needs.
struct Surveyed {
    plan: PullPlan,
    index: RemoteIndex,
    local_ref: RefName,
}

/// Everything a pull does before it fetches a chunk: the summary and signatures, the downgrade
/// check, the pack indexes, the walk of the new commit's metadata into `staged`, and the plan.
async fn make_plan(
    repo: &Repo,
    client: &Client,
    remote: &Remote,
    branch: &RefName,
    staged: &mut Staging,
    options: PullOptions,
    writes: CacheWrites,
) -> Result<Surveyed, TransportError> {
    let fetched = fetch_summary(client, remote).await?;
    let (commit, offered_time) = summary::branch(&fetched.summary, remote, branch)?;
    let signature = verify_commit(client, remote, &commit).await?;
    let whole_files = fetched.whole_files(&commit, signature.as_deref());
    let local_ref = RefName::remote(&remote.name, branch)?;
    let held = repo.read_ref(&local_ref)?;
    if let Some(held) = held
        && held != commit
        && !options.allow_downgrade
    {
        let held_time = repo.commit_object(&held)?.timestamp;
        if offered_time < held_time || is_ancestor(repo, &commit, &held)? {
            return Err(TransportError::Downgrade {
                remote: remote.name.clone(),
                branch: branch.to_string(),
                offered: commit.to_string(),
                offered_time,
                held: held.to_string(),
                held_time,
            });
        }
    }
    // Tens of thousands of lookups follow: one read snapshot instead of a lock for each.
    let snapshot = repo.bare().map(|bare| bare.batch_reads()).transpose()?;
    // Deltas start from contents the node holds: a node without any release uses none.
    let DeltaSources { catalog, metadata_delta } =
        if options.deltas == DeltaUse::WhereCheaper && !repo.commit_ids()?.is_empty() {
            let held = |from: &CommitId| repo.has(ObjectKind::Commit, &from.0);
            let read_base = |kind, id: &ObjectId| repo.read(kind, id);
            let summary = &fetched.summary;
            let staged = &mut *staged;
            let mut files = RemoteDeltaFiles { client, summary, staged, read_base, cache: Some((repo, writes)) };
            delta_sources(&mut files, Some(summary), commit, held).await?
        } else {
            DeltaSources::default()
        };
    let delta_packs = catalog.as_ref().map(|(c, _)| c.pack_entries()).unwrap_or_default();
    let with_delta_packs = |(mut index, fetches): (RemoteIndex, IndexFetches)| {
        index.packs.extend(delta_packs.iter().cloned());
        (index, fetches)
    };
    let load_indexes = async |writes| {
        let packs = summary::packs(&fetched.summary);
        crate::index::load(repo, client, &packs, writes).await.map(with_delta_packs)
    };
    let located = metadata_delta.as_ref().map(|m| m.chunk_locations.clone()).filter(|l| !l.is_empty());
    let (mut index, mut fetches) = match &located {
        Some(locations) => with_delta_packs((RemoteIndex { packs: locations.clone() }, IndexFetches::default())),
        None => load_indexes(writes).await?,
    };
    let source = survey::Remote { client, index: &index, staged: &mut *staged, in_flight: options.in_flight };
    let mut surveyed = match (survey::walk(source, repo, commit, options.coalesce).await, &located) {
        (Ok(walked), None) => walked,
        (Ok(walked), Some(_)) if walked.missing_chunks.iter().all(|c| index.locate(ObjectKind::Chunk, c).is_some()) => {
            walked
        }
        // The node lacks more than the release the metadata delta starts from (objects lost
        // since): the pack indexes say where the rest lies.
        (Ok(_) | Err(TransportError::Store(StoreError::ObjectMissing { .. })), Some(_)) => {
            tracing::info!("this repository lacks objects of the release it holds: loading the pack indexes");
            (index, fetches) = load_indexes(writes).await?;
            let source = survey::Remote { client, index: &index, staged: &mut *staged, in_flight: options.in_flight };
            survey::walk(source, repo, commit, options.coalesce).await?
        }
        (Err(e), _) => return Err(e),
    };
    let build = |survey, locations: &RemoteIndex, fetches, extra: Option<WholeFile>| {
        let files = whole_files.iter().cloned().chain(extra).collect();
        PullPlan::new(held, commit, survey, locations, Indexes::Fetched(fetches), files, options.coalesce)
    };
    // A dry run (the only caller that may not write the cache) also says what chunks only would
    // cost: a node fetching them would load the pack indexes and walk the same metadata, fetched
    // as objects.
    let without_deltas = match (writes, &metadata_delta) {
        _ if catalog.is_none() => None,
        (CacheWrites::Allowed, _) => None,
        (CacheWrites::Forbidden, None) => Some(build(surveyed.clone(), &index, fetches, None)?.cost()),
        (CacheWrites::Forbidden, Some(_)) => {
            let (full, full_fetches) = match located {
                Some(_) => load_indexes(writes).await?,
                None => (RemoteIndex { packs: index.packs.clone() }, fetches),
            };
            let read = |kind, id: &ObjectId| staged.get(kind, id);
            let source = survey::AtHand { locations: &full, read, fetched: HashSet::new() };
            let walked = survey::walk(source, repo, commit, options.coalesce).await?;
            Some(build(walked, &full, full_fetches, None)?.cost())
        }
    };
    let (read, objects) = metadata_delta.map(|m| (m.read, m.objects)).unzip();
    surveyed.add_metadata_delta(read, objects.into_iter().flatten(), &index);
    let staged_delta = |id: &ObjectId| staged.has(ObjectKind::Delta, id);
    let catalog = catalog.as_ref().map(|(c, d)| (c, d.clone()));
    let build = |survey, extra| build(survey, &index, fetches, extra);
    let plan = deltas::choose_and_plan(surveyed, without_deltas, catalog, repo, staged_delta, &index, build)?;
    drop(snapshot);
    Ok(Surveyed { plan, index, local_ref })
}

/// Executes a surveyed plan: fetches its delta reads and rebuilds files from them, then fetches
/// its chunk reads (and the chunks of files whose delta failed) while writing the other new
/// files, stores the new metadata in one transaction, then writes the ref. Returns how many
/// files fell back from a delta to chunks.
async fn execute(
    repo: &mut Repo,
    client: &Client,
    surveyed: Surveyed,
    mut staged: Staging,
    options: PullOptions,
) -> Result<u64, TransportError> {
    let Surveyed { plan, index, local_ref } = surveyed;
    // Files are written while the fetch goes on, each as soon as its delta or its last chunk is
    // staged; then one write transaction records them with the trees and the commit, and the
    // ref goes last.
    let (fallbacks, _) = repo
        .transaction_async(async |writer, repo| {
            let mut phases = Phases { repo, client, index: &index, writer, staged: &mut staged, options };
            let mut builder = DeltaBuilder::new(&plan.files, phases.staged, repo);
            phases.deltas(&mut builder, &plan).await?;
            let fallback = builder.take_unbuilt();
            crash_point("pull:deltas-applied");
            let adopted = plan.files.iter().filter(|f| f.source == FileSource::Adopted);
            let built: Vec<_> =
                plan.files.iter().filter(|f| f.source == FileSource::Chunks).chain(fallback.iter().copied()).collect();
            let mut missing: Vec<_> = plan.missing_chunks.iter().map(|id| (*id, ObjectKind::Chunk)).collect();
            let mut reads = plan.chunk_reads().to_vec();
            if !fallback.is_empty() {
                let extra = fallback_chunks(repo, phases.staged, &fallback, &plan.missing_chunks)?;
                reads.extend(plan_reads(&index, &extra, options.coalesce)?);
                missing.extend(extra);
            }
            phases.chunks(&built, &missing, &reads).await?;
            // Deltas that read other files of the release go last; a failed one is fetched as chunks.
            let late = builder.build_deferred(phases.writer, repo)?;
            if !late.is_empty() {
                let missing = fallback_chunks(repo, phases.staged, &late, &[])?;
                let reads = plan_reads(&index, &missing, options.coalesce)?;
                phases.chunks(&late, &missing, &reads).await?;
            }
            crash_point("pull:before-store");
            for file in adopted {
                writer.adopt_file_object(file.id, &file.object);
            }
            for (id, kind) in &plan.new_metadata {
                writer.add_metadata(*kind, &staged.get(*kind, id)?)?;
            }
            // In a bare repository the staged chunks are in the new files now; dropped before the
            // sync, their pages need never reach the disk (killed from here on, a rerun adopts the
            // files).
            if repo.bare().is_some() {
                staged.clear_chunks()?;
            }
            crash_point("pull:after-assembly");
            Ok::<_, TransportError>((fallback.len() + late.len()) as u64)
        })
        .await?;
    crash_point("pull:before-ref");
    repo.write_ref(&local_ref, &plan.to)?;
    staged.clear()?;
    Ok(fallbacks)
}

/// What the fetching phases of a pull share: where objects come from, where files go.
struct Phases<'a, 'w> {
    repo: &'a Repo,
    client: &'a Client,
    index: &'a RemoteIndex,
    writer: &'a mut ObjectWriter<'w>,
    staged: &'a mut Staging,
    options: PullOptions,
}

impl Phases<'_, '_> {
    /// Fetches the plan's deltas and rebuilds their files as they arrive. A failed fetch is not
    /// the pull's end: its files stay in `builder` with those whose delta did not apply, to be
    /// fetched as chunks.
    async fn deltas<'p>(&mut self, builder: &mut DeltaBuilder<'p>, plan: &'p PullPlan) -> Result<(), TransportError> {
        let (repo, writer) = (self.repo, &mut *self.writer);
        builder.build_ready(writer, self.staged, repo)?;
        let wanted = plan.delta_entries.iter().map(|d| (d.entry.id, ObjectKind::Delta)).collect();
        let reads = plan.delta_reads();
        let fetched =
            fetch(self.client, self.index, reads, wanted, self.staged, self.options.in_flight, |staged, ids| {
                builder.staged(&ids);
                builder.build_ready(writer, staged, repo)?;
                Ok(staged.settle(|kind, id| kind != ObjectKind::Delta || builder.needs(id))?)
            })
            .await;
        if let Err(e) = fetched {
            tracing::warn!("deltas could not be fetched, their files are fetched as chunks: {e}");
        }
        Ok(())
    }

    /// Fetches the `missing` chunks by `reads` and writes each of `files` once its chunks are
    /// staged.
    async fn chunks(
        &mut self,
        files: &[&PlannedFile],
        missing: &[(ObjectId, ObjectKind)],
        reads: &[PackRead],
    ) -> Result<(), TransportError> {
        let (repo, writer) = (self.repo, &mut *self.writer);
        let mut assembler = Assembler::new(files.iter().map(|f| (f.id, f.object.clone())).collect(), missing);
        assembler.write_ready(writer, self.staged, repo)?;
        let wanted = missing.iter().copied().collect();
        fetch(self.client, self.index, reads, wanted, self.staged, self.options.in_flight, |staged, ids| {
            assembler.staged(&ids);
            assembler.write_ready(writer, staged, repo)?;
            // Chunks no file waits for any more are in their files now: they need no staged copy.
            Ok(staged.settle(|kind, id| kind != ObjectKind::Chunk || assembler.needs(id))?)
        })
        .await?;
        assembler.finish()
    }
}

/// The chunks of `files` that neither the repository nor the staging area holds and that are
/// not fetched already.
fn fallback_chunks(
    repo: &Repo,
    staged: &Staging,
    files: &[&PlannedFile],
    fetched: &[ObjectId],
) -> Result<Vec<(ObjectId, ObjectKind)>, TransportError> {
    let fetched: HashSet<&ObjectId> = fetched.iter().collect();
    let mut extra = Vec::new();
    let mut seen = HashSet::new();
    for file in files {
        for (chunk, _) in &file.object.chunks {
            let id = chunk.0;
            if seen.insert(id)
                && !fetched.contains(&id)
                && !staged.has(ObjectKind::Chunk, &id)
                && !repo.has(ObjectKind::Chunk, &id)?
            {
                extra.push((id, ObjectKind::Chunk));
            }
        }
    }
    Ok(extra)
}
