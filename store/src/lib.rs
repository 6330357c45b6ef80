//! osdeploy's content-addressed object store.
//!
//! OS trees are committed as blake3-addressed objects (docs/format.md):
//! files are cut into chunks by FastCDC ([`chunker`]); a [`object::FileObject`] lists a file's
//! chunks; a [`object::DirTree`] lists a directory's entries with all their metadata; a
//! [`object::Commit`] names a root tree, its parent and release information.
//!
//! A [`Repo`] stores objects in one of two modes ([`RepoMode`]): **archive** (zstd-compressed
//! objects in pack files with sorted indexes, written in tree order: what origins and mirrors
//! serve) and **bare** (each file's content whole and uncompressed for FICLONE checkout, with a
//! SQLite index of objects and chunk locations: what nodes keep).
//!
//! Invariants: no bytes are stored or returned under an id they do not hash to; every write is
//! a transaction whose objects are durable before the ref that reaches them moves; every decode
//! validates names, sort order and sizes against hard limits, and errors name the object or path.

pub mod archive;
pub mod bare;
pub mod checkout;
pub mod chunker;
mod codec;
pub mod commit;
pub mod compress;
pub mod delta;
pub mod diff;
pub mod error;
pub mod fsck;
pub mod fsutil;
pub mod history;
pub mod id;
pub mod layout;
pub mod name;
pub mod object;
pub mod pack;
#[cfg(test)]
mod proptests;
pub mod prune;
pub mod reach;
pub mod reflink;
pub mod repo;
pub mod scan;
pub mod summary;
pub mod tree;
pub mod write;

pub use error::{Result, StoreError};
pub use id::{ChunkId, CommitId, FileId, ObjectId, TreeId};
pub use name::RefName;
pub use repo::{Access, Repo, RepoConfig, RepoMode};
