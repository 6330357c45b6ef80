//! Kernels per slot: `switch` copies the new release's kernel and initrd to the boot partition and
//! points the standby slot's boot entry at them.
//!
//! # Where a release's kernel is found
//!
//! In the committed tree, the newest version (compared like systemd's `strverscmp`) among
//! `usr/lib/modules/VERSION/vmlinuz` (with `initrd.img` or `initramfs.img` beside it) and
//! `boot/vmlinuz-VERSION` (with `boot/initrd.img-VERSION` or `boot/initramfs-VERSION.img`).
//! Only regular files count: symlinks such as Debian's `/vmlinuz` are never followed.
//!
//! # Where it is installed
//!
//! `BOOT/osdeploy/SLOT-COMMIT12/{vmlinuz,initrd.img}`, where `BOOT` is `SYSROOT/boot` (the ESP or
//! XBOOTLDR for systemd-boot, the partition holding `grub/` for GRUB). The boot loader sees these
//! paths relative to the filesystem `BOOT` is on: `/osdeploy/...` when `BOOT` is a mount point of
//! its own, `/boot/osdeploy/...` when it is a directory of the sysroot's filesystem.
//!
//! Each slot has at most one such directory: installing for a slot first removes that slot's old
//! one (the slot was emptied, and nothing boots it while `switch` runs), then copies into
//! `BOOT/osdeploy/.SLOT-new`, syncs it, renames it into place (syncing the renamed directory, then its parent: on
//! vfat the new name gets its first cluster only from the former), and rewrites the slot's entry last.
//! The other slot's kernel is never touched, so the boot partition holds two kernels at most and
//! an interrupted switch leaves nothing a rerun does not clean.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use osdeploy_store::fsutil::crash_point;
use osdeploy_store::id::FileId;
use osdeploy_store::object::{Commit, Entry, EntryKind};
use osdeploy_store::{CommitId, Repo, StoreError};
use serde::Serialize;

use super::state::BootloaderKind;
use super::{DeployError, IoContext, Result, Sysroot};
use crate::bootloader::systemd_boot::verscmp;
use crate::bootloader::{BackendConfig, BlsEntry, GrubEnv, Slot, SystemdBoot};

/// A kernel (and initrd) found in a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReleaseKernel {
    /// The kernel version, as its file or directory name tells it.
    pub version: String,
    /// The kernel's path in the tree.
    pub kernel: String,
    /// The kernel's content.
    #[serde(skip)]
    pub kernel_file: FileId,
    /// The initrd's path in the tree, if the release has one for this kernel.
    pub initrd: Option<String>,
    /// The initrd's content.
    #[serde(skip)]
    pub initrd_file: Option<FileId>,
}

