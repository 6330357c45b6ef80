//! File operations: durable ones (atomic replace, directory fsync, filesystem sync), crash points,
//! and operations that stay beneath a directory — every path is resolved from a directory file
//! descriptor one component at a time, no symlink is ever followed (`O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`, `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and removal never crosses into
//! another filesystem (a mount point inside stops the removal with an error).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Dir, FileType, FlockOperation, Mode, OFlags, ResolveFlags, flock};

use crate::error::{IoContext, Result, StoreError};

/// A name for a temporary file that no other process or call of this process uses.
pub fn unique_tmp_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The process that made `name` with [`unique_tmp_name`], if it is such a name.
pub fn tmp_name_owner(name: &OsStr) -> Option<u32> {
    let mut parts = name.to_str()?.rsplitn(4, '-');
    let (_counter, _nanos, pid, _prefix) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    pid.parse().ok()
}

/// Removes what processes that have ended left in `dir` under names from [`unique_tmp_name`]
/// starting with `prefix` (files, or directories with what they hold). A name whose process still
/// runs is kept: another process may be writing it.
pub fn remove_orphaned_tmp(dir: &Path, prefix: &str) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        entries => entries.at(dir)?,
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        if !name.as_bytes().starts_with(prefix.as_bytes()) {
            continue;
        }
        let Some(owner) = tmp_name_owner(&name) else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let path = entry.path();
        let removed =
            if entry.file_type().at(&path)?.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&path),
            _ => {}
        }
    }
    Ok(())
}

/// A `flock(2)` lock that is released explicitly when dropped.
///
/// Closing the descriptor is not enough: a child process spawned by another thread holds a copy of
/// it until its `exec`, and the lock lasts while any copy is open — a lock dropped and taken again at
/// once would then be refused.
#[derive(Debug)]
pub struct FlockGuard {
    file: File,
}

impl FlockGuard {
    /// Locks `file` with `op` (a non-blocking operation fails with `WOULDBLOCK` when held elsewhere).
    pub fn lock(file: File, op: FlockOperation) -> rustix::io::Result<FlockGuard> {
        flock(&file, op)?;
        Ok(FlockGuard { file })
    }

    /// The locked file.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }
}

impl Drop for FlockGuard {
    fn drop(&mut self) {
        let _ = flock(&self.file, FlockOperation::Unlock);
    }
}

/// Makes a directory's entries (creations, renames) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Flushes every dirty page of the filesystem holding `path`: one call makes a whole
/// transaction's objects durable, instead of one fsync per object.
pub fn syncfs(path: &Path) -> Result<()> {
    let dir = File::open(path).at(path)?;
    rustix::fs::syncfs(&dir).at(path)
}

/// Asks the kernel to read these files into the page cache in the background
/// (`posix_fadvise(WILLNEED)`), all at once, so that reading them one after another later finds
/// them there instead of waiting for the disk each time. A hint: a file that cannot be opened is
/// skipped.
pub fn read_ahead(paths: &[PathBuf]) {
    for path in paths {
        if let Ok(file) = File::open(path) {
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
        }
    }
}

/// Starts the writeback of files just written, on a thread of its own, so that the disk writes
/// them while the caller goes on (a pull is CPU bound for seconds) instead of all at its final
/// syncfs: the page cache holds a whole update's dirty pages until then, far below the kernel's
/// own thresholds. `posix_fadvise(DONTNEED)` starts the writeback without waiting for it, and
/// drops only pages already clean (those being written stay cached). A hint: when the thread lags
/// behind, a file is closed without it, and durability still comes from the caller's syncfs.
pub struct Writeback {
    /// The queue to the thread and the thread; none when no thread could be started.
    thread: Option<Box<(std::sync::mpsc::SyncSender<File>, std::thread::JoinHandle<()>)>>,
}

impl Writeback {
    /// Files waiting for the thread at most (each holds a descriptor open).
    const QUEUE: usize = 256;

    /// A writeback starter; without a thread (none could be started) files are only closed.
    pub fn new() -> Self {
        let (files, queue) = std::sync::mpsc::sync_channel::<File>(Self::QUEUE);
        let thread = std::thread::Builder::new().name("writeback".into()).spawn(move || {
            for file in queue {
                let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
            }
        });
        Writeback { thread: thread.ok().map(|thread| Box::new((files, thread))) }
    }

