//! `checkout`: a commit's tree → a directory, with full metadata.
//!
//! Every entry is created relative to a directory fd opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` below a destination that starts empty, with `O_NOFOLLOW|O_EXCL`, from
//! names validated on decode: nothing in a tree (a `..` name, a symlink to `/`, a symlink where a
//! directory follows) can make checkout write outside the destination.
//!
//! It runs in phases: plan (read every tree and file object once, in one snapshot), create the
//! directories, fill them in parallel (both cores: cloning is kernel time), link hardlinks, then
//! apply directory metadata deepest first. Content comes by FICLONE from a bare repository (copy where the
//! filesystem cannot clone) or is decompressed from an archive repository's packs. Metadata is
//! applied in the order the kernel needs: owner, then xattrs (chown drops security.capability),
//! then mode (chown drops setuid), then mtime, directories after their children.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use serde::Serialize;

use crate::archive::ArchiveStore;
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil::{open_dir_beneath, syncfs};
use crate::id::{CommitId, FileId, TreeId};
use crate::name::escaped;
use crate::object::{Entry, EntryKind, FileObject, Meta, ObjectKind};
use crate::reflink::{CopyMethod, clone_or_copy};
use crate::repo::{Objects, Repo};

/// How to check out.
#[derive(Clone, Copy, Debug)]
pub struct CheckoutOptions {
    /// Apply uid/gid and privileged xattrs (needs root); otherwise only user.* xattrs are set.
    pub preserve_owner: bool,
    /// Try FICLONE before copying (bare repositories).
    pub reflink: bool,
    /// syncfs the destination at the end.
    pub sync: bool,
    /// Re-hash every chunk of a bare repository's content before cloning it, so that content
    /// damaged on disk since it was stored is found before it is deployed (reads every byte).
    pub verify: bool,
}

impl Default for CheckoutOptions {
    fn default() -> Self {
        CheckoutOptions {
            preserve_owner: rustix::process::geteuid().is_root(),
            reflink: true,
            sync: true,
            verify: false,
        }
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

/// How a checkout places a file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckoutMethod {
    /// Extents shared with the repository's content file (FICLONE): no data copied.
    Reflink,
    /// Data copied from a bare repository (another filesystem, or one that cannot share extents).
    Copy,
    /// Written from decompressed chunks (archive repository).
    Decompress,
}

impl CheckoutMethod {
    /// The name `--json` and the reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutMethod::Reflink => "reflink",
            CheckoutMethod::Copy => "copy",
            CheckoutMethod::Decompress => "decompress",
        }
    }
}

impl CheckoutStats {
    /// The methods that placed some content, in the order reflink, copy, decompress.
    pub fn methods(&self) -> Vec<CheckoutMethod> {
        [
            (self.reflinked, CheckoutMethod::Reflink),
            (self.copied, CheckoutMethod::Copy),
            (self.decompressed, CheckoutMethod::Decompress),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(_, m)| m)
        .collect()
    }

    /// [`Self::methods`] as text: "reflink", "copy", "decompress", a mix joined by '+', or "none".
    pub fn method(&self) -> String {
        let methods = self.methods();
        if methods.is_empty() {
            return "none".into();
        }
        methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join("+")
    }
}

impl CheckoutStats {
    fn merge(mut self, o: CheckoutStats) -> CheckoutStats {
        self.files += o.files;
        self.hardlinks += o.hardlinks;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.specials += o.specials;
        self.bytes += o.bytes;
        self.reflinked += o.reflinked;
        self.copied += o.copied;
        self.decompressed += o.decompressed;
        self
    }
}

/// Where file content comes from; shared by the worker threads.
enum Content<'a> {
    /// Whole files below a bare repository's `objects/`.
    Bare(&'a Path),
    /// Chunks in an archive repository's packs.
    Archive(&'a ArchiveStore),
}

/// A regular file to create.
struct PlanFile {
    name: Vec<u8>,
    meta: Meta,
    id: FileId,
    object: FileObject,
}

/// One directory of the tree with everything to create in it.
struct PlanDir {
    rel: PathBuf,
    meta: Meta,
    files: Vec<PlanFile>,
    others: Vec<Entry>,
    links: Vec<(Vec<u8>, u32)>,
}

struct Planner<'r> {
    repo: &'r Repo,
    dirs: Vec<PlanDir>,
    firsts: HashMap<u32, (usize, Vec<u8>)>,
}

