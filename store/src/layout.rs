//! The repository layout: the name of every file and directory of a repository, relative to its
//! root. The same names are filesystem paths below a local repository and URL paths below a
//! remote's URL, so a repository can be served by any static HTTP server.

use crate::{CommitId, ObjectId};

/// The repository's configuration (mode, chunking, compression).
pub const CONFIG: &str = "config";
/// The lock file writers hold.
pub const LOCK: &str = "lock";
/// The lock file prune holds alone, and readers and writers share.
pub const GC_LOCK: &str = "gc.lock";
/// Temporary files, on the repository's filesystem so that renames publish them atomically.
pub const TMP: &str = "tmp";
/// Local branches: one file per branch holding a commit id.
pub const HEADS: &str = "refs/heads";
/// Packs and their indexes (archive repositories).
pub const PACKS: &str = "packs";
/// Whole-file content objects (bare repositories).
pub const OBJECTS: &str = "objects";
/// The SQLite index of a bare repository's objects and chunk locations.
pub const BARE_INDEX: &str = "index.sqlite";
/// The summary a remote publishes: refs and packs (see `Summary`).
pub const SUMMARY: &str = "summary";
/// Signatures of the summary.
pub const SUMMARY_SIGNATURE: &str = "summary.sig";
/// Detached signatures of commits.
pub const SIGNATURES: &str = "signatures";
/// The remotes a repository pulls from.
pub const REMOTES: &str = "remotes.json";
/// The first part of the refs osdeploy keeps for itself (deployments' pins, `osdeploy/slot-a`):
/// no remote may take this name, or its branches would land on them.
pub const RESERVED_REF_PREFIX: &str = "osdeploy";
/// Remote pack indexes cached by a node (immutable, named by pack id).
pub const INDEX_CACHE: &str = "cache/indexes";
/// Chunks that remote mounts (`osdeploy mount --remote`) fetched: a bounded cache.
pub const MOUNT_CACHE: &str = "cache/mount";
/// Verified objects of a pull not yet committed (survives a crash).
pub const STAGING: &str = "staging";

/// Delta packs, their pack indexes, and the delta index of each release (archive repositories).
pub const DELTAS: &str = "deltas";

/// Packs a mirror is downloading, verified before they are published.
pub const MIRROR_PARTIAL: &str = "mirror/partial";
/// The branches a mirror owns (written by it, deleted by it when no longer mirrored).
pub const MIRROR_REFS: &str = "mirror/refs.json";

/// A pack's file name inside [`PACKS`].
pub fn pack_name(pack: &ObjectId) -> String {
    format!("{pack}.pack")
}

/// A pack index's file name inside [`PACKS`] (and [`INDEX_CACHE`]).
pub fn index_name(pack: &ObjectId) -> String {
    format!("{pack}.idx")
}

/// A pack's path in the repository.
pub fn pack_file(pack: &ObjectId) -> String {
    format!("{PACKS}/{}", pack_name(pack))
}

/// A pack index's path in the repository.
pub fn index_file(pack: &ObjectId) -> String {
    format!("{PACKS}/{}", index_name(pack))
}

/// A delta pack's path in the repository.
pub fn delta_pack_file(pack: &ObjectId) -> String {
    format!("{DELTAS}/{}", pack_name(pack))
}

/// A delta pack's index path in the repository (for fsck and mirrors; nodes never fetch it).
pub fn delta_pack_index_file(pack: &ObjectId) -> String {
    format!("{DELTAS}/{}", index_name(pack))
}

/// A delta index's file name inside [`DELTAS`] (and [`INDEX_CACHE`]), named by its blake3.
pub fn delta_index_name(hash: &ObjectId) -> String {
    format!("{hash}.dix")
}

/// A delta index's path in the repository.
pub fn delta_index_file(hash: &ObjectId) -> String {
    format!("{DELTAS}/{}", delta_index_name(hash))
}

/// Rollout policies beside the summary: `rollouts/<commit>.json` and its signature file.
pub const ROLLOUTS: &str = "rollouts";

/// The path of a commit's rollout policy.
pub fn rollout_policy(commit: &CommitId) -> String {
    format!("{ROLLOUTS}/{commit}.json")
}

/// The path of a rollout policy's signature file.
pub fn rollout_signature(commit: &CommitId) -> String {
    format!("{ROLLOUTS}/{commit}.json.sig")
}

/// The path of a commit's detached signature.
pub fn commit_signature(commit: &CommitId) -> String {
    format!("{SIGNATURES}/{commit}.sig")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_relative_paths_that_double_as_urls() {
        let id = ObjectId::of(b"pack");
        assert_eq!(pack_file(&id), format!("packs/{}.pack", id.to_hex()));
        assert_eq!(index_file(&id), format!("packs/{}.idx", id.to_hex()));
        assert_eq!(commit_signature(&CommitId(id)), format!("signatures/{}.sig", id.to_hex()));
        for name in [CONFIG, TMP, HEADS, PACKS, OBJECTS, SUMMARY, SUMMARY_SIGNATURE, REMOTES, INDEX_CACHE, STAGING] {
            assert!(!name.starts_with('/') && !name.contains(".."), "{name}");
        }
    }
}
