//! Bare repositories (nodes): each file's whole content stored once, uncompressed, so that a
//! checkout clones it with FICLONE; a SQLite index records which objects exist, holds the
//! metadata objects, and says where every chunk lies (chunk id → file object, offset, length),
//! so that a pull can rebuild a new file from old local chunks without storing chunks twice.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rusqlite::{Connection, OptionalExtension, params};

use crate::chunker::Chunker;
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::{Writeback, crash_point, syncfs, unique_tmp_name};
use crate::id::{ChunkId, FileId, ObjectId};
use crate::layout;
use crate::object::{FileObject, ObjectKind};
use crate::write::WriteStats;

/// Version of the SQLite schema below.
const SCHEMA_VERSION: u32 = 1;
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    id BLOB NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (id, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY, file BLOB NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_file ON chunks (file);
";

/// Where a chunk's bytes lie in a stored file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The file object whose content holds the chunk.
    pub file: FileId,
    /// Offset in that content.
    pub offset: u64,
    /// Length.
    pub length: u32,
}

/// Path of a file object's content below a bare repository's `objects/` directory.
pub fn content_path(objects_dir: &Path, file: &FileId) -> PathBuf {
    let hex = file.0.to_hex();
    objects_dir.join(&hex[..2]).join(&hex[2..])
}

/// A read snapshot of a bare repository's index (see [`BareStore::batch_reads`]).
pub struct ReadBatch<'s> {
    _snapshot: rusqlite::Transaction<'s>,
}

/// Read access to a bare repository.
pub struct BareStore {
    objects_dir: PathBuf,
    db_path: PathBuf,
    db: Connection,
}

fn sql<T>(path: &Path, r: rusqlite::Result<T>) -> Result<T> {
    r.map_err(|error| {
        if out_of_space(path, &error) {
            StoreError::Io { path: path.into(), error: rustix::io::Errno::NOSPC.into() }
        } else {
            StoreError::Sqlite { path: path.into(), error }
        }
    })
}

/// True when `error` comes from the index's filesystem being full: SQLite says "database or disk is
/// full" for some writes, but "unable to open database file" or an I/O error for others.
fn out_of_space(path: &Path, error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, SystemIoFailure};
    let dir = path.parent().unwrap_or(Path::new("."));
    let full = || rustix::fs::statvfs(dir).is_ok_and(|fs| fs.f_bavail == 0 || fs.f_favail == 0);
    match error.sqlite_error_code() {
        Some(DiskFull) => true,
        Some(CannotOpen | SystemIoFailure) => full(),
        _ => false,
    }
}

/// What a command may do with a bare repository's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexAccess {
    /// Create it (init).
    Create,
    /// Read and write it.
    Write,
    /// Read it only; read commands work on a read-only mount, on a full disk and for users who may
    /// not write the repository.
    Read,
}

impl BareStore {
    /// Opens the index and object directory of the repo at `repo`.
    pub fn open(repo: &Path, access: IndexAccess) -> Result<Self> {
        let objects_dir = repo.join(layout::OBJECTS);
        let db_path = repo.join(layout::BARE_INDEX);
        if access != IndexAccess::Create && !db_path.exists() {
            return Err(StoreError::NotARepository {
                path: repo.into(),
                reason: "bare repository without index.sqlite".into(),
            });
        }
        if access == IndexAccess::Create {
            fs::create_dir_all(&objects_dir).at(&objects_dir)?;
        }
        let db = match access {
            IndexAccess::Read => open_for_reading(&db_path)?,
            IndexAccess::Create | IndexAccess::Write => {
                let db = sql(&db_path, Connection::open(&db_path))?;
                sql(&db_path, db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"))?;
                sql(&db_path, db.execute_batch(SCHEMA))?;
                db
            }
        };
        sql(
            &db_path,
            db.execute_batch("PRAGMA busy_timeout=10000; PRAGMA mmap_size=268435456; PRAGMA cache_size=-65536;"),
        )?;
        match (schema_version(&db, &db_path)?, access) {
            (None, IndexAccess::Create) => {
                sql(&db_path, db.execute("INSERT INTO info VALUES ('schema', ?1)", [SCHEMA_VERSION.to_string()]))?;
            }
            (Some(v), _) if v == SCHEMA_VERSION.to_string() => {}
            (v, _) => {
                return Err(StoreError::UnsupportedVersion {
                    what: format!("index {}", db_path.display()),
                    found: v.and_then(|v| v.parse().ok()).unwrap_or(0),
                    supported: SCHEMA_VERSION,
                });
            }
        }
        Ok(BareStore { objects_dir, db_path, db })
    }

    /// Path of a file object's content.
    pub fn content_path(&self, file: &FileId) -> PathBuf {
        content_path(&self.objects_dir, file)
    }

    /// Holds one read snapshot of the index until dropped, so that many lookups in a row (a
    /// pull's walk) take the database's lock once instead of once each.
    pub fn batch_reads(&self) -> Result<ReadBatch<'_>> {
        Ok(ReadBatch { _snapshot: sql(&self.db_path, self.db.unchecked_transaction())? })
    }

