//! Property tests: the canonical encoding round-trips every object and is the identity of its
//! bytes; the chunker covers its input exactly, within its size bounds, and cuts by content.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::chunker::{Chunker, ChunkerParams};
use crate::id::{ChunkId, CommitId, FileId, ObjectId, TreeId};
use crate::object::{Commit, DirTree, Entry, EntryKind, FileObject, Meta, Mtime, TreeStats};

fn id() -> impl Strategy<Value = ObjectId> {
    any::<[u8; 32]>().prop_map(ObjectId)
}

fn meta() -> impl Strategy<Value = Meta> {
    let xattrs = proptest::collection::btree_map(vec(1u8..=255, 1..20), vec(any::<u8>(), 0..40), 0..4)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>());
    (0u32..0o10000, any::<u32>(), any::<u32>(), any::<i64>(), 0u32..1_000_000_000, xattrs)
        .prop_map(|(mode, uid, gid, sec, nsec, xattrs)| Meta { mode, uid, gid, mtime: Mtime { sec, nsec }, xattrs })
}

fn kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        (id(), any::<u32>()).prop_map(|(id, hardlink)| EntryKind::File { file: FileId(id), hardlink }),
        id().prop_map(|id| EntryKind::Dir(TreeId(id))),
        vec(1u8..=255, 1..100).prop_map(EntryKind::Symlink),
        any::<u64>().prop_map(EntryKind::CharDevice),
        any::<u64>().prop_map(EntryKind::BlockDevice),
        Just(EntryKind::Fifo),
        Just(EntryKind::Socket),
    ]
}

/// Valid names: no `/`, no NUL, not `.` or `..`, not empty.
fn name() -> impl Strategy<Value = Vec<u8>> {
    vec((1u8..=255).prop_filter("no slash", |b| *b != b'/'), 1..40)
        .prop_filter("not . or ..", |n| n.as_slice() != b"." && n.as_slice() != b"..")
}

fn dirtree() -> impl Strategy<Value = DirTree> {
    proptest::collection::btree_map(name(), (meta(), kind()), 0..12).prop_map(|entries| DirTree {
        entries: entries.into_iter().map(|(name, (meta, kind))| Entry { name, meta, kind }).collect(),
    })
}

proptest! {
    #[test]
    fn file_objects_round_trip(chunks in vec((id(), 1u32..=(1 << 20)), 0..50)) {
        let object = FileObject {
            size: chunks.iter().map(|(_, len)| u64::from(*len)).sum(),
            chunks: chunks.into_iter().map(|(id, len)| (ChunkId(id), len)).collect(),
        };
        let bytes = object.encode();
        prop_assert_eq!(FileObject::decode(ObjectId::of(&bytes), &bytes).unwrap(), object);
    }

    #[test]
    fn dirtrees_round_trip_and_reencode_identically(tree in dirtree()) {
        let bytes = tree.encode();
        let decoded = DirTree::decode(ObjectId::of(&bytes), &bytes).unwrap();
        prop_assert_eq!(decoded.encode(), bytes);
        prop_assert_eq!(decoded, tree);
    }

    #[test]
    fn commits_round_trip(
        root in id(), root_meta in meta(), parent in proptest::option::of(id()), timestamp in any::<i64>(),
        version in "[ -~]{0,20}", subject in "\\PC{0,40}", body in "\\PC{0,80}",
        metadata in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,16}", 0..4),
        counts in any::<[u32; 5]>(),
    ) {
        let [files, dirs, symlinks, specials, bytes] = counts.map(u64::from);
        let commit = Commit {
            root: TreeId(root), root_meta, parent: parent.map(CommitId), timestamp, version, subject, body, metadata,
            stats: TreeStats { files, dirs, symlinks, specials, bytes },
        };
        let encoded = commit.encode();
        prop_assert_eq!(Commit::decode(ObjectId::of(&encoded), &encoded).unwrap(), commit);
    }

    #[test]
    fn chunks_cover_the_input_within_bounds_and_cut_by_content(
        data in vec(any::<u8>(), 0..200_000), prefix in vec(any::<u8>(), 1..3000),
    ) {
        let params = ChunkerParams { min: 2048, avg: 8192, max: 32768 };
        let split = |input: &[u8]| {
            let mut chunks = Vec::new();
            Chunker::new(params).split(input, std::path::Path::new("p"), |c| { chunks.push(c.to_vec()); Ok(()) }).unwrap();
            chunks
        };
        let chunks = split(&data);
        prop_assert_eq!(chunks.concat(), data.clone());
        if let Some((_, body)) = chunks.split_last() {
            prop_assert!(body.iter().all(|c| (params.min as usize..=params.max as usize).contains(&c.len())));
        }
        prop_assert!(chunks.iter().all(|c| c.len() <= params.max as usize && !c.is_empty()));
        // Content-defined: after a prefix is inserted, the chunks resynchronise, so the last
        // chunk of a long enough input is found again.
        if chunks.len() > 8 {
            let shifted = split(&[prefix, data].concat());
            prop_assert_eq!(shifted.last(), chunks.last());
        }
    }
}
