//! The on-disk cache of chunks a remote mount fetched: one file per chunk, named by its id, the
//! total bounded in bytes. The least recently used chunks go first; a chunk is checked against
//! its id whenever it is read back, so a damaged cache file costs a fetch, never a wrong byte.
//! The cache outlives the mount: a second mount of the same release reads what the first
//! fetched. The most recently stored or read chunks are also kept in memory ([`IN_MEMORY`]
//! bytes), so that what a read-ahead fetched reaches its reader without a file read and a hash.
//!
//! Mounts may share one cache directory. A file's modification time is its last use (set on
//! every write and read back), so every process sees the same order. Each process looks at the
//! whole directory again whenever it has added a tenth of the limit, or thinks the limit is passed,
//! and then removes the least recently used chunks of all processes down to nine tenths of the
//! limit: the directory stays within the limit plus a tenth of it per mount writing to it.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use osdeploy_store::fsutil::{remove_orphaned_tmp, unique_tmp_name};
use osdeploy_store::{ChunkId, ObjectId, StoreError};
use quick_cache::sync::Cache;
use rustix::fs::{AtFlags, Timespec, Timestamps};

use crate::content::ChunkBytes;

/// Bytes of recent chunks kept in memory: two read-aheads.
const IN_MEMORY: u64 = 2 * crate::remote_content::READ_AHEAD;

/// What the names of chunks being written start with.
const TMP_PREFIX: &str = "tmp-chunk";

/// A bounded directory of verified chunks.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    /// The most recent chunks, verified.
    recent: Cache<ChunkId, Arc<Vec<u8>>, ChunkBytes>,
}

#[derive(Default)]
struct State {
    /// The chunks in the directory, as last seen (another mount may have removed some since).
    present: HashSet<ChunkId>,
    /// Their bytes at the last look, plus what this process has added since.
    total: u64,
    /// Bytes this process has added since it last looked.
    added: u64,
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_owned(), error }
}

/// Marks the file at `path` as used now (to the nanosecond: the kernel's own clock for file times
/// may be coarser).
fn touch(path: &Path) -> std::io::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = Timespec { tv_sec: now.as_secs() as i64, tv_nsec: now.subsec_nanos().into() };
    let times = Timestamps { last_access: now, last_modification: now };
    Ok(rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::empty())?)
}

