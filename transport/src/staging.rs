//! Verified objects a pull has fetched but not yet committed.
//!
//! Fetched objects (uncompressed, verified) are kept in memory as they stream in. Every few MiB
//! the pull uses what it can (new files whose last chunk arrived are written) and then *settles*
//! the staging area: the objects still needed later are written to one file in the staging
//! directory, the rest is dropped. So chunk data that goes
//! straight into a new file never touches the disk twice, while everything a killed pull would
//! need again survives it: staged files here, complete new files in the repository (adopted by the
//! rerun).
//!
//! A staged file is a sequence of records `[kind: u8][id: 32 bytes][len: u32 LE][raw bytes]`,
//! written under a temporary name and renamed to `*.range`; opening the staging area re-verifies
//! every record and drops the rest (a crash may tear a file that was never synced: its objects are
//! simply fetched again).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use osdeploy_store::fsutil::unique_tmp_name;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::{ObjectId, StoreError};

const RECORD_HEADER_LEN: usize = 1 + 32 + 4;

/// What a fetch stages in memory between two settles (8 MiB) plus one object of the largest kind.
const MEMORY_RANGE_CAPACITY: usize = (8 << 20) + (1 << 20);

/// One staged range: in memory until settled, then in a file.
enum Range {
    Memory(Vec<u8>),
    File(PathBuf),
    Dropped,
}

/// Where a staged object lies: a range and the offset of its bytes there.
#[derive(Clone, Copy, Debug)]
struct Location {
    range: u32,
    offset: u64,
    len: u32,
}

/// The staging area of one repository.
pub struct Staging {
    dir: PathBuf,
    ranges: Vec<Range>,
    present: HashMap<(ObjectId, ObjectKind), Location>,
    /// The directory held what an interrupted pull left.
    resumed: bool,
    /// The staged file read last (a file's chunks usually lie in one range).
    open_file: RefCell<Option<(u32, File)>>,
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.into(), error }
}

/// Appends one record to `out`; returns the offset of its bytes.
fn append_record(out: &mut Vec<u8>, kind: ObjectKind, id: &ObjectId, raw: &[u8]) -> u64 {
    let len = u32::try_from(raw.len()).expect("objects are size-limited far below 4 GiB");
    out.push(kind as u8);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(raw);
    (out.len() - raw.len()) as u64
}

