//! The FUSE filesystem: answers the kernel from the inode table and the content source.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use osdeploy_store::object::Mtime;
use osdeploy_store::{CommitId, Repo};

use crate::content::Content;
use crate::inodes::{Body, FileContent, Inodes, Node};

/// How long the kernel may keep names and attributes: a commit never changes.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// A commit, served read-only.
pub struct CommitFs {
    commit: CommitId,
    inodes: Inodes,
    content: Content,
    /// Open files' descriptors (bare repositories), by file handle.
    open_files: Mutex<HashMap<u64, Arc<File>>>,
    next_handle: AtomicU64,
    /// Held for its read lock: no prune while mounted.
    _repo: Mutex<Repo>,
}

impl CommitFs {
    /// Serves `commit` of `repo`, whose tree `inodes` holds.
    pub fn new(repo: Repo, commit: CommitId, inodes: Inodes, content: Content) -> CommitFs {
        CommitFs {
            commit,
            inodes,
            content,
            open_files: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            _repo: Mutex::new(repo),
        }
    }

    /// What reads through handle `fh` of `file` need (see [`Content::open`]), opened once.
    fn opened(&self, fh: FileHandle, file: &FileContent) -> osdeploy_store::Result<Option<Arc<File>>> {
        if let Some(opened) = self.open_files.lock().expect("no panics hold this lock").get(&fh.0) {
            return Ok(Some(opened.clone()));
        }
        let Some(opened) = self.content.open(file)? else { return Ok(None) };
        let opened = Arc::new(opened);
        self.open_files.lock().expect("no panics hold this lock").insert(fh.0, opened.clone());
        Ok(Some(opened))
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.inodes.get(ino.0).ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let size = node.size();
        let time = system_time(node.meta.mtime);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: file_type(&node.body),
            perm: (node.meta.mode & 0o7777) as u16,
            nlink: node.nlink,
            uid: node.meta.uid,
            gid: node.meta.gid,
            rdev: match node.body {
                Body::CharDevice(dev) | Body::BlockDevice(dev) => kernel_dev(dev),
                _ => 0,
            },
            blksize: 4096,
            flags: 0,
        }
    }
}

fn file_type(body: &Body) -> FileType {
    match body {
        Body::Dir(_) => FileType::Directory,
        Body::File(_) => FileType::RegularFile,
        Body::Symlink(_) => FileType::Symlink,
        Body::CharDevice(_) => FileType::CharDevice,
        Body::BlockDevice(_) => FileType::BlockDevice,
        Body::Fifo => FileType::NamedPipe,
        Body::Socket => FileType::Socket,
    }
}

fn system_time(mtime: Mtime) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(mtime.nsec));
    if mtime.sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(mtime.sec as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(mtime.sec.unsigned_abs()) + nanos
    }
}

/// A device number (as `stat` gives it) in the kernel's 32-bit encoding that FUSE carries.
fn kernel_dev(dev: u64) -> u32 {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Replies with `value` as getxattr and listxattr want it: its size when asked for 0 bytes,
/// ERANGE when it does not fit.
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for CommitFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.inodes.lookup(parent.0, name.as_bytes()) {
            Some(ino) => {
                let node = self.inodes.get(ino).expect("entries name existing inodes");
                reply.entry(&TTL, &self.attr(ino, node), Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &self.attr(ino.0, node)),
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|n| &n.body) {
            Ok(Body::Symlink(target)) => reply.data(target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(errno) => reply.error(errno),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if !matches!(self.node(ino).map(|n| &n.body), Ok(Body::File(_))) {
            return reply.error(Errno::EINVAL);
        }
        // What reads need is opened by the first read: a file the kernel has cached is read
        // without any, and opening it costs nothing then.
        reply.opened(FileHandle(self.next_handle.fetch_add(1, Ordering::Relaxed)), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel may keep directory listings too.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Ok(Body::File(file)) = self.node(ino).map(|n| &n.body) else {
            return reply.error(Errno::EINVAL);
        };
        let opened = match self.opened(fh, file) {
            Ok(opened) => opened,
            Err(error) => {
                tracing::error!("commit {}: opening inode {}: {error}", self.commit, ino.0);
                return reply.error(Errno::EIO);
            }
        };
        match self.content.read(file, opened.as_deref(), offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(error) => {
                tracing::error!("commit {}: reading inode {} at {offset}: {error}", self.commit, ino.0);
                reply.error(Errno::EIO);
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open_files.lock().expect("no panics hold this lock").remove(&fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(errno) => return reply.error(errno),
        };
        let Body::Dir(entries) = &node.body else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(b".".as_slice(), ino.0), (b"..".as_slice(), node.parent)];
        let all = dots.into_iter().chain(entries.iter().map(|(name, ino)| (name.as_slice(), *ino)));
        for (index, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = self.inodes.get(child).map_or(FileType::Directory, |n| file_type(&n.body));
            if reply.add(INodeNo(child), index as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.inodes.bytes().div_ceil(4096);
        reply.statfs(blocks, 0, 0, self.inodes.count() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(errno) => return reply.error(errno),
        };
        match node.meta.xattrs.iter().find(|(n, _)| n.as_slice() == name.as_bytes()) {
            Some((_, value)) => reply_sized(reply, size, value),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let node = match self.node(ino) {
            Ok(node) => node,
            Err(errno) => return reply.error(errno),
        };
        let names: Vec<u8> = node.meta.xattrs.iter().flat_map(|(n, _)| n.iter().copied().chain([0])).collect();
        reply_sized(reply, size, &names);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.node(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernels_encoding() {
        // /dev/null is 1:3, /dev/loop9 7:9; a minor above 255 spills into the high bits.
        assert_eq!(kernel_dev(rustix::fs::makedev(1, 3)), 0x103);
        assert_eq!(kernel_dev(rustix::fs::makedev(7, 9)), 0x709);
        assert_eq!(kernel_dev(rustix::fs::makedev(259, 0x1234)), 0x34 | (259 << 8) | (0x1200 << 12));
    }

    #[test]
    fn times_before_the_epoch_keep_their_nanoseconds() {
        let t = system_time(Mtime { sec: -2, nsec: 500_000_000 });
        assert_eq!(UNIX_EPOCH.duration_since(t).unwrap(), Duration::from_millis(1500));
    }
}