    /// True when `file`'s content lies in `objects/` although no transaction recorded it (a pull
    /// was killed between writing content and recording it) and every chunk of it verifies: the
    /// content can be adopted instead of fetched again.
    pub fn has_unrecorded_content(&self, id: &FileId, object: &FileObject) -> Result<bool> {
        let path = self.content_path(id);
        if !path.exists() {
            return Ok(false);
        }
        Ok(content_problem(&path, &id.0, object)?.is_none())
    }

    /// True when the metadata object is recorded (for a file object: and its content is stored).
    pub fn has(&self, kind: ObjectKind, id: &ObjectId) -> Result<bool> {
        if kind == ObjectKind::Chunk {
            return Ok(self.locate_chunk(&ChunkId(*id))?.is_some());
        }
        let found: Option<i64> = sql(
            &self.db_path,
            self.db
                .prepare_cached("SELECT 1 FROM objects WHERE id=?1 AND kind=?2")
                .and_then(|mut s| s.query_row(params![&id.0[..], kind as u8], |r| r.get(0)).optional()),
        )?;
        Ok(found.is_some())
    }

    /// Reads and verifies an object (a chunk is read from the content that holds it).
    pub fn get(&self, kind: ObjectKind, id: &ObjectId) -> Result<Vec<u8>> {
        let data = if kind == ObjectKind::Chunk {
            let loc = self.locate_chunk(&ChunkId(*id))?.ok_or(StoreError::ObjectMissing { kind, id: *id })?;
            let path = self.content_path(&loc.file);
            let mut buf = vec![0u8; loc.length as usize];
            File::open(&path).and_then(|f| f.read_exact_at(&mut buf, loc.offset)).map_err(|e| {
                let reason = match e.kind() {
                    std::io::ErrorKind::NotFound => format!("its content is missing (chunk object {id} lies in it)"),
                    std::io::ErrorKind::UnexpectedEof => format!(
                        "its content is truncated: chunk object {id} at offset {} (+{}) lies past its end",
                        loc.offset, loc.length
                    ),
                    _ => return StoreError::Io { path: path.clone(), error: e },
                };
                StoreError::Corrupt { what: format!("file object {} ({})", loc.file, path.display()), reason }
            })?;
            buf
        } else {
            let data: Option<Vec<u8>> = sql(
                &self.db_path,
                self.db
                    .prepare_cached("SELECT data FROM objects WHERE id=?1 AND kind=?2")
                    .and_then(|mut s| s.query_row(params![&id.0[..], kind as u8], |r| r.get(0)).optional()),
            )?;
            data.ok_or(StoreError::ObjectMissing { kind, id: *id })?
        };
        let actual = ObjectId::of(&data);
        if actual != *id {
            return Err(StoreError::HashMismatch { kind, id: *id, actual });
        }
        Ok(data)
    }

    /// Where a chunk lies, if any stored file holds it.
    pub fn locate_chunk(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        sql(
            &self.db_path,
            self.db.prepare_cached("SELECT file, offset, length FROM chunks WHERE id=?1").and_then(|mut s| {
                s.query_row([&id.0.0[..]], |r| {
                    let file: Vec<u8> = r.get(0)?;
                    Ok(ChunkLocation {
                        file: FileId(ObjectId(file.try_into().unwrap_or([0; 32]))),
                        offset: r.get::<_, i64>(1)? as u64,
                        length: r.get::<_, i64>(2)? as u32,
                    })
                })
                .optional()
            }),
        )
    }

