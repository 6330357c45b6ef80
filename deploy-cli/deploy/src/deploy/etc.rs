//! The three-way merge of `/etc` at a switch.
//!
//! Three versions of every path below `/etc` are compared: **old** (the booted slot's release, read from the
//! repository), **new** (the release being deployed, from the repository; already checked out into the standby
//! slot) and **local** (the booted slot's `/etc` on disk, with the administrator's changes). Two versions are equal
//! when they have the same type, content (or symlink target, or device number), permission bits and owner; times and
//! extended attributes are not compared.
//!
//! | local vs old | new vs old | result in the new slot                          |
//! |--------------|------------|-------------------------------------------------|
//! | same         | any        | new (the release decides)                       |
//! | changed      | same       | local (kept)                                    |
//! | changed      | changed    | local, unless new equals local; a **conflict**  |
//!
//! "Changed" includes added and deleted, so a file the administrator deleted stays deleted, and one they added is
//! carried over. Local versions are copied into the new slot with their metadata (owner, mode, extended attributes,
//! mtime); every write goes through directory file descriptors of the new slot without following any symlink (see
//! [`super::fsops`]), so a symlink in either tree (`/etc/evil -> /`) cannot make the merge write outside the slot.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use osdeploy_store::object::{EntryKind, ObjectKind};
use osdeploy_store::{CommitId, Repo, StoreError};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use serde::Serialize;

use super::{IoContext, Result};
use osdeploy_store::fsutil::{dev_of, dir_names, open_dir, open_dir_beneath, remove_at, type_at};

/// What an entry is, as far as the merge compares.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    File(blake3::Hash),
    Dir,
    Symlink(Vec<u8>),
    CharDevice(u64),
    BlockDevice(u64),
    Fifo,
    Socket,
}

/// One version of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sig {
    body: Body,
    /// Permission bits (0 for symlinks, whose mode means nothing).
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Every path below an `/etc`, relative to it.
type Tree = BTreeMap<PathBuf, Sig>;

/// What the merge did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MergeReport {
    /// Paths (relative to /etc) where the local version was carried into the new slot without conflict.
    pub kept_local: Vec<String>,
    /// Paths changed both locally and by the new release, differently: the local version was kept.
    pub conflicts: Vec<String>,
    /// Paths changed locally that could not be carried over (the new release's /etc is not a
    /// directory): the new slot has the release's version.
    pub not_carried: Vec<String>,
    /// Why the merge did not run or was partial, if it did not run completely.
    pub note: Option<String>,
}

/// Merges `/etc`: `old` is the booted slot's commit (`None` when nothing is deployed there yet), `local_slot` the
/// booted slot's directory, `new` the commit checked out into `new_slot`.
pub fn merge(
    repo: &Repo,
    old: Option<&CommitId>,
    new: &CommitId,
    local_slot: &Path,
    new_slot: &Path,
) -> Result<MergeReport> {
    let mut report = MergeReport::default();
    let Some(old) = old else {
        report.note = Some("no release is deployed in the booted slot: nothing to merge".into());
        return Ok(report);
    };
    let local_slot_fd = open_dir(local_slot)?;
    let local_etc = local_slot.join("etc");
    if !matches!(type_at(local_slot_fd.as_fd(), OsStr::new("etc"), &local_etc)?, Some((FileType::Directory, _))) {
        report.note = Some(format!("{} is not a directory: nothing to merge", local_etc.display()));
        return Ok(report);
    }
    let local_fd = open_dir_beneath(local_slot_fd.as_fd(), Path::new("etc"), &local_etc)?;
    let old_tree = repo_tree(repo, old)?;
    let new_tree = repo_tree(repo, new)?;
    let mut local_tree = Tree::new();
    walk_fs(local_fd.as_fd(), &local_etc, Path::new(""), &mut local_tree)?;
    let changed: Vec<&PathBuf> = old_tree
        .keys()
        .chain(local_tree.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|p| old_tree.get(*p) != local_tree.get(*p))
        .collect();
    if changed.is_empty() {
        return Ok(report);
    }
    let new_slot_fd = open_dir(new_slot)?;
    let new_etc = new_slot.join("etc");
    let new_fd = match open_dir_beneath(new_slot_fd.as_fd(), Path::new("etc"), &new_etc) {
        Ok(fd) => fd,
        Err(_) if type_at(new_slot_fd.as_fd(), OsStr::new("etc"), &new_etc)?.is_none() => {
            rustix::fs::mkdirat(&new_slot_fd, "etc", Mode::from_raw_mode(0o755)).at(&new_etc)?;
            open_dir_beneath(new_slot_fd.as_fd(), Path::new("etc"), &new_etc)?
        }
        Err(_) => {
            report.note = Some(format!(
                "{} is not a directory in the new release: local changes were not carried over",
                new_etc.display()
            ));
            report.not_carried = changed.iter().map(|p| p.display().to_string()).collect();
            return Ok(report);
        }
    };
    let writer = Writer {
        local: local_fd.as_fd(),
        local_root: &local_etc,
        new: new_fd.as_fd(),
        new_root: &new_etc,
        dev: dev_of(new_fd.as_fd(), &new_etc)?,
        local_tree: &local_tree,
    };
    for path in changed {
        let (o, l, n) = (old_tree.get(path), local_tree.get(path), new_tree.get(path));
        if n == l {
            continue;
        }
        let name = path.display().to_string();
        if n == o {
            report.kept_local.push(name);
        } else {
            report.conflicts.push(name);
        }
        let replaced_parent = writer.apply(path, l)?;
        report.conflicts.extend(replaced_parent);
    }
    report.conflicts.sort();
    report.conflicts.dedup();
    Ok(report)
}