    /// Hands over a file whose content is written: its writeback starts soon, then it is closed.
    pub fn start(&self, file: File) {
        if let Some(thread) = &self.thread {
            let _ = thread.0.try_send(file);
        }
    }

    /// Waits until the thread has started the writeback of every file it queued.
    pub fn finish(self) {
        if let Some(thread) = self.thread {
            let (files, thread) = *thread;
            drop(files);
            let _ = thread.join();
        }
    }
}

impl Default for Writeback {
    fn default() -> Self {
        Self::new()
    }
}

/// Replaces `path` with `bytes` atomically and durably: write a temporary file in `tmp_dir`,
/// fsync it, rename it over `path`, fsync the parent directory.
pub fn atomic_write(path: &Path, tmp_dir: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(unique_tmp_name("write"));
    let mut file = File::create(&tmp).at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    drop(file);
    let parent = path.parent().unwrap_or(Path::new("."));
    create_dir_all_durably(parent)?;
    fs::rename(&tmp, path).at(path)?;
    fsync_dir(parent)
}

/// Creates `dir` and its missing ancestors, syncing each new directory's entry in its parent, so
/// that a name published below survives a power cut with the directories that lead to it.
pub fn create_dir_all_durably(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    create_dir_all_durably(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(if parent.as_os_str().is_empty() { Path::new(".") } else { parent }),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e).at(dir),
    }
}

/// In debug builds (the tests'), aborts the process when the environment variable
/// `OSDEPLOY_CRASH_AT` names `step`: the crash-consistency tests kill a command at every named
/// step and check that fsck passes and a rerun completes. Release builds ignore the variable, so
/// an environment variable can never abort a root tool on a node.
pub fn crash_point(step: &str) {
    if cfg!(debug_assertions) && std::env::var_os("OSDEPLOY_CRASH_AT").is_some_and(|s| s == step) {
        eprintln!("osdeploy: aborting at crash point {step} (OSDEPLOY_CRASH_AT)");
        std::process::abort();
    }
}

/// Opens the directory `rel` below `root` (empty for `root` itself) without following any symlink
/// or leaving `root` (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); `full` names it in
/// errors.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &Path, full: &Path) -> Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .at(full)
}

/// Removes everything inside the directory at `path` (left over by an interrupted transaction),
/// without following a symlink or entering another filesystem.
pub fn clear_dir_at(path: &Path) -> Result<()> {
    let dir = open_dir(path)?;
    clear_dir(dir.as_fd(), path, dev_of(dir.as_fd(), path)?)
}

/// Opens the directory `path` itself, refusing a symlink in its last component.
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .at(path)
}

/// The names in a directory, without `.` and `..`.
pub fn dir_names(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir).at(path)? {
        let entry = entry.at(path)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// The file type of `name` in `dir`, not following a symlink; `None` if it does not exist.
pub fn type_at(dir: BorrowedFd<'_>, name: &OsStr, full: &Path) -> Result<Option<(FileType, u64)>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((FileType::from_raw_mode(st.st_mode), st.st_dev))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e).at(full),
    }
}

/// Removes everything inside the directory `dir` (`path` names it in errors), which lies on the filesystem `dev`.
pub fn clear_dir(dir: BorrowedFd<'_>, path: &Path, dev: u64) -> Result<()> {
    for name in dir_names(dir, path)? {
        remove_at(dir, OsStr::from_bytes(&name), &path.join(OsStr::from_bytes(&name)), dev)?;
    }
    Ok(())
}

/// Removes `name` in `dir` (a directory with everything in it) if it exists; `full` names it in errors.
pub fn remove_at(dir: BorrowedFd<'_>, name: &OsStr, full: &Path, dev: u64) -> Result<()> {
    let Some((file_type, entry_dev)) = type_at(dir, name, full)? else {
        return Ok(());
    };
    if file_type == FileType::Directory {
        if entry_dev != dev {
            return Err(StoreError::MountPointInside { path: full.to_owned() });
        }
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .at(full)?;
        clear_dir(sub.as_fd(), full, dev)?;
        drop(sub);
        ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)).at(full)
    } else {
        ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::empty())).at(full)
    }
}

fn ignore_missing(r: rustix::io::Result<()>) -> rustix::io::Result<()> {
    match r {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        other => other,
    }
}

