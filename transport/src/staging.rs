//! Verified objects a pull has fetched but not yet committed, kept across crashes so that a
//! rerun fetches nothing twice.
//!
//! One file per fetched range: a sequence of records `[kind: u8][id: 32 bytes][len: u32 LE][raw
//! bytes]` holding the range's wanted objects, uncompressed and verified. A range is written to a
//! `.part` file as it streams in and renamed to `.range` once complete; opening the staging area
//! drops `.part` files and re-verifies every record of the others (a crash may tear a file that
//! was never synced: its objects are simply fetched again).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use osdeploy_store::fsutil::unique_tmp_name;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::{ObjectId, StoreError};

const RECORD_HEADER_LEN: usize = 1 + 32 + 4;

/// Where a staged object lies.
#[derive(Clone, Copy, Debug)]
struct Location {
    file: u32,
    offset: u64,
    len: u32,
}

/// The staging area of one repository.
pub struct Staging {
    dir: PathBuf,
    files: Vec<PathBuf>,
    present: HashMap<(ObjectId, ObjectKind), Location>,
    /// The staged file read last (a file's chunks usually lie in one range).
    open_file: RefCell<Option<(u32, File)>>,
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.into(), error }
}

impl Staging {
    /// Opens (creating) `dir`, keeping every staged object that still verifies.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let mut staging =
            Staging { dir: dir.clone(), files: Vec::new(), present: HashMap::new(), open_file: RefCell::default() };
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

    /// Adds the verified records of a `.range` file; stops at the first record that does not
    /// verify (the rest of a torn file is fetched again).
    fn load(&mut self, path: PathBuf) -> Result<(), StoreError> {
        let data = fs::read(&path).map_err(|e| io(&path, e))?;
        let file = self.files.len() as u32;
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
            found.push(((id, kind), Location { file, offset: start as u64, len }));
            pos = start + len as usize;
        }
        if found.is_empty() {
            return fs::remove_file(&path).map_err(|e| io(&path, e));
        }
        self.present.extend(found);
        self.files.push(path);
        Ok(())
    }

    /// True when the object is staged.
    pub fn has(&self, kind: ObjectKind, id: &ObjectId) -> bool {
        self.present.contains_key(&(*id, kind))
    }

    /// Objects staged.
    pub fn len(&self) -> usize {
        self.present.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    /// Reads a staged object (verified when it was staged, and again when the area was opened).
    pub fn get(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>, StoreError> {
        let location = self.present.get(&(*id, kind)).ok_or(StoreError::ObjectMissing { kind, id: *id })?;
        let path = &self.files[location.file as usize];
        let mut open = self.open_file.borrow_mut();
        if open.as_ref().is_none_or(|(n, _)| *n != location.file) {
            *open = Some((location.file, File::open(path).map_err(|e| io(path, e))?));
        }
        let (_, file) = open.as_ref().expect("opened above");
        let mut data = vec![0; location.len as usize];
        file.read_exact_at(&mut data, location.offset).map_err(|e| io(path, e))?;
        Ok(data)
    }

    /// Starts staging one range's objects.
    pub fn range_writer(&self) -> Result<RangeWriter, StoreError> {
        let path = self.dir.join(unique_tmp_name(".part"));
        let file = File::create(&path).map_err(|e| io(&path, e))?;
        Ok(RangeWriter { path, out: BufWriter::with_capacity(1 << 20, file), written: 0, records: Vec::new() })
    }

    /// Keeps a complete range: its file is renamed into place and its objects become visible.
    /// Returns them.
    pub fn commit(&mut self, writer: RangeWriter) -> Result<Vec<(ObjectId, ObjectKind)>, StoreError> {
        let RangeWriter { path, out, records, .. } = writer;
        out.into_inner().map_err(|e| io(&path, e.into_error()))?;
        if records.is_empty() {
            fs::remove_file(&path).map_err(|e| io(&path, e))?;
            return Ok(Vec::new());
        }
        let dest = path.with_extension("range");
        fs::rename(&path, &dest).map_err(|e| io(&dest, e))?;
        let file = self.files.len() as u32;
        self.files.push(dest);
        let mut committed = Vec::with_capacity(records.len());
        for (key, offset, len) in records {
            self.present.insert(key, Location { file, offset, len });
            committed.push(key);
        }
        Ok(committed)
    }

    /// Deletes the range files that hold only chunks (once those are stored elsewhere).
    pub fn clear_chunks(&mut self) -> Result<(), StoreError> {
        let mut keep = vec![false; self.files.len()];
        for ((_, kind), location) in &self.present {
            keep[location.file as usize] |= *kind != ObjectKind::Chunk;
        }
        *self.open_file.get_mut() = None;
        for (path, _) in self.files.iter().zip(&keep).filter(|(_, keep)| !**keep) {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(path, e)),
                _ => {}
            }
        }
        self.present.retain(|_, location| keep[location.file as usize]);
        Ok(())
    }

    /// Removes everything (after the pulled commit is stored and its ref written).
    pub fn clear(self) -> Result<(), StoreError> {
        fs::remove_dir_all(&self.dir).map_err(|e| io(&self.dir, e))
    }
}

/// The objects of one range as it streams in; handed back to [`Staging::commit`] when complete.
pub struct RangeWriter {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    records: Vec<((ObjectId, ObjectKind), u64, u32)>,
}

impl RangeWriter {
    /// Appends a verified object.
    pub fn put(&mut self, kind: ObjectKind, id: ObjectId, raw: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(raw.len()).expect("objects are size-limited far below 4 GiB");
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[0] = kind as u8;
        header[1..33].copy_from_slice(&id.0);
        header[33..37].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&header).and_then(|()| self.out.write_all(raw)).map_err(|e| io(&self.path, e))?;
        self.records.push(((id, kind), self.written + RECORD_HEADER_LEN as u64, len));
        self.written += (RECORD_HEADER_LEN + raw.len()) as u64;
        Ok(())
    }

    /// Forgets everything written (the range is being fetched again from another URL).
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.out.flush().map_err(|e| io(&self.path, e))?;
        self.out.get_mut().set_len(0).map_err(|e| io(&self.path, e))?;
        self.out.get_mut().rewind().map_err(|e| io(&self.path, e))?;
        self.written = 0;
        self.records.clear();
        Ok(())
    }
}
