//! Writing a pull's new files while their chunks arrive: each file is written as soon as the
//! last chunk it waits for is staged, and a fetched chunk stays staged only while a file not yet
//! written uses it.

use std::collections::{HashMap, HashSet};

use osdeploy_store::object::{FileObject, ObjectKind};
use osdeploy_store::write::ObjectWriter;
use osdeploy_store::{FileId, ObjectId, Repo};

use crate::error::TransportError;
use crate::staging::Staging;

/// New files waiting for their chunks: each is written as soon as the last one is staged.
pub(crate) struct Assembler {
    files: Vec<Option<(FileId, FileObject)>>,
    /// Per file, the chunks it still waits for.
    remaining: Vec<u32>,
    /// Chunk → the files waiting for it to arrive.
    waiting: HashMap<ObjectId, Vec<usize>>,
    /// Fetched chunk → how many files not yet written use it (it must stay staged until 0).
    needed: HashMap<ObjectId, u32>,
    ready: Vec<usize>,
}

impl Assembler {
    /// Takes the new files and the chunks being fetched for them.
    pub(crate) fn new(files: Vec<(FileId, FileObject)>, fetched: &[(ObjectId, ObjectKind)]) -> Self {
        let fetched: HashSet<ObjectId> = fetched.iter().map(|(id, _)| *id).collect();
        let mut assembler = Assembler {
            files: Vec::new(),
            remaining: Vec::new(),
            waiting: HashMap::new(),
            needed: HashMap::new(),
            ready: Vec::new(),
        };
        for (id, object) in files {
            let n = assembler.files.len();
            let mut awaited: Vec<ObjectId> =
                object.chunks.iter().map(|(c, _)| c.0).filter(|c| fetched.contains(c)).collect();
            awaited.sort_unstable();
            awaited.dedup();
            for chunk in &awaited {
                assembler.waiting.entry(*chunk).or_default().push(n);
                *assembler.needed.entry(*chunk).or_default() += 1;
            }
            assembler.remaining.push(awaited.len() as u32);
            if awaited.is_empty() {
                assembler.ready.push(n);
            }
            assembler.files.push(Some((id, object)));
        }
        assembler
    }

    /// Notes newly staged objects.
    pub(crate) fn staged(&mut self, ids: &[(ObjectId, ObjectKind)]) {
        for (id, _) in ids {
            for n in self.waiting.remove(id).unwrap_or_default() {
                self.remaining[n] -= 1;
                if self.remaining[n] == 0 {
                    self.ready.push(n);
                }
            }
        }
    }

    /// Writes the files whose chunks are all at hand.
    pub(crate) fn write_ready(
        &mut self,
        writer: &mut ObjectWriter,
        staged: &Staging,
        repo: &Repo,
    ) -> Result<(), TransportError> {
        let files: Vec<_> = self.ready.drain(..).filter_map(|n| self.files[n].take()).collect();
        for (_, object) in &files {
            let mut used: Vec<ObjectId> = object.chunks.iter().map(|(c, _)| c.0).collect();
            used.sort_unstable();
            used.dedup();
            for chunk in used {
                if let Some(count) = self.needed.get_mut(&chunk) {
                    *count -= 1;
                }
            }
        }
        writer.add_file_objects(&files, |chunk, out| {
            if staged.has(ObjectKind::Chunk, &chunk.0) {
                staged.read_into(ObjectKind::Chunk, &chunk.0, out)
            } else {
                out.extend_from_slice(&repo.read(ObjectKind::Chunk, &chunk.0)?);
                Ok(())
            }
        })?;
        Ok(())
    }

    /// True while a file not yet written uses this fetched chunk.
    pub(crate) fn needs(&self, chunk: &ObjectId) -> bool {
        self.needed.get(chunk).is_some_and(|n| *n > 0)
    }

    /// Checks that every file was written.
    pub(crate) fn finish(self) -> Result<(), TransportError> {
        match self.waiting.keys().next() {
            None => Ok(()),
            Some(chunk) => Err(TransportError::Invalid {
                what: format!("chunk {chunk}"),
                url: "the remote".into(),
                reason: "it was wanted but never arrived".into(),
            }),
        }
    }
}
