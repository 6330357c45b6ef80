//! The object model: file, dirtree and commit objects and their canonical encoding
//! (specified byte by byte in docs/format.md §2).
//!
//! Every encoded object starts with the magic `osdo`, a format version byte and a kind byte.
//! Decoding validates everything a hostile repository could get wrong: entry names (no `/`, NUL,
//! `.` or `..`), sort order and uniqueness, sizes against hard limits, and trailing bytes.

use std::collections::BTreeMap;
use std::fmt;

use crate::codec::{DecodeResult, Decoder, Encoder};
use crate::error::{Result, StoreError};
use crate::id::{ChunkId, CommitId, FileId, ObjectId, TreeId};
use crate::name::{check_entry_name, escaped};

/// Magic bytes that open every encoded metadata object.
pub const OBJECT_MAGIC: &[u8; 4] = b"osdo";
/// The object format version this build writes and reads.
pub const OBJECT_FORMAT_VERSION: u8 = 1;
/// Hard limit on a chunk's uncompressed size. Larger than any chunker maximum, so that a chunk
/// that declares more is rejected before it is decompressed (bomb guard).
pub const MAX_CHUNK_LEN: u32 = 1 << 20;
/// Hard limit on an encoded metadata object (file, dirtree, commit).
pub const MAX_METADATA_LEN: u32 = 64 << 20;
/// Most entries one directory may hold.
pub const MAX_TREE_ENTRIES: u32 = 1 << 20;
/// Most extended attributes one entry may carry.
pub const MAX_XATTRS: u16 = 1024;
/// Longest extended attribute value (Linux's own limit).
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// Longest symlink target (PATH_MAX - 1).
pub const MAX_SYMLINK_TARGET: usize = 4095;

/// The kinds of stored objects; the number is the kind byte used in packs and object headers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum ObjectKind {
    /// Raw file bytes cut by the chunker.
    Chunk = 0,
    /// A file's size and chunk list.
    File = 1,
    /// One directory's sorted entries.
    DirTree = 2,
    /// A commit.
    Commit = 3,
    /// A binary delta from one file content to another (see [`crate::delta`]); kept in delta
    /// packs, never in a tree.
    Delta = 4,
    /// The metadata one release adds to another, as one delta (see [`crate::delta::metadata`]);
    /// kept in delta packs.
    MetadataDelta = 5,
}

impl ObjectKind {
    /// The kind for a kind byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Chunk,
            1 => Self::File,
            2 => Self::DirTree,
            3 => Self::Commit,
            4 => Self::Delta,
            5 => Self::MetadataDelta,
            _ => return None,
        })
    }

    /// Lower-case name used in messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chunk => "chunk",
            Self::File => "file",
            Self::DirTree => "dirtree",
            Self::Commit => "commit",
            Self::Delta => "delta",
            Self::MetadataDelta => "metadata-delta",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A modification time with nanoseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, PartialOrd, Ord)]
pub struct Mtime {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, below 10^9.
    pub nsec: u32,
}

/// Metadata every entry carries: permission bits, owner, time and extended attributes.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// Extended attributes, sorted by name, names unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What a directory entry is, with its type-specific payload.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EntryKind {
    /// A regular file; entries with the same non-zero `hardlink` group are one inode.
    File {
        /// Its content.
        file: FileId,
        /// Hardlink group within the commit (0: not hardlinked).
        hardlink: u32,
    },
    /// A subdirectory.
    Dir(TreeId),
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A character device and its device number.
    CharDevice(u64),
    /// A block device and its device number.
    BlockDevice(u64),
    /// A named pipe.
    Fifo,
    /// A unix socket (recorded so that a tree round-trips; it is recreated as an unbound node).
    Socket,
}

impl EntryKind {
    fn tag(&self) -> u8 {
        match self {
            Self::File { .. } => 1,
            Self::Dir(_) => 2,
            Self::Symlink(_) => 3,
            Self::CharDevice(_) => 4,
            Self::BlockDevice(_) => 5,
            Self::Fifo => 6,
            Self::Socket => 7,
        }
    }