impl Planner<'_> {
    /// Reads `tree` and its subtrees into `dirs`, parents before children.
    fn add(&mut self, tree: &TreeId, rel: PathBuf, meta: Meta) -> Result<()> {
        let tree = self.repo.tree(tree)?;
        let index = self.dirs.len();
        self.dirs.push(PlanDir { rel: rel.clone(), meta, files: Vec::new(), others: Vec::new(), links: Vec::new() });
        for entry in tree.entries {
            match entry.kind {
                EntryKind::File { file, hardlink } => {
                    if hardlink != 0 && self.firsts.contains_key(&hardlink) {
                        self.dirs[index].links.push((entry.name, hardlink));
                        continue;
                    }
                    if hardlink != 0 {
                        self.firsts.insert(hardlink, (index, entry.name.clone()));
                    }
                    let object = self.repo.file_object(&file)?;
                    self.dirs[index].files.push(PlanFile { name: entry.name, meta: entry.meta, id: file, object });
                }
                EntryKind::Dir(sub) => self.add(&sub, rel.join(name_of(&entry.name)), entry.meta)?,
                _ => self.dirs[index].others.push(entry),
            }
        }
        Ok(())
    }
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
    let mut planner = Planner { repo, dirs: Vec::new(), firsts: HashMap::new() };
    repo.snapshot(|| planner.add(&commit.root, PathBuf::new(), commit.root_meta.clone()))?;
    let Planner { dirs, firsts, .. } = planner;
    let root =
        rustix::fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .at(dest)?;
    let worker = Worker {
        options,
        creator: (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw()),
        dest,
        root: &root,
        content: match repo.objects() {
            Objects::Bare(bare) => Content::Bare(bare.objects_dir()),
            Objects::Archive(archive) => Content::Archive(archive),
        },
    };
    for dir in &dirs[1..] {
        let parent = dir.rel.parent().expect("a subdirectory has a parent");
        let name = dir.rel.file_name().expect("a subdirectory has a name");
        let parent_fd = open_dir_beneath(root.as_fd(), parent, &dest.join(parent))?;
        rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700)).at(dest.join(&dir.rel))?;
    }
    let mut stats =
        dirs.par_iter().map(|dir| worker.fill(dir)).try_reduce(CheckoutStats::default, |a, b| Ok(a.merge(b)))?;
    for dir in &dirs {
        for (name, group) in &dir.links {
            let (first_dir, first_name) = &firsts[group];
            let from_rel = &dirs[*first_dir].rel;
            let from = open_dir_beneath(root.as_fd(), from_rel, &dest.join(from_rel))?;
            let to = open_dir_beneath(root.as_fd(), &dir.rel, &dest.join(&dir.rel))?;
            let full = dest.join(&dir.rel).join(name_of(name));
            rustix::fs::linkat(&from, name_of(first_name), &to, name_of(name), AtFlags::empty()).at(&full)?;
            stats.hardlinks += 1;
        }
    }
    for dir in dirs.iter().rev() {
        let full = dest.join(&dir.rel);
        let fd = open_dir_beneath(root.as_fd(), &dir.rel, &full)?;
        worker.apply_meta_fd(fd.as_fd(), &dir.meta, &full)?;
        stats.dirs += 1;
    }
    if options.sync {
        syncfs(dest)?;
    }
    Ok(stats)
}

fn timestamps(meta: &Meta) -> Timestamps {
    let t = Timespec { tv_sec: meta.mtime.sec, tv_nsec: meta.mtime.nsec.into() };
    Timestamps { last_access: t, last_modification: t }
}

/// What every worker thread shares.
struct Worker<'a> {
    options: CheckoutOptions,
    creator: (u32, u32),
    dest: &'a Path,
    root: &'a OwnedFd,
    content: Content<'a>,
}

