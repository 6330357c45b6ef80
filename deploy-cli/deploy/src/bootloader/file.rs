//! The plain state-file backend, for tests and containers: no firmware reads it, [`Bootloader::boot`] plays the
//! bootloader's part at a simulated reboot.
//!
//! The file is JSON:
//!
//! ```json
//! {"format": 1, "default": "a", "trial": {"slot": "b", "tries_left": 2}, "booted": "b"}
//! ```
//!
//! `trial` and `booted` may be `null`. A missing file is a fresh installation: slot `a` is the default, no trial.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    BootState, Bootloader, BootloaderError, Core, Result, Slot, Trial, check_tries, read_optional, write_atomic,
};

/// The file format version this build reads and writes.
const FORMAT: u32 = 1;

/// The on-disk form.
#[derive(Serialize, Deserialize)]
struct Stored {
    format: u32,
    default: Slot,
    trial: Option<Trial>,
    booted: Option<Slot>,
}

/// A JSON state file standing in for a bootloader.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// A backend keeping its state in `path` (created at the first change).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateFile { path: path.into() }
    }

    /// Reads the model and the recorded booted slot.
    fn load(&self) -> Result<(Core, Option<Slot>)> {
        let Some(bytes) = read_optional(&self.path)? else {
            return Ok((Core::FRESH, None));
        };
        let corrupt = |reason: String| BootloaderError::Corrupt { path: self.path.clone(), reason };
        let stored: Stored =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not an osdeploy boot state file: {e}")))?;
        if stored.format != FORMAT {
            return Err(corrupt(format!("format {} is not the supported format {FORMAT}", stored.format)));
        }
        if let Some(trial) = stored.trial {
            if trial.slot == stored.default {
                return Err(corrupt(format!("the trial slot {} is also the default", trial.slot)));
            }
            if trial.tries_left > super::MAX_TRIES {
                return Err(corrupt(format!(
                    "{} tries left is more than the maximum {}",
                    trial.tries_left,
                    super::MAX_TRIES
                )));
            }
        }
        Ok((Core { default: stored.default, trial: stored.trial }, stored.booted))
    }

    /// Writes the model and the booted slot.
    fn store(&self, core: Core, booted: Option<Slot>) -> Result<()> {
        let stored = Stored { format: FORMAT, default: core.default, trial: core.trial, booted };
        let mut bytes = serde_json::to_vec_pretty(&stored).expect("the boot state serialises");
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes)
    }

    /// Loads, applies `change`, stores.
    fn update(&self, change: impl FnOnce(Core) -> Core) -> Result<()> {
        let (core, booted) = self.load()?;
        self.store(change(core), booted)
    }
}

impl Bootloader for StateFile {
    fn name(&self) -> &'static str {
        "file"
    }

    fn location(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> Result<BootState> {
        let (core, booted) = self.load()?;
        Ok(core.state(booted))
    }

    fn arm_trial(&self, slot: Slot, tries: u32) -> Result<()> {
        check_tries(tries, &self.path)?;
        self.update(|core| core.arm(slot, tries))
    }

    fn mark_good(&self, slot: Slot) -> Result<()> {
        self.update(|core| core.good(slot))
    }

    fn set_next(&self, slot: Slot) -> Result<()> {
        self.update(|core| core.rollback(slot))
    }

    fn boot(&self) -> Result<Slot> {
        let (core, _) = self.load()?;
        let (core, slot) = core.boot();
        self.store(core, Some(slot))?;
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, StateFile) {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state/boot.json"));
        (dir, file)
    }

    #[test]
    fn fresh_state_is_slot_a() {
        let (_dir, file) = backend();
        let state = file.state().unwrap();
        assert_eq!((state.default, state.trial, state.next, state.booted), (Slot::A, None, Slot::A, None));
    }

    #[test]
    fn trial_falls_back_after_tries() {
        let (_dir, file) = backend();
        file.arm_trial(Slot::B, 3).unwrap();
        let booted: Vec<Slot> = (0..5).map(|_| file.boot().unwrap()).collect();
        assert_eq!(booted, [Slot::B, Slot::B, Slot::B, Slot::A, Slot::A]);
        let state = file.state().unwrap();
        assert_eq!(state.trial, Some(Trial { slot: Slot::B, tries_left: 0 }));
        assert_eq!((state.default, state.next, state.booted), (Slot::A, Slot::A, Some(Slot::A)));
    }

    #[test]
    fn mark_good_switches_default() {
        let (_dir, file) = backend();
        file.arm_trial(Slot::B, 2).unwrap();
        assert_eq!(file.boot().unwrap(), Slot::B);
        assert_eq!(file.state().unwrap().tries_left(), 1);
        file.mark_good(Slot::B).unwrap();
        let state = file.state().unwrap();
        assert_eq!((state.default, state.trial, state.next), (Slot::B, None, Slot::B));
        assert_eq!(file.boot().unwrap(), Slot::B);
        file.set_next(Slot::A).unwrap();
        assert_eq!(file.boot().unwrap(), Slot::A);
    }

    #[test]
    fn garbage_is_reported_with_the_path() {
        let (_dir, file) = backend();
        std::fs::create_dir_all(file.location().parent().unwrap()).unwrap();
        for garbage in
            [&b"\x00\x01garbage"[..], b"{\"format\": 2, \"default\": \"a\", \"trial\": null, \"booted\": null}"]
        {
            std::fs::write(file.location(), garbage).unwrap();
            let err = file.state().unwrap_err().to_string();
            assert!(err.contains(&file.location().display().to_string()), "{err}");
            assert!(err.contains("corrupt"), "{err}");
        }
    }

    #[test]
    fn invalid_tries_are_rejected() {
        let (_dir, file) = backend();
        assert!(matches!(file.arm_trial(Slot::B, 0), Err(BootloaderError::InvalidTries { tries: 0, .. })));
        assert!(!file.location().exists());
    }
}
