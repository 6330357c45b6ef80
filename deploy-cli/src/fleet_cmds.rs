//! `osdeploy agent` and `osdeploy rollout …`: the work is done by `osdeploy_fleet`; this module
//! reads arguments and prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use osdeploy_deploy::deploy::{Config, Sysroot};
use osdeploy_fleet::access::EtcdAccess;
use osdeploy_fleet::agent::Agent;
use osdeploy_fleet::cluster::{Cluster, Mark, Outcome, QueueEntry, RolloutView, now};
use osdeploy_fleet::config::FleetConfig;
use osdeploy_fleet::policy::{self, PolicySpec, RolloutPolicy};
use osdeploy_store::{Access, CommitId, Repo};
use serde::Serialize;
use tokio::sync::Notify;

use crate::output::print_json;

/// Where `rollout` finds etcd and how it gets in: each flag, else the node configuration's
/// `[fleet]` setting of the same name.
#[derive(clap::Args, Debug)]
pub struct EtcdArgs {
    /// etcd client URL (repeatable) [default: [fleet] etcd of CONFIG_DIR/config.toml].
    #[arg(long = "etcd", value_name = "URL")]
    pub endpoints: Vec<String>,
    /// etcd key prefix of the fleet [default: [fleet] prefix, or /osdeploy].
    #[arg(long)]
    pub prefix: Option<String>,
    /// CA certificate (PEM) of the etcd members, for https:// URLs [default: [fleet] etcd_ca].
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), with --etcd-key [default: [fleet] etcd_cert].
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM) [default: [fleet] etcd_key].
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, with --etcd-password-file [default: [fleet] etcd_user].
    #[arg(long, value_name = "NAME")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password [default: [fleet] etcd_password_file].
    #[arg(long, value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
}

