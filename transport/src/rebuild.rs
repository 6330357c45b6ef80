//! Rebuilding a pull's files from deltas as the deltas arrive: each delta is applied to the base
//! content the node holds, the result is verified chunk by chunk against the file object, and the
//! file is written like one assembled from chunks. A delta that fails to apply or verify is
//! reported, and its file is fetched as chunks instead.
//!
//! A delta that names other files of the release (an initramfs made of the release's modules:
//! [`osdeploy_store::delta::codec::DeltaCodec::GzipTree`]) reads them where this pull writes them.
//! In a bare repository it is applied on a thread of its own as soon as it arrives: decoding what
//! it does not name (against its base, if at all) runs while the pull is still fetching, and each
//! read of a named file waits until the pull has written it (the files it names are rebuilt
//! first). Its file is written by [`DeltaBuilder::build_deferred`], after the pull's other files. An archive repository applies it there, reading only files it held before: a pull
//! into one cannot read its own uncommitted files, so such a file falls back to chunks when it
//! names one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use osdeploy_store::bare::read_content;
use osdeploy_store::delta::object::DeltaObject;
use osdeploy_store::fsutil::read_ahead;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::write::ObjectWriter;
use osdeploy_store::{FileId, ObjectId, Repo, StoreError};
use rayon::prelude::*;

use crate::error::TransportError;
use crate::plan::{FileSource, PlannedFile};
use crate::staging::Staging;

/// Files applied at once: bounds the contents held in memory.
const APPLY_BATCH: usize = 32;

/// A file and the delta that rebuilds it.
type Job<'p> = (&'p PlannedFile, DeltaObject);

/// A file's content rebuilt from its delta and verified, or why not.
type Rebuilt = Result<Vec<u8>, StoreError>;

/// The content a delta starts from, read from the repository, or why not.
type Base = Result<Vec<u8>, StoreError>;

/// A file whose delta reads other files of the release, applied last (archive repositories).
struct Deferred<'p> {
    file: &'p PlannedFile,
    delta: DeltaObject,
}

/// The pull's new files not written yet, shared with the threads of deltas that read files of the
/// release: such a read waits until its file is written, or until nothing more will be.
struct Unwritten {
    state: Mutex<Writes>,
    changed: Condvar,
}

/// What [`Unwritten`] guards.
struct Writes {
    files: HashSet<FileId>,
    pull: Pull,
}

/// How far the pull's writing is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pull {
    /// Files are still being written: a read of an unwritten one waits.
    Writing,
    /// Every file the pull writes is written (or has failed): reads wait no longer.
    Written,
    /// The pull ended before: reads fail.
    Abandoned,
}

