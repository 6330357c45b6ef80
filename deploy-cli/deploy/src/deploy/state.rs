//! The sysroot state file, `SYSROOT/osdeploy/state`: which slot holds which commit, in which state, which slot
//! booted, which branch the sysroot follows, and a bounded history. JSON (schema in docs/deployments.md), replaced
//! atomically and durably at every change.

use std::fmt;
use std::path::{Path, PathBuf};

use osdeploy_store::{CommitId, RefName, StoreError};
use serde::{Deserialize, Serialize};

use super::{DeployError, IoContext, Result, Sysroot};
use crate::bootloader::{BackendConfig, Slot, uboot};

/// The state file format this build reads and writes.
pub const STATE_FORMAT: u32 = 1;

/// How many history entries the state file keeps (the oldest are dropped).
pub const HISTORY_LIMIT: usize = 200;

/// Which bootloader backend a sysroot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum BootloaderKind {
    /// The JSON state file, for tests and containers: `SYSROOT/osdeploy/bootloader.json`.
    File,
    /// The GRUB environment block `SYSROOT/boot/grub/grubenv`.
    Grub,
    /// systemd-boot entries in `SYSROOT/boot/loader/entries/` (`SYSROOT/boot` being the ESP or XBOOTLDR).
    SystemdBoot,
    /// The U-Boot environment file `SYSROOT/boot/uboot.env` (16 KiB, `CONFIG_ENV_SIZE` 0x4000).
    Uboot,
}

impl BootloaderKind {
    /// The name as `--bootloader` and the state file spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            BootloaderKind::File => "file",
            BootloaderKind::Grub => "grub",
            BootloaderKind::SystemdBoot => "systemd-boot",
            BootloaderKind::Uboot => "uboot",
        }
    }

    /// Where this backend keeps its configuration in `sysroot`.
    pub fn backend(self, sysroot: &Sysroot) -> BackendConfig {
        let boot = sysroot.boot_dir();
        match self {
            BootloaderKind::File => BackendConfig::File(sysroot.dir().join("bootloader.json")),
            BootloaderKind::Grub => BackendConfig::Grub(boot.join("grub/grubenv")),
            BootloaderKind::SystemdBoot => BackendConfig::SystemdBoot(boot),
            BootloaderKind::Uboot => {
                BackendConfig::UBoot { path: boot.join("uboot.env"), size: uboot::DEFAULT_ENV_SIZE }
            }
        }
    }
}

impl fmt::Display for BootloaderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a slot holds, as far as deployments are concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Nothing deployed (or a switch into it is under way).
    #[default]
    Empty,
    /// Marked good: health checks passed on it.
    Good,
    /// Deployed and armed to boot on trial, not yet marked good.
    Trial,
    /// Unusable: its checkout failed, or its trial failed or was rolled back.
    Bad,
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotState::Empty => "empty",
            SlotState::Good => "good",
            SlotState::Trial => "trial",
            SlotState::Bad => "bad",
        })
    }
}

/// One slot's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// Its state.
    pub state: SlotState,
    /// The commit checked out into it, if any.
    pub commit: Option<CommitId>,
    /// That commit's release version, if any.
    pub version: Option<String>,
    /// Boots of this slot counted by `boot-check` since it was deployed while on trial.
    pub boot_attempts: u32,
    /// When it was deployed (seconds since the epoch).
    pub deployed_at: Option<i64>,
    /// /etc paths (relative to /etc) changed both locally and by the release at its switch; the local version was
    /// kept.
    pub etc_conflicts: Vec<String>,
    /// Why the slot is bad, when it is.
    pub reason: Option<String>,
}

/// Both slots' records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// Slot `a`.
    pub a: SlotRecord,
    /// Slot `b`.
    pub b: SlotRecord,
}

impl Slots {
    /// The record of `slot`.
    pub fn get(&self, slot: Slot) -> &SlotRecord {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// The record of `slot`, to change.
    pub fn get_mut(&mut self, slot: Slot) -> &mut SlotRecord {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }
}

/// The branch a sysroot follows: `pull` without arguments pulls it, `switch` without argument deploys it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Follows {
    /// The remote.
    pub remote: String,
    /// The branch on the remote.
    pub branch: RefName,
}

impl Follows {
    /// The local ref a pull of it writes, `REMOTE/BRANCH`.
    pub fn local_ref(&self) -> Result<RefName, StoreError> {
        RefName::remote(&self.remote, &self.branch)
    }
}

/// `REMOTE/BRANCH`, for people.
impl fmt::Display for Follows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.remote, self.branch)
    }
}

/// One history entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When (seconds since the epoch).
    pub time: i64,
    /// What happened: `init`, `switch`, `switch-failed`, `boot`, `trial-failed`, `mark-good`, `mark-good-refused`,
    /// `rollback`, `follow`.
    pub event: String,
    /// The slot concerned, if any.
    pub slot: Option<Slot>,
    /// The commit concerned, if any.
    pub commit: Option<CommitId>,
    /// A sentence for people.
    pub message: String,
}

