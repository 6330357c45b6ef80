//! `osdeploy agent`: the update agent of one node.
//!
//! Every poll (jittered; SIGHUP polls at once) it pulls the branch the sysroot follows, fetches
//! the new commit's rollout policy and asks the [gate](crate::gate) whether this node may take it
//! now. When it may, the update runs through the [phases](Phase), each recorded in the agent's
//! state before and after it acts:
//!
//! switch → join the group's reboot queue → wait for a slot (and a maintenance window) → drain
//! hooks → reboot command → (the node boots; `boot-check` and `mark-good` judge the release, the
//! agent runs mark-good itself if it is still pending) → on failed health checks, reboot back
//! into the previous release → report to etcd (a failure may halt the fleet) → undrain hooks →
//! leave the queue.
//!
//! An agent killed at any point, or a node whose power is cut, resumes at the recorded phase:
//! every step is safe to repeat. Errors (etcd away, the origin away, a failing hook) are logged
//! and the step is retried later; the agent never reboots without holding a reboot slot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osdeploy_deploy::deploy::pull::{PullTarget, http_defaults, pull_into_sysroot};
use osdeploy_deploy::deploy::state::SlotState;
use osdeploy_deploy::deploy::{Config, DeployError, State, Sysroot, ops};
use osdeploy_store::fsutil::crash_point;
use osdeploy_store::{Access, CommitId, Repo, StoreError};
use osdeploy_transport::client::{Client, Progress};
use osdeploy_transport::pull::PullOptions;
use osdeploy_transport::remote;
use tokio::sync::Notify;

use crate::agent_state::{AgentState, InFlight, Phase};
use crate::cluster::{Cluster, Mark, NodeRecord, Outcome, Report, now};
use crate::config::FleetConfig;
use crate::gate::{Decision, decide};
use crate::metrics::Metrics;
use crate::policy::{self, PolicySpec, RolloutPolicy};
use crate::{FleetError, Result, hooks};

/// What the agent does after a step.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The next step at once.
    Continue,
    /// Nothing to do until the next poll.
    Idle,
    /// Try again after a pause (waiting for a slot, a wave, etcd…).
    Wait(String),
}

/// One node's agent.
pub struct Agent {
    sysroot: Sysroot,
    config_dir: PathBuf,
    config: Config,
    fleet: FleetConfig,
    node: String,
    cluster: Cluster,
    leases: Arc<Leases>,
    state: AgentState,
    metrics: Arc<Metrics>,
    /// When the node joined the reboot queue (for the wait metric).
    queued_since: Option<std::time::Instant>,
}

/// The leases the agent keeps alive in the background: its registration and its place in the
/// reboot queue.
#[derive(Default)]
struct Leases {
    node: Mutex<Option<i64>>,
    reboot: Mutex<Option<i64>>,
    /// Set when the registration lease was found expired: the agent registers again.
    node_lost: std::sync::atomic::AtomicBool,
}

