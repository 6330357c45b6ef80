//! Durable file operations: atomic replace, directory fsync, filesystem sync, crash points.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{IoContext, Result};

/// A name for a temporary file that no other process or call of this process uses.
pub fn unique_tmp_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
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

/// Replaces `path` with `bytes` atomically and durably: write a temporary file in `tmp_dir`,
/// fsync it, rename it over `path`, fsync the parent directory.
pub fn atomic_write(path: &Path, tmp_dir: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(unique_tmp_name("write"));
    let mut file = File::create(&tmp).at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    drop(file);
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).at(parent)?;
    fs::rename(&tmp, path).at(path)?;
    fsync_dir(parent)
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

/// Removes everything inside `dir` (left over by an interrupted transaction).
pub fn clear_dir(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).at(dir)? {
        let path: PathBuf = entry.at(dir)?.path();
        if path.is_dir() {
            fs::remove_dir_all(&path).at(&path)?;
        } else {
            fs::remove_file(&path).at(&path)?;
        }
    }
    Ok(())
}