impl Worker<'_> {
    fn wants_xattr(&self, name: &[u8]) -> bool {
        self.options.preserve_owner || name.starts_with(b"user.")
    }

    /// Creates one directory's files, symlinks and special files with their metadata.
    fn fill(&self, dir: &PlanDir) -> Result<CheckoutStats> {
        let mut stats = CheckoutStats::default();
        let dir_path = self.dest.join(&dir.rel);
        let dir_fd = open_dir_beneath(self.root.as_fd(), &dir.rel, &dir_path)?;
        for f in &dir.files {
            let name = name_of(&f.name);
            let full = dir_path.join(name);
            let fd = rustix::fs::openat(
                &dir_fd,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .at(&full)?;
            let mut dst = File::from(fd);
            self.write_content(&mut dst, f, &full, &mut stats)?;
            self.apply_meta_fd(dst.as_fd(), &f.meta, &full)?;
            stats.files += 1;
        }
        for entry in &dir.others {
            let name = name_of(&entry.name);
            let full = dir_path.join(name);
            let (file_type, rdev) = match &entry.kind {
                EntryKind::Symlink(target) => {
                    rustix::fs::symlinkat(name_of(target), &dir_fd, name).at(&full)?;
                    self.apply_meta_at(&dir_fd, name, &full, &entry.meta, false)?;
                    stats.symlinks += 1;
                    continue;
                }
                EntryKind::CharDevice(rdev) => (FileType::CharacterDevice, *rdev),
                EntryKind::BlockDevice(rdev) => (FileType::BlockDevice, *rdev),
                EntryKind::Fifo => (FileType::Fifo, 0),
                EntryKind::Socket => (FileType::Socket, 0),
                EntryKind::File { .. } | EntryKind::Dir(_) => unreachable!("planned separately"),
            };
            rustix::fs::mknodat(&dir_fd, name, file_type, Mode::from_raw_mode(0o600), rdev).at(&full)?;
            self.apply_meta_at(&dir_fd, name, &full, &entry.meta, true)?;
            stats.specials += 1;
        }
        Ok(stats)
    }

    fn write_content(&self, dst: &mut File, f: &PlanFile, path: &Path, stats: &mut CheckoutStats) -> Result<()> {
        stats.bytes += f.object.size;
        match &self.content {
            Content::Bare(objects) => {
                let src_path = crate::bare::content_path(objects, &f.id);
                let src = File::open(&src_path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => StoreError::Corrupt {
                        what: format!("file object {} ({})", f.id, src_path.display()),
                        reason: "its content is missing".into(),
                    },
                    _ => StoreError::Io { path: src_path.clone(), error: e },
                })?;
                let len = src.metadata().at(&src_path)?.len();
                if self.options.verify {
                    verify_content(&src, &src_path, f)?;
                }
                if len != f.object.size {
                    return Err(StoreError::Corrupt {
                        what: format!("file object {} ({})", f.id, src_path.display()),
                        reason: format!("content is {len} bytes, the object says {}", f.object.size),
                    });
                }
                match clone_or_copy(&src, dst, len, self.options.reflink).at(path)? {
                    _ if len == 0 => {}
                    CopyMethod::Reflink => stats.reflinked += 1,
                    CopyMethod::Copy => stats.copied += 1,
                }
            }
            Content::Archive(archive) => {
                for (chunk, _) in &f.object.chunks {
                    dst.write_all(&archive.get(ObjectKind::Chunk, &chunk.0)?).at(path)?;
                }
                stats.decompressed += 1;
            }
        }
        Ok(())
    }

    fn apply_meta_fd(&self, fd: BorrowedFd<'_>, meta: &Meta, path: &Path) -> Result<()> {
        // A new inode already belongs to (euid, egid): directories are created without setgid,
        // which is applied only after their content. Most of an OS tree is root:root.
        if self.options.preserve_owner && (meta.uid, meta.gid) != self.creator {
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
        // xattrs of a symlink or device node have no fd-based call: go through the directory fd's
        // /proc entry, so the path cannot be redirected, and do not follow the final symlink.
        let via_fd = Path::new("/proc/self/fd").join(dir_fd.as_raw_fd().to_string()).join(name);
        for (xname, value) in meta.xattrs.iter().filter(|(n, _)| self.wants_xattr(n)) {
            rustix::fs::lsetxattr(&via_fd, xname.as_slice(), value, XattrFlags::empty())
                .map_err(|e| xattr_error(path, xname, e))?;
        }
        if chmod {
            rustix::fs::chmodat(dir_fd, name, Mode::from_raw_mode(meta.mode), AtFlags::empty()).at(path)?;
        }
        rustix::fs::utimensat(dir_fd, name, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW).at(path)
    }
}

/// Checks that a bare content file still holds the chunks its file object lists.
fn verify_content(src: &File, path: &Path, f: &PlanFile) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for (chunk, len) in &f.object.chunks {
        buf.resize(*len as usize, 0);
        src.read_exact_at(&mut buf, offset).map_err(|e| StoreError::Corrupt {
            what: format!("file object {} ({})", f.id, path.display()),
            reason: format!("reading chunk {chunk} at offset {offset}: {e}"),
        })?;
        let actual = crate::ObjectId::of(&buf);
        if actual != chunk.0 {
            return Err(StoreError::Corrupt {
                what: format!("file object {} ({})", f.id, path.display()),
                reason: format!("chunk {chunk} at offset {offset} hashes to {actual}"),
            });
        }
        offset += u64::from(*len);
    }
    Ok(())
}

fn xattr_error(path: &Path, name: &[u8], e: rustix::io::Errno) -> StoreError {
    StoreError::Io {
        path: path.into(),
        error: std::io::Error::new(std::io::Error::from(e).kind(), format!("setting xattr {}: {e}", escaped(name))),
    }
}
