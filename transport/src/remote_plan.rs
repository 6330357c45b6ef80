//! `osdeploy delta --remote`: the plan between two commits of a remote archive repository,
//! computed over HTTP from its summary, pack indexes and metadata only — no chunk is fetched,
//! and nothing is written to the local repository. It walks like a pull ([`crate::survey`]) of a
//! node that holds exactly FROM's objects, so it prints the plan such a node's `pull --dry-run`
//! prints.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use osdeploy_store::fsutil::unique_tmp_name;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::summary::Summary;
use osdeploy_store::{CommitId, ObjectId};
use serde::Serialize;

use crate::client::{Client, Progress};
use crate::deltas::{self, DeltaUse};
use crate::error::TransportError;
use crate::index::{CacheWrites, RemoteIndex};
use crate::plan::{Indexes, PullPlan, WholeFile};
use crate::pull::{PullOptions, runtime};
use crate::remote::Remote;
use crate::staging::Staging;
use crate::summary::{self, fetch_summary, verify_commit};
use crate::survey;

/// A remote plan and what computing it cost.
#[derive(Debug, Serialize)]
pub struct RemoteDelta {
    /// The plan, as `osdeploy delta` prints it for a local repository.
    #[serde(flatten)]
    pub plan: PullPlan,
    /// Requests sent to compute it (summary, indexes, metadata).
    pub survey_requests: u64,
    /// Bytes received to compute it.
    pub survey_bytes: u64,
}

/// Plans what a node holding `from` ("none": nothing) must fetch from `remote` for `to`; each
/// names a branch of the remote or a full commit id. `scratch` is a directory for the metadata
/// fetched meanwhile (removed afterwards); pack indexes go to an in-memory index only.
pub fn plan_remote(
    remote: &Remote,
    from: &str,
    to: &str,
    scratch: &Path,
    options: PullOptions,
) -> Result<RemoteDelta, TransportError> {
    let dirs = [scratch.join(unique_tmp_name("delta-from")), scratch.join(unique_tmp_name("delta-to"))];
    let result = runtime()?.block_on(plan_async(remote, from, to, &dirs, options));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn plan_async(
    remote: &Remote,
    from: &str,
    to: &str,
    dirs: &[std::path::PathBuf; 2],
    options: PullOptions,
) -> Result<RemoteDelta, TransportError> {
    let progress = Arc::new(Progress::default());
    let client = Client::new(remote, options.http, progress.clone())?;
    let fetched = fetch_summary(&client, remote).await?;
    let index = crate::index::fetch(&client, &summary::packs(&fetched.summary)).await?;
    let from = if from == "none" { None } else { Some(resolve(remote, &fetched.summary, &index, from)?) };
    let to = resolve(remote, &fetched.summary, &index, to)?;
    let walk_commit = |commit, holdings: HashSet<(ObjectId, ObjectKind)>, dir: &Path| {
        let (client, index) = (&client, &index);
        let dir = dir.to_path_buf();
        async move {
            let mut staged = Staging::open(dir)?;
            let source = survey::Remote { client, index, staged: &mut staged, in_flight: options.in_flight };
            survey::walk(source, &holdings, commit, options.coalesce).await
        }
    };
    let have = match from {
        Some(f) => walk_commit(f, HashSet::new(), &dirs[0]).await?.objects(),
        None => HashSet::new(),
    };
    let survey = walk_commit(to, have.clone(), &dirs[1]).await?;
    // A pull fetches the summary whole, and from a signed remote its signature and the commit's
    // (verified here as the pull would).
    let signature = verify_commit(&client, remote, &to).await?;
    let whole_files = fetched.whole_files(&to, signature.as_deref());
    // A node holding a release also fetches the wanted release's delta index, and may use it.
    let mut catalog = None;
    if options.deltas == DeltaUse::WhereCheaper && from.is_some() {
        catalog = deltas::remote_catalog(&client, &fetched.summary, &to, None, CacheWrites::Forbidden).await?;
    }
    let build = |survey, extra: Option<WholeFile>| {
        let files = whole_files.iter().cloned().chain(extra).collect();
        PullPlan::new(from, to, survey, &index, Indexes::OfReads, files, options.coalesce)
    };
    let catalog = catalog.as_ref().map(|(c, d)| (c, d.clone()));
    let plan = deltas::choose_and_plan(survey, catalog, &have, |_| false, &index, build)?;
    Ok(RemoteDelta {
        plan,
        survey_requests: progress.requests.load(Ordering::Relaxed),
        survey_bytes: progress.bytes.load(Ordering::Relaxed),
    })
}

/// A branch of the remote or a full commit id it holds.
fn resolve(remote: &Remote, summary: &Summary, index: &RemoteIndex, name: &str) -> Result<CommitId, TransportError> {
    if summary.refs.contains_key(name) {
        return Ok(summary::branch(summary, remote, name)?.0);
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