    /// Ids of every stored metadata object of `kind`.
    pub fn ids(&self, kind: ObjectKind) -> Result<Vec<ObjectId>> {
        sql(
            &self.db_path,
            self.db.prepare("SELECT id FROM objects WHERE kind=?1").and_then(|mut s| {
                s.query_map([kind as u8], |r| r.get::<_, Vec<u8>>(0))?
                    .map(|r| r.map(|v| ObjectId(v.try_into().unwrap_or([0; 32]))))
                    .collect()
            }),
        )
    }

    /// Deletes the given metadata objects (and for file objects their content and chunk rows),
    /// then re-points chunk rows at surviving files that still hold those chunks.
    pub fn delete(
        &self,
        doomed: &[(ObjectKind, ObjectId)],
        survivors: &[FileObject],
        survivor_ids: &[FileId],
    ) -> Result<()> {
        let tx = sql(&self.db_path, self.db.unchecked_transaction())?;
        for (kind, id) in doomed {
            sql(
                &self.db_path,
                tx.execute("DELETE FROM objects WHERE id=?1 AND kind=?2", params![&id.0[..], *kind as u8]),
            )?;
            if *kind == ObjectKind::File {
                sql(&self.db_path, tx.execute("DELETE FROM chunks WHERE file=?1", [&id.0[..]]))?;
            }
        }
        for (file, id) in survivors.iter().zip(survivor_ids) {
            insert_chunk_rows(&tx, &self.db_path, file, id)?;
        }
        sql(&self.db_path, tx.commit())?;
        for (kind, id) in doomed {
            if *kind == ObjectKind::File {
                let path = self.content_path(&FileId(*id));
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&path),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Runs `f` inside one read transaction: one consistent snapshot, and one lock and WAL check
    /// for all of `f`'s queries instead of one per query (a checkout makes thousands).
    pub fn snapshot<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        sql(&self.db_path, self.db.execute_batch("BEGIN DEFERRED"))?;
        let out = f();
        sql(&self.db_path, self.db.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" }))?;
        out
    }

    /// The object directory (content files).
    pub fn objects_dir(&self) -> &Path {
        &self.objects_dir
    }
}

fn schema_version(db: &Connection, db_path: &Path) -> Result<Option<String>> {
    sql(db_path, db.query_row("SELECT value FROM info WHERE key='schema'", [], |r| r.get(0)).optional())
}

/// Opens the index for reading. Reading a WAL database needs its `-shm` file, which SQLite creates
/// when missing and removes when the last connection that may write closes. Where the directory is
/// writable, the reader's connection may write, so that it cleans up after itself as a writer
/// does; elsewhere it is read-only. Where the `-shm` file cannot be created at all (a read-only
/// mount, a full disk, a directory the user may not write), the index is read as immutable, which
/// it is on a read-only mount. Elsewhere a writer could run meanwhile; the reader then sees the
/// index as the last writer left it, and what it reads of a writer's checkpoint can only fail by
/// name, never yield wrong content: every object read is verified.
fn open_for_reading(db_path: &Path) -> Result<Connection> {
    use rusqlite::OpenFlags;
    let dir = db_path.parent().unwrap_or(Path::new("."));
    let writable = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok();
    let mode = if writable { OpenFlags::SQLITE_OPEN_READ_WRITE } else { OpenFlags::SQLITE_OPEN_READ_ONLY };
    let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let shared = sql(db_path, Connection::open_with_flags(db_path, mode | flags))?;
    match shared.query_row("SELECT count(*) FROM info", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => Ok(shared),
        Err(e) if cannot_share(&e) => {
            tracing::debug!("{}: {e}; reading it as immutable", db_path.display());
            drop(shared);
            sql(db_path, Connection::open_with_flags(immutable_uri(db_path), OpenFlags::SQLITE_OPEN_READ_ONLY | flags))
        }
        Err(error) => Err(StoreError::Sqlite { path: db_path.into(), error }),
    }
}

/// True when SQLite could not set up the shared memory a WAL reader needs: it cannot create the
/// `-shm` file (CannotOpen, ReadOnly) or cannot extend it on a full disk (an I/O error).
fn cannot_share(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    matches!(e.sqlite_error_code(), Some(CannotOpen | ReadOnly | SystemIoFailure | DiskFull))
}

/// `file:PATH?immutable=1`, with the path's bytes percent-encoded as RFC 3986 asks.
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri + "?immutable=1"
}

fn insert_chunk_rows(tx: &Connection, db_path: &Path, file: &FileObject, id: &FileId) -> Result<()> {
    let mut stmt = sql(db_path, tx.prepare_cached("INSERT OR IGNORE INTO chunks VALUES (?1, ?2, ?3, ?4)"))?;
    let mut offset = 0u64;
    for (chunk, len) in &file.chunks {
        sql(db_path, stmt.execute(params![&chunk.0.0[..], &id.0.0[..], offset as i64, *len as i64]))?;
        offset += u64::from(*len);
    }
    Ok(())
}

/// Writes new objects of one transaction into a bare repository.
pub struct BareWriter<'s> {
    store: &'s BareStore,
    tmp: PathBuf,
    added: HashSet<(ObjectId, ObjectKind)>,
    objects: Vec<(ObjectKind, ObjectId, Vec<u8>)>,
    files: Vec<(FileId, FileObject)>,
    /// Starts writing the content out while the transaction goes on.
    writeback: Writeback,
    /// What this transaction added and reused.
    pub stats: WriteStats,
}

