//! The on-disk cache of chunks a remote mount fetched: one file per chunk, named by its id, the
//! total bounded in bytes. The least recently used chunks go first; a chunk is checked against
//! its id whenever it is read back, so a damaged cache file costs a fetch, never a wrong byte.
//! The cache outlives the mount: a second mount of the same release reads what the first
//! fetched.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use osdeploy_store::fsutil::unique_tmp_name;
use osdeploy_store::{ChunkId, ObjectId, StoreError};

/// A bounded directory of verified chunks.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Size and last use of every cached chunk.
    entries: HashMap<ChunkId, (u64, u64)>,
    total: u64,
    clock: u64,
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_owned(), error }
}

impl DiskCache {
    /// Opens (creating) the cache in `dir`, holding at most `limit` bytes; what an earlier mount
    /// left is kept, oldest first out.
    pub fn open(dir: &Path, limit: u64) -> Result<DiskCache, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            let meta = entry.metadata().map_err(|e| io(&entry.path(), e))?;
            let id = entry.file_name().to_str().and_then(ObjectId::from_hex);
            match id {
                Some(id) if meta.is_file() => found.push((meta.modified().ok(), ChunkId(id), meta.len())),
                // A write that was cut short, or anything else: not ours to keep.
                _ if meta.is_file() => fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?,
                _ => {}
            }
        }
        found.sort();
        let cache = DiskCache { dir: dir.to_owned(), limit, state: Mutex::new(State::default()) };
        {
            let mut state = cache.state.lock().expect("no panics hold this lock");
            for (_, id, len) in found {
                state.clock += 1;
                let clock = state.clock;
                state.entries.insert(id, (len, clock));
                state.total += len;
            }
            cache.evict(&mut state, None)?;
        }
        Ok(cache)
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(id.0.to_hex())
    }

    /// Whether the chunk is cached.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.state.lock().expect("no panics hold this lock").entries.contains_key(id)
    }

    /// The chunk's bytes, if cached and intact (a damaged file is dropped).
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        {
            let mut state = self.state.lock().expect("no panics hold this lock");
            state.clock += 1;
            let clock = state.clock;
            state.entries.get_mut(id)?.1 = clock;
        }
        let path = self.path(id);
        match fs::read(&path) {
            Ok(bytes) if ObjectId::of(&bytes) == id.0 => Some(bytes),
            _ => {
                tracing::warn!("cached chunk {} is damaged or gone; it is fetched again", path.display());
                let _ = fs::remove_file(&path);
                let mut state = self.state.lock().expect("no panics hold this lock");
                if let Some((len, _)) = state.entries.remove(id) {
                    state.total -= len;
                }
                None
            }
        }
    }

    /// Stores a verified chunk, then drops the least recently used ones beyond the limit.
    pub fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(id);
        let tmp = self.dir.join(unique_tmp_name("chunk"));
        fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &path)).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(&path, e)
        })?;
        let mut state = self.state.lock().expect("no panics hold this lock");
        state.clock += 1;
        let clock = state.clock;
        if let Some((old, _)) = state.entries.insert(*id, (bytes.len() as u64, clock)) {
            state.total -= old;
        }
        state.total += bytes.len() as u64;
        self.evict(&mut state, Some(id))
    }

    /// Drops least recently used chunks, never `keep`, until the total is within the limit.
    fn evict(&self, state: &mut State, keep: Option<&ChunkId>) -> Result<(), StoreError> {
        while state.total > self.limit {
            let oldest = state.entries.iter().filter(|(id, _)| Some(*id) != keep).min_by_key(|(_, (_, used))| *used);
            let Some((&id, &(len, _))) = oldest else { break };
            let path = self.path(&id);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path, e)),
                _ => {}
            }
            state.entries.remove(&id);
            state.total -= len;
        }
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
        cache.put(&a.0, &a.1).unwrap();
        cache.put(&b.0, &b.1).unwrap();
        assert_eq!(cache.get(&a.0).as_deref(), Some(a.1.as_slice()));
        cache.put(&c.0, &c.1).unwrap();
        assert!(cache.contains(&a.0) && cache.contains(&c.0) && !cache.contains(&b.0), "b was used least recently");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "b's file went with it");
        // Kept across opens; a damaged file is not returned.
        drop(cache);
        fs::write(dir.path().join(c.0.0.to_hex()), b"damaged").unwrap();
        fs::write(dir.path().join("tmp-chunk-left-by-a-crash"), b"x").unwrap();
        let cache = DiskCache::open(dir.path(), 2500).unwrap();
        assert!(cache.contains(&a.0));
        assert_eq!(cache.get(&c.0), None);
        assert!(!cache.contains(&c.0));
        assert!(!dir.path().join("tmp-chunk-left-by-a-crash").exists());
    }
}
