//! Pack files and their sorted indexes (docs/format.md §3).
//!
//! A pack is an 8-byte header followed by entries, each a 42-byte entry header (kind, codec,
//! uncompressed length, stored length, id) and the stored bytes. Packs are written in the order
//! the committer meets objects (tree order), so one release's new objects lie in long contiguous
//! runs that a client fetches with few HTTP Range requests. The index lists every entry sorted
//! by (id, kind) with its offset, so a reader can find any object with one lookup and one read.
//! Both files are named by the blake3 of the pack's bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::codec::{Decoder, Encoder};
use crate::compress::{self, Codec};
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::unique_tmp_name;
use crate::id::ObjectId;
use crate::object::{MAX_CHUNK_LEN, MAX_METADATA_LEN, ObjectKind};

/// Magic of a pack file.
pub const PACK_MAGIC: &[u8; 4] = b"osdp";
/// Magic of a pack index file.
pub const INDEX_MAGIC: &[u8; 4] = b"osdi";
/// Pack and index format version.
pub const PACK_VERSION: u8 = 1;
/// Size of a pack's file header.
pub const PACK_HEADER_LEN: u64 = 8;
/// Size of the header before each entry's stored bytes.
pub const ENTRY_HEADER_LEN: u64 = 42;
const INDEX_HEADER_LEN: usize = 8 + 32 + 4 + 8;
/// The size of one pack index entry.
pub const INDEX_ENTRY_LEN: usize = 50;

/// Where one object lies in a pack, and how it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The object's id.
    pub id: ObjectId,
    /// Its kind.
    pub kind: ObjectKind,
    /// How its bytes are stored.
    pub codec: Codec,
    /// Offset of its entry header in the pack.
    pub offset: u64,
    /// Length of the stored bytes (after the entry header).
    pub stored_len: u32,
    /// Length once decoded.
    pub raw_len: u32,
}

impl IndexEntry {
    /// Bytes the entry occupies in the pack, header included.
    pub fn span(&self) -> u64 {
        ENTRY_HEADER_LEN + u64::from(self.stored_len)
    }
}

/// The largest uncompressed size an object of `kind` may declare.
pub fn raw_limit(kind: ObjectKind) -> u32 {
    match kind {
        ObjectKind::Chunk => MAX_CHUNK_LEN,
        _ => MAX_METADATA_LEN,
    }
}

/// Appends entries to a new pack in `tmp/`, hashing as it goes.
pub struct PackWriter {
    path: PathBuf,
    file: BufWriter<File>,
    hasher: blake3::Hasher,
    offset: u64,
    entries: Vec<IndexEntry>,
}

/// A pack and its index, complete in `tmp/`, not yet published.
#[derive(Debug)]
pub struct FinishedPack {
    /// blake3 of the pack's bytes; the pack and index file names.
    pub id: ObjectId,
    /// The pack in tmp/.
    pub pack_tmp: PathBuf,
    /// The index in tmp/.
    pub index_tmp: PathBuf,
    /// The pack's size in bytes.
    pub size: u64,
    /// Its entries, sorted by (id, kind).
    pub entries: Vec<IndexEntry>,
}