/// Reads the content of file object `id` from `path`, checking it has the object's `size`.
pub fn read_content(path: &Path, id: &FileId, size: u64) -> Result<Vec<u8>> {
    let content = fs::read(path).at(path)?;
    if content.len() as u64 != size {
        return Err(StoreError::Corrupt {
            what: format!("file object {id}"),
            reason: format!("its content has {} bytes, the object says {size}", content.len()),
        });
    }
    Ok(content)
}

/// Makes written content read-only, starts its writeback and renames it to its place in
/// `objects/`.
fn place(tmp: File, tmp_path: &Path, dest: &Path, writeback: &Writeback) -> Result<()> {
    tmp.set_permissions(fs::Permissions::from_mode(0o444)).at(tmp_path)?;
    writeback.start(tmp);
    let parent = dest.parent().expect("content path has a parent");
    fs::create_dir_all(parent).at(parent)?;
    fs::rename(tmp_path, dest).at(dest)
}

/// Writes `content` as a nameless file in `dest`'s directory and links it at `dest` (replacing
/// an unrecorded leftover of a crash). Unlike a rename from `tmp/`, this never takes the
/// filesystem-wide cross-directory rename lock, so writers on several cores do not queue, and a
/// crash leaves nothing behind but what was linked. Its writeback starts once it is linked.
fn write_in_place(dest: &Path, content: &[u8], writeback: &Writeback) -> Result<()> {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    let parent = dest.parent().expect("content path has a parent");
    fs::create_dir_all(parent).at(parent)?;
    let fd = rustix::fs::open(parent, OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC, Mode::from_raw_mode(0o444))
        .map_err(std::io::Error::from)
        .at(parent)?;
    let mut file = File::from(fd);
    file.write_all(content).at(dest)?;
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
    let link = || rustix::fs::linkat(CWD, proc_path.as_str(), CWD, dest, AtFlags::SYMLINK_FOLLOW);
    match link() {
        Err(rustix::io::Errno::EXIST) => {
            fs::remove_file(dest).at(dest)?;
            link()
        }
        other => other,
    }
    .map_err(std::io::Error::from)
    .at(dest)?;
    writeback.start(file);
    Ok(())
}

/// Re-hashes a file object's content at `path` chunk by chunk; returns the problem, if any.
pub(crate) fn content_problem(path: &Path, id: &ObjectId, object: &FileObject) -> Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return Ok(Some(format!("file object {id}: content {}: {e}", path.display()))),
    };
    let len = file.metadata().at(path)?.len();
    if len != object.size {
        return Ok(Some(format!(
            "file object {id}: content {} is {len} bytes, the object says {}",
            path.display(),
            object.size
        )));
    }
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for (chunk, chunk_len) in &object.chunks {
        buf.resize(*chunk_len as usize, 0);
        file.read_exact_at(&mut buf, offset).at(path)?;
        let actual = ChunkId(ObjectId::of(&buf));
        if actual != *chunk {
            return Ok(Some(format!(
                "file object {id}: content {} at offset {offset} hashes to {actual}, expected chunk {chunk}",
                path.display()
            )));
        }
        offset += u64::from(*chunk_len);
    }
    Ok(None)
}

