//! `checkout`: a commit's tree → a directory, with full metadata.
//!
//! Every entry is created relative to an open directory fd with `O_NOFOLLOW`/`O_EXCL` semantics,
//! below a destination that starts empty, from names validated on decode: nothing in a tree
//! (a `..` name, a symlink to `/`, a symlink where a directory follows) can make checkout write
//! outside the destination. Content comes by FICLONE from a bare repository (copy where the
//! filesystem cannot clone) or is decompressed from an archive repository's packs. Metadata is
//! applied in the order the kernel needs: owner, then xattrs (chown drops security.capability),
//! then mode (chown drops setuid), then mtime, directories after their children.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use serde::Serialize;

use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::syncfs;
use crate::id::{CommitId, FileId};
use crate::object::{DirTree, EntryKind, Meta, ObjectKind};
use crate::reflink::{CopyMethod, clone_or_copy};
use crate::repo::Repo;

/// How to check out.
#[derive(Clone, Copy, Debug)]
pub struct CheckoutOptions {
    /// Apply uid/gid and privileged xattrs (needs root); otherwise only user.* xattrs are set.
    pub preserve_owner: bool,
    /// Try FICLONE before copying (bare repositories).
    pub reflink: bool,
    /// syncfs the destination at the end.
    pub sync: bool,
}

impl Default for CheckoutOptions {
    fn default() -> Self {
        CheckoutOptions { preserve_owner: rustix::process::geteuid().is_root(), reflink: true, sync: true }
    }
}

/// What a checkout did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CheckoutStats {
    /// Regular files created (hardlinks not counted).
    pub files: u64,
    /// Extra links made for hardlinked files.
    pub hardlinks: u64,
    /// Directories created, the root included.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Devices, fifos and sockets created.
    pub specials: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Files whose content was cloned (shared extents, no data copied).
    pub reflinked: u64,
    /// Files whose content was copied from a bare repository.
    pub copied: u64,
    /// Files written from decompressed chunks (archive repository).
    pub decompressed: u64,
}

impl CheckoutStats {
    /// How content was placed: "reflink", "copy", "decompress", or a mix joined by '+'.
    pub fn method(&self) -> String {
        let parts: Vec<&str> = [(self.reflinked, "reflink"), (self.copied, "copy"), (self.decompressed, "decompress")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(_, s)| *s)
            .collect();
        if parts.is_empty() { "none".into() } else { parts.join("+") }
    }
}

struct Ctx<'a> {
    repo: &'a Repo,
    options: CheckoutOptions,
    dest: PathBuf,
    root_fd: OwnedFd,
    links: HashMap<u32, PathBuf>,
    stats: CheckoutStats,
}

fn name_of(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// Checks out `commit` into `dest`, which must not exist or be an empty directory.
pub fn checkout(repo: &Repo, commit: &CommitId, dest: &Path, options: CheckoutOptions) -> Result<CheckoutStats> {
    let commit = repo.commit_object(commit)?;
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::DestinationNotEmpty { path: dest.into() });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir(dest).at(dest)?,
        Err(_) => return Err(StoreError::DestinationNotEmpty { path: dest.into() }),
    }
    let root_fd =
        rustix::fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .at(dest)?;
    let mut ctx =
        Ctx { repo, options, dest: dest.into(), root_fd, links: HashMap::new(), stats: CheckoutStats::default() };
    let tree = repo.tree(&commit.root)?;
    let root_fd = ctx.root_fd.try_clone().at(dest)?;
    ctx.fill_dir(&root_fd, Path::new(""), &tree)?;
    ctx.apply_meta_fd(&root_fd, &commit.root_meta, dest)?;
    ctx.stats.dirs += 1;
    if options.sync {
        syncfs(dest)?;
    }
    Ok(ctx.stats)
}

fn timestamps(meta: &Meta) -> Timestamps {
    let t = Timespec { tv_sec: meta.mtime.sec, tv_nsec: meta.mtime.nsec.into() };
    Timestamps { last_access: t, last_modification: t }
}

