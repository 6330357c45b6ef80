//! `osdeploy delta --remote`: the delta plan between two commits of a remote archive repository,
//! computed over HTTP from its summary, pack indexes and metadata only — no chunk is fetched,
//! and nothing is written to the local repository.

use std::collections::HashSet;
use std::sync::Arc;

use osdeploy_store::fsutil::unique_tmp_name;
use osdeploy_store::object::{FileObject, ObjectKind};
use osdeploy_store::pack::IndexEntry;
use osdeploy_store::{CommitId, ObjectId, StoreError};
use serde::Serialize;

use crate::client::{Client, Progress};
use crate::error::TransportError;
use crate::fetch::fetch_metadata;
use crate::index::RemoteIndex;
use crate::plan::{DeltaPlan, ObjectLocations, plan_objects};
use crate::pull::{PullOptions, children};
use crate::remote::Remote;
use crate::staging::Staging;
use crate::summary::{Summary, fetch_summary, verify_commit};

/// A remote delta plan and what computing it cost.
#[derive(Debug, Serialize)]
pub struct RemoteDelta {
    /// The plan, as `osdeploy delta` prints it for a local repository.
    #[serde(flatten)]
    pub plan: DeltaPlan,
    /// Requests sent to compute it (summary, indexes, metadata).
    pub survey_requests: u64,
    /// Bytes received to compute it.
    pub survey_bytes: u64,
}

impl ObjectLocations for RemoteIndex {
    fn locate(&self, kind: ObjectKind, id: &ObjectId) -> Option<(ObjectId, IndexEntry)> {
        RemoteIndex::locate(self, kind, id).map(|(pack, entry)| (pack.pack, *entry))
    }

    fn index_bytes(&self, pack: &ObjectId) -> Result<u64, StoreError> {
        Ok(self.packs.iter().find(|p| p.pack == *pack).map_or(0, |p| p.index_bytes))
    }
}

/// Plans what a node holding `from` ("none": nothing) must fetch from `remote` for `to`; each
/// names a branch of the remote or a full commit id. `scratch` is a directory for the metadata
/// fetched meanwhile (removed afterwards); pack indexes go to an in-memory index only.
pub fn plan_remote(
    remote: &Remote,
    from: &str,
    to: &str,
    scratch: &std::path::Path,
    options: PullOptions,
) -> Result<RemoteDelta, TransportError> {
    let dir = scratch.join(unique_tmp_name("delta"));
    let result = crate::pull::runtime()?.block_on(plan_async(remote, from, to, Staging::open(dir.clone())?, options));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn plan_async(
    remote: &Remote,
    from: &str,
    to: &str,
    mut staged: Staging,
    options: PullOptions,
) -> Result<RemoteDelta, TransportError> {
    let progress = Arc::new(Progress::default());
    let client = Client::new(remote, options.http, progress.clone())?;
    let fetched = fetch_summary(&client, remote).await?;
    let index = crate::index::fetch(&client, &fetched.summary.packs()?).await?;
    let from = if from == "none" { None } else { Some(resolve(remote, &fetched.summary, &index, from)?) };
    let to = resolve(remote, &fetched.summary, &index, to)?;
    let have = match from {
        Some(f) => reachable(&client, &index, &mut staged, f, options).await?,
        None => HashSet::new(),
    };
    let want = reachable(&client, &index, &mut staged, to, options).await?;
    // A pull fetches the summary whole, and from a signed remote its signature and the commit's
    // (verified here as the pull would).
    let mut whole_files = vec![fetched.bytes.len() as u64];
    whole_files.extend(fetched.signatures.as_ref().map(|s| s.len() as u64));
    whole_files.extend(verify_commit(&client, remote, &to).await?.map(|s| s.len() as u64));
    let mut plan = DeltaPlan { from: from.map(|f| f.to_string()), to: to.to_string(), ..Default::default() };
    plan_objects(&index, &have, &want, &whole_files, options.coalesce, &mut plan)?;
    Ok(RemoteDelta {
        plan,
        survey_requests: progress.requests.load(std::sync::atomic::Ordering::Relaxed),
        survey_bytes: progress.bytes.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// A branch of the remote or a full commit id it holds.
fn resolve(remote: &Remote, summary: &Summary, index: &RemoteIndex, name: &str) -> Result<CommitId, TransportError> {
    if summary.refs.contains_key(name) {
        return Ok(summary.branch(remote, name)?.0);
    }
    match ObjectId::from_hex(name) {
        Some(id) if index.locate(ObjectKind::Commit, &id).is_some() => Ok(CommitId(id)),
        _ => Err(TransportError::NoSuchBranch {
            remote: remote.name.clone(),
            branch: name.into(),
            available: format!(
                "{} (or a full commit id the remote holds)",
                summary.refs.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// Every object `commit` reaches (metadata fetched into `staged` as needed; chunks are listed,
/// not fetched).
async fn reachable(
    client: &Client,
    index: &RemoteIndex,
    staged: &mut Staging,
    commit: CommitId,
    options: PullOptions,
) -> Result<HashSet<(ObjectId, ObjectKind)>, TransportError> {
    let mut seen = HashSet::from([(commit.0, ObjectKind::Commit)]);
    let mut level = vec![(commit.0, ObjectKind::Commit)];
    let mut prefetched = HashSet::new();
    let absent = |staged: &Staging, kind, id: &ObjectId| Ok(!staged.has(kind, id));
    while !level.is_empty() {
        fetch_metadata(client, index, &level, staged, &mut prefetched, absent, options).await?;
        let mut next = Vec::new();
        for (id, kind) in level {
            let bytes = staged.get(kind, &id)?;
            if kind == ObjectKind::File {
                for (chunk, _) in FileObject::decode(id, &bytes)?.chunks {
                    seen.insert((chunk.0, ObjectKind::Chunk));
                }
            }
            next.extend(children(kind, id, &bytes)?.into_iter().filter(|child| seen.insert(*child)));
        }
        level = next;
    }
    Ok(seen)
}
