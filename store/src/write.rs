//! One write transaction over either repository mode.

use std::fs::File;
use std::path::Path;

use serde::Serialize;

use crate::archive::ArchiveWriter;
use crate::bare::BareWriter;
use crate::chunker::Chunker;
use crate::error::{IoContext, Result};
use crate::id::{ChunkId, FileId, ObjectId};
use crate::object::{FileObject, ObjectKind};

/// What a write transaction stored and what it found already stored.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WriteStats {
    /// Chunks not in the repository before.
    pub chunks_new: u64,
    /// Chunks the repository already had (deduplicated).
    pub chunks_reused: u64,
    /// Uncompressed bytes of the new chunks.
    pub bytes_new: u64,
    /// Uncompressed bytes of the reused chunks.
    pub bytes_reused: u64,
    /// Bytes written to storage for new objects (compressed in archive repositories).
    pub bytes_stored: u64,
    /// New metadata objects (file, dirtree, commit).
    pub metadata_new: u64,
}

/// The writer of a transaction ([`crate::Repo::transaction`]): objects are added, then the
/// transaction makes them durable and visible at once. Nothing a transaction wrote is reachable
/// before a ref points to it.
pub enum ObjectWriter<'s> {
    /// Into packs.
    Archive(Box<ArchiveWriter<'s>>),
    /// Into whole-file content and the SQLite index.
    Bare(BareWriter<'s>),
}

impl ObjectWriter<'_> {
    /// Chunks and stores the regular file at `path`; returns its file object.
    pub fn add_file(&mut self, path: &Path, chunker: &Chunker) -> Result<(FileId, FileObject)> {
        let file = File::open(path).at(path)?;
        match self {
            ObjectWriter::Archive(w) => {
                let mut chunks = Vec::new();
                let size = chunker.split(file, path, |chunk| {
                    let id = ObjectId::of(chunk);
                    chunks.push((ChunkId(id), chunk.len() as u32));
                    w.add_chunk(id, chunk)
                })?;
                let object = FileObject { size, chunks };
                let id = w.add_metadata(ObjectKind::File, &object.encode())?;
                Ok((FileId(id), object))
            }
            ObjectWriter::Bare(w) => w.add_file(file, path, chunker),
        }
    }

    /// Stores an encoded metadata object unless present; returns its id.
    pub fn add_metadata(&mut self, kind: ObjectKind, raw: &[u8]) -> Result<ObjectId> {
        match self {
            ObjectWriter::Archive(w) => w.add_metadata(kind, raw),
            ObjectWriter::Bare(w) => w.add_metadata(kind, raw),
        }
    }

    /// The transaction's counters so far.
    pub fn stats(&self) -> WriteStats {
        match self {
            ObjectWriter::Archive(w) => w.stats,
            ObjectWriter::Bare(w) => w.stats,
        }
    }

    /// Makes everything durable and visible (see the writers' `finish`). Returns the counters and,
    /// for an archive repository, the packs to register with [`crate::Repo::register_packs`].
    pub(crate) fn finish(self, repo_path: &Path) -> Result<(WriteStats, Vec<crate::pack::FinishedPack>)> {
        match self {
            ObjectWriter::Archive(w) => {
                let (packs, stats) = (*w).finish(repo_path)?;
                Ok((stats, packs))
            }
            ObjectWriter::Bare(w) => Ok((w.finish(repo_path)?, Vec::new())),
        }
    }

    /// Stores a file object whose chunks are known, as a pull receives it: `chunk` returns a
    /// chunk's verified bytes (from the repository itself or from what was fetched).
    pub fn add_file_object(
        &mut self,
        id: FileId,
        object: &FileObject,
        mut chunk: impl FnMut(&ChunkId) -> Result<Vec<u8>>,
    ) -> Result<()> {
        match self {
            ObjectWriter::Archive(w) => {
                for (c, _) in &object.chunks {
                    if !w.has(ObjectKind::Chunk, &c.0) {
                        let data = chunk(c)?;
                        w.add_chunk(c.0, &data)?;
                    }
                }
                w.add_metadata(ObjectKind::File, &object.encode())?;
                Ok(())
            }
            ObjectWriter::Bare(w) => w.add_file_object(id, object, chunk),
        }
    }

    /// Records a file object whose content a killed pull left complete in a bare repository's
    /// `objects/` (see [`crate::bare::BareStore::has_unrecorded_content`]); an archive
    /// repository never has such content.
    pub fn adopt_file_object(&mut self, id: FileId, object: &FileObject) {
        if let ObjectWriter::Bare(w) = self {
            w.adopt_file_object(id, object);
        }
    }

    /// Stores many file objects whose chunks are known (see [`Self::add_file_object`]); `chunk`
    /// appends a chunk's verified bytes to the buffer it is given. A bare repository writes the
    /// files with all cores.
    pub fn add_file_objects(
        &mut self,
        files: &[(FileId, FileObject)],
        mut chunk: impl FnMut(&ChunkId, &mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        match self {
            ObjectWriter::Bare(w) => w.add_file_objects(files, chunk),
            ObjectWriter::Archive(_) => files.iter().try_for_each(|(id, object)| {
                self.add_file_object(*id, object, |c| {
                    let mut data = Vec::new();
                    chunk(c, &mut data)?;
                    Ok(data)
                })
            }),
        }
    }
}