impl PackWriter {
    /// Starts a pack in `tmp_dir`.
    pub fn create(tmp_dir: &Path) -> Result<Self> {
        let path = tmp_dir.join(unique_tmp_name("pack"));
        let file = File::create(&path).at(&path)?;
        let mut writer = PackWriter {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            offset: 0,
            entries: Vec::new(),
        };
        let mut header = [0u8; PACK_HEADER_LEN as usize];
        header[..4].copy_from_slice(PACK_MAGIC);
        header[4] = PACK_VERSION;
        writer.write(&header)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).at(&self.path)?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Appends one object whose decoded bytes hash to `id`.
    pub fn append(&mut self, kind: ObjectKind, id: ObjectId, codec: Codec, raw_len: u32, stored: &[u8]) -> Result<()> {
        let entry = IndexEntry { id, kind, codec, offset: self.offset, stored_len: stored.len() as u32, raw_len };
        self.write(&encode_entry_header(&entry))?;
        self.write(stored)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// True when no entry was appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Flushes the pack and writes its index beside it in `tmp/`. Durability is the caller's
    /// (one syncfs for the whole transaction).
    pub fn finish(mut self) -> Result<FinishedPack> {
        self.file.flush().at(&self.path)?;
        let id = ObjectId::from(self.hasher.finalize());
        self.entries.sort_by_key(|e| (e.id, e.kind));
        let index_tmp = self.path.with_extension("idx");
        std::fs::write(&index_tmp, encode_index(id, self.offset, &self.entries)).at(&index_tmp)?;
        Ok(FinishedPack { id, pack_tmp: self.path, index_tmp, size: self.offset, entries: self.entries })
    }
}

fn encode_entry_header(e: &IndexEntry) -> Vec<u8> {
    let mut enc = Encoder::default();
    enc.u8(e.kind as u8);
    enc.u8(e.codec as u8);
    enc.u32(e.raw_len);
    enc.u32(e.stored_len);
    enc.id(&e.id);
    enc.buf
}

/// Encodes a pack index: header, then `entries` (already sorted by (id, kind)).
pub fn encode_index(pack: ObjectId, pack_size: u64, entries: &[IndexEntry]) -> Vec<u8> {
    let mut enc = Encoder::default();
    enc.buf.extend_from_slice(INDEX_MAGIC);
    enc.buf.extend_from_slice(&[PACK_VERSION, 0, 0, 0]);
    enc.id(&pack);
    enc.u32(entries.len() as u32);
    enc.u64(pack_size);
    for e in entries {
        enc.id(&e.id);
        enc.u8(e.kind as u8);
        enc.u8(e.codec as u8);
        enc.u64(e.offset);
        enc.u32(e.stored_len);
        enc.u32(e.raw_len);
    }
    enc.buf
}

/// A decoded pack index.
#[derive(Debug)]
pub struct PackIndex {
    /// The pack's id.
    pub pack: ObjectId,
    /// The pack's size.
    pub pack_size: u64,
    /// Entries sorted by (id, kind).
    pub entries: Vec<IndexEntry>,
}

/// Decodes and validates a pack index read from `what` (a path or URL, for errors): sort order,
/// sizes within limits, every entry within the pack.
pub fn decode_index(bytes: &[u8], what: &str) -> Result<PackIndex> {
    let corrupt = |reason: String| StoreError::Corrupt { what: format!("pack index {what}"), reason };
    let mut d = Decoder::new(bytes);
    if d.take(4).map_err(corrupt)? != INDEX_MAGIC {
        return Err(corrupt("bad magic, expected \"osdi\"".into()));
    }
    let version = d.take(4).map_err(corrupt)?[0];
    if version != PACK_VERSION {
        return Err(StoreError::UnsupportedVersion {
            what: format!("pack index {what}"),
            found: version.into(),
            supported: PACK_VERSION.into(),
        });
    }
    let pack = d.id().map_err(corrupt)?;
    let count = d.u32().map_err(corrupt)? as usize;
    let pack_size = d.u64().map_err(corrupt)?;
    if bytes.len() != INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN {
        return Err(corrupt(format!(
            "{} bytes, but {count} entries need {}",
            bytes.len(),
            INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN
        )));
    }
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(count);
    for i in 0..count {
        let id = d.id().map_err(corrupt)?;
        let kind_byte = d.u8().map_err(corrupt)?;
        let kind =
            ObjectKind::from_u8(kind_byte).ok_or_else(|| corrupt(format!("entry {i} has unknown kind {kind_byte}")))?;
        let codec_byte = d.u8().map_err(corrupt)?;
        let codec =
            Codec::from_u8(codec_byte).ok_or_else(|| corrupt(format!("entry {i} has unknown codec {codec_byte}")))?;
        let entry = IndexEntry {
            id,
            kind,
            codec,
            offset: d.u64().map_err(corrupt)?,
            stored_len: d.u32().map_err(corrupt)?,
            raw_len: d.u32().map_err(corrupt)?,
        };
        check_entry_bounds(&entry, pack_size).map_err(corrupt)?;
        if entries.last().is_some_and(|p| (p.id, p.kind) >= (id, kind)) {
            return Err(corrupt(format!("entry {i} ({kind} {id}) is out of order or duplicated")));
        }
        entries.push(entry);
    }
    d.finish().map_err(corrupt)?;
    Ok(PackIndex { pack, pack_size, entries })
}

fn check_entry_bounds(e: &IndexEntry, pack_size: u64) -> Result<(), String> {
    if e.raw_len > raw_limit(e.kind) {
        return Err(format!(
            "{} {} declares {} bytes, above the limit of {}",
            e.kind,
            e.id,
            e.raw_len,
            raw_limit(e.kind)
        ));
    }
    if e.stored_len > e.raw_len || (e.codec == Codec::Raw && e.stored_len != e.raw_len) {
        return Err(format!("{} {} has inconsistent stored and raw lengths", e.kind, e.id));
    }
    if e.offset < PACK_HEADER_LEN || e.offset.saturating_add(e.span()) > pack_size {
        return Err(format!(
            "{} {} at offset {} (+{}) lies outside the pack of {pack_size} bytes",
            e.kind,
            e.id,
            e.offset,
            e.span()
        ));
    }
    Ok(())
}

/// Decodes one entry from `bytes` (its entry header and stored bytes, as read from the pack at
/// `expected.offset`), checks the header against the index, decompresses within the limit and
/// verifies that the result hashes to the id. `pack` names the pack in errors.
pub fn decode_entry(bytes: &[u8], expected: &IndexEntry, pack: &str) -> Result<Vec<u8>> {
    let what = || format!("{} object {} in pack {pack}", expected.kind, expected.id);
    let header = encode_entry_header(expected);
    if bytes.len() as u64 != expected.span() || bytes[..header.len()] != header[..] {
        return Err(StoreError::Corrupt {
            what: what(),
            reason: format!("the entry at offset {} does not match the pack index", expected.offset),
        });
    }
    let raw = compress::decompress(expected.codec, &bytes[header.len()..], expected.raw_len, &what)?;
    let actual = ObjectId::of(&raw);
    if actual != expected.id {
        return Err(StoreError::HashMismatch { kind: expected.kind, id: expected.id, actual });
    }
    Ok(raw)
}

/// Reads and verifies one object from an open pack file.
pub fn read_entry(pack_file: &File, entry: &IndexEntry, pack_path: &Path) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; entry.span() as usize];
    pack_file.read_exact_at(&mut buf, entry.offset).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StoreError::Corrupt {
            what: format!("pack {}", pack_path.display()),
            reason: format!("truncated: {} {} at offset {} lies past its end", entry.kind, entry.id, entry.offset),
        },
        _ => StoreError::Io { path: pack_path.into(), error: e },
    })?;
    decode_entry(&buf, entry, &pack_path.display().to_string())
}