/// The signatures of every path below `/etc` of a commit (empty when it has no `/etc` directory).
fn repo_tree(repo: &Repo, commit_id: &CommitId) -> Result<Tree> {
    let commit = repo.commit_object(commit_id)?;
    let mut tree = Tree::new();
    let kind = match osdeploy_store::tree::lookup(repo, commit_id, &commit, "etc") {
        Ok((_, kind)) => kind,
        Err(StoreError::PathNotFound { .. }) => return Ok(tree),
        Err(e) => return Err(e.into()),
    };
    let EntryKind::Dir(root) = kind else { return Ok(tree) };
    osdeploy_store::tree::walk(repo, &root, &mut |rel, entry| {
        let body = match &entry.kind {
            EntryKind::File { file, .. } => {
                let object = repo.file_object(file)?;
                let mut hasher = blake3::Hasher::new();
                for (chunk, _) in &object.chunks {
                    hasher.update(&repo.read(ObjectKind::Chunk, &chunk.0)?);
                }
                Body::File(hasher.finalize())
            }
            EntryKind::Dir(_) => Body::Dir,
            EntryKind::Symlink(target) => Body::Symlink(target.clone()),
            EntryKind::CharDevice(rdev) => Body::CharDevice(*rdev),
            EntryKind::BlockDevice(rdev) => Body::BlockDevice(*rdev),
            EntryKind::Fifo => Body::Fifo,
            EntryKind::Socket => Body::Socket,
        };
        let mode = if matches!(body, Body::Symlink(_)) { 0 } else { entry.meta.mode & 0o7777 };
        tree.insert(rel.to_owned(), Sig { body, mode, uid: entry.meta.uid, gid: entry.meta.gid });
        Ok(())
    })?;
    Ok(tree)
}

/// The signatures of everything below the directory `dir` (`full` on disk, `rel` below /etc).
fn walk_fs(dir: BorrowedFd<'_>, full: &Path, rel: &Path, tree: &mut Tree) -> Result<()> {
    for name in dir_names(dir, full)? {
        let name = OsStr::from_bytes(&name);
        let (path, rel) = (full.join(name), rel.join(name));
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).at(&path)?;
        let mut sub = None;
        let body = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let mut file = File::from(
                    rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                        .at(&path)?,
                );
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = file.read(&mut buf).at(&path)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                Body::File(hasher.finalize())
            }
            FileType::Directory => {
                sub = Some(
                    rustix::fs::openat(
                        dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .at(&path)?,
                );
                Body::Dir
            }
            FileType::Symlink => Body::Symlink(rustix::fs::readlinkat(dir, name, Vec::new()).at(&path)?.into_bytes()),
            FileType::CharacterDevice => Body::CharDevice(st.st_rdev),
            FileType::BlockDevice => Body::BlockDevice(st.st_rdev),
            FileType::Fifo => Body::Fifo,
            FileType::Socket => Body::Socket,
            FileType::Unknown => continue,
        };
        let mode = if matches!(body, Body::Symlink(_)) { 0 } else { st.st_mode & 0o7777 };
        tree.insert(rel.clone(), Sig { body, mode, uid: st.st_uid, gid: st.st_gid });
        if let Some(sub) = sub {
            walk_fs(sub.as_fd(), &path, &rel, tree)?;
        }
    }
    Ok(())
}