/// The whole state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// The bootloader backend.
    pub bootloader: BootloaderKind,
    /// The branch followed, once a pull recorded it.
    pub follows: Option<Follows>,
    /// The slot `boot-check` last recorded as booted.
    pub booted: Option<Slot>,
    /// Boots `boot-check` has recorded (the fleet agent tells by it that its reboot happened).
    #[serde(default)]
    pub boot_count: u64,
    /// Both slots.
    pub slots: Slots,
    /// What happened, oldest first, at most [`HISTORY_LIMIT`] entries.
    pub history: Vec<HistoryEntry>,
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl State {
    /// The state of a new sysroot: both slots empty, nothing booted or followed.
    pub fn new(bootloader: BootloaderKind) -> State {
        State {
            format: STATE_FORMAT,
            bootloader,
            follows: None,
            booted: None,
            boot_count: 0,
            slots: Slots::default(),
            history: Vec::new(),
        }
    }

    /// Reads the state of `sysroot`.
    pub fn load(sysroot: &Sysroot) -> Result<State> {
        let path = sysroot.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DeployError::NotASysroot {
                    path: sysroot.root().to_owned(),
                    reason: format!("no state file {}", path.display()),
                });
            }
            Err(e) => return Err(e).at(&path),
        };
        State::parse(&bytes, &path)
    }

    /// Decodes a state file's bytes; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<State> {
        let corrupt = |reason: String| DeployError::StateCorrupt { path: path.to_owned(), reason };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let format = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
        if format != u64::from(STATE_FORMAT) {
            return Err(corrupt(format!("format {format} is not the supported format {STATE_FORMAT}")));
        }
        serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
    }

    /// Replaces the state file of `sysroot` atomically and durably.
    pub fn save(&self, sysroot: &Sysroot) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("the state serialises");
        bytes.push(b'\n');
        write_atomic(&sysroot.state_path(), &sysroot.tmp_dir(), &bytes)
    }

    /// Appends a history entry (dropping the oldest beyond [`HISTORY_LIMIT`]).
    pub fn log(&mut self, event: &str, slot: Option<Slot>, commit: Option<CommitId>, message: impl Into<String>) {
        self.history.push(HistoryEntry { time: now(), event: event.to_owned(), slot, commit, message: message.into() });
        if self.history.len() > HISTORY_LIMIT {
            let extra = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..extra);
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably, the temporary file in `tmp_dir`.
pub(crate) fn write_atomic(path: &Path, tmp_dir: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(tmp_dir).at(tmp_dir)?;
    osdeploy_store::fsutil::atomic_write(path, tmp_dir, bytes).map_err(|e| match e {
        osdeploy_store::StoreError::Io { path, error } => DeployError::Io { path, error },
        other => DeployError::Io { path: PathBuf::from(path), error: std::io::Error::other(other.to_string()) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let sysroot = Sysroot::new(dir.path());
        std::fs::create_dir_all(sysroot.dir()).unwrap();
        let err = State::load(&sysroot).unwrap_err().to_string();
        assert!(err.contains("not an osdeploy sysroot"), "{err}");
        let mut state = State::new(BootloaderKind::SystemdBoot);
        let commit = CommitId(osdeploy_store::ObjectId::of(b"release"));
        state.slots.b = SlotRecord { state: SlotState::Trial, commit: Some(commit), ..Default::default() };
        state.log("switch", Some(Slot::B), Some(commit), "switched");
        state.save(&sysroot).unwrap();
        assert_eq!(State::load(&sysroot).unwrap(), state);
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(sysroot.state_path()).unwrap()).unwrap();
        assert_eq!(json["bootloader"], "systemd-boot");
        assert_eq!(json["slots"]["b"]["state"], "trial");
        assert_eq!(json["slots"]["a"]["state"], "empty");
        assert_eq!(json["history"][0]["slot"], "b");
        assert_eq!(json["slots"]["b"]["commit"], commit.to_string());
        // A damaged commit id is an error naming the state file, never a silently missing commit (which would skip
        // the /etc merge of the next switch).
        let damaged = std::fs::read_to_string(sysroot.state_path()).unwrap().replacen(&commit.to_string(), "c0ffee", 1);
        std::fs::write(sysroot.state_path(), damaged).unwrap();
        let err = State::load(&sysroot).unwrap_err().to_string();
        assert!(
            err.contains(&sysroot.state_path().display().to_string()) && err.contains("\"c0ffee\" is not an object id"),
            "{err}"
        );
        std::fs::write(sysroot.state_path(), b"{\"format\": 7}").unwrap();
        let err = State::load(&sysroot).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("format 7"), "{err}");
    }

    #[test]
    fn history_is_bounded() {
        let mut state = State::new(BootloaderKind::File);
        for i in 0..HISTORY_LIMIT + 5 {
            state.log("boot", None, None, format!("{i}"));
        }
        assert_eq!(state.history.len(), HISTORY_LIMIT);
        assert_eq!(state.history[0].message, "5");
    }
}