impl Staging {
    /// Opens (creating) `dir`, keeping every staged object that still verifies.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        let resumed = dir.exists();
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let mut staging = Staging {
            dir: dir.clone(),
            ranges: Vec::new(),
            present: HashMap::new(),
            resumed,
            open_file: RefCell::default(),
        };
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            if path.extension().is_some_and(|e| e == "range") {
                staging.load(path)?;
            } else {
                fs::remove_file(&path).map_err(|e| io(&path, e))?;
            }
        }
        Ok(staging)
    }

    /// Adds the verified records of a staged file; stops at the first record that does not
    /// verify (the rest of a torn file is fetched again).
    fn load(&mut self, path: PathBuf) -> Result<(), StoreError> {
        let data = fs::read(&path).map_err(|e| io(&path, e))?;
        let range = self.ranges.len() as u32;
        let mut pos = 0;
        let mut found = Vec::new();
        while let Some(header) = data.get(pos..pos + RECORD_HEADER_LEN) {
            let kind = ObjectKind::from_u8(header[0]);
            let id = ObjectId(header[1..33].try_into().expect("32 bytes"));
            let len = u32::from_le_bytes(header[33..37].try_into().expect("4 bytes"));
            let start = pos + RECORD_HEADER_LEN;
            let (Some(kind), Some(raw)) = (kind, data.get(start..start + len as usize)) else { break };
            if ObjectId::of(raw) != id {
                break;
            }
            found.push(((id, kind), Location { range, offset: start as u64, len }));
            pos = start + len as usize;
        }
        if found.is_empty() {
            return fs::remove_file(&path).map_err(|e| io(&path, e));
        }
        self.present.extend(found);
        self.ranges.push(Range::File(path));
        Ok(())
    }

    /// True when an interrupted pull left this staging area (it is removed when a pull
    /// completes): only then can the repository hold content no transaction recorded.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// True when the object is staged.
    pub fn has(&self, kind: ObjectKind, id: &ObjectId) -> bool {
        self.present.contains_key(&(*id, kind))
    }

    /// Reads a staged object (verified when it was staged, and again when the area was opened).
    pub fn get(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>, StoreError> {
        let location = *self.present.get(&(*id, kind)).ok_or(StoreError::ObjectMissing { kind, id: *id })?;
        let (start, len) = (location.offset as usize, location.len as usize);
        match &self.ranges[location.range as usize] {
            Range::Memory(data) => Ok(data[start..start + len].to_vec()),
            Range::File(path) => {
                let mut open = self.open_file.borrow_mut();
                if open.as_ref().is_none_or(|(n, _)| *n != location.range) {
                    *open = Some((location.range, File::open(path).map_err(|e| io(path, e))?));
                }
                let (_, file) = open.as_ref().expect("opened above");
                let mut data = vec![0; len];
                file.read_exact_at(&mut data, location.offset).map_err(|e| io(path, e))?;
                Ok(data)
            }
            Range::Dropped => unreachable!("a dropped range's objects are no longer present"),
        }
    }

    /// Appends a staged chunk's bytes to `out` (as [`Self::get`], without a copy of its own).
    pub fn read_into(&self, kind: ObjectKind, id: &ObjectId, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let location = *self.present.get(&(*id, kind)).ok_or(StoreError::ObjectMissing { kind, id: *id })?;
        let (start, len) = (location.offset as usize, location.len as usize);
        match &self.ranges[location.range as usize] {
            Range::Memory(data) => out.extend_from_slice(&data[start..start + len]),
            _ => out.extend_from_slice(&self.get(kind, id)?),
        }
        Ok(())
    }

    /// Adds a verified object (in memory, until [`Self::settle`]); an object already staged is
    /// ignored (a range fetched again after a failure delivers its objects again).
    pub fn put(&mut self, kind: ObjectKind, id: ObjectId, raw: &[u8]) {
        if self.has(kind, &id) {
            return;
        }
        if !matches!(self.ranges.last(), Some(Range::Memory(_))) {
            // Sized for what arrives between two settles, so that it is never copied to grow.
            self.ranges.push(Range::Memory(Vec::with_capacity(MEMORY_RANGE_CAPACITY)));
        }
        let range = self.ranges.len() as u32 - 1;
        let Some(Range::Memory(data)) = self.ranges.last_mut() else { unreachable!("pushed above") };
        let offset = append_record(data, kind, &id, raw);
        self.present.insert((id, kind), Location { range, offset, len: raw.len() as u32 });
    }

    /// Moves every in-memory range out of memory: the objects `keep` names go to a staged file
    /// (renamed into place once complete), the others are forgotten.
    pub fn settle(&mut self, keep: impl Fn(ObjectKind, &ObjectId) -> bool) -> Result<(), StoreError> {
        let mut by_range: HashMap<u32, Vec<(ObjectId, ObjectKind)>> = HashMap::new();
        for (key, location) in &self.present {
            if matches!(self.ranges[location.range as usize], Range::Memory(_)) {
                by_range.entry(location.range).or_default().push(*key);
            }
        }
        for (range, keys) in by_range {
            let Range::Memory(data) = std::mem::replace(&mut self.ranges[range as usize], Range::Dropped) else {
                unreachable!("selected above")
            };
            let mut out = Vec::new();
            let mut kept = Vec::new();
            for (id, kind) in keys {
                let location = self.present.remove(&(id, kind)).expect("listed above");
                if keep(kind, &id) {
                    let raw = &data[location.offset as usize..][..location.len as usize];
                    let offset = append_record(&mut out, kind, &id, raw);
                    kept.push(((id, kind), Location { range, offset, len: location.len }));
                }
            }
            if kept.is_empty() {
                continue;
            }
            let tmp = self.dir.join(unique_tmp_name(".part"));
            fs::write(&tmp, &out).map_err(|e| io(&tmp, e))?;
            let path = tmp.with_extension("range");
            fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
            self.present.extend(kept);
            self.ranges[range as usize] = Range::File(path);
        }
        Ok(())
    }

    /// Deletes the staged files that hold only chunks (once those are stored elsewhere).
    pub fn clear_chunks(&mut self) -> Result<(), StoreError> {
        let mut keep = vec![false; self.ranges.len()];
        for ((_, kind), location) in &self.present {
            keep[location.range as usize] |= *kind != ObjectKind::Chunk;
        }
        *self.open_file.get_mut() = None;
        for (range, _) in self.ranges.iter_mut().zip(&keep).filter(|(_, keep)| !**keep) {
            if let Range::File(path) = std::mem::replace(range, Range::Dropped) {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path, e)),
                    _ => {}
                }
            }
        }
        self.present.retain(|_, location| keep[location.range as usize]);
        Ok(())
    }

    /// Removes everything (after the pulled commit is stored and its ref written).
    pub fn clear(self) -> Result<(), StoreError> {
        fs::remove_dir_all(&self.dir).map_err(|e| io(&self.dir, e))
    }
}
