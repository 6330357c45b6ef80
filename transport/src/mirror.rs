//! `mirror`: copy a remote archive repository — every branch, or chosen ones — into a local
//! archive repository that can itself be served (and mirrored), incrementally.
//!
//! Packs are copied whole and byte-identical, so a node's delta from a mirror is the same ranges
//! as from the origin. Each pack is downloaded into `DIR/mirror/partial/` (resumed with a Range
//! request after an interruption), verified against its index (every object decompressed within
//! its limit and hashed, the whole file hashed against the pack's id), made durable and published
//! (pack before index, as the store does). Then commit signatures, refs, and last the summary.
//!
//! - **Full mirror** (no branch chosen): every pack the summary lists; the refs are the origin's;
//!   the origin's `summary`, `summary.sig` and `signatures/<commit>.sig` are passed through, so
//!   nodes keep trusting only the origin's key and a compromised mirror can replay but not forge.
//! - **Partial mirror** (chosen branches): only the packs those branches' commits need (found by
//!   walking each commit's trees locally and fetching the packs that hold what is still missing,
//!   until nothing is); a summary of its own (the store's), signed with the mirror's key if given.
//!
//! A second run fetches only packs it does not hold. Nothing is deleted but refs this mirror wrote
//! earlier and the origin no longer offers (recorded in `DIR/mirror/refs.json`); packs the origin
//! dropped stay until `osdeploy prune`. A killed run leaves the repository consistent (published
//! packs are merely unreferenced until the refs move) and a rerun completes it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use osdeploy_store::chunker::ChunkerParams;
use osdeploy_store::delta::index::DeltaIndex;
use osdeploy_store::delta::published::PublishedDeltas;
use osdeploy_store::fsutil::{atomic_write, crash_point, fsync_dir};
use osdeploy_store::layout;
use osdeploy_store::object::{Commit, DirTree, EntryKind, FileObject, ObjectKind};
use osdeploy_store::pack::{self, FinishedPack, PackIndex};
use osdeploy_store::repo::{DEFAULT_COMPRESSION_LEVEL, RepoMode};
use osdeploy_store::summary::Summary;
use osdeploy_store::{Access, CommitId, ObjectId, RefName, Repo, StoreError};
use serde::Serialize;

use crate::client::{Client, HttpOptions, Progress};
use crate::error::TransportError;
use crate::index;
use crate::remote::{Remote, index_cache};
use crate::sign::MAX_SIGNATURES;
use crate::summary::{self, fetch_summary, verify_commit};

/// What to mirror and how.
#[derive(Default)]
pub struct MirrorOptions {
    /// The branches to mirror; empty for all of them (a full mirror).
    pub branches: Vec<RefName>,
    /// Signs the summary of a partial mirror (a full mirror passes the origin's signature on).
    pub sign_key: Option<SigningKey>,
    /// Timeouts and rate limit.
    pub http: HttpOptions,
}

/// Who signed the summary the mirror now serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SummarySigner {
    /// The upstream repository (a full mirror passes its signature on).
    Origin,
    /// The mirror's own key (`--sign-key`).
    Mirror,
    /// Nobody: nodes must trust the mirror with `--insecure`.
    None,
}

/// What a mirror run did.
#[derive(Clone, Debug, Serialize)]
pub struct MirrorStats {
    /// False for a partial mirror (chosen branches).
    pub full: bool,
    /// The mirrored branches and their commits.
    pub refs: BTreeMap<RefName, String>,
    /// Branches this mirror had written that the upstream no longer offers (or that were not
    /// chosen this time), now deleted.
    pub refs_deleted: Vec<RefName>,
    /// Packs downloaded.
    pub packs_fetched: u64,
    /// Packs the upstream lists that the mirror already held.
    pub packs_skipped: u64,
    /// Delta packs downloaded (those the mirrored releases' delta indexes use).
    pub delta_packs_fetched: u64,
    /// Delta indexes downloaded (one per mirrored release that has deltas).
    pub delta_indexes_fetched: u64,
    /// Body bytes received (summary, signatures, indexes, packs).
    pub bytes_fetched: u64,
    /// HTTP requests sent.
    pub requests: u64,
    /// Who signed the summary now served.
    pub summary_signed_by: SummarySigner,
    /// Seconds taken.
    pub seconds: f64,
}

fn io(path: &Path, error: std::io::Error) -> TransportError {
    StoreError::Io { path: path.into(), error }.into()
}

