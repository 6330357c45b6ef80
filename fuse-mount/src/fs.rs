//! The FUSE filesystem: answers the kernel from the inode table and the content source.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use osdeploy_store::object::Mtime;
use osdeploy_store::{CommitId, Repo};

use crate::content::Content;
use crate::inodes::{Body, Inodes, Node};

/// How long the kernel may keep names and attributes: a commit never changes.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// A commit, served read-only.
pub struct CommitFs {
    commit: CommitId,
    inodes: Inodes,
    content: Content,
    /// Whether the kernel opens files and directories without asking this process (and then
    /// keeps their pages and listings cached).
    opens_alone: bool,
    opens_directories_alone: bool,
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
            opens_alone: false,
            opens_directories_alone: false,
            _repo: Mutex::new(repo),
        }
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

    /// The entries of directory `ino` from `offset` on, "." and ".." first, each with the offset of
    /// the next.
    fn listing(&self, ino: INodeNo, offset: u64) -> Result<impl Iterator<Item = (u64, &[u8], u64)>, Errno> {
        let node = self.node(ino)?;
        let Body::Dir(entries) = &node.body else {
            return Err(Errno::ENOTDIR);
        };
        let dots = [(b".".as_slice(), ino.0), (b"..".as_slice(), node.parent)];
        let all = dots.into_iter().chain(entries.iter().map(|(name, ino)| (name.as_slice(), *ino)));
        Ok(all.enumerate().skip(offset as usize).map(|(index, (name, child))| (index as u64 + 1, name, child)))
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
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // A commit never changes: the kernel may open files and directories without asking and
        // keep what it read of them, keep symlink targets, and take every entry's attributes
        // with its directory's listing (`ls -l`, `find`, `tar`: a request per directory, not
        // three more per entry). Each is used where the kernel offers it.
        let mut offered = |flag: InitFlags| config.add_capabilities(flag).is_ok();
        self.opens_alone = offered(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.opens_directories_alone = offered(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        let symlinks_cached = offered(InitFlags::FUSE_CACHE_SYMLINKS);
        let listings_with_attributes = offered(InitFlags::FUSE_DO_READDIRPLUS);
        tracing::debug!(
            "kernel: opens alone {}, opens directories alone {}, caches symlinks {symlinks_cached}, \
             lists with attributes {listings_with_attributes}",
            self.opens_alone,
            self.opens_directories_alone
        );
        Ok(())
    }

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
        if self.opens_alone {
            // The kernel then opens every file itself from now on, keeping its pages.
            return reply.error(Errno::ENOSYS);
        }
        // Reads need no handle: what they read is found by the inode.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing is ever written: the kernel sends no more flushes after this answer (fuser's
        // default gives the same answer, with a warning in the log at every mount).
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.opens_directories_alone {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Ok(Body::File(file)) = self.node(ino).map(|n| &n.body) else {
            return reply.error(Errno::EINVAL);
        };
        match self.content.read(file, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(error) => {
                tracing::error!("commit {}: reading inode {} at {offset}: {error}", self.commit, ino.0);
                reply.error(Errno::EIO);
            }
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listing = match self.listing(ino, offset) {
            Ok(listing) => listing,
            Err(errno) => return reply.error(errno),
        };
        for (next, name, child) in listing {
            let kind = self.inodes.get(child).map_or(FileType::Directory, |n| file_type(&n.body));
            if reply.add(INodeNo(child), next, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let listing = match self.listing(ino, offset) {
            Ok(listing) => listing,
            Err(errno) => return reply.error(errno),
        };
        for (next, name, child) in listing {
            let node = self.inodes.get(child).expect("entries name existing inodes");
            let attr = self.attr(child, node);
            if reply.add(INodeNo(child), next, OsStr::from_bytes(name), &TTL, &attr, Generation(0)) {
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
