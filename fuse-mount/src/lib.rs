//! Read-only FUSE mount of an osdeploy commit.
//!
//! [`mount`] shows one commit of a local repository as a read-only filesystem with the commit's
//! exact metadata: modes, owners, nanosecond mtimes, extended attributes, hardlinks sharing one
//! inode, symlinks, device, FIFO and socket nodes. The tree's metadata is read once at mount time
//! ([`inodes`]); file content is read on demand ([`content`]): from the whole-file objects of a
//! bare repository, or chunk by chunk, verified and cached, from the packs of an archive one, or
//! from a remote: only the metadata is fetched at mount time, chunks when first read (with
//! read-ahead), into a bounded on-disk cache.
//! The repository stays read-locked while mounted, so a prune cannot take objects away.

mod content;
mod disk_cache;
mod error;
mod fs;
mod inodes;
mod mount;
mod remote_content;

pub use error::{FuseError, Result};
pub use mount::{MountOptions, Mounted, mount, unmount};
