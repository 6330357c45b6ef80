//! Read-only FUSE mount of an osdeploy commit.
//!
//! This crate will expose a commit's tree with its exact metadata (stat, readlink, xattrs,
//! readdir), serving file reads from local objects or lazily from a remote (issue 12).
//! It deliberately contains no code yet.