impl Ctx<'_> {
    fn wants_xattr(&self, name: &[u8]) -> bool {
        self.options.preserve_owner || name.starts_with(b"user.")
    }

    fn fill_dir(&mut self, dir_fd: &OwnedFd, rel: &Path, tree: &DirTree) -> Result<()> {
        for entry in &tree.entries {
            let name = name_of(&entry.name);
            let rel_path = rel.join(name);
            let full = self.dest.join(&rel_path);
            match &entry.kind {
                EntryKind::File { file, hardlink } => {
                    if *hardlink != 0
                        && let Some(first) = self.links.get(hardlink)
                    {
                        rustix::fs::linkat(&self.root_fd, first, dir_fd, name, AtFlags::empty()).at(&full)?;
                        self.stats.hardlinks += 1;
                        continue;
                    }
                    let fd = rustix::fs::openat(
                        dir_fd,
                        name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .at(&full)?;
                    self.write_content(File::from(fd.try_clone().at(&full)?), file, &full)?;
                    self.apply_meta_fd(&fd, &entry.meta, &full)?;
                    self.stats.files += 1;
                    if *hardlink != 0 {
                        self.links.insert(*hardlink, rel_path);
                    }
                }
                EntryKind::Dir(tree_id) => {
                    rustix::fs::mkdirat(dir_fd, name, Mode::from_raw_mode(0o700)).at(&full)?;
                    let sub = rustix::fs::openat(
                        dir_fd,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .at(&full)?;
                    let subtree = self.repo.tree(tree_id)?;
                    self.fill_dir(&sub, &rel_path, &subtree)?;
                    self.apply_meta_fd(&sub, &entry.meta, &full)?;
                    self.stats.dirs += 1;
                }
                EntryKind::Symlink(target) => {
                    rustix::fs::symlinkat(name_of(target), dir_fd, name).at(&full)?;
                    self.apply_meta_at(dir_fd, name, &full, &entry.meta, false)?;
                    self.stats.symlinks += 1;
                }
                EntryKind::CharDevice(_) | EntryKind::BlockDevice(_) | EntryKind::Fifo | EntryKind::Socket => {
                    let (ft, dev) = match &entry.kind {
                        EntryKind::CharDevice(rdev) => (FileType::CharacterDevice, *rdev),
                        EntryKind::BlockDevice(rdev) => (FileType::BlockDevice, *rdev),
                        EntryKind::Fifo => (FileType::Fifo, 0),
                        _ => (FileType::Socket, 0),
                    };
                    rustix::fs::mknodat(dir_fd, name, ft, Mode::from_raw_mode(0o600), dev).at(&full)?;
                    self.apply_meta_at(dir_fd, name, &full, &entry.meta, true)?;
                    self.stats.specials += 1;
                }
            }
        }
        Ok(())
    }

    fn write_content(&mut self, mut dst: File, file: &FileId, path: &Path) -> Result<()> {
        let object = self.repo.file_object(file)?;
        self.stats.bytes += object.size;
        if let Some(bare) = self.repo.bare() {
            let src_path = bare.content_path(file);
            let src = File::open(&src_path).at(&src_path)?;
            let len = src.metadata().at(&src_path)?.len();
            if len != object.size {
                return Err(StoreError::Corrupt {
                    what: format!("file object {file} ({})", src_path.display()),
                    reason: format!("content is {len} bytes, the object says {}", object.size),
                });
            }
            match clone_or_copy(&src, &dst, len, self.options.reflink).at(path)? {
                _ if len == 0 => {}
                CopyMethod::Reflink => self.stats.reflinked += 1,
                CopyMethod::Copy => self.stats.copied += 1,
            }
        } else {
            for (chunk, _) in &object.chunks {
                let data = self.repo.read(ObjectKind::Chunk, &chunk.0)?;
                dst.write_all(&data).at(path)?;
            }
            self.stats.decompressed += 1;
        }
        Ok(())
    }

    fn apply_meta_fd(&self, fd: &OwnedFd, meta: &Meta, path: &Path) -> Result<()> {
        if self.options.preserve_owner {
            rustix::fs::fchown(
                fd,
                Some(rustix::process::Uid::from_raw(meta.uid)),
                Some(rustix::process::Gid::from_raw(meta.gid)),
            )
            .at(path)?;
        }
        for (name, value) in meta.xattrs.iter().filter(|(n, _)| self.wants_xattr(n)) {
            rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
                .map_err(|e| xattr_error(path, name, e))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).at(path)?;
        rustix::fs::futimens(fd, &timestamps(meta)).at(path)
    }

    fn apply_meta_at(&self, dir_fd: &OwnedFd, name: &OsStr, path: &Path, meta: &Meta, chmod: bool) -> Result<()> {
        if self.options.preserve_owner {
            rustix::fs::chownat(
                dir_fd,
                name,
                Some(rustix::process::Uid::from_raw(meta.uid)),
                Some(rustix::process::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .at(path)?;
        }
        for (xname, value) in meta.xattrs.iter().filter(|(n, _)| self.wants_xattr(n)) {
            rustix::fs::lsetxattr(path, xname.as_slice(), value, XattrFlags::empty())
                .map_err(|e| xattr_error(path, xname, e))?;
        }
        if chmod {
            rustix::fs::chmodat(dir_fd, name, Mode::from_raw_mode(meta.mode), AtFlags::empty()).at(path)?;
        }
        rustix::fs::utimensat(dir_fd, name, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW).at(path)
    }
}

fn xattr_error(path: &Path, name: &[u8], e: rustix::io::Errno) -> StoreError {
    StoreError::Io {
        path: path.into(),
        source: std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("setting xattr {}: {e}", String::from_utf8_lossy(name)),
        ),
    }
}