/// The device of the directory `dir`.
pub fn dev_of(dir: BorrowedFd<'_>, path: &Path) -> Result<u64> {
    Ok(rustix::fs::fstat(dir).at(path)?.st_dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn writeback_closes_every_file_handed_over_and_keeps_its_content() {
        let tmp = tempfile::tempdir().unwrap();
        let writeback = Writeback::new();
        let paths: Vec<_> = (0..3 * Writeback::QUEUE).map(|i| tmp.path().join(format!("f{i}"))).collect();
        for (i, path) in paths.iter().enumerate() {
            let mut file = File::create(path).unwrap();
            file.write_all(&vec![i as u8; 10_000]).unwrap();
            // A lock held by the descriptor shows whether it is still open.
            flock(&file, FlockOperation::NonBlockingLockExclusive).unwrap();
            writeback.start(file);
        }
        writeback.finish();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).unwrap();
            flock(&file, FlockOperation::NonBlockingLockExclusive).expect("the descriptor handed over is closed");
            assert_eq!(fs::read(path).unwrap(), vec![i as u8; 10_000]);
        }
    }

    #[test]
    fn only_what_ended_processes_left_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mine = tmp.path().join(unique_tmp_name("mount-chunks"));
        // No process has this id: Linux's pids end far below.
        let dead = tmp.path().join("mount-chunks-4294967295-18b2c3d4e5f60718-0");
        for dir in [&mine, &dead] {
            fs::create_dir(dir).unwrap();
            fs::write(dir.join("0.range"), b"staged").unwrap();
        }
        let other_prefix = tmp.path().join("chunk-4294967295-18b2c3d4e5f60718-1");
        fs::write(&other_prefix, b"x").unwrap();
        fs::write(tmp.path().join("mount-notes"), b"x").unwrap();
        remove_orphaned_tmp(tmp.path(), "mount-").unwrap();
        assert!(mine.exists() && !dead.exists() && other_prefix.exists() && tmp.path().join("mount-notes").exists());
        assert_eq!(tmp_name_owner(OsStr::new(&unique_tmp_name("a-b"))), Some(std::process::id()));
        remove_orphaned_tmp(&tmp.path().join("missing"), "mount-").unwrap();
    }

    #[test]
    fn a_dropped_lock_is_free_while_a_copy_of_its_descriptor_lives() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lock");
        let exclusive = FlockOperation::NonBlockingLockExclusive;
        let file = File::create(&path).unwrap();
        // What a child spawned by another thread holds until its exec.
        let inherited = file.try_clone().unwrap();
        let guard = FlockGuard::lock(file, exclusive).unwrap();
        let err = FlockGuard::lock(File::open(&path).unwrap(), exclusive).unwrap_err();
        assert_eq!(err, rustix::io::Errno::WOULDBLOCK);
        drop(guard);
        FlockGuard::lock(File::open(&path).unwrap(), exclusive).unwrap();
        drop(inherited);
    }

    #[test]
    fn clearing_never_follows_symlinks_out() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::write(outside.join("keep/file"), b"precious").unwrap();
        let slot = tmp.path().join("slot");
        std::fs::create_dir_all(slot.join("etc/deep/er")).unwrap();
        std::fs::write(slot.join("etc/deep/er/f"), b"x").unwrap();
        symlink(&outside, slot.join("etc/evil")).unwrap();
        symlink("/", slot.join("root-link")).unwrap();
        symlink(outside.join("keep/file"), slot.join("file-link")).unwrap();
        let fd = open_dir(&slot).unwrap();
        let dev = dev_of(fd.as_fd(), &slot).unwrap();
        clear_dir(fd.as_fd(), &slot, dev).unwrap();
        assert_eq!(std::fs::read_dir(&slot).unwrap().count(), 0);
        assert_eq!(std::fs::read(outside.join("keep/file")).unwrap(), b"precious");
        // a symlink as the directory to open is refused
        symlink(&outside, slot.join("link")).unwrap();
        let err = open_dir_beneath(fd.as_fd(), Path::new("link"), &slot.join("link")).unwrap_err();
        assert!(err.to_string().contains("slot/link"), "{err}");
        assert!(open_dir(&slot.join("link")).is_err());
    }

    #[test]
    fn another_filesystem_is_not_entered() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d/sub")).unwrap();
        let fd = open_dir(tmp.path()).unwrap();
        let err = clear_dir(fd.as_fd(), tmp.path(), u64::MAX).unwrap_err().to_string();
        assert!(err.contains("mount point"), "{err}");
        assert!(tmp.path().join("d/sub").exists());
    }
}
