//! Errors of mounting and unmounting.

use std::path::PathBuf;

use osdeploy_store::StoreError;

/// What can go wrong when mounting or unmounting a commit.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The repository or the commit could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The remote could not be read.
    #[error(transparent)]
    Transport(#[from] osdeploy_transport::TransportError),
    /// The mount point is missing or not a directory.
    #[error("{path}: not a directory; the mount point must be an existing directory")]
    NotADirectory {
        /// The mount point given.
        path: PathBuf,
    },
    /// Something is mounted on the mount point already.
    #[error("{path}: a filesystem is mounted here already; unmount it first")]
    Busy {
        /// The mount point given.
        path: PathBuf,
    },
    /// The kernel offers no FUSE device.
    #[error("/dev/fuse is missing: load the kernel's FUSE module (`modprobe fuse`) or create its node")]
    NoFuseDevice,
    /// mount(2) or the FUSE session failed.
    #[error("mounting {path}: {error}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// `unmount` was asked to unmount something osdeploy did not mount.
    #[error("{path}: no osdeploy mount here")]
    NotOurMount {
        /// The path given.
        path: PathBuf,
    },
    /// umount(2) failed.
    #[error("unmounting {path}: {error}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
}

/// Result with [`FuseError`].
pub type Result<T> = std::result::Result<T, FuseError>;