    /// Short type name for listings and messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::Dir(_) => "directory",
            Self::Symlink(_) => "symlink",
            Self::CharDevice(_) => "char-device",
            Self::BlockDevice(_) => "block-device",
            Self::Fifo => "fifo",
            Self::Socket => "socket",
        }
    }
}

/// One entry of a directory.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// The name: one validated path component.
    pub name: Vec<u8>,
    /// Its metadata.
    pub meta: Meta,
    /// Its type and payload.
    pub kind: EntryKind,
}

/// A file's content: its size and the chunks that make it up, in order.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct FileObject {
    /// Size in bytes (the sum of the chunk lengths).
    pub size: u64,
    /// The chunks, in file order, with their lengths.
    pub chunks: Vec<(ChunkId, u32)>,
}

/// One directory: entries sorted by name (bytewise), names unique.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DirTree {
    /// The entries.
    pub entries: Vec<Entry>,
}

/// Counts over a committed tree.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TreeStats {
    /// Regular file entries (each hardlink counted).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Devices, fifos and sockets.
    pub specials: u64,
    /// Bytes of regular files (each distinct hardlinked inode once).
    pub bytes: u64,
}

/// A commit: a root tree, its own metadata and history.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Commit {
    /// The root directory's tree.
    pub root: TreeId,
    /// The root directory's own metadata.
    pub root_meta: Meta,
    /// The previous commit of the branch, if any.
    pub parent: Option<CommitId>,
    /// Seconds since the epoch.
    pub timestamp: i64,
    /// Release version (free text, may be empty).
    pub version: String,
    /// One-line subject.
    pub subject: String,
    /// Longer description.
    pub body: String,
    /// Free metadata (arch, kernel, channel, …), sorted by key.
    pub metadata: BTreeMap<String, String>,
    /// Counts over the tree.
    pub stats: TreeStats,
}

pub(crate) fn header(kind: ObjectKind) -> Encoder {
    let mut e = Encoder::default();
    e.buf.extend_from_slice(OBJECT_MAGIC);
    e.u8(OBJECT_FORMAT_VERSION);
    e.u8(kind as u8);
    e
}

/// Decodes `data` as an object of `kind` named `id`, checking the header, running `body` and
/// rejecting trailing bytes; every failure names the object.
pub(crate) fn decode<T>(
    kind: ObjectKind,
    id: ObjectId,
    data: &[u8],
    body: impl FnOnce(&mut Decoder) -> DecodeResult<T>,
) -> Result<T> {
    let corrupt = |reason| StoreError::Corrupt { what: format!("{kind} object {id}"), reason };
    if data.len() > MAX_METADATA_LEN as usize {
        return Err(StoreError::TooLarge {
            what: format!("{kind} object {id}"),
            declared: data.len() as u64,
            limit: MAX_METADATA_LEN as u64,
        });
    }
    let mut d = Decoder::new(data);
    let magic = d.take(4).map_err(corrupt)?;
    if magic != OBJECT_MAGIC {
        return Err(corrupt(format!("bad magic {magic:?}, expected \"osdo\"")));
    }
    let version = d.u8().map_err(corrupt)?;
    if version != OBJECT_FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            what: format!("{kind} object {id}"),
            found: version.into(),
            supported: OBJECT_FORMAT_VERSION.into(),
        });
    }
    let found = d.u8().map_err(corrupt)?;
    if found != kind as u8 {
        return Err(corrupt(format!("kind byte {found}, expected {} ({kind})", kind as u8)));
    }
    let value = body(&mut d).map_err(corrupt)?;
    d.finish().map_err(corrupt)?;
    Ok(value)
}

