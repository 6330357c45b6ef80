//! Verified objects a pull has fetched but not yet committed, kept across crashes so that a
//! rerun fetches nothing twice. One file per object (`<kind>-<id>`), verified again when the
//! staging area is opened (a file torn by a crash is dropped and fetched again).

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use osdeploy_store::fsutil::unique_tmp_name;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::{ObjectId, StoreError};

/// The staging area of one repository.
pub struct Staging {
    dir: PathBuf,
    present: HashSet<(ObjectId, ObjectKind)>,
}

fn io(path: &std::path::Path, error: std::io::Error) -> StoreError {
    StoreError::Io { path: path.into(), error }
}

impl Staging {
    /// Opens (creating) `dir`, keeping every staged object that still verifies.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let mut present = HashSet::new();
        for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let parsed = name.split_once('-').and_then(|(k, hex)| {
                let kind = ObjectKind::from_u8(k.parse().ok()?)?;
                Some((ObjectId::from_hex(hex)?, kind))
            });
            match parsed {
                Some((id, kind)) if fs::read(&path).is_ok_and(|b| ObjectId::of(&b) == id) => {
                    present.insert((id, kind));
                }
                _ => fs::remove_file(&path).map_err(|e| io(&path, e))?,
            }
        }
        Ok(Staging { dir, present })
    }

    fn path(&self, kind: ObjectKind, id: &ObjectId) -> PathBuf {
        self.dir.join(format!("{}-{}", kind as u8, id.to_hex()))
    }

    /// True when the object is staged.
    pub fn has(&self, kind: ObjectKind, id: &ObjectId) -> bool {
        self.present.contains(&(*id, kind))
    }

    /// Stages verified bytes.
    pub fn put(&mut self, kind: ObjectKind, id: ObjectId, raw: &[u8]) -> Result<(), StoreError> {
        let tmp = self.dir.join(unique_tmp_name(".tmp"));
        fs::write(&tmp, raw).map_err(|e| io(&tmp, e))?;
        let dest = self.path(kind, &id);
        fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))?;
        self.present.insert((id, kind));
        Ok(())
    }

    /// Reads a staged object, verifying it.
    pub fn get(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>, StoreError> {
        let path = self.path(kind, id);
        let data = fs::read(&path).map_err(|e| io(&path, e))?;
        let actual = ObjectId::of(&data);
        if actual != *id {
            return Err(StoreError::HashMismatch { kind, id: *id, actual });
        }
        Ok(data)
    }

    /// Removes everything (after the pulled commit is stored and its ref written).
    pub fn clear(self) -> Result<(), StoreError> {
        fs::remove_dir_all(&self.dir).map_err(|e| io(&self.dir, e))
    }
}