impl Unwritten {
    fn new(files: HashSet<FileId>) -> Self {
        Unwritten { state: Mutex::new(Writes { files, pull: Pull::Writing }), changed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Writes> {
        // Its holders only remove ids and set the state: a panic leaves it consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn written(&self, ids: impl IntoIterator<Item = FileId>) {
        let mut writes = self.lock();
        for id in ids {
            writes.files.remove(&id);
        }
        self.changed.notify_all();
    }

    /// Ends the waits: `Pull::Written` lets them read, `Pull::Abandoned` makes them fail.
    fn settle(&self, pull: Pull) {
        self.lock().pull = pull;
        self.changed.notify_all();
    }

    /// Waits until file `id` is written or nothing more will be; false when the pull was abandoned.
    fn wait_for(&self, id: &FileId) -> bool {
        let mut writes = self.lock();
        while writes.files.contains(id) && writes.pull == Pull::Writing {
            writes = self.changed.wait(writes).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        writes.pull != Pull::Abandoned
    }
}

/// New files waiting for their delta.
pub(crate) struct DeltaBuilder<'p> {
    /// Delta id → the files it rebuilds.
    waiting: HashMap<ObjectId, Vec<&'p PlannedFile>>,
    /// Deltas staged and not yet applied.
    ready: Vec<ObjectId>,
    /// Files whose delta failed to apply or verify.
    failed: Vec<&'p PlannedFile>,
    /// Files whose delta reads other files of the release, applied last (archive repositories).
    deferred: Vec<Deferred<'p>>,
    /// Those being rebuilt on threads of their own (bare repositories).
    started: Vec<(&'p PlannedFile, JoinHandle<Rebuilt>)>,
    /// The files those deltas read, each with its place among them: rebuilt first, in that order.
    named: HashMap<FileId, usize>,
    /// The pull's new files not written yet (those an interrupted pull left are written).
    unwritten: Arc<Unwritten>,
}

impl<'p> DeltaBuilder<'p> {
    /// Takes the files to rebuild from deltas; those whose delta is staged already are ready.
    /// In a bare repository the contents the deltas start from are read ahead in the background
    /// meanwhile: one after another, cold, their reads took half the time of a kernel update's
    /// rebuilds.
    pub(crate) fn new(files: &'p [PlannedFile], staged: &Staging, repo: &Repo) -> Self {
        let mut waiting: HashMap<ObjectId, Vec<&PlannedFile>> = HashMap::new();
        let mut bases = Vec::new();
        for file in files {
            if let FileSource::Delta(delta) = &file.source {
                waiting.entry(delta.entry.id).or_default().push(file);
                bases
                    .extend(repo.bare().map(|bare| ((delta.pack, delta.entry.offset), bare.content_path(&delta.base))));
            }
        }
        if !bases.is_empty() {
            // In the order the deltas arrive and are applied: the pack's.
            bases.sort_unstable();
            let bases: Vec<_> = bases.into_iter().map(|(_, path)| path).collect();
            // A hint: its thread is left to finish on its own.
            let _ = std::thread::Builder::new().name("read-ahead".into()).spawn(move || read_ahead(&bases));
        }
        let mut ready: Vec<ObjectId> = waiting.keys().filter(|id| staged.has(ObjectKind::Delta, id)).copied().collect();
        ready.sort_unstable();
        let unwritten = files.iter().filter(|f| f.source != FileSource::Adopted).map(|f| f.id).collect();
        DeltaBuilder {
            waiting,
            ready,
            failed: Vec::new(),
            deferred: Vec::new(),
            started: Vec::new(),
            named: HashMap::new(),
            unwritten: Arc::new(Unwritten::new(unwritten)),
        }
    }

    /// Notes newly staged objects.
    pub(crate) fn staged(&mut self, ids: &[(ObjectId, ObjectKind)]) {
        self.ready.extend(
            ids.iter()
                .filter(|(id, kind)| *kind == ObjectKind::Delta && self.waiting.contains_key(id))
                .map(|(id, _)| *id),
        );
    }

    /// Applies the staged deltas (on all cores) and writes the files they rebuild.
    pub(crate) fn build_ready(
        &mut self,
        writer: &mut ObjectWriter,
        staged: &Staging,
        repo: &Repo,
    ) -> Result<(), TransportError> {
        let mut jobs: Vec<Job<'p>> = Vec::new();
        for id in std::mem::take(&mut self.ready) {
            let Some(files) = self.waiting.remove(&id) else { continue };
            let delta = DeltaObject::decode(id, &staged.get(ObjectKind::Delta, &id)?);
            for file in files {
                match &delta {
                    Ok(delta) if delta.target == file.id && delta.reads_release_files() => {
                        match delta.release_files() {
                            Ok(names) => {
                                for name in &names {
                                    let next = self.named.len();
                                    self.named.entry(*name).or_insert(next);
                                }
                                self.start_reading(file, delta.clone(), &names, repo);
                            }
                            Err(e) => self.fail(file, &e.to_string()),
                        }
                    }
                    Ok(delta) if delta.target == file.id => jobs.push((file, delta.clone())),
                    Ok(delta) => self.fail(file, &format!("delta {id} rebuilds {}, not this file", delta.target)),
                    Err(e) => self.fail(file, &e.to_string()),
                }
            }
        }
        // The files a delta reads go first, in the order it reads them, so that its waits are short
        // (an initramfs's segments start one after another as their modules are written).
        jobs.sort_by_key(|(file, _)| self.named.get(&file.id).copied().unwrap_or(usize::MAX));
        // Three stages overlap: this thread reads a batch's bases (the repository is not shared
        // across threads) and writes the files of a batch applied before, while another thread
        // applies the batch read before on all cores. At most three batches are held at once (one
        // being read, two read and not yet written), which bounds the contents in memory.
        std::thread::scope(|scope| {
            let (to_apply, batches) = mpsc::channel::<(&[Job<'p>], Vec<Base>)>();
            let (to_write, applied) = mpsc::channel();
            scope.spawn(move || {
                for (batch, bases) in batches {
                    let built: Vec<_> = batch
                        .par_iter()
                        .zip(bases)
                        .map(|((file, delta), base)| base.and_then(|base| delta.apply(&base, &file.object)))
                        .collect();
                    if to_write.send((batch, built)).is_err() {
                        break;
                    }
                }
            });
            let mut in_flight = 0;
            for batch in jobs.chunks(APPLY_BATCH) {
                let bases = batch.iter().map(|(_, delta)| base_of(delta, repo)).collect();
                if in_flight == 2 {
                    let (done, built) = applied.recv().expect("only a panic ends the applying thread early");
                    self.write_built(writer, done, built)?;
                    in_flight -= 1;
                }
                to_apply.send((batch, bases)).expect("only a panic ends the applying thread early");
                in_flight += 1;
            }
            drop(to_apply);
            for (done, built) in applied {
                self.write_built(writer, done, built)?;
            }
            Ok::<_, TransportError>(())
        })?;
        Ok(())
    }

    /// In a bare repository, starts applying a delta that reads the files `names` of the release
    /// on a thread of its own; each read waits until the pull has written its file. An archive
    /// repository applies it last, in [`Self::build_deferred`].
    fn start_reading(&mut self, file: &'p PlannedFile, delta: DeltaObject, names: &[FileId], repo: &Repo) {
        let Some(bare) = repo.bare() else {
            self.deferred.push(Deferred { file, delta });
            return;
        };
        // The base, if the delta reads it, is read on the delta's own thread (the pull's goes on):
        // an initramfs's is 36 MB.
        let base = match delta.reads_base().then(|| repo.file_object(&delta.base)).transpose() {
            Ok(base) => base.map(|base| (bare.content_path(&delta.base), base.size)),
            Err(e) => return self.fail(file, &e.to_string()),
        };
        let paths: HashMap<FileId, PathBuf> = names.iter().map(|id| (*id, bare.content_path(id))).collect();
        let (object, unwritten) = (file.object.clone(), Arc::clone(&self.unwritten));
        let apply = move || {
            let base = match &base {
                Some((path, size)) => read_content(path, &delta.base, *size)?,
                None => Vec::new(),
            };
            let read = |id: &FileId, _: u64| match paths.get(id) {
                Some(path) if unwritten.wait_for(id) => read_written(id, path),
                Some(_) => Err("the pull ended before it was written".to_string()),
                None => Err(format!("file {id} of the release is not among those the delta names")),
            };
            delta.apply_with(&base, &object, &read)
        };
        match std::thread::Builder::new().name("release-delta".into()).spawn(apply) {
            Ok(thread) => self.started.push((file, thread)),
            Err(e) => self.fail(file, &format!("no thread to rebuild it on: {e}")),
        }
    }

    /// Applies the deltas held back because they read other files of the release, once those
    /// are written (by `writer`, not yet committed, or held before), and writes the files of those
    /// started earlier; returns the files whose delta failed, to be fetched as chunks.
    pub(crate) fn build_deferred(
        &mut self,
        writer: &mut ObjectWriter,
        repo: &Repo,
    ) -> Result<Vec<&'p PlannedFile>, TransportError> {
        // A bare repository holds the files the pull just wrote, not yet committed, at their
        // content paths; an archive repository reads only what it held before.
        let read = |id: &FileId, _: u64| -> Result<Vec<u8>, String> {
            match repo.bare() {
                Some(bare) => read_written(id, &bare.content_path(id)),
                None => {
                    repo.file_content(id).map_err(|e| format!("file {id} of the release is not readable here: {e}"))
                }
            }
        };
        // Every file of the pull is written by now (or failed): reads that wait go on.
        self.unwritten.settle(Pull::Written);
        for Deferred { file, delta } in std::mem::take(&mut self.deferred) {
            let built = base_of(&delta, repo).and_then(|base| delta.apply_with(&base, &file.object, &read));
            match built {
                Ok(content) => write_contents(writer, &[(file, content)])?,
                Err(e) => self.fail(file, &e.to_string()),
            }
        }
        for (file, thread) in std::mem::take(&mut self.started) {
            match thread.join() {
                Ok(Ok(content)) => write_contents(writer, &[(file, content)])?,
                Ok(Err(e)) => self.fail(file, &e.to_string()),
                Err(_) => self.fail(file, "its rebuild panicked"),
            }
        }
        Ok(std::mem::take(&mut self.failed))
    }

    /// True while a file not yet written waits for this delta.
    pub(crate) fn needs(&self, id: &ObjectId) -> bool {
        self.waiting.contains_key(id)
    }

    /// Takes the files not rebuilt so far: their delta failed, or never arrived. Deferred deltas
    /// stay for [`Self::build_deferred`].
    pub(crate) fn take_unbuilt(&mut self) -> Vec<&'p PlannedFile> {
        let mut files = std::mem::take(&mut self.failed);
        files.extend(self.waiting.drain().flat_map(|(_, files)| files));
        files
    }

    /// Writes the files of a batch whose deltas applied; the others fall back to chunks.
    fn write_built(
        &mut self,
        writer: &mut ObjectWriter,
        batch: &[Job<'p>],
        built: Vec<Rebuilt>,
    ) -> Result<(), TransportError> {
        let mut rebuilt = Vec::with_capacity(batch.len());
        for ((file, _), content) in batch.iter().zip(built) {
            match content {
                Ok(content) => rebuilt.push((*file, content)),
                Err(e) => self.fail(file, &e.to_string()),
            }
        }
        // Written together: a bare repository writes a batch's files on all cores.
        write_contents(writer, &rebuilt)?;
        self.unwritten.written(rebuilt.iter().map(|(file, _)| file.id));
        Ok(())
    }

    fn fail(&mut self, file: &'p PlannedFile, reason: &str) {
        tracing::warn!("file {} is fetched as chunks: its delta is unusable: {reason}", file.id);
        self.failed.push(file);
    }
}

impl Drop for DeltaBuilder<'_> {
    /// A pull that ends early (an error) lets the threads waiting for its files end too.
    fn drop(&mut self) {
        self.unwritten.settle(Pull::Abandoned);
    }
}

/// The content `delta` starts from: read from the repository, or none when it reads none.
fn base_of(delta: &DeltaObject, repo: &Repo) -> Base {
    if delta.reads_base() { repo.file_content(&delta.base) } else { Ok(Vec::new()) }
}

/// Reads a file this pull wrote into a bare repository (or that it held before).
fn read_written(id: &FileId, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("file {id} of the release ({}): {e}", path.display()))
}

/// Writes files whose whole contents are verified, handing them out chunk by chunk.
fn write_contents(writer: &mut ObjectWriter, files: &[(&PlannedFile, Vec<u8>)]) -> Result<(), TransportError> {
    // A chunk's bytes are the same in every file that holds it: the first place is enough.
    let mut places = HashMap::new();
    for (at, (file, _)) in files.iter().enumerate() {
        let mut offset = 0usize;
        for (chunk, len) in &file.object.chunks {
            places.entry(*chunk).or_insert((at, offset..offset + *len as usize));
            offset += *len as usize;
        }
    }
    let objects: Vec<_> = files.iter().map(|(file, _)| (file.id, file.object.clone())).collect();
    writer.add_file_objects(&objects, |chunk, out| {
        let (at, range) = &places[chunk];
        out.extend_from_slice(&files[*at].1[range.clone()]);
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Duration;

    use super::*;

    fn file(n: u8) -> FileId {
        FileId(ObjectId([n; 32]))
    }

    /// Waits for `id` on a thread of its own; the receiver gets what the wait returned.
    fn waiting(unwritten: &Arc<Unwritten>, id: FileId) -> mpsc::Receiver<bool> {
        let (tx, rx) = mpsc::channel();
        let unwritten = Arc::clone(unwritten);
        std::thread::spawn(move || tx.send(unwritten.wait_for(&id)).unwrap());
        rx
    }

    #[test]
    fn a_read_waits_until_its_file_is_written() {
        let unwritten = Arc::new(Unwritten::new([file(1), file(2)].into()));
        let done = waiting(&unwritten, file(1));
        unwritten.written([file(2)]);
        assert_eq!(done.recv_timeout(Duration::from_millis(200)), Err(RecvTimeoutError::Timeout));
        unwritten.written([file(1)]);
        assert_eq!(done.recv_timeout(Duration::from_secs(60)), Ok(true));
        // A file the pull does not write (held before) is read at once.
        assert!(unwritten.wait_for(&file(3)));
    }

    #[test]
    fn reads_go_on_once_the_pull_settles_and_fail_once_it_is_abandoned() {
        let unwritten = Arc::new(Unwritten::new([file(1)].into()));
        let done = waiting(&unwritten, file(1));
        unwritten.settle(Pull::Written);
        assert_eq!(done.recv_timeout(Duration::from_secs(60)), Ok(true));
        let unwritten = Arc::new(Unwritten::new([file(1)].into()));
        let done = waiting(&unwritten, file(1));
        unwritten.settle(Pull::Abandoned);
        assert_eq!(done.recv_timeout(Duration::from_secs(60)), Ok(false));
        assert!(!unwritten.wait_for(&file(2)), "an abandoned pull's reads fail");
    }
}