fn encode_meta(e: &mut Encoder, m: &Meta) {
    e.u32(m.mode);
    e.u32(m.uid);
    e.u32(m.gid);
    e.i64(m.mtime.sec);
    e.u32(m.mtime.nsec);
    e.u16(m.xattrs.len() as u16);
    for (name, value) in &m.xattrs {
        e.bytes16(name);
        e.bytes32(value);
    }
}

fn decode_meta(d: &mut Decoder) -> DecodeResult<Meta> {
    let mode = d.u32()?;
    if mode > 0o7777 {
        return Err(format!("mode {mode:o} has bits beyond 07777"));
    }
    let uid = d.u32()?;
    let gid = d.u32()?;
    let sec = d.i64()?;
    let nsec = d.u32()?;
    if nsec >= 1_000_000_000 {
        return Err(format!("mtime nanoseconds {nsec} out of range"));
    }
    let count = d.u16()?;
    if count > MAX_XATTRS {
        return Err(format!("{count} xattrs, above the limit of {MAX_XATTRS}"));
    }
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(count.into());
    for _ in 0..count {
        let name = d.bytes16()?.to_vec();
        if name.is_empty() || name.len() > 255 || name.contains(&0) {
            return Err(format!("invalid xattr name \"{}\"", escaped(&name)));
        }
        if xattrs.last().is_some_and(|(prev, _)| *prev >= name) {
            return Err("xattrs not sorted by name or not unique".into());
        }
        let value = d.bytes32(MAX_XATTR_VALUE)?.to_vec();
        xattrs.push((name, value));
    }
    Ok(Meta { mode, uid, gid, mtime: Mtime { sec, nsec }, xattrs })
}

impl FileObject {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = header(ObjectKind::File);
        e.u64(self.size);
        e.u32(self.chunks.len() as u32);
        for (id, len) in &self.chunks {
            e.id(&id.0);
            e.u32(*len);
        }
        e.buf
    }

    /// Decodes and validates the object stored as `id`.
    pub fn decode(id: ObjectId, data: &[u8]) -> Result<Self> {
        decode(ObjectKind::File, id, data, |d| {
            let size = d.u64()?;
            let count = d.u32()?;
            let mut chunks = Vec::with_capacity((count as usize).min(data.len() / 36));
            let mut sum = 0u64;
            for _ in 0..count {
                let chunk = ChunkId(d.id()?);
                let len = d.u32()?;
                if len == 0 || len > MAX_CHUNK_LEN {
                    return Err(format!("chunk {chunk} has length {len}, outside 1..={MAX_CHUNK_LEN}"));
                }
                sum += u64::from(len);
                chunks.push((chunk, len));
            }
            if sum != size {
                return Err(format!("chunk lengths add up to {sum}, but the size is {size}"));
            }
            Ok(FileObject { size, chunks })
        })
    }
}