/// Opens the mirror's repository for writing, creating it (archive mode) when `dir` holds none.
fn open_or_init(dir: &Path) -> Result<Repo, TransportError> {
    let repo = if dir.join(layout::CONFIG).exists() {
        Repo::open(dir, Access::Write)?
    } else {
        Repo::init(dir, RepoMode::Archive, DEFAULT_COMPRESSION_LEVEL, ChunkerParams::default())?
    };
    if repo.archive().is_none() {
        return Err(TransportError::WrongRepository {
            path: dir.into(),
            reason: "is a bare repository; a mirror is an archive repository (choose another directory)".into(),
        });
    }
    Ok(repo)
}

/// Mirrors `remote` into the archive repository at `dir` (created when absent), counting into
/// `progress`.
pub async fn mirror(
    dir: &Path,
    remote: &Remote,
    options: &MirrorOptions,
    progress: Arc<Progress>,
) -> Result<MirrorStats, TransportError> {
    let started = Instant::now();
    for url in &remote.urls {
        crate::remote::check_url(url)?;
    }
    let full = options.branches.is_empty();
    if full && options.sign_key.is_some() {
        return Err(TransportError::Options(
            "a full mirror passes the origin's summary signature on; --sign-key is for partial mirrors (--branch)"
                .into(),
        ));
    }
    let mut repo = open_or_init(dir)?;
    let client = Client::new(remote, options.http, progress.clone())?;

    // Nothing is written before the summary and every mirrored commit verify.
    let fetched = fetch_summary(&client, remote).await?;
    let summary_signatures = match fetched.signatures {
        Some(s) => Some(s),
        None => unverified_signatures(&client, &fetched.bytes).await,
    };
    let names: Vec<RefName> =
        if full { fetched.summary.refs.keys().cloned().collect() } else { options.branches.clone() };
    let mut wanted = BTreeMap::new();
    for name in names {
        let (commit, _) = summary::branch(&fetched.summary, remote, &name)?;
        wanted.insert(name, commit);
    }
    let mut commit_signatures = Vec::new();
    for commit in wanted.values().collect::<BTreeSet<_>>() {
        let signatures = match verify_commit(&client, remote, commit).await? {
            Some(s) => Some(s),
            // An insecure mirror still passes on the signatures of a signed origin.
            None if summary_signatures.is_some() => {
                client.get(&layout::commit_signature(commit), MAX_SIGNATURES).await.ok()
            }
            None => None,
        };
        if let Some(s) = signatures {
            commit_signatures.push((*commit, s));
        }
    }

    let listed = summary::packs(&fetched.summary);
    let held: HashSet<ObjectId> = repo.archive().map(|a| a.packs().iter().map(|p| p.id).collect()).unwrap_or_default();
    let mut stats = MirrorStats {
        full,
        refs: wanted.iter().map(|(name, commit)| (name.clone(), commit.to_string())).collect(),
        refs_deleted: Vec::new(),
        packs_fetched: 0,
        packs_skipped: listed.iter().filter(|(p, _)| held.contains(p)).count() as u64,
        delta_packs_fetched: 0,
        delta_indexes_fetched: 0,
        bytes_fetched: 0,
        requests: 0,
        summary_signed_by: SummarySigner::None,
        seconds: 0.0,
    };
    let held_deltas = PublishedDeltas::load(repo.path())?.packs.into_keys().collect();
    let shown_url = crate::remote::redacted(&remote.urls[0]);
    let mut packs = Packs { client: &client, url: shown_url.trim_end_matches('/'), held, held_deltas, fetched: 0 };
    if full {
        for pack in &listed {
            packs.get(&mut repo, pack, PackDir::Objects).await?;
        }
    }
    // Branches whose ref already names the offered commit were complete when it was written.
    let mut targets = Vec::new();
    for (name, commit) in &wanted {
        if repo.read_ref(name)? != Some(*commit) {
            targets.push((name, *commit));
        }
    }
    // Walk the new commits; fetch the packs holding what is missing; again until nothing is. In a
    // full mirror every listed pack is already held, so anything missing is the origin's fault.
    let mut remote_index = None;
    loop {
        let missing = missing_objects(&repo, &targets)?;
        if missing.is_empty() {
            break;
        }
        if remote_index.is_none() {
            let unheld: Vec<_> = listed.iter().filter(|(p, _)| !packs.held.contains(p)).copied().collect();
            remote_index = Some(index::load(&repo, &client, &unheld, index::CacheWrites::Allowed).await?.0);
        }
        let remote_index = remote_index.as_ref().expect("loaded above");
        let mut needed = BTreeSet::new();
        for ((id, kind), branch) in &missing {
            match remote_index.locate(*kind, id) {
                Some((pack, _)) if !packs.held.contains(&pack.pack) => needed.insert(pack.pack),
                _ => {
                    return Err(TransportError::Invalid {
                        what: "the summary".into(),
                        url: shown_url.clone(),
                        reason: format!(
                            "branch {branch} ({}) needs {kind} object {id}, which none of the listed packs holds",
                            wanted[branch]
                        ),
                    });
                }
            };
        }
        for pack in listed.iter().filter(|(id, _)| needed.contains(id)) {
            packs.get(&mut repo, pack, PackDir::Objects).await?;
        }
    }
    let fetched_objects = packs.fetched;
    // The deltas leading to the mirrored releases: their packs, then their indexes.
    let releases: HashSet<CommitId> = wanted.values().copied().collect();
    stats.delta_indexes_fetched = mirror_deltas(&mut repo, &mut packs, &fetched.summary, &releases).await?;
    stats.delta_packs_fetched = packs.fetched - fetched_objects;
    stats.packs_fetched = fetched_objects;
    crash_point("mirror:before-refs");

    // Commit signatures before the refs and the summary that name the commits.
    for (commit, signatures) in &commit_signatures {
        let path = repo.path().join(layout::commit_signature(commit));
        if fs::read(&path).ok().as_ref() != Some(signatures) {
            atomic_write(&path, &repo.path().join(layout::TMP), signatures)?;
        }
    }
    stats.refs_deleted = write_refs(&repo, &wanted)?;

    let (summary, signatures) = if full {
        stats.summary_signed_by =
            if summary_signatures.is_some() { SummarySigner::Origin } else { SummarySigner::None };
        (fetched.bytes, summary_signatures)
    } else {
        let summary = repo.summary_bytes()?.ok_or_else(|| TransportError::WrongRepository {
            path: repo.path().into(),
            reason: "has no summary: a mirror is an archive repository".into(),
        })?;
        // The mirror's signature lasts no longer than the upstream's: a mirror that stops
        // syncing cannot extend the life of what it last saw.
        let lifetime = i64::try_from(crate::sign::DEFAULT_SUMMARY_LIFETIME.as_secs()).expect("a week fits");
        let expires = fetched.expires.unwrap_or(i64::MAX).min(crate::sign::now() + lifetime);
        let signatures = options.sign_key.as_ref().map(|key| {
            stats.summary_signed_by = SummarySigner::Mirror;
            (crate::sign::expiring_signature_line(key, &summary, expires) + "\n").into_bytes()
        });
        (summary, signatures)
    };
    publish_summary(&repo, &summary, signatures.as_deref())?;
    stats.requests = progress.requests.load(Ordering::Relaxed);
    stats.bytes_fetched = progress.bytes.load(Ordering::Relaxed);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// The summary signature of an `--insecure` upstream, if it has one that verifies (by the keys it
/// names): passed on, so that nodes holding the origin's key can trust the mirror.
async fn unverified_signatures(client: &Client, summary: &[u8]) -> Option<Vec<u8>> {
    let signatures = client.get(layout::SUMMARY_SIGNATURE, MAX_SIGNATURES).await.ok()?;
    (!self_verified_lines(summary, &signatures).is_empty()).then_some(signatures)
}

/// The lines of a signature file that are valid signatures of `message` by the key they name.
fn self_verified_lines<'a>(message: &[u8], signatures: &'a [u8]) -> Vec<&'a str> {
    std::str::from_utf8(signatures)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            let key = line.split_whitespace().nth(1).and_then(crate::sign::public_from_hex);
            key.is_some_and(|key| crate::sign::verify(message, line.as_bytes(), &[key]))
        })
        .collect()
}

