//! Bootloader backends: how a node is told which slot (`a` or `b`) to boot, once on trial or from now on.
//!
//! # Boot semantics (docs/deployments.md)
//!
//! Every backend stores the same small model, in its own format:
//!
//! - a **default** slot: the known-good deployment, booted whenever nothing else is armed;
//! - optionally a **trial**: a slot to boot instead of the default while its **tries left** counter is above zero.
//!   The boot firmware (the GRUB script snippet, systemd-boot, the U-Boot script, or [`Bootloader::boot`] for the
//!   plain state file) takes one try off at every boot of the trial slot. Once the counter is zero the default boots
//!   again by itself: after `N` failed attempts the node is back on the known-good slot without help from userspace.
//!   An exhausted trial stays recorded (with zero tries left) so that `boot-check` can report the failed attempt,
//!   until the next [`Bootloader::arm_trial`], [`Bootloader::mark_good`] or [`Bootloader::set_next`].
//!
//! The operations, as the CLI uses them:
//!
//! - `switch` → [`Bootloader::arm_trial`]`(standby, tries)`: boot `standby` next, at most `tries` times
//!   ([`DEFAULT_TRIES`] unless configured, at most [`MAX_TRIES`]).
//! - `boot-check` → [`Bootloader::state`]: is a trial running, how many tries are left, which slot boots next. The
//!   booted slot itself comes from the kernel command line (`osdeploy.slot=a|b`, which every snippet and entry
//!   here passes), or from [`BootState::booted`] for the state file, or from a test option.
//! - `mark-good` → [`Bootloader::mark_good`]`(booted)`: the booted slot becomes the default.
//! - `rollback` → [`Bootloader::set_next`]`(other)`: the other slot boots from the next boot on, no trial.
//!
//! Callers serialise mutations (the CLI holds the sysroot lock). Every file write is atomic and durable (temporary
//! file, fsync, rename, fsync of the directory), so a crash leaves the old or the new state; systemd-boot, which
//! changes up to two entry files, orders its steps so that every intermediate state still boots a sensible slot.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod file;
pub mod grub;
pub mod systemd_boot;
pub mod uboot;

pub use file::StateFile;
pub use grub::GrubEnv;
pub use systemd_boot::{BlsEntry, SystemdBoot};
pub use uboot::UBootEnv;

/// How many boots a trial gets when the configuration does not say otherwise.
pub const DEFAULT_TRIES: u32 = 3;

/// The largest number of tries a trial may get. One decimal digit keeps the counters simple for the boot scripts:
/// GRUB script has no arithmetic and U-Boot's `setexpr` prints hexadecimal, so both snippets count down by string
/// comparison through the list `1 … 9`.
pub const MAX_TRIES: u32 = 9;

/// One of the two deployment slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot `a`.
    A,
    /// Slot `b`.
    B,
}

impl Slot {
    /// Both slots, `a` first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot's name: `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slot name that is neither `a` nor `b`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid slot {0:?}: expected `a` or `b`")]
pub struct ParseSlotError(pub String);

impl FromStr for Slot {
    type Err = ParseSlotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            _ => Err(ParseSlotError(s.to_owned())),
        }
    }
}

/// A slot armed to boot instead of the default a limited number of times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The slot on trial.
    pub slot: Slot,
    /// How many more boots it gets; zero means the trial is used up (failed) and the default boots.
    pub tries_left: u32,
}

impl Trial {
    /// Whether the trial slot still boots next.
    pub fn pending(&self) -> bool {
        self.tries_left > 0
    }
}

/// What a bootloader is set up to do, as read back from its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootState {
    /// The known-good slot: what boots when no trial is pending.
    pub default: Slot,
    /// The trial, if one is armed or was used up since the last decision.
    pub trial: Option<Trial>,
    /// The slot the next boot starts.
    pub next: Slot,
    /// The slot the boot firmware last recorded booting, for backends that record it (the state file). `None` where
    /// the booted slot is told by the kernel command line (`osdeploy.slot=`) instead.
    pub booted: Option<Slot>,
}

impl BootState {
    /// The number of tries the trial has left (0 without a trial).
    pub fn tries_left(&self) -> u32 {
        self.trial.map_or(0, |t| t.tries_left)
    }

    /// Whether a trial is armed and still has tries left.
    pub fn trial_pending(&self) -> bool {
        self.trial.is_some_and(|t| t.pending())
    }
}