/// The entries of directory `path` in a commit (none when it is not a directory there).
fn entries_in(repo: &Repo, commit_id: &CommitId, commit: &Commit, path: &str) -> Result<Vec<Entry>> {
    match osdeploy_store::tree::lookup(repo, commit_id, commit, path) {
        Ok((_, EntryKind::Dir(tree))) => Ok(repo.tree(&tree)?.entries),
        Ok(_) | Err(StoreError::PathNotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// The regular files of directory `path` in a commit, by name.
fn files_in(repo: &Repo, commit_id: &CommitId, commit: &Commit, path: &str) -> Result<Vec<(String, FileId)>> {
    Ok(entries_in(repo, commit_id, commit, path)?
        .into_iter()
        .filter_map(|entry| match (String::from_utf8(entry.name), entry.kind) {
            (Ok(name), EntryKind::File { file, .. }) => Some((name, file)),
            _ => None,
        })
        .collect())
}

/// The names of the subdirectories of `path` in a commit.
fn dirs_in(repo: &Repo, commit_id: &CommitId, commit: &Commit, path: &str) -> Result<Vec<String>> {
    Ok(entries_in(repo, commit_id, commit, path)?
        .into_iter()
        .filter(|entry| matches!(entry.kind, EntryKind::Dir(_)))
        .filter_map(|entry| String::from_utf8(entry.name).ok())
        .collect())
}

/// Finds the newest kernel of a release (see the module documentation); `None` if it has none.
pub fn find(repo: &Repo, commit_id: &CommitId) -> Result<Option<ReleaseKernel>> {
    let commit = repo.commit_object(commit_id)?;
    let mut found: Vec<ReleaseKernel> = Vec::new();
    for version in dirs_in(repo, commit_id, &commit, "usr/lib/modules")? {
        let dir = format!("usr/lib/modules/{version}");
        let files = files_in(repo, commit_id, &commit, &dir)?;
        let file = |name: &str| files.iter().find(|(n, _)| n == name).map(|(n, id)| (format!("{dir}/{n}"), *id));
        if let Some((kernel, kernel_file)) = file("vmlinuz") {
            let initrd = file("initrd.img").or_else(|| file("initramfs.img"));
            found.push(ReleaseKernel {
                version,
                kernel,
                kernel_file,
                initrd_file: initrd.as_ref().map(|(_, id)| *id),
                initrd: initrd.map(|(path, _)| path),
            });
        }
    }
    let boot = files_in(repo, commit_id, &commit, "boot")?;
    let file = |name: &str| boot.iter().find(|(n, _)| n == name).map(|(n, id)| (format!("boot/{n}"), *id));
    for (name, kernel_file) in &boot {
        let Some(version) = name.strip_prefix("vmlinuz-").filter(|v| !v.is_empty()) else { continue };
        let initrd = file(&format!("initrd.img-{version}")).or_else(|| file(&format!("initramfs-{version}.img")));
        found.push(ReleaseKernel {
            version: version.to_owned(),
            kernel: format!("boot/{name}"),
            kernel_file: *kernel_file,
            initrd_file: initrd.as_ref().map(|(_, id)| *id),
            initrd: initrd.map(|(path, _)| path),
        });
    }
    Ok(found.into_iter().max_by(|a, b| verscmp(Some(&a.version), Some(&b.version))))
}

/// Where a slot's kernel goes, worked out before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelPlan {
    /// The kernel found in the release.
    #[serde(flatten)]
    pub release: ReleaseKernel,
    /// The directory it is copied to.
    pub install_dir: PathBuf,
    /// The kernel as the boot loader names it.
    pub linux: String,
    /// The initrd as the boot loader names it.
    pub initrd_path: Option<String>,
    /// The kernel command line of the entry (`kernel_cmdline`, then `osdeploy.slot=SLOT`).
    pub options: String,
}

/// The boot partition's directory for osdeploy's kernels, `BOOT/osdeploy`.
fn kernels_dir(sysroot: &Sysroot) -> PathBuf {
    sysroot.boot_dir().join("osdeploy")
}

/// How the boot loader spells `BOOT`'s root: empty when it is a filesystem of its own, `/boot`
/// when it is a directory of the sysroot's filesystem.
fn loader_prefix(sysroot: &Sysroot) -> Result<String> {
    let boot = sysroot.boot_dir();
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).at(p);
    Ok(if dev(&boot)? == dev(sysroot.root())? { "/boot".to_owned() } else { String::new() })
}

/// Works out where `switch` installs the kernel of `commit` for `slot`, for the backends that boot
/// kernels (GRUB, systemd-boot); `None` for the others. A release without a kernel, or a node
/// without `kernel_cmdline`, is an error for those backends.
pub fn plan(
    sysroot: &Sysroot,
    repo: &Repo,
    kind: BootloaderKind,
    slot: Slot,
    commit: &CommitId,
    kernel_cmdline: Option<&str>,
) -> Result<Option<KernelPlan>> {
    if !matches!(kind, BootloaderKind::Grub | BootloaderKind::SystemdBoot) {
        return Ok(None);
    }
    let release = find(repo, commit)?.ok_or_else(|| DeployError::NoKernel { commit: *commit, bootloader: kind })?;
    let cmdline = kernel_cmdline.ok_or(DeployError::NoKernelCmdline { bootloader: kind })?;
    let name = format!("{slot}-{}", &commit.to_string()[..12]);
    let prefix = loader_prefix(sysroot)?;
    let at = |file: &str| format!("{prefix}/osdeploy/{name}/{file}");
    let mut options: Vec<&str> = cmdline.split_whitespace().filter(|o| !o.starts_with("osdeploy.slot=")).collect();
    let slot_option = format!("osdeploy.slot={slot}");
    options.push(&slot_option);
    Ok(Some(KernelPlan {
        install_dir: kernels_dir(sysroot).join(&name),
        linux: at("vmlinuz"),
        initrd_path: release.initrd.as_ref().map(|_| at("initrd.img")),
        options: options.join(" "),
        release,
    }))
}

/// Copies the content of `file` from the repository to `to`, synced.
fn copy_content(repo: &Repo, file: &FileId, to: &Path) -> Result<()> {
    let expected = repo.file_object(file)?.size;
    let written = match repo.bare() {
        Some(bare) => {
            let from = bare.content_path(file);
            fs::copy(&from, to).map_err(|error| DeployError::Io {
                path: to.to_owned(),
                error: std::io::Error::new(error.kind(), format!("copying {}: {error}", from.display())),
            })?
        }
        None => {
            let content = repo.file_content(file)?;
            fs::write(to, &content).at(to)?;
            content.len() as u64
        }
    };
    if written != expected {
        return Err(DeployError::Unsafe {
            path: to.to_owned(),
            reason: format!("file {file} has {written} bytes in the repository, its object says {expected}"),
        });
    }
    fs::File::open(to).and_then(|f| f.sync_all()).at(to)
}

/// Removes `slot`'s kernel directories (installed or half-written) from the boot partition.
fn remove_slot_kernels(dir: &Path, slot: Slot) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(dir),
    };
    let (installed, partial) = (format!("{slot}-"), format!(".{slot}-new"));
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&installed) || name == partial {
            let path = entry.path();
            fs::remove_dir_all(&path).at(&path)?;
        }
    }
    Ok(())
}

