//! The fleet crate's error type: every message names the node, commit, key or file concerned.

use std::path::PathBuf;

use osdeploy_deploy::deploy::DeployError;
use osdeploy_store::StoreError;
use osdeploy_transport::TransportError;

/// Everything that can go wrong in the agent, the rollout commands or the coordination.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A filesystem operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A rollout policy is unusable (malformed, unsigned, signed by an untrusted key, for another commit).
    #[error("{what}: {problem}")]
    Policy {
        /// The policy (file or URL and commit).
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// The `[fleet]` section of the node configuration is invalid.
    #[error("configuration {path}: [fleet] {reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// etcd could not be reached or refused a request.
    #[error("etcd ({endpoints}): {what}: {error}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// The request.
        what: String,
        /// The client's error.
        error: Box<etcd_client::Error>,
    },
    /// etcd did not answer in time.
    #[error("etcd ({endpoints}): {what}: no answer within {after:?}")]
    EtcdTimeout {
        /// The endpoints tried.
        endpoints: String,
        /// The request.
        what: String,
        /// The time waited.
        after: std::time::Duration,
    },
    /// An etcd lease expired (etcd was out of reach longer than its TTL); a new one is taken.
    #[error("{what} expired in etcd; taking a new one")]
    LeaseExpired {
        /// The lease.
        what: String,
    },
    /// An operator's request that would do harm or nothing.
    #[error("{what}: {reason}")]
    Refused {
        /// The request.
        what: String,
        /// Why it is refused.
        reason: String,
    },
    /// A value stored in etcd is not what osdeploy writes there.
    #[error("etcd key {key}: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The agent's state file is unreadable.
    #[error("agent state {path} is corrupt: {reason}")]
    StateCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A hook failed.
    #[error("hook {path}: {reason}")]
    Hook {
        /// The hook.
        path: PathBuf,
        /// How it failed.
        reason: String,
    },
    /// A step of the agent panicked (a bug; the panic message is on standard error).
    #[error("a step of the agent panicked")]
    Panicked,
    /// The node's deployment step failed.
    #[error(transparent)]
    Deploy(Box<DeployError>),
    /// A transfer failed.
    #[error(transparent)]
    Transport(Box<TransportError>),
    /// The repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DeployError> for FleetError {
    fn from(e: DeployError) -> Self {
        FleetError::Deploy(Box::new(e))
    }
}

/// The result type of the fleet crate.
pub type Result<T, E = FleetError> = std::result::Result<T, E>;