/// Everything that can go wrong in a bootloader backend. Every message names the file or directory concerned.
#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    /// A filesystem operation failed.
    // The OS error is in the message, not a `#[source]`, as in the store's errors: a chain printer would say it twice.
    #[error("{path}: {error}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A bootloader file is malformed (wrong size, bad header or checksum, garbage).
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The variables do not fit into a fixed-size environment.
    #[error("{path}: the variables need {needed} bytes but the environment holds only {capacity}")]
    TooLarge {
        /// The environment file.
        path: PathBuf,
        /// Bytes the variables need.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// A trial was asked for with a number of tries out of range.
    #[error("{path}: cannot arm a trial with {tries} tries: it must be between 1 and {max}", max = MAX_TRIES)]
    InvalidTries {
        /// The bootloader configuration the trial was for.
        path: PathBuf,
        /// The number requested.
        tries: u32,
    },
    /// A systemd-boot entry a slot needs does not exist.
    #[error("{path}: no boot entry for slot {slot} (osdeploy-{slot}.conf); write one first")]
    MissingEntry {
        /// The entries directory.
        path: PathBuf,
        /// The slot without entry.
        slot: Slot,
    },
    /// A systemd-boot entries directory holds no osdeploy entry at all.
    #[error("{path}: no osdeploy boot entries (osdeploy-a.conf, osdeploy-b.conf); write them first")]
    NoEntries {
        /// The entries directory.
        path: PathBuf,
    },
    /// A value to store cannot be represented in the format.
    #[error("{path}: cannot store {what}: {reason}")]
    Unrepresentable {
        /// The file.
        path: PathBuf,
        /// What was to be stored.
        what: String,
        /// Why it cannot be.
        reason: String,
    },
}

/// The result type of this module.
pub type Result<T, E = BootloaderError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    /// Converts the error into [`BootloaderError::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|error| BootloaderError::Io { path: path.to_owned(), error })
    }
}

/// A bootloader backend: reads and changes which slot boots.
///
/// Implementations hold only paths; each call reads the current configuration, changes it and writes it back
/// atomically.
pub trait Bootloader {
    /// The backend's name, as the configuration spells it (`file`, `grub`, `systemd-boot`, `u-boot`).
    fn name(&self) -> &'static str;

    /// The file or directory the backend keeps its configuration in.
    fn location(&self) -> &Path;

    /// Reads what the bootloader will do.
    fn state(&self) -> Result<BootState>;

    /// Arms `slot` for the next boot, once per try, `tries` times at most (1 to [`MAX_TRIES`]); the default boots again
    /// once the tries are used up. Replaces any earlier trial. Arming the default slot itself just clears the trial,
    /// since the default boots anyway and there is nothing to fall back to.
    fn arm_trial(&self, slot: Slot, tries: u32) -> Result<()>;

    /// Makes `slot` the default (known-good) slot. A trial of `slot`, and a used-up trial of either slot, is cleared; a
    /// trial of the other slot that still has tries left stays armed (a `switch` staged after the boot keeps its
    /// reboot).
    fn mark_good(&self, slot: Slot) -> Result<()>;

    /// Makes `slot` boot from the next boot on (rollback): it becomes the default and any trial is cancelled.
    fn set_next(&self, slot: Slot) -> Result<()>;

    /// Plays the boot firmware at a simulated reboot: picks the trial slot while it has tries left, taking one off,
    /// else the default, exactly as the real bootloader does with this backend's configuration; persists what the
    /// firmware would persist and returns the slot booted. For tests and containers, where nothing else boots.
    fn boot(&self) -> Result<Slot>;
}

/// Which backend to use and where its configuration lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendConfig {
    /// A JSON state file ([`StateFile`]).
    File(PathBuf),
    /// A GRUB environment block, e.g. `/boot/grub/grubenv` ([`GrubEnv`]).
    Grub(PathBuf),
    /// The root of the ESP or XBOOTLDR partition holding `loader/` ([`SystemdBoot`]).
    SystemdBoot(PathBuf),
    /// A U-Boot environment kept in a regular file of `size` bytes ([`UBootEnv`]).
    UBoot {
        /// The environment file.
        path: PathBuf,
        /// The environment size (`CONFIG_ENV_SIZE`, the third column of `fw_env.config`).
        size: usize,
    },
}