/// Downloads, verifies and publishes packs, remembering which the mirror holds.
/// Copies the delta indexes the summary lists for `releases`, and the delta packs they use (all
/// before the summary that names them is published). Returns how many indexes were downloaded.
async fn mirror_deltas(
    repo: &mut Repo,
    packs: &mut Packs<'_>,
    summary: &Summary,
    releases: &HashSet<CommitId>,
) -> Result<u64, TransportError> {
    let dir = repo.path().join(layout::DELTAS);
    let mut fetched = 0;
    for listed in summary.delta_indexes.iter().filter(|d| releases.contains(&d.to)) {
        let path = dir.join(layout::delta_index_name(&listed.index));
        let name = layout::delta_index_file(&listed.index);
        let bytes = match fs::read(&path).ok().filter(|b| ObjectId::of(b) == listed.index) {
            Some(bytes) => bytes,
            None => index::download(packs.client, &name, &listed.index, listed.size).await?,
        };
        let deltas = DeltaIndex::decode(&bytes, &format!("{}/{name}", packs.url))?;
        let mut used: Vec<ObjectId> =
            deltas.entries.iter().map(|e| e.pack).chain(deltas.metadata.iter().map(|m| m.pack)).collect();
        used.sort_unstable();
        used.dedup();
        for pack in used {
            let Some(info) = summary.delta_packs.iter().find(|p| p.id == pack) else {
                return Err(TransportError::Invalid {
                    what: name.clone(),
                    url: packs.url.into(),
                    reason: format!("it uses delta pack {pack}, which the summary does not list"),
                });
            };
            packs.get(repo, &(info.id, info.index), PackDir::Deltas).await?;
        }
        if !path.exists() {
            fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            atomic_write(&path, &repo.path().join(layout::TMP), &bytes)?;
            fetched += 1;
        }
    }
    Ok(fetched)
}

