//! `osdeploy delta report`: what updating to a release costs from each of the releases before
//! it, with per-file deltas and with chunks only — the figures a release engineer checks before
//! publishing (and after generating deltas).

use osdeploy_store::history::{Ancestor, ancestry};
use osdeploy_store::{CommitId, Repo, StoreError};
use serde::Serialize;

use crate::deltas::DeltaUse;
use crate::plan::{CoalesceOptions, Cost, plan};

/// The update from one earlier release to the release reported on.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateCost {
    /// The release a node holds.
    pub from: CommitId,
    /// Its version string.
    pub version: String,
    /// What the pull costs, deltas used where cheaper.
    pub with_deltas: Cost,
    /// What it costs with chunks only.
    pub chunks_only: Cost,
    /// New files rebuilt from deltas.
    pub files_from_deltas: u64,
    /// New files in all.
    pub files_new: u64,
}

/// The costs of updating to `to` from each of its last `last` ancestors (nearest first) in a
/// local archive repository.
pub fn update_costs(
    repo: &Repo,
    to: CommitId,
    last: usize,
    options: CoalesceOptions,
) -> Result<Vec<UpdateCost>, StoreError> {
    let mut costs = Vec::new();
    for step in ancestry(repo, to).skip(1).take(last) {
        let Ancestor::Held(from, commit) = step? else { break };
        let plan = plan(repo, Some(from), to, options, DeltaUse::WhereCheaper)?;
        costs.push(UpdateCost {
            from,
            version: commit.version.clone(),
            with_deltas: plan.cost(),
            chunks_only: plan.without_deltas.unwrap_or(plan.cost()),
            files_from_deltas: plan.files_from_deltas,
            files_new: plan.files_new,
        });
    }
    Ok(costs)
}
