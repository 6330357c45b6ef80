//! File content for reads through the mount.
//!
//! A bare repository holds every file's content whole (the object checkouts reflink), so a read is
//! a `pread` of that file, through a descriptor opened once per open of the mounted file. An
//! archive repository holds zstd-compressed chunks in packs: a read decompresses and verifies
//! only the chunks it covers and keeps them in a cache bounded in bytes, so that the kernel's
//! successive reads of one chunk decompress it once.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use osdeploy_store::archive::ArchiveStore;
use osdeploy_store::bare::content_path;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::{ChunkId, Repo, StoreError};
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::inodes::FileContent;

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

    /// Opens what reads of `file` need: its object's content in a bare repository, nothing in an
    /// archive one.
    pub fn open(&self, file: &FileContent) -> osdeploy_store::Result<Option<File>> {
        match self {
            Content::Bare { objects_dir } => {
                let path = content_path(objects_dir, &file.id);
                File::open(&path).map(Some).map_err(|e| io_error(&path, e))
            }
            Content::Archive { .. } => Ok(None),
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
            (Content::Archive { store, cache }, _) => {
                // The chunk holding `offset`, then on until `end`.
                let first = file.starts.partition_point(|&start| start <= offset) - 1;
                let mut at = offset;
                for (index, (chunk, len)) in file.object.chunks.iter().enumerate().skip(first) {
                    let start = file.starts[index];
                    if start >= end {
                        break;
                    }
                    let bytes =
                        cache.get_or_insert_with(chunk, || store.get(ObjectKind::Chunk, &chunk.0).map(Arc::new))?;
                    if bytes.len() != *len as usize {
                        return Err(StoreError::Corrupt {
                            what: format!("file object {}", file.id),
                            reason: format!("chunk {chunk} is {} bytes, the file object says {len}", bytes.len()),
                        });
                    }
                    let from = (at - start) as usize;
                    let to = ((end - start) as usize).min(bytes.len());
                    let dest = (at - offset) as usize;
                    out[dest..dest + (to - from)].copy_from_slice(&bytes[from..to]);
                    at = start + to as u64;
                }
            }
        }
        Ok(out)
    }
}
