//! Reads a source directory tree with full metadata, without following symlinks.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result, StoreError};
use crate::name::{check_entry_name, escaped};
use crate::object::{MAX_SYMLINK_TARGET, MAX_XATTR_VALUE, Meta, Mtime};

/// A scanned directory: its own metadata and its entries sorted by name.
pub struct ScanDir {
    /// The directory's metadata.
    pub meta: Meta,
    /// Its entries, sorted bytewise by name.
    pub entries: Vec<ScanEntry>,
}

/// One scanned entry.
pub struct ScanEntry {
    /// Its name.
    pub name: Vec<u8>,
    /// Its metadata.
    pub meta: Meta,
    /// Its type and what goes with it.
    pub kind: ScanKind,
}

/// The type of a scanned entry.
pub enum ScanKind {
    /// A regular file; `inode` is set when it has several links.
    File {
        /// Where to read it.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// (device, inode) when `st_nlink > 1`.
        inode: Option<(u64, u64)>,
    },
    /// A directory.
    Dir(ScanDir),
    /// A symlink and its target.
    Symlink(Vec<u8>),
    /// A character device.
    CharDevice(u64),
    /// A block device.
    BlockDevice(u64),
    /// A fifo.
    Fifo,
    /// A socket.
    Socket,
}

/// Totals of a scan, for progress reporting.
#[derive(Default, Debug, Clone, Copy)]
pub struct ScanTotals {
    /// Regular files, each distinct inode once.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Scans the tree at `root`. Hardlinked inodes are counted once in the totals; `links` receives
/// how many times each multiply-linked inode appears inside the tree.
pub fn scan(root: &Path, totals: &mut ScanTotals, links: &mut HashMap<(u64, u64), u32>) -> Result<ScanDir> {
    let md = fs::symlink_metadata(root).at(root)?;
    if !md.is_dir() {
        return Err(StoreError::BadSource { path: root.into(), reason: "not a directory".into() });
    }
    scan_dir(root, meta_of(root, &md)?, totals, links)
}

fn scan_dir(dir: &Path, meta: Meta, totals: &mut ScanTotals, links: &mut HashMap<(u64, u64), u32>) -> Result<ScanDir> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        names.push(entry.at(dir)?.file_name().as_bytes().to_vec());
    }
    names.sort();
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(std::ffi::OsStr::from_bytes(&name));
        check_entry_name(&name)
            .map_err(|reason| StoreError::BadSource { path: path.clone(), reason: reason.into() })?;
        let md = fs::symlink_metadata(&path).at(&path)?;
        let meta = meta_of(&path, &md)?;
        let ft = md.file_type();
        let kind = if ft.is_file() {
            let inode = (md.nlink() > 1).then(|| (md.dev(), md.ino()));
            match inode {
                Some(key) => {
                    let seen = links.entry(key).or_insert(0);
                    *seen += 1;
                    if *seen == 1 {
                        totals.files += 1;
                        totals.bytes += md.len();
                    }
                }
                None => {
                    totals.files += 1;
                    totals.bytes += md.len();
                }
            }
            ScanKind::File { path, size: md.len(), inode }
        } else if ft.is_dir() {
            ScanKind::Dir(scan_dir(&path, meta.clone(), totals, links)?)
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).at(&path)?.into_os_string().into_vec();
            if target.len() > MAX_SYMLINK_TARGET {
                return Err(StoreError::BadSource { path, reason: "symlink target longer than 4095 bytes".into() });
            }
            ScanKind::Symlink(target)
        } else if ft.is_char_device() {
            ScanKind::CharDevice(md.rdev())
        } else if ft.is_block_device() {
            ScanKind::BlockDevice(md.rdev())
        } else if ft.is_fifo() {
            ScanKind::Fifo
        } else if ft.is_socket() {
            ScanKind::Socket
        } else {
            return Err(StoreError::BadSource { path, reason: "unknown file type".into() });
        };
        entries.push(ScanEntry { name, meta, kind });
    }
    Ok(ScanDir { meta, entries })
}

use std::os::unix::ffi::OsStringExt;

fn meta_of(path: &Path, md: &fs::Metadata) -> Result<Meta> {
    Ok(Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: Mtime { sec: md.mtime(), nsec: md.mtime_nsec() as u32 },
        xattrs: read_xattrs(path)?,
    })
}

/// Reads every extended attribute of `path` (not following a final symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e).at(path),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) if value.len() < MAX_XATTR_VALUE => value.resize(MAX_XATTR_VALUE, 0),
                Err(e) => {
                    return Err(StoreError::BadSource {
                        path: path.into(),
                        reason: format!("reading xattr {}: {e}", escaped(name)),
                    });
                }
            }
        };
        value.truncate(n);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}