/// `osdeploy rollout` subcommands.
#[derive(Subcommand, Debug)]
pub enum RolloutAction {
    /// On the origin: publish COMMIT's rollout policy (a TOML file) beside the summary, signed.
    Publish {
        /// The release (branch or commit of the repository).
        commit: String,
        /// The policy: canary_nodes, canary_fraction, waves, soak_seconds, failure_threshold.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The secret key that signs the repository.
        #[arg(long, value_name = "SECRET_KEY_FILE")]
        key: PathBuf,
    },
    /// Show a rollout: its policy, each node's wave and state, failures, the halt, who holds reboot slots.
    Status {
        /// The commit (full id).
        commit: String,
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop COMMIT from reaching more nodes until `rollout resume`.
    Pause {
        /// The commit (full id).
        commit: String,
        /// Why (shown to everyone who looks).
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Clear the fleet's halt and COMMIT's pause, forgiving COMMIT's failures so far.
    Resume {
        /// The commit (full id).
        commit: String,
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// No node takes COMMIT any more (nodes already on it stay).
    Abort {
        /// The commit (full id).
        commit: String,
        /// Why.
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Stop waiting for NODE, silent in the middle of COMMIT's update (dead, or cut off from etcd):
    /// the later waves go on without it and its reboot slot is freed.
    Forget {
        /// The commit (full id).
        commit: String,
        /// The silent node.
        node: String,
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Show or set how many nodes of a group may be in their reboot at once.
    Slots {
        /// The reboot group.
        #[arg(long, default_value = "default")]
        group: String,
        /// The new number of slots (show them when absent).
        slots: Option<u32>,
        /// Where etcd is.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

/// `osdeploy agent`.
pub fn agent(sysroot: Sysroot, config_dir: PathBuf, machine_id: PathBuf) -> Result<()> {
    osdeploy_transport::runtime()?.block_on(async move {
        // Handlers first: SIGHUP's default action would end an agent still connecting to etcd.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let agent = tokio::select! {
            agent = Agent::start(sysroot, config_dir, machine_id) => agent?,
            _ = terminate.recv() => return Ok(()),
        };
        let (wake, stop) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (wake2, stop2) = (wake.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hangup.recv() => wake2.notify_one(),
                    _ = terminate.recv() => { stop2.notify_one(); return; }
                    _ = tokio::signal::ctrl_c() => { stop2.notify_one(); return; }
                }
            }
        });
        agent.run(wake, stop).await?;
        Ok(())
    })
}

/// Connects to the fleet's etcd named by `args` or the node configuration.
async fn connect(args: &EtcdArgs, config_dir: &Path) -> Result<Cluster> {
    let path = config_dir.join("config.toml");
    let fleet = match FleetConfig::from_node_config(&Config::load(config_dir)?, &path) {
        Ok(fleet) => fleet,
        // The flags name etcd: a [fleet] section the flags replace need not be usable.
        Err(_) if !args.endpoints.is_empty() => None,
        Err(e) => return Err(e.into()),
    };
    let configured = fleet.as_ref().map(FleetConfig::etcd_access).unwrap_or_default();
    let access = EtcdAccess {
        endpoints: if args.endpoints.is_empty() { configured.endpoints } else { args.endpoints.clone() },
        ca: args.etcd_ca.clone().or(configured.ca),
        cert: args.etcd_cert.clone().or(configured.cert),
        key: args.etcd_key.clone().or(configured.key),
        user: args.etcd_user.clone().or(configured.user),
        password_file: args.etcd_password_file.clone().or(configured.password_file),
    };
    if access.endpoints.is_empty() {
        bail!("where is etcd? give --etcd URL, or set [fleet] etcd in {}", path.display());
    }
    if let Some(problem) = access.problem() {
        bail!("etcd access: {problem} (flags --etcd-ca, --etcd-cert, --etcd-key, --etcd-user, --etcd-password-file)");
    }
    let prefix = args.prefix.clone().or_else(|| fleet.map(|f| f.prefix)).unwrap_or_else(|| "/osdeploy".into());
    Ok(Cluster::connect(&access, &prefix, Duration::from_secs(5)).await?)
}

fn commit_id(text: &str) -> Result<CommitId> {
    osdeploy_store::ObjectId::from_hex(text)
        .map(CommitId)
        .with_context(|| format!("{text:?} is not a full commit id (64 hex digits)"))
}

/// Runs a `rollout` subcommand.
pub fn rollout(action: RolloutAction, repo: &Path, config_dir: &Path) -> Result<()> {
    if let RolloutAction::Publish { commit, policy, key } = &action {
        return publish(repo, commit, policy, key);
    }
    osdeploy_transport::runtime()?.block_on(async {
        match action {
            RolloutAction::Publish { .. } => unreachable!("handled above"),
            RolloutAction::Status { commit, etcd, json } => {
                let cluster = connect(&etcd, config_dir).await?;
                status(&cluster, &commit_id(&commit)?, json).await
            }
            RolloutAction::Pause { commit, reason, etcd } => {
                let commit = commit_id(&commit)?;
                connect(&etcd, config_dir).await?.pause(&Mark { commit, reason, at: now() }).await?;
                println!("rollout of {commit} paused: no more nodes take it until `osdeploy rollout resume {commit}`");
                Ok(())
            }
            RolloutAction::Resume { commit, etcd } => {
                let commit = commit_id(&commit)?;
                match connect(&etcd, config_dir).await?.resume(&commit).await? {
                    Some(halt) => println!("halt cleared (it was set for {}: {})", halt.commit, halt.reason),
                    None => println!("no halt was set"),
                }
                println!("rollout of {commit} resumed; its failures so far are forgiven");
                Ok(())
            }
            RolloutAction::Abort { commit, reason, etcd } => {
                let commit = commit_id(&commit)?;
                connect(&etcd, config_dir).await?.abort(&Mark { commit, reason, at: now() }).await?;
                println!("rollout of {commit} aborted: no node takes it any more");
                Ok(())
            }
            RolloutAction::Forget { commit, node, etcd } => {
                let commit = commit_id(&commit)?;
                let (report, groups) = connect(&etcd, config_dir).await?.forget(&commit, &node).await?;
                println!(
                    "forgot {node} ({}, silent since it reported {} at {}): later waves no longer wait for it",
                    report.wave, report.outcome, report.at
                );
                for group in groups {
                    println!("{node} left the reboot queue of group {group}");
                }
                Ok(())
            }
            RolloutAction::Slots { group, slots, etcd } => {
                let cluster = connect(&etcd, config_dir).await?;
                if let Some(slots) = slots {
                    if slots == 0 {
                        bail!("0 reboot slots would stop every update; use `rollout pause` for that");
                    }
                    cluster.set_reboot_slots(&group, slots).await?;
                }
                println!("group {group}: {} reboot slot(s)", cluster.reboot_slots(&group).await?);
                Ok(())
            }
        }
    })
}

fn publish(repo: &Path, commit: &str, policy_file: &Path, key: &Path) -> Result<()> {
    let repo = Repo::open(repo, Access::Write)?;
    let commit = repo.resolve(commit)?;
    let text = std::fs::read_to_string(policy_file).with_context(|| format!("reading {}", policy_file.display()))?;
    let spec: PolicySpec =
        toml::from_str(&text).with_context(|| format!("{} is not a rollout policy", policy_file.display()))?;
    let policy = RolloutPolicy::new(commit, spec)?;
    policy::publish(&repo, &policy, &osdeploy_transport::sign::load_secret(key)?)?;
    println!(
        "published the rollout policy of {commit} ({} wave(s) after the canaries), signed",
        policy.spec.waves.len()
    );
    Ok(())
}

/// One node in `rollout status`.
#[derive(Serialize)]
struct NodeLine {
    node: String,
    wave: Option<String>,
    state: String,
    at: Option<i64>,
    alive: bool,
    message: String,
}

/// `rollout status --json`.
#[derive(Serialize)]
struct StatusReport<'a> {
    commit: CommitId,
    #[serde(flatten)]
    view: &'a RolloutView,
    failures: u32,
    lines: Vec<NodeLine>,
    reboot_queues: std::collections::BTreeMap<String, Vec<QueueEntry>>,
}

async fn status(cluster: &Cluster, commit: &CommitId, json: bool) -> Result<()> {
    let view = cluster.rollout(commit).await?;
    let mut lines: Vec<NodeLine> = Vec::new();
    for (node, report) in &view.reports {
        lines.push(NodeLine {
            node: node.clone(),
            wave: Some(report.wave.to_string()),
            state: report.outcome.to_string(),
            at: Some(report.at),
            alive: view.nodes.iter().any(|n| &n.node == node),
            message: report.message.clone(),
        });
    }
    for record in view.nodes.iter().filter(|n| !view.reports.contains_key(&n.node)) {
        let state = if record.booted == Some(*commit) { "on it" } else { "waiting" };
        lines.push(NodeLine {
            node: record.node.clone(),
            wave: view.policy.as_ref().map(|p| p.wave_of(&record.node).to_string()),
            state: state.into(),
            at: None,
            alive: true,
            message: record.doing.clone(),
        });
    }
    // Canaries first, then waves by number ("wave 10" after "wave 9").
    let rank = |wave: &Option<String>| match wave.as_deref() {
        Some("canary") => 0,
        Some(w) => w.trim_start_matches("wave ").parse().unwrap_or(u32::MAX),
        None => u32::MAX,
    };
    lines.sort_by(|a, b| (rank(&a.wave), &a.node).cmp(&(rank(&b.wave), &b.node)));
    let mut reboot_queues = std::collections::BTreeMap::new();
    let groups: std::collections::BTreeSet<&str> = view.nodes.iter().map(|n| n.group.as_str()).collect();
    for group in groups {
        reboot_queues.insert(group.to_owned(), cluster.queue(group).await?);
    }
    let report = StatusReport { commit: *commit, view: &view, failures: view.failures(), lines, reboot_queues };
    if json {
        return print_json(&report);
    }
    println!("rollout of {commit}");
    match (&view.started, &view.policy) {
        (Some(started), Some(p)) => println!(
            "  started {} s ago; policy: canaries {:?} + {:.0} %, waves {:?}, soak {} s, failure threshold {}",
            now() - started,
            p.spec.canary_nodes,
            p.spec.canary_fraction * 100.0,
            p.spec.waves,
            p.spec.soak_seconds,
            p.spec.failure_threshold
        ),
        _ => println!("  not started: no node has seen it yet"),
    }
    let failures = view.reports.values().filter(|r| r.outcome.is_failure()).count();
    println!("  failures: {failures} ({} forgiven)", view.forgiven);
    if let Some(halt) = &view.halt {
        println!("  HALTED (all rollouts): {} — commit {}; `osdeploy rollout resume`", halt.reason, halt.commit);
    }
    if let Some(paused) = &view.paused {
        println!("  paused: {}", paused.reason);
    }
    if let Some(aborted) = &view.aborted {
        println!("  aborted: {}", aborted.reason);
    }
    for line in &report.lines {
        let alive = if line.alive { "" } else { " (not registered: agent down?)" };
        println!(
            "  {:<8} {:<24} {:<14}{alive} {}",
            line.wave.as_deref().unwrap_or("?"),
            line.node,
            line.state,
            line.message
        );
    }
    for (group, queue) in &report.reboot_queues {
        let holders: Vec<&str> = queue.iter().filter(|e| e.holds).map(|e| e.node.as_str()).collect();
        let waiting: Vec<&str> = queue.iter().filter(|e| !e.holds).map(|e| e.node.as_str()).collect();
        println!("  reboot slots of group {group}: held by [{}], waiting [{}]", holders.join(", "), waiting.join(", "));
    }
    let updated = view.reports.values().filter(|r| r.outcome == Outcome::Updated).count();
    println!("  {updated} node(s) updated");
    Ok(())
}
