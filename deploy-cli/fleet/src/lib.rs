//! osdeploy's fleet rollouts (docs/fleet.md): the update agent that pulls, switches, reboots and
//! marks good on its own, and the coordination that keeps a thousand such agents safe — signed
//! rollout policies with canaries and waves, a halt switch, and a reboot semaphore on etcd whose
//! holders are tied to leases.
//!
//! - [`policy`]: the rollout policy published beside the summary, and each node's wave.
//! - [`gate`]: whether a node may take a commit now (pure: policy, the fleet's reports, the clock).
//! - [`access`]: how to reach etcd: endpoints, TLS, an etcd user.
//! - [`cluster`]: the etcd side: node registrations, reports, halt/pause/abort, the reboot semaphore.
//! - [`config`]: the `[fleet]` section of `config.toml`, maintenance windows.
//! - [`agent`]: the agent's steps, each recorded in [`agent_state`] before and after it acts.
//! - [`hooks`]: drain, undrain and reboot hooks.
//! - [`metrics`]: the agent's Prometheus metrics.

pub mod access;
pub mod agent;
pub mod agent_state;
pub mod cluster;
pub mod config;
mod error;
pub mod gate;
pub mod hooks;
pub mod metrics;
pub mod policy;

pub use error::{FleetError, Result};
