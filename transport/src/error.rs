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
    /// A server sent more than the file can hold: the size the summary declares, a Range's
    /// length, or the limit for files nothing declares.
    #[error("{url}: the response {} the {max} bytes it can hold; refused (a broken or hostile server)",
        announced.map_or("ran past".to_owned(), |n| format!("announces {n} bytes, more than")))]
    TooLarge {
        /// The URL.
        url: String,
        /// The most bytes the answer could hold.
        max: u64,
        /// The Content-Length the server announced, when that was already too much.
        announced: Option<u64>,
    },
    /// A server stalled, trickled or outlasted the deadline.
    #[error("{url}: {reason}")]
    TooSlow {
        /// The URL.
        url: String,
        /// Which limit, with figures.
        reason: String,
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
    /// Signed data whose signature is missing or not by a trusted key.
    #[error(
        "{what} from remote {remote} {problem}; refusing it (the remote trusts keys {keys}; add it with --insecure only if unsigned data is acceptable)"
    )]
    Signature {
        /// The remote.
        remote: String,
        /// What was checked: the summary or a commit.
        what: String,
        /// "is not signed" or "is not signed by a trusted key".
        problem: String,
        /// The trusted keys.
        keys: String,
    },
    /// The remote offers an older commit than the one already pulled (a replayed summary?).
    #[error(
        "remote {remote} offers {branch} at commit {offered} from {offered_time}, older than commit {held} from {held_time} already pulled; refusing a silent downgrade (pass --allow-downgrade to accept it)"
    )]
    Downgrade {
        /// The remote.
        remote: String,
        /// The branch.
        branch: String,
        /// The commit offered.
        offered: String,
        /// Its timestamp.
        offered_time: i64,
        /// The commit held.
        held: String,
        /// Its timestamp.
        held_time: i64,
    },
    /// A remote that is not configured, or configured wrongly (URLs, keys).
    #[error("{0}")]
    Remote(String),
    /// Options that cannot work together or at all (a rate of 0, a signing key for a full mirror).
    #[error("{0}")]
    Options(String),
    /// A key file that cannot be used.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A local bookkeeping file (remotes.json, a mirror's refs.json) that does not parse.
    #[error("{path}: {reason}")]
    LocalFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A repository of the wrong mode for the command.
    #[error("{path} {reason}")]
    WrongRepository {
        /// The repository.
        path: std::path::PathBuf,
        /// What it is and what the command needs.
        reason: String,
    },
    /// The HTTP client or the async runtime could not be set up.
    #[error("cannot start {what}: {reason}")]
    Setup {
        /// The HTTP client or the async runtime.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// `serve` could not listen on its address, or its server failed.
    #[error("serving on {addr}: {reason}")]
    Serve {
        /// The address.
        addr: std::net::SocketAddr,
        /// What failed.
        reason: String,
    },
    /// A task of a transfer panicked or was cancelled (a bug: the message says where).
    #[error("{what} failed: {reason}")]
    Task {
        /// The task.
        what: &'static str,
        /// Its panic or cancellation.
        reason: String,
    },
    /// A request delivered objects after the transfer had already failed (its error is reported).
    #[error("the transfer was abandoned after an earlier error")]
    Abandoned,
    /// The local repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TransportError {
    /// The file asked for is not on the server (HTTP 404 or 410 from every URL): absent, not failed.
    pub fn is_absent(&self) -> bool {
        match self {
            TransportError::Status { status, .. } => matches!(status, 404 | 410),
            TransportError::AllUrlsFailed { last, .. } => last.is_absent(),
            _ => false,
        }
    }
}
