//! Transport of osdeploy repositories to nodes and mirrors (docs/design.md, "Transport").
//!
//! - [`plan`]: the [`plan::PullPlan`] — what a node must fetch for a commit, file by file and
//!   as coalesced pack ranges — printed by `osdeploy delta` and `pull --dry-run`, executed by
//!   `pull`; [`survey`]: the one walk that finds what a node lacks; [`remote_plan`]: the plan
//!   between two commits of a remote over HTTP (`delta --remote`).
//! - [`deltas`]: per file, a delta from a content the node holds or the chunks it lacks;
//!   [`report`]: the cost of an update from each earlier release, with and without deltas.
//! - [`pull`]: survey, plan and execute: fetch a branch from a remote archive repository over
//!   HTTP(S) into a bare or archive repository, moving only missing objects, resumable after a
//!   crash. Its parts: [`summary`] (fetched and verified), [`index`] (the remote's pack indexes),
//!   [`fetch`] (the plan's Range requests, verified as they stream in), [`staging`] (what a
//!   rerun reuses).
//! - [`mirror`]: copy a remote archive repository (all or chosen branches) into a local one that
//!   can be served in turn, packs byte-identical, incrementally.
//! - [`serve`]: serve an archive repository over HTTP with Range support.
//! - [`client`]: HTTP with failover, retries, timeouts, rate limit and progress counters.
//! - [`remote`]: the remotes a repository knows; [`sign`]: ed25519 keys and signatures.

mod assemble;
pub mod client;
mod delta_sources;
pub mod deltas;
pub mod error;
pub mod fetch;
pub mod index;
pub mod lazy;
pub mod mirror;
pub mod plan;
pub mod pull;
mod rebuild;
pub mod remote;
pub mod remote_plan;
pub mod report;
mod runtime;
pub mod serve;
pub mod sign;
pub mod staging;
pub mod summary;
pub mod survey;

pub use error::TransportError;
pub use runtime::runtime;
