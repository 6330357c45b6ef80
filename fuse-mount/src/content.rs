//! File content for reads through the mount.
//!
//! A bare repository holds every file's content whole (the object checkouts reflink), so a read is
//! a `pread` of that file, through a descriptor opened once per open of the mounted file. An
//! archive repository holds zstd-compressed chunks in packs: a read decompresses and verifies
//! only the chunks it covers and keeps them in a cache bounded in bytes, so that the kernel's
//! successive reads of one chunk decompress it once. A remote (`mount --remote`) is asked for
//! the chunks a read covers that the on-disk cache lacks — and, when the file is read from its
//! start or near where its last read ended, for the next [`READ_AHEAD`] bytes of it too — in as
//! few Range requests as their places in the packs allow.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use osdeploy_store::archive::ArchiveStore;
use osdeploy_store::bare::content_path;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::{ChunkId, FileId, Repo, StoreError};
use osdeploy_transport::TransportError;
use osdeploy_transport::lazy::LazyRemote;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::disk_cache::DiskCache;
use crate::inodes::FileContent;

/// How far a remote mount reads ahead of a sequential reader.
pub const READ_AHEAD: u64 = 8 << 20;

/// Weighs a cached chunk by its length.
#[derive(Clone)]
pub struct ChunkBytes;

impl Weighter<ChunkId, Arc<Vec<u8>>> for ChunkBytes {
    fn weight(&self, _: &ChunkId, chunk: &Arc<Vec<u8>>) -> u64 {
        chunk.len().max(1) as u64
    }
}

/// Where file content comes from.
pub enum Content {
    /// A bare repository's `objects/` directory.
    Bare {
        /// The directory.
        objects_dir: PathBuf,
    },
    /// An archive repository's packs, with the decoded-chunk cache.
    Archive {
        /// The packs.
        store: ArchiveStore,
        /// Decoded chunks, bounded in bytes.
        cache: Cache<ChunkId, Arc<Vec<u8>>, ChunkBytes>,
    },
    /// A remote, with the on-disk cache of what was fetched.
    Remote {
        /// The connection.
        remote: LazyRemote,
        /// Fetched chunks, bounded in bytes.
        cache: DiskCache,
        /// Per file: where its last read ended (a read near there is sequential), and a lock that
        /// makes the kernel's concurrent reads of one file wait for one fetch instead of
        /// fetching the same chunks twice.
        readers: Mutex<HashMap<FileId, Reader>>,
    },
}

/// Where a file's last read ended, and the lock its fetches take.
type Reader = (u64, Arc<Mutex<()>>);

/// A remote's failure, as the mount reports it.
fn remote_error(error: TransportError) -> StoreError {
    match error {
        TransportError::Store(error) => error,
        other => StoreError::Io { path: PathBuf::from("(remote)"), error: std::io::Error::other(other.to_string()) },
    }
}

fn io_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_owned(), error }
}

impl Content {
    /// The content source of `repo`; an archive repository's chunk cache holds up to
    /// `cache_bytes` of decoded chunks.
    pub fn new(repo: &Repo, cache_bytes: u64) -> osdeploy_store::Result<Content> {
        Ok(match (repo.bare(), repo.archive()) {
            (Some(bare), _) => Content::Bare { objects_dir: bare.objects_dir().to_owned() },
            (None, Some(archive)) => Content::Archive {
                store: ArchiveStore::load(archive.packs_dir())?,
                cache: Cache::with_weighter((cache_bytes / (64 << 10)).max(16) as usize, cache_bytes, ChunkBytes),
            },
            (None, None) => unreachable!("a repository is bare or archive"),
        })
    }

    /// The content source of a remote mount, caching up to `cache_bytes` in `cache_dir`.
    pub fn remote(remote: LazyRemote, cache_dir: &Path, cache_bytes: u64) -> osdeploy_store::Result<Content> {
        Ok(Content::Remote { remote, cache: DiskCache::open(cache_dir, cache_bytes)?, readers: Mutex::default() })
    }

    /// Opens what reads of `file` need: its object's content in a bare repository, nothing
    /// otherwise.
    pub fn open(&self, file: &FileContent) -> osdeploy_store::Result<Option<File>> {
        match self {
            Content::Bare { objects_dir } => {
                let path = content_path(objects_dir, &file.id);
                File::open(&path).map(Some).map_err(|e| io_error(&path, e))
            }
            Content::Archive { .. } | Content::Remote { .. } => Ok(None),
        }
    }

