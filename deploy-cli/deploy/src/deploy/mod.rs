//! Deployments (docs/deployments.md): A/B slots in a sysroot, switched by reflink checkout, booted once on trial,
//! made default by `mark-good` after health checks, rolled back automatically by the bootloader.
//!
//! # Sysroot layout
//!
//! ```text
//! SYSROOT/osdeploy/repo/          bare repository (pulls land here; deployed commits are pinned by refs
//!                                 osdeploy/slot-a and osdeploy/slot-b so that prune keeps them)
//! SYSROOT/osdeploy/slots/a/, b/   the two deployment slots (full OS trees)
//! SYSROOT/osdeploy/state          JSON state (see [`state`] and docs/deployments.md)
//! SYSROOT/osdeploy/lock           flock(2) lock held by every command that changes the sysroot
//! SYSROOT/osdeploy/tmp/           temporary files of atomic writes
//! SYSROOT/var/, home/, var/lib/containerd/   user data: created by init-sysroot if absent, never written again
//! SYSROOT/boot/osdeploy/SLOT-COMMIT12/        each slot's kernel and initrd (GRUB, systemd-boot; see [`kernel`])
//! ```
//!
//! The bootloader configuration lives where [`state::BootloaderKind::backend`] says (below `SYSROOT/osdeploy` for the
//! state-file backend, below `SYSROOT/boot` for the others).
//!
//! Modules: [`state`] (the state file), [`config`] (`CONFIG_DIR/config.toml`), [`lock`] (the sysroot lock),
//! [`etc`] (three-way /etc merge), [`health`] (health checks with
//! timeouts), [`kernel`] (kernels per slot on the boot partition), [`ops`] (the commands), [`prepare_root`] (a slot as the root filesystem at boot), [`pull`] (pulls into the sysroot's repository: the followed branch, the node's
//! network defaults).

use std::path::{Path, PathBuf};

use crate::bootloader::{BootloaderError, Slot};
use osdeploy_store::{CommitId, StoreError};

pub mod config;
pub mod etc;
pub mod health;
pub mod kernel;
pub mod lock;
pub mod ops;
pub mod prepare_root;
pub mod pull;
pub mod state;

pub use config::Config;
pub use state::{BootloaderKind, SlotState, State};