/// Checks a pack file against its name and index: its size, its header, every object
/// (decompressed within its limit and hashed, on all cores) and the blake3 of the whole file.
/// Returns the problems found, each naming the pack; I/O failures are errors.
pub fn verify_pack_file(path: &Path, id: &ObjectId, pack_size: u64, entries: &[IndexEntry]) -> Result<Vec<String>> {
    use rayon::prelude::*;
    let name = path.display().to_string();
    let mut file = File::open(path).at(path)?;
    let mut problems = Vec::new();
    let len = file.metadata().at(path)?.len();
    if len != pack_size {
        problems.push(format!("pack {name}: {len} bytes, its index says {pack_size}"));
    }
    let mut header = [0u8; PACK_HEADER_LEN as usize];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => problems.extend(check_pack_header(&header, &name).err().map(|e| e.to_string())),
        Err(e) => problems.push(format!("pack {name}: no header: {e}")),
    }
    problems.par_extend(entries.par_iter().filter_map(|e| read_entry(&file, e, path).err().map(|err| err.to_string())));
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&mut file).at(path)?;
    let actual = ObjectId::from(hasher.finalize());
    if actual != *id {
        problems.push(format!("pack {name}: its bytes hash to {actual}, not to its name"));
    }
    Ok(problems)
}

/// Validates a pack file's header.
pub fn check_pack_header(header: &[u8], what: &str) -> Result<()> {
    if header.len() < PACK_HEADER_LEN as usize || &header[..4] != PACK_MAGIC {
        return Err(StoreError::Corrupt {
            what: format!("pack {what}"),
            reason: "bad magic, expected \"osdp\"".into(),
        });
    }
    if header[4] != PACK_VERSION {
        return Err(StoreError::UnsupportedVersion {
            what: format!("pack {what}"),
            found: header[4].into(),
            supported: PACK_VERSION.into(),
        });
    }
    Ok(())
}
