//! The sysroot lock: `flock(2)` on `SYSROOT/osdeploy/lock`, held exclusively by every command that changes the
//! sysroot (init-sysroot, switch, boot-check, mark-good, rollback, and a pull that records the followed branch). It
//! is never waited for: a second command fails at once and says who holds the lock (the holder writes its pid into
//! the file). The kernel drops the lock when the holder exits, also when it is killed.

use std::fs::OpenOptions;
use std::io::{Seek, Write};

use osdeploy_store::fsutil::FlockGuard;
use rustix::fs::FlockOperation;

use super::{DeployError, IoContext, Result, Sysroot};

/// The held lock; released on drop.
#[derive(Debug)]
pub struct SysrootLock {
    _guard: FlockGuard,
}

impl SysrootLock {
    /// Takes the lock of `sysroot` without waiting, and clears `SYSROOT/osdeploy/tmp` (left over by a killed writer).
    pub fn acquire(sysroot: &Sysroot) -> Result<SysrootLock> {
        let path = sysroot.lock_path();
        let dir = sysroot.dir();
        if !dir.is_dir() {
            return Err(DeployError::NotASysroot {
                path: sysroot.root().to_owned(),
                reason: format!("{} does not exist", dir.display()),
            });
        }
        let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).at(&path)?;
        let mut guard = match FlockGuard::lock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(guard) => guard,
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = match std::fs::read_to_string(&path).unwrap_or_default().trim() {
                    "" => "pid unknown".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(DeployError::Locked { sysroot: sysroot.root().to_owned(), holder });
            }
            Err(e) => return Err(e).at(&path),
        };
        let file = guard.file();
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        write!(file, "{}", std::process::id()).at(&path)?;
        let tmp = sysroot.tmp_dir();
        if tmp.is_dir() {
            for entry in std::fs::read_dir(&tmp).at(&tmp)? {
                let entry = entry.at(&tmp)?.path();
                std::fs::remove_file(&entry).at(&entry)?;
            }
        }
        Ok(SysrootLock { _guard: guard })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let sysroot = Sysroot::new(dir.path());
        assert!(matches!(SysrootLock::acquire(&sysroot), Err(DeployError::NotASysroot { .. })));
        std::fs::create_dir_all(sysroot.tmp_dir()).unwrap();
        std::fs::write(sysroot.tmp_dir().join("write-leftover"), b"x").unwrap();
        let held = SysrootLock::acquire(&sysroot).unwrap();
        assert!(!sysroot.tmp_dir().join("write-leftover").exists());
        let err = SysrootLock::acquire(&sysroot).unwrap_err().to_string();
        assert!(err.contains("locked by another osdeploy process") && err.contains(&std::process::id().to_string()));
        drop(held);
        SysrootLock::acquire(&sysroot).unwrap();
    }
}
