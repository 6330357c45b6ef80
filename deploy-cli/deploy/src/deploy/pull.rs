//! `pull` on a node: which branch a pull into the sysroot's repository fetches (the one given, or
//! the one the sysroot follows), the node's network defaults from `config.toml`, and following:
//! the first pull of a branch into a sysroot makes the sysroot follow it, so that later `pull`
//! and `switch` need no arguments.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use osdeploy_store::{Access, RefName, Repo};
use osdeploy_transport::client::{HttpOptions, Progress};
use osdeploy_transport::plan::PullPlan;
use osdeploy_transport::pull::{PullOptions, PullStats, plan_pull, pull};
use osdeploy_transport::remote;

use super::ops::{follow_if_unset, followed};
use super::{Config, Result, Sysroot};

/// The branch a pull into a sysroot's repository fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullTarget {
    /// The remote.
    pub remote: String,
    /// Its branch (stored locally as `REMOTE/BRANCH`).
    pub branch: RefName,
    /// The sysroot follows this branch once it is pulled, unless it follows one already.
    follow: bool,
}

impl PullTarget {
    /// `pull REMOTE BRANCH`: the first such pull into an initialised sysroot makes it follow the branch.
    pub fn branch(sysroot: &Sysroot, remote: String, branch: RefName) -> PullTarget {
        PullTarget { remote, branch, follow: sysroot.state_path().exists() }
    }

    /// `pull`: the branch the sysroot follows.
    pub fn followed(sysroot: &Sysroot) -> Result<PullTarget> {
        let follows = followed(sysroot)?;
        Ok(PullTarget { remote: follows.remote, branch: follows.branch, follow: false })
    }
}

/// What [`pull_into_sysroot`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodePull {
    /// What the transport did.
    #[serde(flatten)]
    pub stats: PullStats,
    /// The sysroot started following the branch with this pull.
    pub now_follows: bool,
}

/// The network options of a node's pulls: `config.toml`'s `pull_timeout` and `pull_limit_rate`.
pub fn http_defaults(config: &Config) -> HttpOptions {
    HttpOptions {
        timeout: Duration::from_secs(config.pull_timeout),
        limit_rate: config.pull_limit_rate,
        speed_limit: config.pull_speed_limit,
        speed_time: Duration::from_secs(config.pull_speed_time),
        deadline: Duration::from_secs(config.pull_deadline),
        max_metadata: config.pull_max_metadata,
        ..HttpOptions::default()
    }
}

/// Pulls `target` into the sysroot's repository and records the branch as followed when it is
/// the sysroot's first.
pub async fn pull_into_sysroot(
    sysroot: &Sysroot,
    target: &PullTarget,
    options: PullOptions,
    progress: Arc<Progress>,
) -> Result<NodePull> {
    let mut repo = Repo::open(&sysroot.repo(), Access::Write)?;
    let remote = remote::get(&repo, &target.remote)?;
    let stats = pull(&mut repo, &remote, &target.branch, options, progress).await?;
    let now_follows = target.follow && follow_if_unset(sysroot, &target.remote, &target.branch)?;
    Ok(NodePull { stats, now_follows })
}

/// The plan a pull of `target` would execute now (`pull --dry-run`); nothing is written.
pub async fn plan_sysroot_pull(
    sysroot: &Sysroot,
    target: &PullTarget,
    options: PullOptions,
    scratch: &Path,
) -> Result<PullPlan> {
    let repo = Repo::open(&sysroot.repo(), Access::Read)?;
    let remote = remote::get(&repo, &target.remote)?;
    Ok(plan_pull(&repo, &remote, &target.branch, options, scratch).await?)
}
