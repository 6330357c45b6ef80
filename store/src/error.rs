//! The store's error type.
//!
//! Policy: every error names the object (kind and id) or the path it concerns, so that an operator
//! can act on the message alone; I/O errors always carry the path that failed.

use std::path::PathBuf;

use crate::id::ObjectId;
use crate::object::ObjectKind;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    // The OS error is part of the message and deliberately not a `#[source]`: the message says
    // it already, and a chain printer would say it twice.
    #[error("{path}: {error}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The SQLite index of a bare repository failed.
    #[error("index {path}: {error}")]
    Sqlite {
        /// The index file.
        path: PathBuf,
        /// The SQLite error (in the message, not a `#[source]`, as for `Io`).
        error: rusqlite::Error,
    },
    /// The path is not an osdeploy repository, or its config is unreadable.
    #[error("{path} is not an osdeploy repository: {reason}")]
    NotARepository {
        /// The repository path given.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A format version this build does not know.
    #[error("{what} has format version {found}, but this osdeploy reads only version {supported}; upgrade osdeploy")]
    UnsupportedVersion {
        /// The object or file that carries the version.
        what: String,
        /// The version found.
        found: u32,
        /// The version this build supports.
        supported: u32,
    },
    /// Another process holds the repository lock.
    #[error("repository {path} is locked by another osdeploy process; wait for it to finish")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An object that should be in the repository is not.
    #[error("{kind} object {id} is missing from the repository")]
    ObjectMissing {
        /// Its kind.
        kind: ObjectKind,
        /// Its id.
        id: ObjectId,
    },
    /// An object's bytes do not hash to its id.
    #[error("{kind} object {id} is corrupt: its content hashes to {actual}")]
    HashMismatch {
        /// Its kind.
        kind: ObjectKind,
        /// The id it was stored or requested under.
        id: ObjectId,
        /// The hash of the bytes actually found.
        actual: ObjectId,
    },
    /// An object, pack or index is malformed.
    #[error("{what} is corrupt: {reason}")]
    Corrupt {
        /// What was being read, e.g. `dirtree 3fa1…` or a pack path.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A declared size exceeds a hard limit (a decompression bomb, or garbage).
    #[error("{what} declares {declared} bytes, above the limit of {limit}")]
    TooLarge {
        /// The object or entry concerned.
        what: String,
        /// The size it declares.
        declared: u64,
        /// The limit.
        limit: u64,
    },
    /// A ref name that is not allowed.
    #[error("invalid ref name {name:?}: {reason}")]
    InvalidRef {
        /// The name given.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// Neither a ref, nor a commit id, nor a unique commit id prefix.
    #[error("{spec:?} is not a branch, a commit id or a commit id prefix in this repository")]
    CommitNotFound {
        /// What the user gave.
        spec: String,
    },
    /// A commit id prefix matches several commits.
    #[error("commit prefix {spec:?} is ambiguous: it matches {count} commits; give more digits")]
    AmbiguousCommit {
        /// The prefix.
        spec: String,
        /// How many commits it matches.
        count: usize,
    },
    /// A path that a commit's tree does not contain.
    #[error("{path}: no such path in commit {commit}")]
    PathNotFound {
        /// The commit.
        commit: ObjectId,
        /// The path looked up.
        path: String,
    },
    /// A path of the wrong type for the operation (e.g. `cat` of a directory).
    #[error("{path} in commit {commit} is a {found}, not a {expected}")]
    WrongType {
        /// The commit.
        commit: ObjectId,
        /// The path.
        path: String,
        /// The type found.
        found: &'static str,
        /// The type the operation needs.
        expected: &'static str,
    },
    /// A source tree entry that cannot be committed.
    #[error("{path}: cannot commit this entry: {reason}")]
    BadSource {
        /// The source path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A directory being emptied holds a mount point: another filesystem is never entered.
    #[error("{path} is a mount point (another filesystem is mounted inside the directory being emptied)")]
    MountPointInside {
        /// The mount point.
        path: PathBuf,
    },
    /// A checkout destination that already has content.
    #[error("checkout destination {path} exists and is not an empty directory")]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    /// Converts an `io::Error` into [`StoreError::Io`] naming `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|error| StoreError::Io { path: path.into(), error })
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|errno| StoreError::Io { path: path.into(), error: errno.into() })
    }
}
