//! File content for reads through the mount.
//!
//! A bare repository holds every file's content whole (the object checkouts reflink), so a read is
//! a `pread` of that file, through a descriptor opened by its first read and kept open while it
//! is among the most recently read ([`OPEN_OBJECTS`]). An
//! archive repository holds zstd-compressed chunks in packs: a read decompresses and verifies
//! only the chunks it covers and keeps them in a cache bounded in bytes, so that the kernel's
//! successive reads of one chunk decompress it once. A remote's reads are
//! [`crate::remote_content`]'s.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use osdeploy_store::archive::ArchiveStore;
use osdeploy_store::bare::content_path;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::{ChunkId, FileId, Repo, StoreError};
use osdeploy_transport::lazy::LazyRemote;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::disk_cache::DiskCache;
use crate::inodes::FileContent;
use crate::remote_content::RemoteContent;

/// How many of a bare repository's objects stay open for reads.
const OPEN_OBJECTS: usize = 256;

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
        /// The most recently read objects, open.
        open: Cache<FileId, Arc<File>>,
    },
    /// An archive repository's packs, with the decoded-chunk cache.
    Archive {
        /// The packs.
        store: ArchiveStore,
        /// Decoded chunks, bounded in bytes.
        cache: Cache<ChunkId, Arc<Vec<u8>>, ChunkBytes>,
    },
    /// A remote, with the on-disk cache of what was fetched.
    Remote(RemoteContent),
}

fn io_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_owned(), error }
}

impl Content {
    /// The content source of `repo`; an archive repository's chunk cache holds up to
    /// `cache_bytes` of decoded chunks.
    pub fn new(repo: &Repo, cache_bytes: u64) -> osdeploy_store::Result<Content> {
        Ok(match (repo.bare(), repo.archive()) {
            (Some(bare), _) => {
                Content::Bare { objects_dir: bare.objects_dir().to_owned(), open: Cache::new(OPEN_OBJECTS) }
            }
            (None, Some(archive)) => Content::Archive {
                store: ArchiveStore::load(archive.packs_dir())?,
                cache: Cache::with_weighter((cache_bytes / (64 << 10)).max(16) as usize, cache_bytes, ChunkBytes),
            },
            (None, None) => unreachable!("a repository is bare or archive"),
        })
    }

    /// The content source of a remote mount, caching up to `cache_bytes` in `cache_dir`.
    pub fn remote(remote: LazyRemote, cache_dir: &Path, cache_bytes: u64) -> osdeploy_store::Result<Content> {
        Ok(Content::Remote(RemoteContent::new(remote, DiskCache::open(cache_dir, cache_bytes)?)))
    }

    /// Reads up to `size` bytes of `file` at `offset` (fewer only at its end).
    pub fn read(&self, file: &Arc<FileContent>, offset: u64, size: u32) -> osdeploy_store::Result<Vec<u8>> {
        let end = file.object.size.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        match self {
            Content::Bare { objects_dir, open } => {
                let object = open.get_or_insert_with(&file.id, || open_object(objects_dir, file).map(Arc::new))?;
                object.read_exact_at(&mut out, offset).map_err(|e| {
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
            Content::Remote(remote) => remote.read(file, offset, end, &mut out)?,
            Content::Archive { store, cache } => {
                assemble(file, offset, end, &mut out, |chunk| {
                    cache.get_or_insert_with(chunk, || store.get(ObjectKind::Chunk, &chunk.0).map(Arc::new))
                })?;
            }
        }
        Ok(out)
    }
}

/// Opens the object of `file` in `objects_dir`, refused when its size is not the file's.
fn open_object(objects_dir: &Path, file: &FileContent) -> osdeploy_store::Result<File> {
    let path = content_path(objects_dir, &file.id);
    let object = File::open(&path).map_err(|e| io_error(&path, e))?;
    let size = object.metadata().map_err(|e| io_error(&path, e))?.len();
    if size != file.object.size {
        return Err(StoreError::Corrupt {
            what: format!("file object {} ({})", file.id, path.display()),
            reason: format!("{size} bytes, the file has {}", file.object.size),
        });
    }
    Ok(object)
}

/// The index of the chunk of `file` holding byte `at`.
pub fn chunk_at(file: &FileContent, at: u64) -> usize {
    file.starts.partition_point(|&start| start <= at) - 1
}

/// Copies bytes `offset..end` of `file` into `out`, taking each chunk's bytes from `chunk`.
pub fn assemble<B: std::borrow::Borrow<Vec<u8>>>(
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