/// A chunk handed to a pulled file must have the length its file object records.
fn check_chunk_len(file: &FileId, chunk: &ChunkId, got: usize, len: u32) -> Result<()> {
    if got == len as usize {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        what: format!("file object {file}"),
        reason: format!("chunk {chunk} is {got} bytes, the object says {len}"),
    })
}

impl<'s> BareWriter<'s> {
    /// Starts a transaction using `tmp` for content being written.
    pub fn new(store: &'s BareStore, tmp: &Path) -> Self {
        BareWriter {
            store,
            tmp: tmp.into(),
            added: HashSet::new(),
            objects: Vec::new(),
            files: Vec::new(),
            writeback: Writeback::new(),
            stats: WriteStats::default(),
        }
    }

    /// True when the object is stored or added by this transaction.
    pub fn has(&self, kind: ObjectKind, id: &ObjectId) -> Result<bool> {
        Ok(self.added.contains(&(*id, kind)) || self.store.has(kind, id)?)
    }

    /// Stores the content read from `source` (the file at `path`) unless the repository has it.
    pub fn add_file(
        &mut self,
        source: impl std::io::Read,
        path: &Path,
        chunker: &Chunker,
    ) -> Result<(FileId, FileObject)> {
        let tmp_path = self.tmp.join(unique_tmp_name("content"));
        let mut tmp = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp_path).at(&tmp_path)?);
        let mut object = FileObject::default();
        let mut new_chunks = 0u64;
        object.size = chunker.split(source, path, |chunk| {
            let id = ChunkId(ObjectId::of(chunk));
            if !self.added.contains(&(id.0, ObjectKind::Chunk)) && self.store.locate_chunk(&id)?.is_none() {
                new_chunks += 1;
            }
            object.chunks.push((id, chunk.len() as u32));
            tmp.write_all(chunk).at(&tmp_path)
        })?;
        let tmp = tmp.into_inner().map_err(|e| e.into_error()).at(&tmp_path)?;
        let encoded = object.encode();
        let id = FileId(ObjectId::of(&encoded));
        if self.has(ObjectKind::File, &id.0)? {
            self.stats.chunks_reused += object.chunks.len() as u64;
            self.stats.bytes_reused += object.size;
            fs::remove_file(&tmp_path).at(&tmp_path)?;
            return Ok((id, object));
        }
        self.stats.chunks_new += new_chunks;
        self.stats.chunks_reused += object.chunks.len() as u64 - new_chunks;
        self.stats.bytes_new += object.size;
        self.stats.bytes_stored += object.size;
        self.publish(tmp, &tmp_path, id, &object, encoded)?;
        Ok((id, object))
    }

    /// Moves finished content (`tmp`, at `tmp_path`) into place as file object `id` and records
    /// the object and its chunks for the index transaction.
    fn publish(&mut self, tmp: File, tmp_path: &Path, id: FileId, object: &FileObject, encoded: Vec<u8>) -> Result<()> {
        place(tmp, tmp_path, &self.store.content_path(&id), &self.writeback)?;
        self.record(id, object, encoded);
        Ok(())
    }

    /// Records published content as part of this transaction.
    fn record(&mut self, id: FileId, object: &FileObject, encoded: Vec<u8>) {
        self.added.insert((id.0, ObjectKind::File));
        for (chunk, _) in &object.chunks {
            self.added.insert((chunk.0, ObjectKind::Chunk));
        }
        self.objects.push((ObjectKind::File, id.0, encoded));
        self.files.push((id, object.clone()));
        self.stats.metadata_new += 1;
    }

    /// Stores a file whose chunks are known (a pull): writes the content from `chunk`, which must
    /// return each chunk's verified bytes, and checks the result against the object's size.
    pub fn add_file_object(
        &mut self,
        id: FileId,
        object: &FileObject,
        mut chunk: impl FnMut(&ChunkId) -> Result<Vec<u8>>,
    ) -> Result<()> {
        if self.has(ObjectKind::File, &id.0)? {
            return Ok(());
        }
        let tmp_path = self.tmp.join(unique_tmp_name("content"));
        let mut tmp = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp_path).at(&tmp_path)?);
        for (chunk_id, len) in &object.chunks {
            let data = chunk(chunk_id)?;
            check_chunk_len(&id, chunk_id, data.len(), *len)?;
            tmp.write_all(&data).at(&tmp_path)?;
        }
        let tmp = tmp.into_inner().map_err(|e| e.into_error()).at(&tmp_path)?;
        self.publish(tmp, &tmp_path, id, object, object.encode())?;
        self.stats.bytes_stored += object.size;
        Ok(())
    }

    /// Records content already in place (see [`BareStore::has_unrecorded_content`]).
    pub fn adopt_file_object(&mut self, id: FileId, object: &FileObject) {
        if !self.added.contains(&(id.0, ObjectKind::File)) {
            self.record(id, object, object.encode());
        }
    }

    /// Stores many file objects whose chunks are known (a pull), like [`Self::add_file_object`]
    /// but faster: small files are assembled in memory in batches and written by all cores;
    /// large ones are streamed one at a time, so memory stays bounded.
    pub fn add_file_objects(
        &mut self,
        files: &[(FileId, FileObject)],
        mut chunk: impl FnMut(&ChunkId, &mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        const SMALL: u64 = 4 << 20;
        const BATCH: u64 = 32 << 20;
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut taken = HashSet::new();
        for (id, object) in files {
            if !taken.insert(*id) || self.has(ObjectKind::File, &id.0)? {
                continue;
            }
            if object.size > SMALL {
                self.add_file_object(*id, object, |c| {
                    let mut data = Vec::new();
                    chunk(c, &mut data)?;
                    Ok(data)
                })?;
                continue;
            }
            let mut content = Vec::with_capacity(object.size as usize);
            for (chunk_id, len) in &object.chunks {
                let before = content.len();
                chunk(chunk_id, &mut content)?;
                check_chunk_len(id, chunk_id, content.len() - before, *len)?;
            }
            batch_bytes += object.size;
            batch.push((*id, object, self.store.content_path(id), content));
            if batch_bytes >= BATCH {
                self.write_batch(std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
        }
        self.write_batch(batch)
    }

    /// Writes and places a batch of contents in parallel, then records them.
    fn write_batch(&mut self, batch: Vec<(FileId, &FileObject, PathBuf, Vec<u8>)>) -> Result<()> {
        let writeback = &self.writeback;
        batch.par_iter().try_for_each(|(_, _, dest, content)| write_in_place(dest, content, writeback))?;
        for (id, object, _, content) in batch {
            self.record(id, object, object.encode());
            self.stats.bytes_stored += content.len() as u64;
        }
        Ok(())
    }

    /// Records an encoded metadata object unless present; returns its id.
    pub fn add_metadata(&mut self, kind: ObjectKind, raw: &[u8]) -> Result<ObjectId> {
        let id = ObjectId::of(raw);
        if !self.has(kind, &id)? {
            self.added.insert((id, kind));
            self.objects.push((kind, id, raw.to_vec()));
            self.stats.metadata_new += 1;
        }
        Ok(id)
    }

    /// Makes the content durable (one syncfs), then records every object in one SQLite
    /// transaction: an object is in the index only once its content is on disk.
    pub fn finish(self, repo_path: &Path) -> Result<WriteStats> {
        crash_point("bare:before-sync");
        self.writeback.finish();
        // The rows are prepared while the content syncs, and committed only once it is durable.
        std::thread::scope(|scope| {
            let sync = scope.spawn(|| syncfs(repo_path));
            let db_path = &self.store.db_path;
            let tx = sql(db_path, self.store.db.unchecked_transaction())?;
            {
                let mut stmt = sql(db_path, tx.prepare_cached("INSERT OR IGNORE INTO objects VALUES (?1, ?2, ?3)"))?;
                for (kind, id, data) in &self.objects {
                    sql(db_path, stmt.execute(params![&id.0[..], *kind as u8, data]))?;
                }
            }
            for (id, file) in &self.files {
                insert_chunk_rows(&tx, db_path, file, id)?;
            }
            sync.join().expect("the syncfs thread does not panic")?;
            crash_point("bare:before-index");
            sql(db_path, tx.commit())
        })?;
        Ok(self.stats)
    }
}