impl DirTree {
    /// The canonical encoding. Entries must already be sorted by name.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = header(ObjectKind::DirTree);
        e.u32(self.entries.len() as u32);
        for entry in &self.entries {
            e.bytes16(&entry.name);
            e.u8(entry.kind.tag());
            encode_meta(&mut e, &entry.meta);
            match &entry.kind {
                EntryKind::File { file, hardlink } => {
                    e.id(&file.0);
                    e.u32(*hardlink);
                }
                EntryKind::Dir(tree) => e.id(&tree.0),
                EntryKind::Symlink(target) => e.bytes16(target),
                EntryKind::CharDevice(rdev) | EntryKind::BlockDevice(rdev) => e.u64(*rdev),
                EntryKind::Fifo | EntryKind::Socket => {}
            }
        }
        e.buf
    }

    /// Decodes and validates the object stored as `id`.
    pub fn decode(id: ObjectId, data: &[u8]) -> Result<Self> {
        decode(ObjectKind::DirTree, id, data, |d| {
            let count = d.u32()?;
            if count > MAX_TREE_ENTRIES {
                return Err(format!("{count} entries, above the limit of {MAX_TREE_ENTRIES}"));
            }
            let mut entries: Vec<Entry> = Vec::with_capacity((count as usize).min(data.len() / 40));
            for _ in 0..count {
                let name = d.bytes16()?.to_vec();
                check_entry_name(&name).map_err(|reason| format!("entry name \"{}\": {reason}", escaped(&name)))?;
                if entries.last().is_some_and(|prev| prev.name >= name) {
                    return Err(format!("entry \"{}\" is out of order or duplicated", escaped(&name)));
                }
                let tag = d.u8()?;
                let meta = decode_meta(d)?;
                let kind = match tag {
                    1 => EntryKind::File { file: FileId(d.id()?), hardlink: d.u32()? },
                    2 => EntryKind::Dir(TreeId(d.id()?)),
                    3 => {
                        let target = d.bytes16()?.to_vec();
                        if target.is_empty() || target.len() > MAX_SYMLINK_TARGET || target.contains(&0) {
                            return Err(format!("symlink \"{}\" has an invalid target", escaped(&name)));
                        }
                        EntryKind::Symlink(target)
                    }
                    4 => EntryKind::CharDevice(d.u64()?),
                    5 => EntryKind::BlockDevice(d.u64()?),
                    6 => EntryKind::Fifo,
                    7 => EntryKind::Socket,
                    other => return Err(format!("unknown entry type {other}")),
                };
                entries.push(Entry { name, meta, kind });
            }
            Ok(DirTree { entries })
        })
    }

    /// The entry called `name`, by binary search.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| &self.entries[i])
    }
}

const MAX_SUBJECT: usize = 64 << 10;
const MAX_BODY: usize = 1 << 20;
const MAX_METADATA_ENTRIES: u32 = 1024;