    /// Reads up to `size` bytes of `file` at `offset` (fewer only at its end); `opened` is what
    /// [`Content::open`] returned for it.
    pub fn read(
        &self,
        file: &FileContent,
        opened: Option<&File>,
        offset: u64,
        size: u32,
    ) -> osdeploy_store::Result<Vec<u8>> {
        let end = file.object.size.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        match (self, opened) {
            (Content::Bare { objects_dir }, Some(handle)) => {
                handle.read_exact_at(&mut out, offset).map_err(|e| {
                    let path = content_path(objects_dir, &file.id);
                    match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => StoreError::Corrupt {
                            what: format!("file object {} ({})", file.id, path.display()),
                            reason: format!("shorter than its {} bytes", file.object.size),
                        },
                        _ => io_error(&path, e),
                    }
                })?;
            }
            (Content::Bare { objects_dir }, None) => {
                let path = content_path(objects_dir, &file.id);
                let handle = File::open(&path).map_err(|e| io_error(&path, e))?;
                return self.read(file, Some(&handle), offset, size);
            }
            (Content::Remote { remote, cache, readers }, _) => {
                let (sequential, file_lock) = {
                    let mut readers = readers.lock().expect("no panics hold this lock");
                    let reader = readers.entry(file.id).or_insert_with(|| (0, Arc::default()));
                    // The kernel's own read-ahead sends neighbouring reads out of order.
                    let sequential = offset == 0 || offset.abs_diff(reader.0) <= READ_AHEAD;
                    reader.0 = end;
                    (sequential, reader.1.clone())
                };
                let _fetching = file_lock.lock().expect("no panics hold this lock");
                let mut fetched = fetch_missing(remote, cache, file, offset, end, sequential)?;
                assemble(file, offset, end, &mut out, |chunk| {
                    match fetched.remove(chunk).or_else(|| cache.get(chunk)) {
                        Some(bytes) => Ok(bytes),
                        None => Ok(remote.fetch_chunks(&[*chunk]).map_err(remote_error)?.remove(0)),
                    }
                })?;
            }
            (Content::Archive { store, cache }, _) => {
                assemble(file, offset, end, &mut out, |chunk| {
                    cache.get_or_insert_with(chunk, || store.get(ObjectKind::Chunk, &chunk.0).map(Arc::new))
                })?;
            }
        }
        Ok(out)
    }
}

/// The index of the chunk of `file` holding byte `at`.
fn chunk_at(file: &FileContent, at: u64) -> usize {
    file.starts.partition_point(|&start| start <= at) - 1
}

/// Copies bytes `offset..end` of `file` into `out`, taking each chunk's bytes from `chunk`.
fn assemble<B: std::borrow::Borrow<Vec<u8>>>(
    file: &FileContent,
    offset: u64,
    end: u64,
    out: &mut [u8],
    mut chunk: impl FnMut(&ChunkId) -> osdeploy_store::Result<B>,
) -> osdeploy_store::Result<()> {
    let mut at = offset;
    for (index, (id, len)) in file.object.chunks.iter().enumerate().skip(chunk_at(file, offset)) {
        let start = file.starts[index];
        if start >= end {
            break;
        }
        let bytes = chunk(id)?;
        let bytes = bytes.borrow();
        if bytes.len() != *len as usize {
            return Err(StoreError::Corrupt {
                what: format!("file object {}", file.id),
                reason: format!("chunk {id} is {} bytes, the file object says {len}", bytes.len()),
            });
        }
        let from = (at - start) as usize;
        let to = ((end - start) as usize).min(bytes.len());
        let dest = (at - offset) as usize;
        out[dest..dest + (to - from)].copy_from_slice(&bytes[from..to]);
        at = start + to as u64;
    }
    Ok(())
}

/// Fetches, into `cache`, the chunks of `file`'s bytes `offset..end` that it lacks; for a
/// `sequential` reader that comes within half of [`READ_AHEAD`] of what was fetched, the next
/// [`READ_AHEAD`] bytes too, in one go instead of a few chunks with every read. Returns what it
/// fetched (the cache may not keep it all).
fn fetch_missing(
    remote: &LazyRemote,
    cache: &DiskCache,
    file: &FileContent,
    offset: u64,
    end: u64,
    sequential: bool,
) -> osdeploy_store::Result<HashMap<ChunkId, Vec<u8>>> {
    let (first, last) = (chunk_at(file, offset), file.starts.partition_point(|&start| start < end));
    let cached = |index: usize| cache.contains(&file.object.chunks[index].0);
    let refill = sequential && !cached(chunk_at(file, (end + READ_AHEAD / 2).min(file.object.size - 1)));
    if !refill && (first..last).all(cached) {
        return Ok(HashMap::new());
    }
    let wanted = if refill { file.starts.partition_point(|&start| start < end + READ_AHEAD) } else { last };
    let missing: Vec<ChunkId> =
        file.object.chunks[first..wanted].iter().map(|(c, _)| *c).filter(|c| !cache.contains(c)).collect();
    let mut fetched = HashMap::new();
    if !missing.is_empty() {
        for (chunk, bytes) in missing.iter().zip(remote.fetch_chunks(&missing).map_err(remote_error)?) {
            cache.put(chunk, &bytes)?;
            fetched.insert(*chunk, bytes);
        }
    }
    Ok(fetched)
}