impl DiskCache {
    /// Opens (creating) the cache in `dir`, holding at most `limit` bytes; what earlier mounts
    /// left is kept, least recently used first out.
    pub fn open(dir: &Path, limit: u64) -> Result<DiskCache, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let recent = Cache::with_weighter((IN_MEMORY / (64 << 10)) as usize, IN_MEMORY, ChunkBytes);
        let cache = DiskCache { dir: dir.to_owned(), limit, state: Mutex::new(State::default()), recent };
        cache.look(&mut cache.state.lock().expect("no panics hold this lock"), None)?;
        Ok(cache)
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(id.0.to_hex())
    }

    /// Whether the chunk is cached.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.state.lock().expect("no panics hold this lock").present.contains(id)
    }

    /// The chunk's bytes, if cached and intact (a damaged file is dropped).
    pub fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let path = self.path(id);
        if let Some(bytes) = self.recent.get(id) {
            if let Err(e) = touch(&path) {
                tracing::debug!("cached chunk {}: {e}", path.display());
            }
            return Some(bytes);
        }
        match fs::read(&path) {
            Ok(bytes) if ObjectId::of(&bytes) == id.0 => {
                if let Err(e) = touch(&path) {
                    tracing::debug!("cached chunk {}: {e}", path.display());
                }
                let bytes = Arc::new(bytes);
                self.recent.insert(*id, bytes.clone());
                Some(bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Another mount sharing the directory made room.
                self.state.lock().expect("no panics hold this lock").present.remove(id);
                None
            }
            _ => {
                tracing::warn!("cached chunk {} is damaged; it is fetched again", path.display());
                let _ = fs::remove_file(&path);
                self.state.lock().expect("no panics hold this lock").present.remove(id);
                None
            }
        }
    }

    /// Stores a verified chunk, then makes room if the cache holds too much.
    pub fn put(&self, id: &ChunkId, bytes: Arc<Vec<u8>>) -> Result<(), StoreError> {
        let path = self.path(id);
        let tmp = self.dir.join(unique_tmp_name(TMP_PREFIX));
        let written =
            fs::write(&tmp, bytes.as_slice()).and_then(|()| touch(&tmp)).and_then(|()| fs::rename(&tmp, &path));
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(&path, e)
        })?;
        let len = bytes.len() as u64;
        self.recent.insert(*id, bytes);
        let mut state = self.state.lock().expect("no panics hold this lock");
        if state.present.insert(*id) {
            state.total += len;
            state.added += len;
        }
        if state.total > self.limit || state.added > self.limit / 10 {
            self.look(&mut state, Some(id))?;
        }
        Ok(())
    }

    /// Looks at the whole directory (what ended processes left half-written goes); when it holds
    /// more than the limit, removes the least recently used chunks, never `keep`, down to nine
    /// tenths of it.
    fn look(&self, state: &mut State, keep: Option<&ChunkId>) -> Result<(), StoreError> {
        remove_orphaned_tmp(&self.dir, TMP_PREFIX)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))? {
            let entry = entry.map_err(|e| io(&self.dir, e))?;
            let Some(id) = entry.file_name().to_str().and_then(ObjectId::from_hex) else { continue };
            match entry.metadata() {
                Ok(meta) if meta.is_file() => found.push((meta.modified().ok(), ChunkId(id), meta.len())),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&entry.path(), e)),
            }
        }
        let mut total: u64 = found.iter().map(|(_, _, len)| len).sum();
        if total > self.limit {
            found.sort();
            let target = self.limit / 10 * 9;
            found.retain(|&(_, id, len)| {
                if total <= target || Some(&id) == keep {
                    return true;
                }
                self.recent.remove(&id);
                match fs::remove_file(self.path(&id)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!("cannot remove cached chunk {}: {e}", self.path(&id).display());
                        true
                    }
                    _ => {
                        total -= len;
                        false
                    }
                }
            });
        }
        state.present = found.into_iter().map(|(_, id, _)| id).collect();
        state.total = total;
        state.added = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> (ChunkId, Vec<u8>) {
        let bytes = vec![n; 1000];
        (ChunkId(ObjectId::of(&bytes)), bytes)
    }

    #[test]
    fn the_least_recently_used_chunks_go_first_and_damage_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 2500).unwrap();
        let (a, b, c) = (chunk(1), chunk(2), chunk(3));
        cache.put(&a.0, Arc::new(a.1.clone())).unwrap();
        cache.put(&b.0, Arc::new(b.1.clone())).unwrap();
        assert_eq!(cache.get(&a.0).as_deref(), Some(&a.1));
        cache.put(&c.0, Arc::new(c.1.clone())).unwrap();
        assert!(cache.contains(&a.0) && cache.contains(&c.0) && !cache.contains(&b.0), "b was used least recently");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "b's file went with it");
        // Kept across opens; a damaged file is not returned.
        drop(cache);
        fs::write(dir.path().join(c.0.0.to_hex()), b"damaged").unwrap();
        // Half a chunk written by a process that has ended (no process has this id).
        let left = dir.path().join("tmp-chunk-4294967295-18b2c3d4e5f60718-0");
        fs::write(&left, b"x").unwrap();
        let cache = DiskCache::open(dir.path(), 2500).unwrap();
        assert!(cache.contains(&a.0));
        assert_eq!(cache.get(&c.0), None);
        assert!(!cache.contains(&c.0));
        assert!(!left.exists());
    }

    fn bytes_in(dir: &Path) -> u64 {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    #[test]
    fn mounts_sharing_a_directory_keep_it_within_the_limit_and_leave_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 10_000;
        let (first, second) =
            (DiskCache::open(dir.path(), limit).unwrap(), DiskCache::open(dir.path(), limit).unwrap());
        // A chunk this (running) process is writing is no other mount's to remove.
        let writing = dir.path().join(unique_tmp_name(TMP_PREFIX));
        fs::write(&writing, b"half").unwrap();
        let chunks: Vec<_> = (0..40).map(chunk).collect();
        for (n, (id, bytes)) in chunks.iter().enumerate() {
            let cache = if n % 2 == 0 { &first } else { &second };
            cache.put(id, Arc::new(bytes.clone())).unwrap();
            // The limit, plus a tenth of it and a chunk for each of the two mounts.
            assert!(bytes_in(dir.path()) <= limit + 2 * (limit / 10 + 1000) + 4, "after chunk {n}");
        }
        assert!(writing.exists());
        // The most recent chunks stayed; the first ones went, whichever mount wrote them.
        let (last, oldest) = (&chunks[39], &chunks[0]);
        assert_eq!(first.get(&last.0).as_deref(), Some(&last.1));
        assert_eq!(second.get(&oldest.0), None);
        assert!(!first.contains(&oldest.0) && !second.contains(&oldest.0));
    }
}
