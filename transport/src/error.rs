//! The transport's error type: every message names the URL, object or file concerned.

use osdeploy_store::StoreError;

/// Everything that can go wrong while talking to a remote.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The server answered with an unexpected status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status received.
        status: u16,
    },
    /// The request failed (connection refused, timeout, truncated body, TLS).
    #[error("{url}: {message}")]
    Request {
        /// The URL requested.
        url: String,
        /// What failed.
        message: String,
    },
    /// Every URL of the remote failed; the last error is given.
    #[error("remote {remote}: every URL failed; last error: {last}")]
    AllUrlsFailed {
        /// The remote's name.
        remote: String,
        /// The last error.
        last: Box<TransportError>,
    },
    /// The remote sent data that does not verify or parse.
    #[error("{what} from {url} is invalid: {reason}")]
    Invalid {
        /// What was being fetched.
        what: String,
        /// Where from.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The remote has no such branch.
    #[error("remote {remote} has no branch {branch:?} (it has: {available})")]
    NoSuchBranch {
        /// The remote.
        remote: String,
        /// The branch asked for.
        branch: String,
        /// The branches it has.
        available: String,
    },
    /// A remote configuration problem.
    #[error("{0}")]
    Config(String),
    /// The local repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
