//! Reads of a remote mount: chunks come from the on-disk cache, or from the remote when it lacks
//! them. A reader that starts at a file's beginning, or near where its last read of the file
//! ended, is sequential: whenever it comes within half of [`READ_AHEAD`] of what was fetched for
//! it, the next [`READ_AHEAD`] bytes of the file are fetched by a thread of their own, in as few
//! Range requests as their places in the packs allow, while the reader goes on with what is
//! cached. Fetches of one file take turns, so the kernel's concurrent reads of it wait for a fetch
//! under way instead of repeating it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use osdeploy_store::{ChunkId, FileId, StoreError};
use osdeploy_transport::TransportError;
use osdeploy_transport::lazy::LazyRemote;

use crate::content::{assemble, chunk_at};
use crate::disk_cache::DiskCache;
use crate::inodes::FileContent;

/// How far ahead of a sequential reader a remote mount fetches.
pub const READ_AHEAD: u64 = 8 << 20;

/// What is known of one file's readers.
#[derive(Default)]
struct Reader {
    /// Where the last read ended.
    last_end: u64,
    /// How far fetches, done or under way, reach.
    fetched_to: u64,
    /// Held while a fetch of this file runs.
    fetching: Arc<Mutex<()>>,
}

/// A remote and the cache of what was fetched from it.
pub struct RemoteContent {
    remote: Arc<LazyRemote>,
    cache: Arc<DiskCache>,
    readers: Mutex<HashMap<FileId, Reader>>,
}

/// A remote's failure, as the mount reports it.
fn remote_error(error: TransportError) -> StoreError {
    match error {
        TransportError::Store(error) => error,
        other => StoreError::Io { path: PathBuf::from("(remote)"), error: std::io::Error::other(other.to_string()) },
    }
}

/// Fetches the chunks of `file` from index `from` up to `to` that `cache` lacks, into it; returns
/// them too (the cache may not keep them all).
fn fetch_into(
    remote: &LazyRemote,
    cache: &DiskCache,
    file: &FileContent,
    from: usize,
    to: usize,
) -> Result<HashMap<ChunkId, Arc<Vec<u8>>>, StoreError> {
    let missing: Vec<ChunkId> =
        file.object.chunks[from..to].iter().map(|(c, _)| *c).filter(|c| !cache.contains(c)).collect();
    let mut fetched = HashMap::new();
    if !missing.is_empty() {
        for (chunk, bytes) in missing.iter().zip(remote.fetch_chunks(&missing).map_err(remote_error)?) {
            let bytes = Arc::new(bytes);
            cache.put(chunk, bytes.clone())?;
            fetched.insert(*chunk, bytes);
        }
    }
    Ok(fetched)
}

impl RemoteContent {
    /// Reads through `remote`, caching in `cache`.
    pub fn new(remote: LazyRemote, cache: DiskCache) -> RemoteContent {
        RemoteContent { remote: Arc::new(remote), cache: Arc::new(cache), readers: Mutex::default() }
    }

    /// Reads bytes `offset..end` of `file` into `out`.
    pub fn read(&self, file: &Arc<FileContent>, offset: u64, end: u64, out: &mut [u8]) -> Result<(), StoreError> {
        let (ahead, fetching, planned_to) = {
            let mut readers = self.readers.lock().expect("no panics hold this lock");
            let reader = readers.entry(file.id).or_default();
            // The kernel's own read-ahead sends neighbouring reads out of order.
            let sequential = offset == 0 || offset.abs_diff(reader.last_end) <= READ_AHEAD;
            reader.last_end = end;
            let mut ahead = None;
            if sequential && reader.fetched_to < (end + READ_AHEAD / 2).min(file.object.size) {
                let from = reader.fetched_to.max(end);
                reader.fetched_to = (end + READ_AHEAD).min(file.object.size);
                ahead = Some((from, reader.fetched_to));
            }
            // How far fetches planned for a sequential reader reach.
            let planned_to = if sequential { reader.fetched_to.max(end) } else { end };
            (ahead, reader.fetching.clone(), planned_to)
        };
        if let Some((from, to)) = ahead.filter(|(from, to)| from < to) {
            let (remote, cache, fetching, file) =
                (self.remote.clone(), self.cache.clone(), fetching.clone(), file.clone());
            std::thread::spawn(move || {
                let _turn = fetching.lock().expect("no panics hold this lock");
                let range = (chunk_at(&file, from), file.starts.partition_point(|&start| start < to));
                if let Err(error) = fetch_into(&remote, &cache, &file, range.0, range.1) {
                    // A reader that needs these chunks fetches them itself, and reports.
                    tracing::debug!("reading ahead in file {}: {error}", file.id);
                }
            });
        }
        let (first, last) = (chunk_at(file, offset), file.starts.partition_point(|&start| start < end));
        let mut fetched = HashMap::new();
        if !(first..last).all(|i| self.cache.contains(&file.object.chunks[i].0)) {
            let _turn = fetching.lock().expect("no panics hold this lock");
            // Whoever gets the turn first fetches what is planned, not only its own range: the
            // kernel's concurrent reads may come before the read-ahead thread's turn, and each
            // would otherwise fetch its few chunks alone.
            let planned = file.starts.partition_point(|&start| start < planned_to).max(last);
            fetched = fetch_into(&self.remote, &self.cache, file, first, planned)?;
        }
        assemble(file, offset, end, out, |chunk| match fetched.remove(chunk).or_else(|| self.cache.get(chunk)) {
            Some(bytes) => Ok(bytes),
            None => Ok(Arc::new(self.remote.fetch_chunks(&[*chunk]).map_err(remote_error)?.remove(0))),
        })
    }
}
