//! The sysroot lock: `flock(2)` on `SYSROOT/osdeploy/lock`, held exclusively by every command that changes the
//! sysroot (init-sysroot, switch, boot-check, mark-good, rollback, and a pull that records the followed branch). It
//! is never waited for: a second command fails at once and says who holds the lock (the holder writes its pid into
//! the file). The kernel drops the lock when the holder exits, also when it is killed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};

use rustix::fs::{FlockOperation, flock};

use super::{DeployError, IoContext, Result, Sysroot};

/// The held lock; released on drop.
#[derive(Debug)]
pub struct SysrootLock {
    _file: File,
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
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).at(&path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "pid unknown".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(DeployError::Locked { sysroot: sysroot.root().to_owned(), holder });
            }
            Err(e) => return Err(e).at(&path),
        }
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
        Ok(SysrootLock { _file: file })
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