/// Which packs a pack belongs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PackDir {
    /// Object packs (`packs/`).
    Objects,
    /// Delta packs (`deltas/`), whose indexes nodes never read.
    Deltas,
}

impl PackDir {
    fn dir(self) -> &'static str {
        match self {
            PackDir::Objects => layout::PACKS,
            PackDir::Deltas => layout::DELTAS,
        }
    }

    fn pack_file(self, id: &ObjectId) -> String {
        format!("{}/{}", self.dir(), layout::pack_name(id))
    }

    fn index_file(self, id: &ObjectId) -> String {
        format!("{}/{}", self.dir(), layout::index_name(id))
    }
}

struct Packs<'c> {
    client: &'c Client,
    url: &'c str,
    held: HashSet<ObjectId>,
    held_deltas: HashSet<ObjectId>,
    fetched: u64,
}

impl Packs<'_> {
    /// Makes pack `id` (and its index, whose hash the summary gives) part of `repo` unless it is
    /// already.
    async fn get(
        &mut self,
        repo: &mut Repo,
        &(id, index_hash): &(ObjectId, ObjectId),
        kind: PackDir,
    ) -> Result<(), TransportError> {
        let held = match kind {
            PackDir::Objects => &mut self.held,
            PackDir::Deltas => &mut self.held_deltas,
        };
        if held.contains(&id) {
            return Ok(());
        }
        // The index first, checked against the summary: object pack indexes are cached by pack id.
        let index_bytes = match kind {
            PackDir::Objects => {
                index::load(repo, self.client, &[(id, index_hash)], index::CacheWrites::Allowed).await?;
                let cached = index_cache(repo).join(layout::index_name(&id));
                fs::read(&cached).map_err(|e| io(&cached, e))?
            }
            PackDir::Deltas => {
                let max = self.client.options().max_metadata;
                index::download(self.client, &kind.index_file(&id), &index_hash, max).await?
            }
        };
        let index = pack::decode_index(&index_bytes, &format!("{}/{}", self.url, kind.index_file(&id)))?;

        let partial_dir = repo.path().join(layout::MIRROR_PARTIAL);
        fs::create_dir_all(&partial_dir).map_err(|e| io(&partial_dir, e))?;
        let partial = partial_dir.join(layout::pack_name(&id));
        let packs_dir = repo.path().join(kind.dir());
        fs::create_dir_all(&packs_dir).map_err(|e| io(&packs_dir, e))?;
        let published = packs_dir.join(layout::pack_name(&id));
        if !partial.exists() && published.exists() {
            // Published without its index by an interrupted run: verify it again like a download.
            fs::rename(&published, &partial).map_err(|e| io(&partial, e))?;
        }
        let mut have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have > index.pack_size {
            fs::remove_file(&partial).map_err(|e| io(&partial, e))?;
            have = 0;
        }
        let progress = &self.client.progress;
        progress.bytes_expected.fetch_add(index.pack_size - have, Ordering::Relaxed);
        progress.objects_expected.fetch_add(index.entries.len() as u64, Ordering::Relaxed);
        // What an earlier run left may be torn (a crash before the data reached the disk): when
        // the resumed pack does not verify, it is downloaded once more from the start.
        let mut resumed = have > 0;
        loop {
            if have < index.pack_size {
                self.client.download(&kind.pack_file(&id), &partial, index.pack_size).await?;
            }
            crash_point("mirror:after-download");
            match verify_pack(&partial, &id, &index) {
                Ok(()) => break,
                Err(e) => {
                    // Never kept for a resume: its bytes are wrong somewhere.
                    fs::remove_file(&partial).map_err(|e| io(&partial, e))?;
                    if resumed {
                        tracing::warn!("{e}; downloading pack {id} again from the start");
                        progress.bytes_expected.fetch_add(index.pack_size, Ordering::Relaxed);
                        (resumed, have) = (false, 0);
                        continue;
                    }
                    return Err(TransportError::Invalid {
                        what: format!("pack {id}"),
                        url: format!("{}/{}", self.url, kind.pack_file(&id)),
                        reason: e.to_string(),
                    });
                }
            }
        }
        progress.objects.fetch_add(index.entries.len() as u64, Ordering::Relaxed);

        // Durable, then published: the pack before its index, so an index never names a missing
        // pack (and the store ignores a pack without one).
        File::open(&partial).and_then(|f| f.sync_all()).map_err(|e| io(&partial, e))?;
        fs::rename(&partial, &published).map_err(|e| io(&published, e))?;
        crash_point("mirror:between-pack-and-index");
        let index_path = packs_dir.join(layout::index_name(&id));
        // atomic_write syncs packs/, which makes the rename of the pack durable too.
        atomic_write(&index_path, &repo.path().join(layout::TMP), &index_bytes)?;
        self.fetched += 1;
        if kind == PackDir::Deltas {
            self.held_deltas.insert(id);
            return Ok(());
        }
        let _ = fs::remove_file(index_cache(repo).join(layout::index_name(&id)));
        repo.register_packs(vec![FinishedPack {
            id,
            pack_tmp: published,
            index_tmp: index_path,
            size: index.pack_size,
            entries: index.entries,
        }]);
        self.held.insert(id);
        Ok(())
    }
}