impl Agent {
    /// Reads the node's configuration and connects to etcd (retrying until it answers).
    pub async fn start(sysroot: Sysroot, config_dir: PathBuf, machine_id: PathBuf) -> Result<Agent> {
        let config_path = config_dir.join("config.toml");
        let config = Config::load(&config_dir)?;
        let fleet = FleetConfig::from_node_config(&config, &config_path)?.ok_or_else(|| FleetError::Config {
            path: config_path.clone(),
            reason: "is missing: the agent needs at least `etcd = [\"http://HOST:2379\"]`".into(),
        })?;
        let node = fleet.node_id(&machine_id)?;
        let state = AgentState::load(&sysroot)?;
        let access = fleet.etcd_access();
        // The TLS files and the password are read here: a missing one stops the start, named.
        access.connect_options(Duration::from_secs(5))?;
        let cluster = loop {
            match Cluster::connect(&access, &fleet.prefix, Duration::from_secs(5)).await {
                Ok(cluster) => break cluster,
                Err(e) => {
                    tracing::warn!("{e}; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
        let leases = Arc::new(Leases::default());
        *leases.reboot.lock().unwrap() = state.in_flight.as_ref().and_then(|f| f.reboot_lease);
        let metrics = Arc::new(Metrics::default());
        if let Some(addr) = &fleet.metrics_listen {
            let addr = addr.parse().expect("checked with the configuration");
            crate::metrics::serve(addr, metrics.clone()).await?;
            tracing::info!("metrics at http://{addr}/metrics");
        }
        let agent =
            Agent { sysroot, config_dir, config, fleet, node, cluster, leases, state, metrics, queued_since: None };
        agent.spawn_keepalive();
        Ok(agent)
    }

    /// Runs until `stop` is notified; `wake` makes the next poll happen at once.
    pub async fn run(mut self, wake: Arc<Notify>, stop: Arc<Notify>) -> Result<()> {
        tracing::info!(node = %self.node, group = %self.fleet.group, "agent started");
        loop {
            let next = match self.step().await {
                Ok(next) => next,
                Err(e) => {
                    self.metrics.step_errors.inc();
                    Next::Wait(e.to_string())
                }
            };
            let pause = match next {
                Next::Continue => continue,
                Next::Idle => self.poll_interval(),
                Next::Wait(reason) => {
                    tracing::info!("waiting: {reason}");
                    self.retry_interval()
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = wake.notified() => tracing::info!("woken up: polling now"),
                () = stop.notified() => {
                    tracing::info!("stopping; the update in flight (if any) resumes at the next start");
                    return Ok(());
                }
            }
        }
    }

    fn poll_interval(&self) -> Duration {
        let jitter = self.fleet.poll_jitter_seconds * 1000;
        let random = if jitter == 0 { 0 } else { u64::from_le_bytes(random_bytes()) % jitter };
        Duration::from_millis(self.fleet.poll_seconds * 1000 + random)
    }

    fn retry_interval(&self) -> Duration {
        Duration::from_secs(self.fleet.poll_seconds.clamp(1, 10))
    }

    /// Renews the leases every third of the registration TTL.
    fn spawn_keepalive(&self) {
        let (cluster, leases) = (self.cluster.clone(), self.leases.clone());
        let period = Duration::from_millis((self.fleet.node_ttl_seconds * 1000 / 3).max(500));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let node = *leases.node.lock().unwrap();
                if let Some(id) = node
                    && !renew(&cluster, id).await
                {
                    leases.node_lost.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let reboot = *leases.reboot.lock().unwrap();
                if let Some(id) = reboot
                    && !renew(&cluster, id).await
                {
                    tracing::warn!("the reboot-queue lease {id:x} expired");
                }
            }
        });
    }

    fn save(&self) -> Result<()> {
        self.state.save(&self.sysroot)
    }

    /// Logs a step, records it in the timeline and saves the state (then, in the tests' debug
    /// builds, `OSDEPLOY_CRASH_AT=agent:EVENT` kills the agent right there).
    fn record(&mut self, event: &str, commit: Option<CommitId>, message: String) -> Result<()> {
        tracing::info!(event, commit = commit.map(|c| c.to_string()).unwrap_or_default(), "{message}");
        self.state.record(event, commit, message);
        self.save()?;
        crash_point(&format!("agent:{event}"));
        Ok(())
    }

    /// Registers the node (again, if its lease was lost), saying what it is doing.
    async fn register(&mut self, doing: &str) -> Result<()> {
        let lost = self.leases.node_lost.swap(false, std::sync::atomic::Ordering::SeqCst);
        let current = *self.leases.node.lock().unwrap();
        let lease = match current {
            Some(id) if !lost => id,
            _ => {
                let id = self.cluster.grant_lease(self.fleet.node_ttl_seconds).await?;
                *self.leases.node.lock().unwrap() = Some(id);
                id
            }
        };
        let node_state = State::load(&self.sysroot)?;
        let branch = node_state.follows.as_ref().map(|f| f.to_string()).unwrap_or_default();
        let booted = node_state.booted.and_then(|slot| node_state.slots.get(slot).commit);
        if let Some(slot) = node_state.booted {
            let record = node_state.slots.get(slot);
            let commit = record.commit.map(|c| c.to_string()).unwrap_or_default();
            self.metrics.set_booted(&commit, record.version.as_deref().unwrap_or(""));
        }
        let phase = self.state.in_flight.as_ref().map(|f| (f.commit.to_string(), phase_name(f.phase)));
        self.metrics.set_phase(phase.as_ref().map(|(c, p)| (c.as_str(), *p)));
        let record = NodeRecord {
            node: self.node.clone(),
            group: self.fleet.group.clone(),
            branch,
            booted,
            doing: doing.to_owned(),
            at: now(),
        };
        if !self.cluster.register(&record, lease).await? {
            self.leases.node_lost.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(FleetError::LeaseExpired {
                what: format!("node {}'s registration lease {lease:x}", self.node),
            });
        }
        Ok(())
    }

    /// One step: resume the update in flight, or poll for a new one.
    async fn step(&mut self) -> Result<Next> {
        let Some(flight) = self.state.in_flight.clone() else {
            return self.poll().await;
        };
        match flight.phase {
            Phase::Switching => self.switch(&flight).await,
            Phase::Switched => self.enqueue(&flight).await,
            Phase::Queued => self.wait_for_slot(&flight).await,
            Phase::Holding => self.drain(&flight).await,
            Phase::Drained => self.reboot(&flight, Phase::Rebooting).await,
            Phase::Rebooting | Phase::RebootingBack => self.judge(&flight).await,
            Phase::Judged => self.report(&flight).await,
            Phase::Reported => self.undrain(&flight).await,
            Phase::Undrained => self.release(&flight).await,
        }
    }

    /// Pulls the followed branch; decides whether to take its commit.
    async fn poll(&mut self) -> Result<Next> {
        self.register("idle").await?;
        let target = PullTarget::followed(&self.sysroot)?;
        let options = PullOptions { http: http_defaults(&self.config), ..PullOptions::default() };
        // On this runtime: the pull's decoding and writing leave the workers (see osdeploy_transport::runtime).
        let pulled = pull_into_sysroot(&self.sysroot, &target, options, Arc::new(Progress::default())).await?;
        self.metrics.last_poll.set(now());
        self.metrics.pull_bytes.set(pulled.stats.bytes_fetched as i64);
        self.metrics.pull_requests.set(pulled.stats.requests as i64);
        let local_ref = &pulled.stats.r#ref;
        let repo = Repo::open(&self.sysroot.repo(), Access::Read)?;
        let commit =
            repo.read_ref(local_ref)?.ok_or_else(|| StoreError::CommitNotFound { spec: local_ref.to_string() })?;
        let node_state = State::load(&self.sysroot)?;
        let deployed = [node_state.slots.a.clone(), node_state.slots.b.clone()];
        let booted = node_state.booted.and_then(|slot| node_state.slots.get(slot).commit);
        if booted == Some(commit) || self.state.refused.contains(&commit) {
            return Ok(Next::Idle);
        }
        let policy = self.policy(&target, &commit).await?;
        if let Some(bad) = deployed.iter().find(|r| r.commit == Some(commit) && r.state == SlotState::Bad) {
            // Went bad on this node before (outside the agent, or its state was lost): not again,
            // and said so, or the later waves would wait for this node forever.
            let why = bad.reason.as_deref().unwrap_or("no reason recorded");
            let message = format!("{commit} went bad on this node before ({why}): refused");
            let report = Report { outcome: Outcome::RolledBack, wave: policy.wave_of(&self.node), at: now(), message };
            self.cluster.report(&commit, &self.node, &report).await?;
            self.state.refused.push(commit);
            self.record("refused", Some(commit), report.message)?;
            return Ok(Next::Idle);
        }
        let view = self.cluster.rollout(&commit).await?;
        self.metrics.halted.set(i64::from(view.halt.is_some()));
        if view.started.is_none() {
            self.cluster.mark_started(&policy).await?;
        }
        match decide(&policy, &self.node, local_ref.as_str(), &view, now()) {
            Decision::Go { wave } => {
                self.state.in_flight = Some(InFlight {
                    commit,
                    wave,
                    slot: None,
                    phase: Phase::Switching,
                    reboot_lease: None,
                    boots_before: None,
                    outcome: None,
                });
                self.record("taking", Some(commit), format!("taking {commit} ({wave})"))?;
                Ok(Next::Continue)
            }
            Decision::Wait { wave, reason } => Ok(Next::Wait(format!("{commit} ({wave}): {reason}"))),
            Decision::Halt { failures, threshold } => {
                let reason = format!("{failures} node(s) failed on {commit}, the threshold is {threshold}");
                if self.cluster.halt(&Mark { commit, reason: reason.clone(), at: now() }).await? {
                    self.record("halted", Some(commit), format!("halted the fleet's rollouts: {reason}"))?;
                }
                Ok(Next::Wait(reason))
            }
            Decision::Never { reason } => {
                self.state.refused.push(commit);
                self.record("refused", Some(commit), reason)?;
                Ok(Next::Idle)
            }
        }
    }

    /// The rollout policy of `commit` from the followed remote (one wave for everybody when the
    /// origin published none).
    async fn policy(&self, target: &PullTarget, commit: &CommitId) -> Result<RolloutPolicy> {
        let repo = Repo::open(&self.sysroot.repo(), Access::Read)?;
        let remote = remote::get(&repo, &target.remote)?;
        let client = Client::new(&remote, http_defaults(&self.config), Arc::new(Progress::default()))?;
        match policy::fetch(&client, &remote, commit).await? {
            Some(policy) => Ok(policy),
            None => RolloutPolicy::new(*commit, PolicySpec::default()),
        }
    }

    async fn switch(&mut self, flight: &InFlight) -> Result<Next> {
        self.register("switching").await?;
        self.cluster.report(&flight.commit, &self.node, &self.report_of(flight, Outcome::Taking, "switching")).await?;
        let (sysroot, config, spec) = (self.sysroot.clone(), self.config.clone(), flight.commit.to_string());
        let report = blocking(move || ops::switch(&sysroot, Some(&spec), &config).map_err(FleetError::from)).await?;
        self.state.phase(Phase::Switched).slot = Some(report.slot);
        self.record(
            "switched",
            Some(flight.commit),
            format!("slot {} boots {} next, on trial", report.slot, flight.commit),
        )?;
        Ok(Next::Continue)
    }

    /// Why the node may not reboot into its release now, if it may not: checked before it joins
    /// the reboot queue and while it waits there, not only before the switch, so that a halt,
    /// pause or abort that came meanwhile keeps it on its release (its armed trial waits too).
    async fn held(&self, flight: &InFlight) -> Result<Option<String>> {
        let view = self.cluster.rollout(&flight.commit).await?;
        self.metrics.halted.set(i64::from(view.halt.is_some()));
        if let Some(mark) = view.halt.as_ref().or(view.paused.as_ref()).or(view.aborted.as_ref()) {
            return Ok(Some(format!("held before the reboot: {} ({})", mark.reason, mark.commit)));
        }
        if !self.fleet.may_reboot_at(now()) {
            return Ok(Some("outside the maintenance windows".into()));
        }
        Ok(None)
    }

    async fn enqueue(&mut self, flight: &InFlight) -> Result<Next> {
        if let Some(reason) = self.held(flight).await? {
            return Ok(Next::Wait(reason));
        }
        let lease = match flight.reboot_lease {
            Some(id) if self.cluster.renew(id).await? => id,
            _ => {
                let id = self.cluster.grant_lease(self.fleet.reboot_ttl_seconds).await?;
                // Recorded before it is used, so that a restarted agent keeps the same place.
                self.state.phase(Phase::Switched).reboot_lease = Some(id);
                self.save()?;
                id
            }
        };
        *self.leases.reboot.lock().unwrap() = Some(lease);
        self.cluster.enqueue(&self.fleet.group, &self.node, &flight.commit, lease).await?;
        self.state.phase(Phase::Queued);
        self.record("queued", Some(flight.commit), format!("in the reboot queue of group {}", self.fleet.group))?;
        Ok(Next::Continue)
    }

    async fn wait_for_slot(&mut self, flight: &InFlight) -> Result<Next> {
        self.register("waiting for a reboot slot").await?;
        if let Some(reason) = self.held(flight).await? {
            // Out of the queue while held, so that nobody waits behind a node that cannot go.
            self.cluster.dequeue(&self.fleet.group, &self.node).await?;
            self.queued_since = None;
            self.state.phase(Phase::Switched);
            self.save()?;
            return Ok(Next::Wait(reason));
        }
        let since = *self.queued_since.get_or_insert_with(std::time::Instant::now);
        match self.cluster.holds(&self.fleet.group, &self.node).await? {
            Some(true) => {
                self.metrics.slot_wait.inc_by(since.elapsed().as_secs_f64());
                self.queued_since = None;
                self.state.phase(Phase::Holding);
                self.record(
                    "slot-acquired",
                    Some(flight.commit),
                    format!("holds a reboot slot of group {}", self.fleet.group),
                )?;
                Ok(Next::Continue)
            }
            Some(false) => Ok(Next::Wait("the reboot slots are taken".into())),
            None => {
                // The queue entry's lease expired (etcd was away longer than its TTL): queue again.
                self.state.phase(Phase::Switched).reboot_lease = None;
                self.save()?;
                Ok(Next::Continue)
            }
        }
    }

    fn hook_env(&self, flight: &InFlight, phase: &str) -> Vec<(&'static str, String)> {
        vec![
            ("OSDEPLOY_NODE", self.node.clone()),
            ("OSDEPLOY_COMMIT", flight.commit.to_string()),
            ("OSDEPLOY_PHASE", phase.to_owned()),
            ("OSDEPLOY_SYSROOT", self.sysroot.root().display().to_string()),
        ]
    }

    async fn drain(&mut self, flight: &InFlight) -> Result<Next> {
        self.register("draining").await?;
        let (dir, timeout, env) =
            (self.config_dir.join("drain.d"), self.fleet.hook_timeout(), self.hook_env(flight, "drain"));
        match blocking(move || hooks::run_dir(&dir, timeout, &env)).await {
            Ok(count) => {
                self.state.phase(Phase::Drained);
                self.record("drained", Some(flight.commit), format!("{count} drain hook(s) passed"))?;
                Ok(Next::Continue)
            }
            Err(e) => {
                // Never hold the fleet's slot while drain cannot finish: undo, leave the queue, retry later.
                let (dir, timeout) = (self.config_dir.join("undrain.d"), self.fleet.hook_timeout());
                let undo = self.hook_env(flight, "undrain");
                let _ = blocking(move || hooks::run_dir(&dir, timeout, &undo)).await;
                self.cluster.dequeue(&self.fleet.group, &self.node).await?;
                self.state.phase(Phase::Switched);
                self.record("drain-failed", Some(flight.commit), format!("{e}; left the reboot queue, will retry"))?;
                Ok(Next::Wait(e.to_string()))
            }
        }
    }

    async fn reboot(&mut self, flight: &InFlight, phase: Phase) -> Result<Next> {
        self.register("rebooting").await?;
        // Never down without a slot: the slot is confirmed right before the reboot (etcd out of
        // reach: an error, and the step is retried). A slot lost meanwhile (its lease expired
        // while etcd was away) means queueing again.
        if phase == Phase::Rebooting {
            match self.cluster.holds(&self.fleet.group, &self.node).await? {
                Some(true) => {}
                // Still queued but no longer among the holders (the group's slots were lowered).
                Some(false) => {
                    self.state.phase(Phase::Queued);
                    self.save()?;
                    return Ok(Next::Wait("no longer holds a reboot slot; waiting for one".into()));
                }
                None => {
                    self.state.phase(Phase::Switched).reboot_lease = None;
                    self.save()?;
                    return Ok(Next::Wait("the reboot slot was lost before the reboot; queueing again".into()));
                }
            }
        }
        let boots = State::load(&self.sysroot)?.boot_count;
        self.state.phase(phase).boots_before = Some(boots);
        let event = if phase == Phase::RebootingBack { "rebooting-back" } else { "rebooting" };
        self.record(event, Some(flight.commit), format!("running {}", self.fleet.reboot_command.join(" ")))?;
        let (command, env) = (self.fleet.reboot_command.clone(), self.hook_env(flight, "reboot"));
        blocking(move || hooks::reboot(&command, &env)).await?;
        // A real reboot ends this process; the next start judges the boot.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.fleet.reboot_timeout_seconds);
        while State::load(&self.sysroot)?.boot_count == boots {
            if tokio::time::Instant::now() >= deadline {
                // Judged next: no boot recorded, so the reboot command runs again.
                return Ok(Next::Wait(format!(
                    "the reboot command returned but the node did not reboot within {} s",
                    self.fleet.reboot_timeout_seconds
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Next::Continue)
    }

    /// After a reboot: which slot booted, and did the release pass its health checks?
    async fn judge(&mut self, flight: &InFlight) -> Result<Next> {
        let node_state = State::load(&self.sysroot)?;
        if Some(node_state.boot_count) == flight.boots_before {
            // The reboot command ran but no boot was recorded (the agent restarted before the
            // node went down, or the node did not go down): reboot again.
            return self.reboot(flight, flight.phase).await;
        }
        let booted = node_state.booted;
        let on_release = booted.is_some_and(|slot| Some(slot) == flight.slot)
            && booted.and_then(|slot| node_state.slots.get(slot).commit) == Some(flight.commit);
        self.register("judging").await?;
        let outcome = if !on_release {
            Outcome::RolledBack
        } else if flight.phase == Phase::RebootingBack {
            // Still on the release after the reboot back: the rollback did not take (the agent
            // stopped between its steps); again.
            return self.go_back(flight).await;
        } else {
            match node_state.slots.get(booted.expect("booted")).state {
                SlotState::Good => Outcome::Updated,
                SlotState::Trial => {
                    let (sysroot, dir, config) = (self.sysroot.clone(), self.config_dir.clone(), self.config.clone());
                    match blocking(move || ops::mark_good(&sysroot, &dir, &config).map_err(FleetError::from)).await {
                        Ok(report) if report.marked => Outcome::Updated,
                        Ok(_) => Outcome::HealthFailed,
                        // The mark-good unit is at it: look again shortly.
                        Err(FleetError::Deploy(e)) if matches!(*e, DeployError::Locked { .. }) => {
                            return Ok(Next::Wait("mark-good is running".into()));
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => Outcome::HealthFailed,
            }
        };
        let message = format!("booted slot {}: {outcome}", booted.map_or("?".into(), |s| s.to_string()));
        if outcome == Outcome::HealthFailed {
            // Told at once, so that the fleet halts before other nodes reboot into it.
            self.cluster.report(&flight.commit, &self.node, &self.report_of(flight, outcome, &message)).await?;
            self.halt_if_failing(&flight.commit).await?;
            self.record(
                "health-failed",
                Some(flight.commit),
                format!("{message}; going back to the previous release"),
            )?;
            return self.go_back(flight).await;
        }
        self.state.phase(Phase::Judged).outcome = Some(outcome);
        if outcome.is_failure() && !self.state.refused.contains(&flight.commit) {
            self.state.refused.push(flight.commit);
        }
        self.record("booted", Some(flight.commit), message)?;
        Ok(Next::Continue)
    }

    /// The release failed here: never again on this node; the previous slot boots next (the
    /// trial is not left to use up its boots), and the node reboots into it.
    async fn go_back(&mut self, flight: &InFlight) -> Result<Next> {
        if !self.state.refused.contains(&flight.commit) {
            self.state.refused.push(flight.commit);
        }
        self.state.phase(Phase::RebootingBack);
        self.save()?;
        let sysroot = self.sysroot.clone();
        let rollback = blocking(move || ops::rollback(&sysroot).map_err(FleetError::from)).await?;
        self.record("rolling-back", Some(flight.commit), format!("slot {} boots next", rollback.to))?;
        self.reboot(flight, Phase::RebootingBack).await
    }

    fn report_of(&self, flight: &InFlight, outcome: Outcome, message: &str) -> Report {
        Report { outcome, wave: flight.wave, at: now(), message: message.to_owned() }
    }

    async fn report(&mut self, flight: &InFlight) -> Result<Next> {
        let outcome = flight.outcome.expect("a judged update has an outcome");
        self.cluster.report(&flight.commit, &self.node, &self.report_of(flight, outcome, "")).await?;
        self.metrics.updates.get_or_create(&vec![("outcome", outcome.to_string())]).inc();
        if outcome.is_failure() {
            self.halt_if_failing(&flight.commit).await?;
        }
        self.state.phase(Phase::Reported);
        self.record("reported", Some(flight.commit), format!("reported {outcome}"))?;
        Ok(Next::Continue)
    }

    /// Sets the fleet's halt switch when `commit`'s failures reached its policy's threshold.
    async fn halt_if_failing(&mut self, commit: &CommitId) -> Result<()> {
        let view = self.cluster.rollout(commit).await?;
        let threshold = self.policy_threshold(commit).await;
        if view.failures() >= threshold {
            let reason = format!("{} node(s) failed on {commit}, the threshold is {threshold}", view.failures());
            if self.cluster.halt(&Mark { commit: *commit, reason: reason.clone(), at: now() }).await? {
                self.record("halted", Some(*commit), format!("halted the fleet's rollouts: {reason}"))?;
            }
        }
        Ok(())
    }

    /// The failure threshold of `commit`'s policy (1 when it cannot be read now).
    async fn policy_threshold(&self, commit: &CommitId) -> u32 {
        let Ok(target) = PullTarget::followed(&self.sysroot) else { return 1 };
        self.policy(&target, commit).await.map_or(1, |p| p.spec.failure_threshold)
    }

    async fn undrain(&mut self, flight: &InFlight) -> Result<Next> {
        let (dir, timeout, env) =
            (self.config_dir.join("undrain.d"), self.fleet.hook_timeout(), self.hook_env(flight, "undrain"));
        blocking(move || hooks::run_dir(&dir, timeout, &env)).await?;
        self.state.phase(Phase::Undrained);
        self.record("undrained", Some(flight.commit), "undrain hooks passed".into())?;
        Ok(Next::Continue)
    }

    async fn release(&mut self, flight: &InFlight) -> Result<Next> {
        // Recorded before the slot is given back, so that in the timeline a slot is never taken
        // before its holder's `releasing`.
        self.record(
            "releasing",
            Some(flight.commit),
            format!("leaving the reboot queue of group {}", self.fleet.group),
        )?;
        self.cluster.dequeue(&self.fleet.group, &self.node).await?;
        if let Some(id) = flight.reboot_lease {
            self.cluster.revoke(id).await?;
        }
        *self.leases.reboot.lock().unwrap() = None;
        self.state.in_flight = None;
        self.record(
            "slot-released",
            Some(flight.commit),
            format!("left the reboot queue of group {}", self.fleet.group),
        )?;
        self.register("idle").await?;
        Ok(Next::Continue)
    }
}

/// A phase as the metrics and logs name it.
fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Switching => "switching",
        Phase::Switched => "switched",
        Phase::Queued => "queued",
        Phase::Holding => "holding",
        Phase::Drained => "drained",
        Phase::Rebooting => "rebooting",
        Phase::RebootingBack => "rebooting-back",
        Phase::Judged => "judged",
        Phase::Reported => "reported",
        Phase::Undrained => "undrained",
    }
}

/// Renews a lease, trying a few times at once when a request fails (a dead etcd member answers
/// some of them); false only when etcd says the lease has expired.
async fn renew(cluster: &Cluster, id: i64) -> bool {
    for attempt in 1..=3 {
        match cluster.renew(id).await {
            Ok(alive) => return alive,
            Err(e) if attempt == 3 => tracing::warn!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    true
}

/// Runs blocking work (the store, the deployment library, hooks) on a thread of its own, so
/// that the leases are renewed meanwhile.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (send, receive) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = send.send(work());
    });
    receive.await.unwrap_or_else(|_| Err(FleetError::Panicked))
}

fn random_bytes() -> [u8; 8] {
    let mut bytes = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    bytes
}