/// Installs the kernel of a [`plan`] for `slot` and points the slot's entry at it. The slot must
/// not be bootable meanwhile (`switch` cancelled its trial and emptied it).
pub fn install(
    sysroot: &Sysroot,
    repo: &Repo,
    kind: BootloaderKind,
    slot: Slot,
    title: &str,
    plan: &KernelPlan,
) -> Result<()> {
    let dir = kernels_dir(sysroot);
    remove_slot_kernels(&dir, slot)?;
    let partial = dir.join(format!(".{slot}-new"));
    let copied = (|| {
        fs::create_dir_all(&partial).at(&partial)?;
        copy_content(repo, &plan.release.kernel_file, &partial.join("vmlinuz"))?;
        crash_point("switch:kernel-partial");
        if let Some(initrd) = &plan.release.initrd_file {
            copy_content(repo, initrd, &partial.join("initrd.img"))?;
        }
        osdeploy_store::fsutil::fsync_dir(&partial)?;
        fs::rename(&partial, &plan.install_dir).at(&plan.install_dir)
    })();
    if let Err(error) = copied {
        // A full boot partition keeps nothing of the attempt.
        let _ = fs::remove_dir_all(&partial);
        return Err(error);
    }
    // The directory itself first: on vfat, the renamed entry gets its first cluster from the directory's own
    // write-back (see `bootloader::sync_renamed`).
    osdeploy_store::fsutil::fsync_dir(&plan.install_dir)?;
    osdeploy_store::fsutil::fsync_dir(&dir)?;
    crash_point("switch:kernel-installed");
    let entry = BlsEntry {
        title: title.to_owned(),
        version: Some(plan.release.version.clone()),
        linux: plan.linux.clone(),
        initrd: plan.initrd_path.iter().cloned().collect(),
        options: plan.options.clone(),
    };
    match kind.backend(sysroot) {
        BackendConfig::SystemdBoot(root) => SystemdBoot::new(root).write_entry(slot, &entry)?,
        BackendConfig::Grub(env) => GrubEnv::new(env).write_menu_entry(slot, &entry)?,
        BackendConfig::File(_) | BackendConfig::UBoot { .. } => {}
    }
    Ok(())
}