impl BackendConfig {
    /// Opens the backend.
    pub fn open(&self) -> Result<Box<dyn Bootloader>> {
        Ok(match self {
            BackendConfig::File(path) => Box::new(StateFile::new(path)),
            BackendConfig::Grub(path) => Box::new(GrubEnv::new(path)),
            BackendConfig::SystemdBoot(path) => Box::new(SystemdBoot::new(path)),
            BackendConfig::UBoot { path, size } => Box::new(UBootEnv::new(path, *size)?),
        })
    }
}

/// The backend-independent model: default slot and trial, with the transitions of the [`Bootloader`] operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Core {
    pub(crate) default: Slot,
    pub(crate) trial: Option<Trial>,
}

impl Core {
    /// A fresh installation: slot `a` is the default, no trial.
    pub(crate) const FRESH: Core = Core { default: Slot::A, trial: None };

    /// The slot the next boot picks.
    pub(crate) fn next(&self) -> Slot {
        match self.trial {
            Some(t) if t.pending() => t.slot,
            _ => self.default,
        }
    }

    /// The state as reported, with `booted` as recorded by the backend.
    pub(crate) fn state(&self, booted: Option<Slot>) -> BootState {
        BootState { default: self.default, trial: self.trial, next: self.next(), booted }
    }

    /// See [`Bootloader::arm_trial`] (the tries must be validated already).
    pub(crate) fn arm(self, slot: Slot, tries: u32) -> Core {
        if slot == self.default {
            Core { default: self.default, trial: None }
        } else {
            Core { default: self.default, trial: Some(Trial { slot, tries_left: tries }) }
        }
    }

    /// See [`Bootloader::mark_good`].
    pub(crate) fn good(self, slot: Slot) -> Core {
        let trial = self.trial.filter(|t| t.slot != slot && t.pending());
        Core { default: slot, trial }
    }

    /// See [`Bootloader::set_next`].
    pub(crate) fn rollback(self, slot: Slot) -> Core {
        Core { default: slot, trial: None }
    }

    /// See [`Bootloader::boot`]: the state after the boot, and the slot booted.
    pub(crate) fn boot(self) -> (Core, Slot) {
        match self.trial {
            Some(t) if t.pending() => {
                let trial = Trial { slot: t.slot, tries_left: t.tries_left - 1 };
                (Core { default: self.default, trial: Some(trial) }, t.slot)
            }
            _ => (self, self.default),
        }
    }
}

/// Checks the number of tries for a trial.
pub(crate) fn check_tries(tries: u32, path: &Path) -> Result<()> {
    if (1..=MAX_TRIES).contains(&tries) {
        Ok(())
    } else {
        Err(BootloaderError::InvalidTries { path: path.to_owned(), tries })
    }
}

/// The names of the variables the key/value backends (GRUB, U-Boot) store.
pub(crate) mod vars {
    /// The default slot.
    pub const DEFAULT: &str = "osdeploy_default";
    /// The trial slot (absent without trial).
    pub const TRIAL: &str = "osdeploy_trial";
    /// The trial's tries left (absent without trial).
    pub const TRIES: &str = "osdeploy_tries";
}

/// A bootloader whose state is a list of `key=value` variables that its boot script reads and
/// updates (GRUB environment block, U-Boot environment). The storage is all that differs between
/// them: the model and [`Bootloader`] are implemented once, here.
pub trait VarEnv {
    /// The backend's name.
    const NAME: &'static str;
    /// The file holding the variables.
    fn path(&self) -> &Path;
    /// Every variable, in order (empty if the file does not exist yet).
    fn read_vars(&self) -> Result<Vec<(String, String)>>;
    /// Replaces the variables, atomically.
    fn write_vars(&self, vars: &[(String, String)]) -> Result<()>;
}

fn update_vars(env: &impl VarEnv, change: impl FnOnce(Core) -> Core) -> Result<()> {
    let mut vars = env.read_vars()?;
    let core = change(core_from_vars(|name| get_var(&vars, name), env.path())?);
    apply_core(&mut vars, &core);
    env.write_vars(&vars)
}

impl<T: VarEnv> Bootloader for T {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn location(&self) -> &Path {
        self.path()
    }

    fn state(&self) -> Result<BootState> {
        let vars = self.read_vars()?;
        Ok(core_from_vars(|name| get_var(&vars, name), self.path())?.state(None))
    }

    fn arm_trial(&self, slot: Slot, tries: u32) -> Result<()> {
        check_tries(tries, self.path())?;
        update_vars(self, |core| core.arm(slot, tries))
    }

