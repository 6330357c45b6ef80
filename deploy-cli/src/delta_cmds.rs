//! The `delta` command family: what an update costs (locally or against a remote), and
//! generating the per-file deltas that make it cheaper.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use osdeploy_store::delta::generate::{GenerateOptions, GenerateStats, generate};
use osdeploy_store::history::{Ancestor, ancestry};
use osdeploy_store::repo::Access;
use osdeploy_store::{CommitId, Repo};
use osdeploy_transport::deltas::DeltaUse;
use osdeploy_transport::pull::PullOptions;
use osdeploy_transport::remote;
use osdeploy_transport::report::update_costs;

use crate::chart;
use crate::output::{self, print_json};
use crate::repo_cmds::open;
use crate::reports;

/// `delta FROM TO` on a local archive repository.
pub fn plan(
    repo: &Path,
    from: &str,
    to: &str,
    options: osdeploy_transport::plan::CoalesceOptions,
    deltas: DeltaUse,
    json: bool,
) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let from = if from == "none" { None } else { Some(repo.resolve(from)?) };
    let to = repo.resolve(to)?;
    let plan = osdeploy_transport::plan::plan(&repo, from, to, options, deltas)?;
    if json {
        return print_json(&plan);
    }
    reports::print_plan(&plan);
    Ok(())
}

/// `delta --remote`.
pub fn remote_plan(
    repo: &Path,
    remote_name: &str,
    from: &str,
    to: &str,
    options: PullOptions,
    json: bool,
) -> Result<()> {
    let repo = Repo::open(repo, Access::Read)?;
    let remote = remote::get(&repo, remote_name)?;
    let scratch = std::env::temp_dir();
    let planned = osdeploy_transport::remote_plan::plan_remote(&remote, from, to, &scratch, options);
    let delta = osdeploy_transport::runtime()?
        .block_on(planned)
        .with_context(|| format!("planning {from} → {to} on remote {remote_name}"))?;
    if json {
        return print_json(&delta);
    }
    reports::print_plan(&delta.plan);
    eprintln!(
        "(surveyed over HTTP: {} in {} requests for the summary, pack indexes and metadata)",
        output::size(delta.survey_bytes),
        delta.survey_requests
    );
    Ok(())
}

/// `delta generate`: deltas to TO from each FROM, or from TO's last `last` ancestors.
pub fn generate_cmd(repo: &Path, from: &[String], to: &str, last: usize, json: bool) -> Result<()> {
    let repo = open(repo, Access::Write)?;
    let to = repo.resolve(to)?;
    let from: Vec<CommitId> = from.iter().map(|f| repo.resolve(f)).collect::<Result<_, _>>()?;
    let stats = generate_to(&repo, &from, to, last)?;
    if json {
        return print_json(&stats);
    }
    reports::print_generate(&stats);
    Ok(())
}

/// Generates the deltas to `to` from each of `from`, or (none given) from `to`'s last `last`
/// ancestors the repository holds, with a progress bar on a terminal.
pub fn generate_to(repo: &Repo, from: &[CommitId], to: CommitId, last: usize) -> Result<GenerateStats> {
    let mut from = from.to_vec();
    if from.is_empty() {
        for step in ancestry(repo, to).skip(1).take(last) {
            match step? {
                Ancestor::Held(id, _) => from.push(id),
                Ancestor::Missing(_) => break,
            }
        }
    }
    if from.is_empty() {
        bail!("{to} has no earlier release in this repository: name one with --from");
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} pairs encoded")
                .expect("valid template"),
        )
    });
    let progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let stats = generate(repo, &from, to, &GenerateOptions::default(), &progress)
        .with_context(|| format!("generating deltas to {to}"))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(stats)
}

/// `delta report`: the cost of updating to TO from each of its last `last` ancestors.
pub fn report(repo: &Path, to: &str, last: usize, svg: Option<&Path>, json: bool) -> Result<()> {
    let repo = open(repo, Access::Read)?;
    let to = repo.resolve(to)?;
    let version = repo.commit_object(&to)?.version;
    let costs = update_costs(&repo, to, last, Default::default())?;
    if costs.is_empty() {
        bail!("{to} has no earlier release in this repository to report on");
    }
    if let Some(path) = svg {
        chart::update_costs(path, &version, &costs).with_context(|| format!("drawing {}", path.display()))?;
    }
    if json {
        return print_json(&costs);
    }
    reports::print_update_costs(to, &version, &costs);
    Ok(())
}