/// Everything that can go wrong in a deployment command. Every message names the path, slot or commit concerned.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A filesystem operation failed.
    // The OS error is in the message, not a `#[source]`, as in the store's errors.
    #[error("{path}: {error}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bootloader backend failed.
    #[error(transparent)]
    Bootloader(#[from] BootloaderError),
    /// A pull failed.
    #[error(transparent)]
    Transport(#[from] osdeploy_transport::TransportError),
    /// Another osdeploy process holds the sysroot lock.
    #[error("sysroot {sysroot} is locked by another osdeploy process ({holder}); wait for it to finish")]
    Locked {
        /// The sysroot.
        sysroot: PathBuf,
        /// Who holds it, as far as the lock file tells.
        holder: String,
    },
    /// The sysroot has not been set up.
    #[error("{path} is not an osdeploy sysroot: {reason} (create one with `osdeploy --sysroot DIR init-sysroot`)")]
    NotASysroot {
        /// The sysroot.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// `init-sysroot` on a sysroot that already has a state file.
    #[error("{path} is already an osdeploy sysroot (its state file exists)")]
    AlreadyInitialized {
        /// The sysroot.
        path: PathBuf,
    },
    /// The state file is unreadable.
    #[error("state file {path} is corrupt: {reason}")]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration file is invalid.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The commit to switch to is not in the sysroot's repository.
    #[error("{spec:?} is not a branch or commit of the repository {repo}; pull it first (`osdeploy pull`)")]
    CommitNotInRepo {
        /// What the user asked for.
        spec: String,
        /// The repository.
        repo: PathBuf,
    },
    /// `switch` or `pull` without argument on a sysroot that follows no branch.
    #[error("sysroot {sysroot} follows no branch yet: give one (`osdeploy pull REMOTE BRANCH` records it)")]
    NothingFollowed {
        /// The sysroot.
        sysroot: PathBuf,
    },
    /// Removing a slot's content met something it must not touch.
    #[error("{path}: {reason}; refusing to go on")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The standby slot is what the bootloader boots next by default, so it cannot be overwritten now.
    #[error(
        "slot {slot} is the bootloader's default (a rollback to it is pending); reboot into it before switching, or \
         run `osdeploy mark-good` on the booted slot"
    )]
    StandbyIsDefault {
        /// The standby slot.
        slot: Slot,
    },
    /// The checkout into the standby slot failed.
    #[error(
        "checking out {commit} into slot {slot} failed; slot {slot} is marked bad and the bootloader was not changed: {error}"
    )]
    CheckoutFailed {
        /// The slot.
        slot: Slot,
        /// The commit.
        commit: String,
        /// Why.
        error: StoreError,
    },
    /// A command that needs to know the booted slot before `boot-check` recorded it.
    #[error("no booted slot is recorded in {sysroot}; run `osdeploy boot-check` first")]
    NotBooted {
        /// The sysroot.
        sysroot: PathBuf,
    },
    /// The kernel command line does not say which slot booted.
    #[error("{path}: {reason}")]
    Cmdline {
        /// The command line file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A slot cannot be used for what was asked.
    #[error("slot {slot} is {state}{reason}: {what}")]
    SlotUnusable {
        /// The slot.
        slot: Slot,
        /// Its state.
        state: SlotState,
        /// Why it is in that state, if known (`" (…)"`).
        reason: String,
        /// What cannot be done.
        what: String,
    },
    /// A release to boot with a kernel-booting bootloader has no kernel.
    #[error(
        "release {commit} has no kernel (usr/lib/modules/VERSION/vmlinuz or boot/vmlinuz-VERSION): the {bootloader} \
         bootloader could not boot it"
    )]
    NoKernel {
        /// The release.
        commit: CommitId,
        /// The node's bootloader.
        bootloader: BootloaderKind,
    },
    /// A node whose bootloader boots kernels has no kernel command line configured.
    #[error(
        "kernel_cmdline is not set in config.toml: the {bootloader} entries need at least the root device, e.g. \
         kernel_cmdline = \"root=UUID=... rw\""
    )]
    NoKernelCmdline {
        /// The node's bootloader.
        bootloader: BootloaderKind,
    },
    /// A health check could not be started.
    #[error("health check {path}: cannot run it: {error}")]
    HealthCheck {
        /// The check.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// The result type of deployment commands.
pub type Result<T, E = DeployError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    /// Converts the error into [`DeployError::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|error| DeployError::Io { path: path.to_owned(), error })
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|errno| DeployError::Io { path: path.to_owned(), error: errno.into() })
    }
}

/// The paths of a sysroot.
#[derive(Clone, Debug)]
pub struct Sysroot {
    root: PathBuf,
}

impl Sysroot {
    /// The sysroot at `root` (the physical root filesystem; `/sysroot` on a booted node).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysroot { root: root.into() }
    }

    /// The sysroot itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `SYSROOT/osdeploy`.
    pub fn dir(&self) -> PathBuf {
        self.root.join("osdeploy")
    }

    /// The bare repository, `SYSROOT/osdeploy/repo`.
    pub fn repo(&self) -> PathBuf {
        self.dir().join("repo")
    }

    /// `SYSROOT/osdeploy/slots`.
    pub fn slots_dir(&self) -> PathBuf {
        self.dir().join("slots")
    }

    /// A slot's directory, `SYSROOT/osdeploy/slots/SLOT`.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.slots_dir().join(slot.as_str())
    }

    /// The state file, `SYSROOT/osdeploy/state`.
    pub fn state_path(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The lock file, `SYSROOT/osdeploy/lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.dir().join("lock")
    }

    /// The boot partition's mount point (the ESP or XBOOTLDR for systemd-boot), `SYSROOT/boot`.
    pub fn boot_dir(&self) -> PathBuf {
        self.root.join("boot")
    }

    /// Scratch space for atomic writes, `SYSROOT/osdeploy/tmp`.
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir().join("tmp")
    }

    /// The user-data directories shared by both slots, which osdeploy creates when absent and never writes.
    pub fn data_dirs(&self) -> [PathBuf; 3] {
        [self.root.join("var"), self.root.join("home"), self.root.join("var/lib/containerd")]
    }
}