    fn mark_good(&self, slot: Slot) -> Result<()> {
        update_vars(self, |core| core.good(slot))
    }

    fn set_next(&self, slot: Slot) -> Result<()> {
        update_vars(self, |core| core.rollback(slot))
    }

    /// Runs the boot script's logic (GRUB_CFG_SNIPPET, UBOOT_SCRIPT_SNIPPET) on the variables,
    /// string for string as the script compares.
    fn boot(&self) -> Result<Slot> {
        let mut vars = self.read_vars()?;
        let (slot, left) =
            script_boot(get_var(&vars, vars::DEFAULT), get_var(&vars, vars::TRIAL), get_var(&vars, vars::TRIES));
        if let Some(left) = left {
            set_var(&mut vars, vars::TRIES, Some(left.to_string()));
            self.write_vars(&vars)?;
        }
        Ok(slot)
    }
}

/// Reads the model from key/value variables (`lookup` returns a variable's value). A missing default means a fresh
/// installation (slot `a`).
pub(crate) fn core_from_vars<'a>(lookup: impl Fn(&str) -> Option<&'a str>, path: &Path) -> Result<Core> {
    let corrupt = |reason: String| BootloaderError::Corrupt { path: path.to_owned(), reason };
    let slot = |name: &str| -> Result<Option<Slot>> {
        match lookup(name) {
            None | Some("") => Ok(None),
            Some(value) => {
                value.parse().map(Some).map_err(|e: ParseSlotError| corrupt(format!("variable {name}: {e}")))
            }
        }
    };
    let default = slot(vars::DEFAULT)?.unwrap_or(Slot::A);
    let trial = match slot(vars::TRIAL)? {
        None => None,
        Some(trial_slot) => {
            let raw = lookup(vars::TRIES).unwrap_or("");
            let tries_left = parse_counter(raw).ok_or_else(|| {
                corrupt(format!("variable {} is {raw:?}, expected a number of tries from 0 to 9", vars::TRIES))
            })?;
            Some(Trial { slot: trial_slot, tries_left })
        }
    };
    Ok(Core { default, trial })
}

/// Parses a tries counter as the boot scripts compare it: one decimal digit.
fn parse_counter(raw: &str) -> Option<u32> {
    match raw.as_bytes() {
        [digit @ b'0'..=b'9'] => Some(u32::from(digit - b'0')),
        _ => None,
    }
}

/// What the GRUB and U-Boot script snippets do at boot, given the raw variables: the slot booted and, when a trial
/// try was taken, the new value of `osdeploy_tries` (which the script saves before booting). Strings are compared
/// exactly as the scripts compare them, so this is also the reference the snippets are written against.
pub(crate) fn script_boot(default: Option<&str>, trial: Option<&str>, tries: Option<&str>) -> (Slot, Option<u32>) {
    let mut slot = default.unwrap_or("");
    let mut left = None;
    if let Some(trial @ ("a" | "b")) = trial {
        left = (1..=9u32).find(|n| tries == Some(n.to_string().as_str())).map(|n| n - 1);
        if left.is_some() {
            slot = trial;
        }
    }
    (if slot == "b" { Slot::B } else { Slot::A }, left)
}

/// Looks a variable up in an ordered list of variables.
pub(crate) fn get_var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Sets (in place, or appended) or removes (`None`) a variable in an ordered list of variables.
pub(crate) fn set_var(env: &mut Vec<(String, String)>, name: &str, value: Option<String>) {
    match value {
        Some(value) => match env.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value,
            None => env.push((name.to_owned(), value)),
        },
        None => env.retain(|(n, _)| n != name),
    }
}

/// Stores `core` in the variables, leaving the others alone.
pub(crate) fn apply_core(env: &mut Vec<(String, String)>, core: &Core) {
    set_var(env, vars::DEFAULT, Some(core.default.to_string()));
    set_var(env, vars::TRIAL, core.trial.map(|t| t.slot.to_string()));
    set_var(env, vars::TRIES, core.trial.map(|t| t.tries_left.to_string()));
}