impl Commit {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = header(ObjectKind::Commit);
        e.id(&self.root.0);
        encode_meta(&mut e, &self.root_meta);
        match &self.parent {
            Some(parent) => {
                e.u8(1);
                e.id(&parent.0);
            }
            None => e.u8(0),
        }
        e.i64(self.timestamp);
        e.bytes32(self.version.as_bytes());
        e.bytes32(self.subject.as_bytes());
        e.bytes32(self.body.as_bytes());
        e.u32(self.metadata.len() as u32);
        for (k, v) in &self.metadata {
            e.bytes32(k.as_bytes());
            e.bytes32(v.as_bytes());
        }
        let s = &self.stats;
        for v in [s.files, s.dirs, s.symlinks, s.specials, s.bytes] {
            e.u64(v);
        }
        e.buf
    }

    /// Decodes and validates the object stored as `id`.
    pub fn decode(id: ObjectId, data: &[u8]) -> Result<Self> {
        decode(ObjectKind::Commit, id, data, |d| {
            let root = TreeId(d.id()?);
            let root_meta = decode_meta(d)?;
            let parent = match d.u8()? {
                0 => None,
                1 => Some(CommitId(d.id()?)),
                other => return Err(format!("parent flag {other}, expected 0 or 1")),
            };
            let timestamp = d.i64()?;
            let version = d.string(MAX_SUBJECT)?;
            let subject = d.string(MAX_SUBJECT)?;
            let body = d.string(MAX_BODY)?;
            let count = d.u32()?;
            if count > MAX_METADATA_ENTRIES {
                return Err(format!("{count} metadata entries, above {MAX_METADATA_ENTRIES}"));
            }
            let mut metadata = BTreeMap::new();
            let mut last: Option<String> = None;
            for _ in 0..count {
                let k = d.string(MAX_SUBJECT)?;
                let v = d.string(MAX_SUBJECT)?;
                if last.as_ref().is_some_and(|l| *l >= k) {
                    return Err("metadata keys not sorted or not unique".into());
                }
                last = Some(k.clone());
                metadata.insert(k, v);
            }
            let stats =
                TreeStats { files: d.u64()?, dirs: d.u64()?, symlinks: d.u64()?, specials: d.u64()?, bytes: d.u64()? };
            Ok(Commit { root, root_meta, parent, timestamp, version, subject, body, metadata, stats })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            mode: 0o4755,
            uid: 0,
            gid: 42,
            mtime: Mtime { sec: 1_700_000_000, nsec: 5 },
            xattrs: vec![(b"security.capability".to_vec(), vec![1, 2, 3])],
        }
    }

    fn tree() -> DirTree {
        DirTree {
            entries: vec![
                Entry { name: b"bin".to_vec(), meta: meta(), kind: EntryKind::Dir(TreeId(ObjectId::of(b"t"))) },
                Entry {
                    name: b"ls".to_vec(),
                    meta: meta(),
                    kind: EntryKind::File { file: FileId(ObjectId::of(b"f")), hardlink: 3 },
                },
                Entry { name: b"sh".to_vec(), meta: meta(), kind: EntryKind::Symlink(b"dash".to_vec()) },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let t = tree();
        let bytes = t.encode();
        assert_eq!(DirTree::decode(ObjectId::of(&bytes), &bytes).unwrap(), t);
        let f = FileObject {
            size: 70_000,
            chunks: vec![(ChunkId(ObjectId::of(b"a")), 65_536), (ChunkId(ObjectId::of(b"b")), 4_464)],
        };
        let bytes = f.encode();
        assert_eq!(FileObject::decode(ObjectId::of(&bytes), &bytes).unwrap(), f);
        let c = Commit {
            root: TreeId(ObjectId::of(b"root")),
            root_meta: meta(),
            parent: Some(CommitId(ObjectId::of(b"p"))),
            timestamp: 1_700_000_000,
            version: "1.0".into(),
            subject: "s".into(),
            body: "b".into(),
            metadata: [("arch".to_string(), "x86_64".to_string())].into(),
            stats: TreeStats { files: 1, dirs: 2, symlinks: 3, specials: 4, bytes: 5 },
        };
        let bytes = c.encode();
        assert_eq!(Commit::decode(ObjectId::of(&bytes), &bytes).unwrap(), c);
    }

    #[test]
    fn golden_encoding() {
        // Pins the format: if this changes, every id in every repository changes (docs/format.md).
        let bytes = tree().encode();
        assert_eq!(ObjectId::of(&bytes).to_hex(), "4d2b1660e81523e59a138c9bd4e377b72050f3a7110e6796ae942cd5b5d7a25c");
    }

    fn reencode_with_name(name: &[u8]) -> Vec<u8> {
        let mut t = tree();
        t.entries.truncate(1);
        t.entries[0].name = name.to_vec();
        t.encode()
    }

    #[test]
    fn rejects_hostile_names() {
        for name in [&b".."[..], b".", b"a/b", b"", b"a\0"] {
            let bytes = reencode_with_name(name);
            let err = DirTree::decode(ObjectId::of(&bytes), &bytes).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("dirtree object"), "{err}");
        }
    }

    #[test]
    fn rejects_unsorted_truncated_trailing_and_unknown_version() {
        let mut t = tree();
        t.entries.swap(0, 1);
        let bytes = t.encode();
        assert!(DirTree::decode(ObjectId::of(&bytes), &bytes).is_err());

        let bytes = tree().encode();
        let err = DirTree::decode(ObjectId::of(b"x"), &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        let mut long = bytes.clone();
        long.push(0);
        let err = DirTree::decode(ObjectId::of(b"x"), &long).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");

        let mut v2 = bytes.clone();
        v2[4] = 2;
        let err = DirTree::decode(ObjectId::of(b"x"), &v2).unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedVersion { found: 2, .. }), "{err}");
    }

    #[test]
    fn rejects_inconsistent_file_size() {
        let f = FileObject { size: 10, chunks: vec![(ChunkId(ObjectId::of(b"a")), 9)] };
        let bytes = f.encode();
        assert!(FileObject::decode(ObjectId::of(&bytes), &bytes).is_err());
    }
}
