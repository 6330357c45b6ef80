//! The agent's state file, `SYSROOT/osdeploy/agent.json`: the update in flight and the step it
//! reached, written atomically before and after each step, so that an agent killed (or a node
//! whose power is cut) at any point resumes where it stopped. Also the commits this node must not
//! take again, and a bounded timeline of what the agent did (the fleet test reads it).

use std::path::PathBuf;

use osdeploy_deploy::bootloader::Slot;
use osdeploy_deploy::deploy::Sysroot;
use osdeploy_store::CommitId;
use osdeploy_store::fsutil::atomic_write;
use serde::{Deserialize, Serialize};

use crate::cluster::Outcome;
use crate::policy::Wave;
use crate::{FleetError, Result};

/// The format this build reads and writes.
pub const AGENT_STATE_FORMAT: u32 = 1;

/// Timeline entries kept.
pub const TIMELINE_LIMIT: usize = 200;

/// Where an update stands. Each phase says what was done last; the agent does the next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The gate said go; the switch into the standby slot is under way (repeated if interrupted).
    Switching,
    /// Switched: the new release boots next, on trial. Next: join the reboot queue.
    Switched,
    /// In the reboot queue under `reboot_lease`. Next: wait for a slot and the maintenance window.
    Queued,
    /// Holds a reboot slot. Next: drain hooks.
    Holding,
    /// Drained. Next: the reboot command.
    Drained,
    /// The reboot command ran after `boots_before` boots. Next: notice the boot.
    Rebooting,
    /// The health checks failed on the new release; rebooting into the previous one.
    RebootingBack,
    /// Booted and judged (`outcome`). Next: report it.
    Judged,
    /// Reported. Next: undrain hooks.
    Reported,
    /// Undrained. Next: leave the reboot queue.
    Undrained,
}

/// The update in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The commit being taken.
    pub commit: CommitId,
    /// The node's wave for it.
    pub wave: Wave,
    /// The slot it goes into.
    pub slot: Option<Slot>,
    /// The step reached.
    pub phase: Phase,
    /// The lease of the node's place in the reboot queue.
    pub reboot_lease: Option<i64>,
    /// `boot-check`'s boot count when the reboot command ran.
    pub boots_before: Option<u64>,
    /// How the update went, once known.
    pub outcome: Option<Outcome>,
}

/// One thing the agent did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// What: `taking`, `switched`, `queued`, `slot-acquired`, `drained`, `drain-failed`,
    /// `rebooting`, `health-failed`, `rolling-back`, `rebooting-back`, `booted`, `halted`,
    /// `reported`, `undrained`, `releasing`, `slot-released`, `refused`.
    pub event: String,
    /// The commit concerned.
    pub commit: Option<CommitId>,
    /// Details.
    pub message: String,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// [`AGENT_STATE_FORMAT`].
    pub format: u32,
    /// The update in flight.
    pub in_flight: Option<InFlight>,
    /// Commits this node went back from or an operator aborted: never taken again.
    pub refused: Vec<CommitId>,
    /// What the agent did, oldest first, at most [`TIMELINE_LIMIT`] entries.
    pub timeline: Vec<Event>,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState { format: AGENT_STATE_FORMAT, in_flight: None, refused: Vec::new(), timeline: Vec::new() }
    }
}

/// `SYSROOT/osdeploy/agent.json`.
pub fn path(sysroot: &Sysroot) -> PathBuf {
    sysroot.dir().join("agent.json")
}

impl AgentState {
    /// Reads the state (the default when the agent never ran).
    pub fn load(sysroot: &Sysroot) -> Result<AgentState> {
        let path = path(sysroot);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AgentState::default()),
            Err(error) => return Err(FleetError::Io { path, error }),
        };
        let state: AgentState = serde_json::from_slice(&bytes)
            .map_err(|e| FleetError::StateCorrupt { path: path.clone(), reason: e.to_string() })?;
        if state.format != AGENT_STATE_FORMAT {
            let reason = format!("format {} is not the supported format {AGENT_STATE_FORMAT}", state.format);
            return Err(FleetError::StateCorrupt { path, reason });
        }
        Ok(state)
    }

    /// Replaces the file atomically and durably.
    pub fn save(&self, sysroot: &Sysroot) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("the agent state serialises");
        bytes.push(b'\n');
        let tmp = sysroot.tmp_dir();
        std::fs::create_dir_all(&tmp).map_err(|error| FleetError::Io { path: tmp.clone(), error })?;
        atomic_write(&path(sysroot), &tmp, &bytes)?;
        Ok(())
    }

    /// Appends to the timeline (dropping the oldest beyond [`TIMELINE_LIMIT`]).
    pub fn record(&mut self, event: &str, commit: Option<CommitId>, message: impl Into<String>) {
        let at_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.timeline.push(Event { at_ms, event: event.into(), commit, message: message.into() });
        let extra = self.timeline.len().saturating_sub(TIMELINE_LIMIT);
        self.timeline.drain(..extra);
    }

    /// Sets the phase of the update in flight (there must be one).
    pub fn phase(&mut self, phase: Phase) -> &mut InFlight {
        let in_flight = self.in_flight.as_mut().expect("an update is in flight");
        in_flight.phase = phase;
        in_flight
    }
}