/// Checks a downloaded pack against its name and index (see [`pack::verify_pack_file`]).
fn verify_pack(path: &Path, id: &ObjectId, index: &PackIndex) -> Result<(), StoreError> {
    match pack::verify_pack_file(path, id, index.pack_size, &index.entries)?.into_iter().next() {
        None => Ok(()),
        Some(problem) => Err(StoreError::Corrupt { what: format!("pack {id}"), reason: problem }),
    }
}

/// What `targets`' commits reach (trees, file objects, chunks; not parents) that the repository
/// lacks, each with the first branch found to need it. The walk descends only into objects
/// present, so each round of fetching reveals the next level.
fn missing_objects(
    repo: &Repo,
    targets: &[(&RefName, CommitId)],
) -> Result<BTreeMap<(ObjectId, ObjectKind), RefName>, TransportError> {
    let mut missing = BTreeMap::new();
    let mut seen = HashSet::new();
    for (branch, commit) in targets {
        let mut stack = vec![(commit.0, ObjectKind::Commit)];
        while let Some((id, kind)) = stack.pop() {
            if !seen.insert((id, kind)) {
                continue;
            }
            if !repo.has(kind, &id)? {
                missing.insert((id, kind), (*branch).clone());
                continue;
            }
            match kind {
                ObjectKind::Commit => {
                    stack.push((Commit::decode(id, &repo.read(kind, &id)?)?.root.0, ObjectKind::DirTree));
                }
                ObjectKind::DirTree => {
                    for entry in DirTree::decode(id, &repo.read(kind, &id)?)?.entries {
                        match entry.kind {
                            EntryKind::Dir(tree) => stack.push((tree.0, ObjectKind::DirTree)),
                            EntryKind::File { file, .. } => stack.push((file.0, ObjectKind::File)),
                            _ => {}
                        }
                    }
                }
                ObjectKind::File => {
                    let file = FileObject::decode(id, &repo.read(kind, &id)?)?;
                    stack.extend(file.chunks.iter().map(|(chunk, _)| (chunk.0, ObjectKind::Chunk)));
                }
                ObjectKind::Chunk | ObjectKind::Delta | ObjectKind::MetadataDelta => {}
            }
        }
    }
    Ok(missing)
}

