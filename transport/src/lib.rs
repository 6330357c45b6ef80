//! Transport of osdeploy repositories to nodes and mirrors (DESIGN.md §4).
//!
//! - [`plan`]: what a node holding one commit must fetch for another, as coalesced pack ranges
//!   (`osdeploy delta`).
//! - [`pull`]: fetch a branch from a remote archive repository over HTTP(S) into a bare or
//!   archive repository, moving only missing objects, resumable after a crash.
//! - [`serve`]: serve an archive repository over HTTP with Range support.
//! - [`remote`]: the remotes a repository knows.
//!
//! To come (issue 3): signed summaries and commits, mirror, rate limiting, downgrade protection.

pub mod client;
pub mod error;
pub mod plan;
pub mod pull;
pub mod remote;
pub mod serve;
pub mod sign;
pub mod staging;

pub use error::TransportError;