/// Replaces `path` atomically and durably with `bytes`: a temporary file next to it, synced, renamed over it, then
/// synced again with its directory ([`sync_renamed`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    osdeploy_store::fsutil::create_dir_all_durably(parent).map_err(|e| match e {
        osdeploy_store::StoreError::Io { path, error } => BootloaderError::Io { path, error },
        other => BootloaderError::Io { path: parent.to_owned(), error: std::io::Error::other(other.to_string()) },
    })?;
    let tmp = parent.join(osdeploy_store::fsutil::unique_tmp_name("write"));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .at(&tmp)
        .and_then(|()| std::fs::rename(&tmp, path).at(path));
    if written.is_err() {
        // What failed to take the name's place is not left beside it (on an ESP, space is short).
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_renamed(path)
}

/// Makes a rename to `path` durable: syncs `path` itself, then its directory. On vfat (an ESP) a rename writes the new
/// directory entry without the file's first cluster and size, which only the renamed file's (or directory's) own
/// write-back fills in: with the directory synced alone, a power cut left the name on an empty file (found by
/// tests/power_cuts.rs).
pub(crate) fn sync_renamed(path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    for synced in [path, parent] {
        std::fs::File::open(synced).and_then(|f| f.sync_all()).at(synced)?;
    }
    Ok(())
}

/// Reads a whole file; `Ok(None)` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(BootloaderError::Io { path: path.to_owned(), error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_cannot_take_its_name_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let taken = dir.path().join("grubenv");
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("inside"), b"x").unwrap();
        let err = write_atomic(&taken, b"new").unwrap_err();
        assert!(err.to_string().contains("grubenv"), "the error names the path: {err}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["grubenv"], "no temporary file is left");
    }

    #[test]
    fn slot_basics() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.other(), Slot::A);
        assert_eq!(Slot::A.to_string(), "a");
        assert_eq!("b".parse::<Slot>().unwrap(), Slot::B);
        let err = "c".parse::<Slot>().unwrap_err();
        assert!(err.to_string().contains("\"c\""), "{err}");
        assert!("A".parse::<Slot>().is_err());
    }

    #[test]
    fn core_cycle_falls_back_after_tries() {
        let mut core = Core::FRESH.arm(Slot::B, 2);
        assert_eq!(core.next(), Slot::B);
        let mut booted = Vec::new();
        for _ in 0..4 {
            let (next, slot) = core.boot();
            core = next;
            booted.push(slot);
        }
        assert_eq!(booted, [Slot::B, Slot::B, Slot::A, Slot::A]);
        assert_eq!(core.trial, Some(Trial { slot: Slot::B, tries_left: 0 }));
        assert_eq!(core.good(Slot::A), Core::FRESH);
    }

    #[test]
    fn core_mark_good_keeps_a_pending_trial_of_the_other_slot() {
        let core = Core::FRESH.arm(Slot::B, 3);
        assert_eq!(core.good(Slot::A), core);
        assert_eq!(core.good(Slot::B), Core { default: Slot::B, trial: None });
        assert_eq!(core.rollback(Slot::A), Core::FRESH);
        assert_eq!(core.arm(Slot::A, 3), Core::FRESH);
    }

    #[test]
    fn tries_are_checked() {
        let p = Path::new("/x");
        assert!(check_tries(1, p).is_ok());
        assert!(check_tries(MAX_TRIES, p).is_ok());
        let err = check_tries(0, p).unwrap_err().to_string();
        assert!(err.starts_with("/x:"), "{err}");
        assert!(check_tries(MAX_TRIES + 1, p).is_err());
    }

    #[test]
    fn script_boot_matches_the_model() {
        assert_eq!(script_boot(Some("a"), Some("b"), Some("3")), (Slot::B, Some(2)));
        assert_eq!(script_boot(Some("a"), Some("b"), Some("1")), (Slot::B, Some(0)));
        assert_eq!(script_boot(Some("a"), Some("b"), Some("0")), (Slot::A, None));
        assert_eq!(script_boot(Some("b"), None, None), (Slot::B, None));
        assert_eq!(script_boot(None, Some("c"), Some("3")), (Slot::A, None));
        assert_eq!(script_boot(Some("junk"), None, None), (Slot::A, None));
    }

    #[test]
    fn counters_parse() {
        assert_eq!(parse_counter("3"), Some(3));
        assert_eq!(parse_counter("0"), Some(0));
        assert_eq!(parse_counter("03"), None);
        assert_eq!(parse_counter("10"), None);
        assert_eq!(parse_counter("0x2"), None);
        assert_eq!(parse_counter(""), None);
        assert_eq!(parse_counter("-1"), None);
        assert_eq!(parse_counter("x"), None);
    }
}