/// Points the mirrored branches at their commits and deletes the branches an earlier run wrote
/// that are not mirrored any more; returns those. `DIR/mirror/refs.json` lists the branches the
/// mirror owns: written with the union before any ref moves, so a crash never leaves a branch the
/// mirror wrote unrecorded.
fn write_refs(repo: &Repo, wanted: &BTreeMap<RefName, CommitId>) -> Result<Vec<RefName>, TransportError> {
    let path = repo.path().join(layout::MIRROR_REFS);
    let tmp = repo.path().join(layout::TMP);
    let owned: BTreeSet<RefName> = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TransportError::LocalFile {
            path: path.clone(),
            reason: format!("{e} (delete it to start over)"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(io(&path, e)),
    };
    let names: BTreeSet<RefName> = wanted.keys().cloned().collect();
    let record = |set: &BTreeSet<RefName>| {
        atomic_write(&path, &tmp, (serde_json::to_string_pretty(set).expect("names serialize") + "\n").as_bytes())
    };
    if !names.is_subset(&owned) {
        record(&owned.union(&names).cloned().collect())?;
    }
    for (name, commit) in wanted {
        if repo.read_ref(name)? != Some(*commit) {
            repo.write_ref_without_summary(name, commit)?;
        }
    }
    let mut deleted = Vec::new();
    for name in owned.difference(&names) {
        if repo.read_ref(name)?.is_some() {
            repo.delete_ref_without_summary(name)?;
            deleted.push(name.clone());
        }
    }
    if owned != names {
        record(&names)?;
    }
    Ok(deleted)
}

/// Publishes the summary and its signature file (`None`: unsigned) so that a node never sees a
/// summary without a valid signature: the signature file is written first and, while the summary
/// changes, also keeps the lines that sign the summary being replaced (a node may have fetched
/// that one just before); the next run drops them. An unsigned summary is written first, then a
/// signature file that no longer matches it is removed.
fn publish_summary(repo: &Repo, summary: &[u8], signatures: Option<&[u8]>) -> Result<(), TransportError> {
    let tmp = repo.path().join(layout::TMP);
    let summary_path = repo.path().join(layout::SUMMARY);
    let sig_path = repo.path().join(layout::SUMMARY_SIGNATURE);
    let old_summary = fs::read(&summary_path).ok();
    let old_signatures = fs::read(&sig_path).ok();
    if let Some(signatures) = signatures {
        let mut text = signatures.to_vec();
        if let (Some(old), Some(old_signatures)) = (&old_summary, &old_signatures)
            && old.as_slice() != summary
        {
            let new_lines: HashSet<&str> = std::str::from_utf8(signatures).unwrap_or_default().lines().collect();
            for line in self_verified_lines(old, old_signatures) {
                if !new_lines.contains(line) {
                    if !text.ends_with(b"\n") {
                        text.push(b'\n');
                    }
                    text.extend_from_slice(line.as_bytes());
                    text.push(b'\n');
                }
            }
        }
        if old_signatures.as_ref() != Some(&text) {
            atomic_write(&sig_path, &tmp, &text)?;
        }
    }
    crash_point("mirror:between-signature-and-summary");
    if old_summary.as_deref() != Some(summary) {
        atomic_write(&summary_path, &tmp, summary)?;
    }
    if signatures.is_none()
        && let Some(old_signatures) = &old_signatures
        && self_verified_lines(summary, old_signatures).is_empty()
    {
        fs::remove_file(&sig_path).map_err(|e| io(&sig_path, e))?;
        fsync_dir(repo.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_lines_of_the_replaced_summary_are_kept_until_the_next_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        let repo = Repo::init(&dir, RepoMode::Archive, 3, ChunkerParams::default()).unwrap();
        let key = crate::sign::load_secret(&{
            let k = tmp.path().join("k");
            crate::sign::generate(&k).unwrap();
            k
        })
        .unwrap();
        let public = key.verifying_key();
        let sign = |m: &[u8]| (crate::sign::signature_line(&key, m) + "\n").into_bytes();
        publish_summary(&repo, b"one", Some(&sign(b"one"))).unwrap();
        publish_summary(&repo, b"two", Some(&sign(b"two"))).unwrap();
        let both = fs::read(dir.join("summary.sig")).unwrap();
        assert_eq!(fs::read(dir.join("summary")).unwrap(), b"two");
        assert!(crate::sign::verify(b"one", &both, &[public]) && crate::sign::verify(b"two", &both, &[public]));
        // nothing new: the signature file becomes exactly the upstream's
        publish_summary(&repo, b"two", Some(&sign(b"two"))).unwrap();
        assert_eq!(fs::read(dir.join("summary.sig")).unwrap(), sign(b"two"));
        // unsigned from now on: the stale signature goes
        publish_summary(&repo, b"three", None).unwrap();
        assert!(!dir.join("summary.sig").exists());
    }
}