/// Copies local versions into the new slot's `/etc`.
struct Writer<'a> {
    local: BorrowedFd<'a>,
    local_root: &'a Path,
    new: BorrowedFd<'a>,
    new_root: &'a Path,
    dev: u64,
    local_tree: &'a Tree,
}

impl Writer<'_> {
    /// Makes `rel` in the new slot what it is locally (`None`: absent). Returns the parent directories that had to
    /// replace something that was not a directory in the new slot (conflicts too).
    fn apply(&self, rel: &Path, local: Option<&Sig>) -> Result<Vec<String>> {
        let name = rel.file_name().expect("paths below /etc have a name");
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let full = self.new_root.join(rel);
        let Some(local) = local else {
            // Deleted locally: delete it in the new slot too, if its parent is there as a directory.
            return match open_dir_beneath(self.new, parent_rel, &self.new_root.join(parent_rel)) {
                Ok(parent) => Ok(remove_at(parent.as_fd(), name, &full, self.dev).map(|()| Vec::new())?),
                Err(_) => Ok(Vec::new()),
            };
        };
        let (parent, replaced) = self.ensure_dir_path(parent_rel)?;
        let existing = type_at(parent.as_fd(), name, &full)?;
        if local.body == Body::Dir {
            if !matches!(existing, Some((FileType::Directory, _))) {
                remove_at(parent.as_fd(), name, &full, self.dev)?;
                rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)).at(&full)?;
            }
            let dir = open_dir_beneath(parent.as_fd(), Path::new(name), &full)?;
            self.copy_meta(dir.as_fd(), rel, &full, true)?;
            return Ok(replaced);
        }
        remove_at(parent.as_fd(), name, &full, self.dev)?;
        let local_full = self.local_root.join(rel);
        let local_parent = open_dir_beneath(self.local, parent_rel, &self.local_root.join(parent_rel))?;
        match &local.body {
            Body::File(_) => {
                let mut src = File::from(
                    rustix::fs::openat(
                        &local_parent,
                        name,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .at(&local_full)?,
                );
                let mut dst = File::from(
                    rustix::fs::openat(
                        &parent,
                        name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .at(&full)?,
                );
                std::io::copy(&mut src, &mut dst).at(&full)?;
                let st = rustix::fs::fstat(&src).at(&local_full)?;
                rustix::fs::fchown(
                    &dst,
                    Some(rustix::process::Uid::from_raw(st.st_uid)),
                    Some(rustix::process::Gid::from_raw(st.st_gid)),
                )
                .at(&full)?;
                copy_xattrs(src.as_fd(), dst.as_fd(), &full)?;
                rustix::fs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o7777)).at(&full)?;
                rustix::fs::futimens(&dst, &times(&st)).at(&full)?;
            }
            other => {
                match other {
                    Body::Symlink(target) => {
                        rustix::fs::symlinkat(OsStr::from_bytes(target), &parent, name).at(&full)?
                    }
                    Body::CharDevice(rdev) => {
                        rustix::fs::mknodat(&parent, name, FileType::CharacterDevice, Mode::empty(), *rdev).at(&full)?
                    }
                    Body::BlockDevice(rdev) => {
                        rustix::fs::mknodat(&parent, name, FileType::BlockDevice, Mode::empty(), *rdev).at(&full)?
                    }
                    Body::Fifo => rustix::fs::mknodat(&parent, name, FileType::Fifo, Mode::empty(), 0).at(&full)?,
                    Body::Socket => rustix::fs::mknodat(&parent, name, FileType::Socket, Mode::empty(), 0).at(&full)?,
                    Body::File(_) | Body::Dir => unreachable!("handled above"),
                }
                let st = rustix::fs::statat(&local_parent, name, AtFlags::SYMLINK_NOFOLLOW).at(&local_full)?;
                rustix::fs::chownat(
                    &parent,
                    name,
                    Some(rustix::process::Uid::from_raw(st.st_uid)),
                    Some(rustix::process::Gid::from_raw(st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .at(&full)?;
                if !matches!(other, Body::Symlink(_)) {
                    rustix::fs::chmodat(&parent, name, Mode::from_raw_mode(st.st_mode & 0o7777), AtFlags::empty())
                        .at(&full)?;
                }
                rustix::fs::utimensat(&parent, name, &times(&st), AtFlags::SYMLINK_NOFOLLOW).at(&full)?;
            }
        }
        Ok(replaced)
    }

    /// Opens the directory `rel` of the new slot's /etc, creating the missing components (with their local metadata)
    /// and replacing components that are not directories; returns it and the components replaced.
    fn ensure_dir_path(&self, rel: &Path) -> Result<(OwnedFd, Vec<String>)> {
        let mut dir = open_dir_beneath(self.new, Path::new(""), self.new_root)?;
        let mut done = PathBuf::new();
        let mut replaced = Vec::new();
        for component in rel.iter() {
            done.push(component);
            let full = self.new_root.join(&done);
            match type_at(dir.as_fd(), component, &full)? {
                Some((FileType::Directory, _)) => {}
                existing => {
                    if existing.is_some() {
                        remove_at(dir.as_fd(), component, &full, self.dev)?;
                        replaced.push(done.display().to_string());
                    }
                    rustix::fs::mkdirat(&dir, component, Mode::from_raw_mode(0o700)).at(&full)?;
                    let sub = open_dir_beneath(dir.as_fd(), Path::new(component), &full)?;
                    self.copy_meta(sub.as_fd(), &done, &full, self.local_tree.contains_key(&done))?;
                }
            }
            dir = open_dir_beneath(dir.as_fd(), Path::new(component), &full)?;
        }
        Ok((dir, replaced))
    }

    /// Gives the directory `fd` (at `rel`) the owner, xattrs, mode and mtime of the local directory at `rel`, or
    /// root:root 0755 when `from_local` is false.
    fn copy_meta(&self, fd: BorrowedFd<'_>, rel: &Path, full: &Path, from_local: bool) -> Result<()> {
        if !from_local {
            return rustix::fs::fchmod(fd, Mode::from_raw_mode(0o755)).at(full);
        }
        let local = open_dir_beneath(self.local, rel, &self.local_root.join(rel))?;
        let st = rustix::fs::fstat(&local).at(&self.local_root.join(rel))?;
        rustix::fs::fchown(
            fd,
            Some(rustix::process::Uid::from_raw(st.st_uid)),
            Some(rustix::process::Gid::from_raw(st.st_gid)),
        )
        .at(full)?;
        copy_xattrs(local.as_fd(), fd, full)?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777)).at(full)?;
        rustix::fs::futimens(fd, &times(&st)).at(full)
    }
}

fn times(st: &rustix::fs::Stat) -> Timestamps {
    let t = rustix::fs::Timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec as _ };
    Timestamps { last_access: t, last_modification: t }
}

/// Copies every extended attribute of `src` to `dst`.
fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, full: &Path) -> Result<()> {
    let size = rustix::fs::flistxattr_query(src).at(full)?;
    if size == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; size];
    let len = rustix::fs::flistxattr(src, &mut names[..]).at(full)?;
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let size = rustix::fs::fgetxattr_query(src, name).at(full)?;
        let mut value = vec![0u8; size];
        let len = rustix::fs::fgetxattr(src, name, &mut value[..]).at(full)?;
        rustix::fs::fsetxattr(dst, name, &value[..len], XattrFlags::empty()).at(full)?;
    }
    Ok(())
}
