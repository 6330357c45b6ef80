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
use crate::delta_sources::{DeltaSources, RemoteDeltaFiles, delta_sources};
use crate::deltas::{self, DeltaUse};
use crate::error::TransportError;
use crate::index::RemoteIndex;
use crate::plan::{Indexes, PullPlan, WholeFile};
use crate::pull::PullOptions;
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
pub async fn plan_remote(
    remote: &Remote,
    from: &str,
    to: &str,
    scratch: &Path,
    options: PullOptions,
) -> Result<RemoteDelta, TransportError> {
    let dirs = [scratch.join(unique_tmp_name("delta-from")), scratch.join(unique_tmp_name("delta-to"))];
    let result = plan_async(remote, from, to, &dirs, options).await;
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
    let mut index = crate::index::fetch(&client, &summary::packs(&fetched.summary)).await?;
    let from = if from == "none" { None } else { Some(resolve(remote, &fetched.summary, &index, from)?) };
    let to = resolve(remote, &fetched.summary, &index, to)?;
    let mut staged_from = Staging::open(dirs[0].clone())?;
    let mut staged_to = Staging::open(dirs[1].clone())?;
    let in_flight = options.in_flight;
    let have = match from {
        Some(f) => {
            let source = survey::Remote { client: &client, index: &index, staged: &mut staged_from, in_flight };
            survey::walk(source, &HashSet::new(), f, options.coalesce).await?.objects()
        }
        None => HashSet::new(),
    };
    // A pull fetches the summary whole, and from a signed remote its signature and the commit's
    // (verified here as the pull would).
    let signature = verify_commit(&client, remote, &to).await?;
    let whole_files = fetched.whole_files(&to, signature.as_deref());
    // A node holding FROM finds its deltas as the pull does (FROM's metadata, a metadata delta's
    // base, was fetched by the first walk).
    let DeltaSources { catalog, metadata_delta } = match (options.deltas, from) {
        (DeltaUse::WhereCheaper, Some(from)) => {
            let held = |c: &CommitId| Ok(*c == from);
            let read_base = |kind, id: &ObjectId| staged_from.get(kind, id);
            let (client, summary, staged) = (&client, &fetched.summary, &mut staged_to);
            let mut files = RemoteDeltaFiles { client, summary, staged, read_base, cache: None };
            delta_sources(&mut files, Some(summary), to, held).await?
        }
        _ => DeltaSources::default(),
    };
    if let Some((catalog, _)) = &catalog {
        index.packs.extend(catalog.pack_entries());
    }
    let source = survey::Remote { client: &client, index: &index, staged: &mut staged_to, in_flight };
    let mut survey = survey::walk(source, &have, to, options.coalesce).await?;
    let build = |survey, indexes, extra: Option<WholeFile>| {
        let files = whole_files.iter().cloned().chain(extra).collect();
        PullPlan::new(from, to, survey, &index, indexes, files, options.coalesce)
    };
    // What a node fetching chunks only (and no metadata delta) would walk.
    let without_deltas = match (&catalog, &metadata_delta) {
        (None, _) => None,
        (Some(_), None) => Some(build(survey.clone(), Indexes::OfReads, None)?.cost()),
        (Some(_), Some(_)) => {
            let read = |kind, id: &ObjectId| staged_to.get(kind, id);
            let source = survey::AtHand { locations: &index, read, fetched: HashSet::new() };
            Some(build(survey::walk(source, &have, to, options.coalesce).await?, Indexes::OfReads, None)?.cost())
        }
    };
    // A metadata delta that says where the chunks lie spares the node every pack index.
    let indexes = match &metadata_delta {
        Some(m) if !m.chunk_locations.is_empty() => Indexes::None,
        _ => Indexes::OfReads,
    };
    let (read, objects) = metadata_delta.map(|m| (m.read, m.objects)).unzip();
    survey.add_metadata_delta(read, objects.into_iter().flatten(), &index);
    let catalog = catalog.as_ref().map(|(c, d)| (c, d.clone()));
    let build = |survey, extra| build(survey, indexes, extra);
    let plan = deltas::choose_and_plan(survey, without_deltas, catalog, &have, |_| false, &index, build)?;
    Ok(RemoteDelta {
        plan,
        survey_requests: progress.requests.load(Ordering::Relaxed),
        survey_bytes: progress.bytes.load(Ordering::Relaxed),
    })
}

/// A branch of the remote or a full commit id it holds.
fn resolve(remote: &Remote, summary: &Summary, index: &RemoteIndex, name: &str) -> Result<CommitId, TransportError> {
    if let Some(offered) = summary.refs.get(name) {
        return Ok(offered.commit);
    }
    match ObjectId::from_hex(name) {
        Some(id) if index.locate(ObjectKind::Commit, &id).is_some() => Ok(CommitId(id)),
        _ => Err(TransportError::NoSuchBranch {
            remote: remote.name.clone(),
            branch: name.into(),
            available: format!("{} (or a full commit id the remote holds)", summary::available(summary)),
        }),
    }
}
