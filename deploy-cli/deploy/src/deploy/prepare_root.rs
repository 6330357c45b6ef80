//! `prepare-root`: at boot, from the initramfs, makes the slot named on the kernel command line
//! the root filesystem.
//!
//! The initramfs has mounted the sysroot's filesystem (the kernel's `root=`) at `ROOT` (`/root`
//! for initramfs-tools). `prepare-root` then, before the initramfs switches to `ROOT`:
//!
//! 1. reads `osdeploy.slot=a|b` and refuses a slot the state file records as empty or bad, or
//!    whose directory holds no `usr/` (the initramfs script then reboots, and the bootloader's own
//!    counting falls back);
//! 2. makes every mount private: a systemd initramfs shares them, and mount(2) moves no mount
//!    whose parent is shared (the booted system's systemd shares them again);
//! 3. moves the sysroot mount from `ROOT` to a scratch directory;
//! 4. bind-mounts the slot's directory on `ROOT`, then its `usr` on itself read-only;
//! 5. bind-mounts the sysroot's persistent `var/` and `home/` on the slot's;
//! 6. mounts the node's data partitions (`[[data_partition]]` in the slot's
//!    `/etc/osdeploy/config.toml`: a container-image store, user data) by label, UUID or path;
//!    one that cannot be mounted fails the boot unless its options say `nofail`;
//! 7. moves the sysroot mount to `ROOT/sysroot`, where `osdeploy` finds its repository and slots
//!    in the booted system.
//!
//! Nothing is written to the slot except missing mount points (`sysroot/`, `home/`, a data
//! partition's target), and nothing at all to `var/`, `home/` or the data partitions.
//! [`plan`] works all of this out first; `prepare-root --dry-run` prints it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, MountPropagationFlags};
use serde::Serialize;

use super::config::DataPartition;
use super::ops::slot_from_cmdline;
use super::{Config, DeployError, IoContext, Result, SlotState, State, Sysroot};
use crate::bootloader::Slot;

/// How long a data partition's device may take to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// One mount `prepare-root` makes, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Step {
    /// Makes the mount at `at` and every mount under it private.
    Private {
        /// The top of the tree of mounts.
        at: PathBuf,
    },
    /// Moves the mount at `from` to `to`.
    Move {
        /// The mount point moved.
        from: PathBuf,
        /// Its new place.
        to: PathBuf,
    },
    /// Bind-mounts `from` on `to`, read-only if `read_only`.
    Bind {
        /// The directory shown.
        from: PathBuf,
        /// Where.
        to: PathBuf,
        /// Read-only.
        read_only: bool,
    },
    /// Mounts a data partition.
    Partition {
        /// The device as configured (`LABEL=images`).
        source: String,
        /// Where.
        to: PathBuf,
        /// Its filesystem type.
        fstype: String,
        /// Its mount options.
        options: String,
    },
}

/// What `prepare-root` will do.
#[derive(Clone, Debug, Serialize)]
pub struct PrepareRootPlan {
    /// The slot booted.
    pub slot: Slot,
    /// Its state file record's state.
    pub state: SlotState,
    /// Its release version, if recorded.
    pub version: Option<String>,
    /// The mounts, in order.
    pub steps: Vec<Step>,
}

/// Where things are at boot.
#[derive(Clone, Debug)]
pub struct BootPaths {
    /// Where the initramfs mounted the sysroot and switches root to (`/root`).
    pub root: PathBuf,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// An empty directory to hold the sysroot mount meanwhile (`/run/osdeploy/sysroot`).
    pub scratch: PathBuf,
}

/// Works out what `prepare-root` will do; reads only.
pub fn plan(paths: &BootPaths) -> Result<PrepareRootPlan> {
    let slot = slot_from_cmdline(&paths.cmdline)?;
    let sysroot = Sysroot::new(&paths.root);
    let state = State::load(&sysroot)?;
    let record = state.slots.get(slot);
    let refuse = |what: String| DeployError::SlotUnusable {
        slot,
        state: record.state,
        reason: record.reason.as_ref().map_or_else(String::new, |r| format!(" ({r})")),
        what,
    };
    if matches!(record.state, SlotState::Empty | SlotState::Bad) {
        return Err(refuse("it cannot be the root filesystem; reboot to let the bootloader fall back".into()));
    }
    let slot_dir = sysroot.slot_dir(slot);
    if !std::fs::symlink_metadata(slot_dir.join("usr")).is_ok_and(|m| m.is_dir()) {
        return Err(refuse(format!(
            "{} holds no usr/ directory; it cannot be the root filesystem",
            slot_dir.display()
        )));
    }
    let config = Config::load(&slot_dir.join("etc/osdeploy"))?;
    let scratch = &paths.scratch;
    let root = &paths.root;
    let mut steps = vec![
        Step::Private { at: PathBuf::from("/") },
        Step::Move { from: root.clone(), to: scratch.clone() },
        Step::Bind { from: scratch.join("osdeploy/slots").join(slot.as_str()), to: root.clone(), read_only: false },
        Step::Bind { from: root.join("usr"), to: root.join("usr"), read_only: true },
    ];
    for dir in ["var", "home"] {
        steps.push(Step::Bind { from: scratch.join(dir), to: root.join(dir), read_only: false });
    }
    steps.extend(config.data_partitions.iter().map(|p: &DataPartition| Step::Partition {
        source: p.source.clone(),
        to: root.join(p.target.trim_start_matches('/')),
        fstype: p.fstype.clone(),
        options: p.options.clone(),
    }));
    steps.push(Step::Move { from: scratch.clone(), to: root.join("sysroot") });
    Ok(PrepareRootPlan { slot, state: record.state, version: record.version.clone(), steps })
}

/// Creates `dir` if it is missing (a mount point).
fn mount_point(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)
}

/// Resolves `LABEL=`, `UUID=`, `PARTLABEL=` and `PARTUUID=` through udev's /dev/disk links, or
/// with `blkid` where udev does not run; waits up to [`DEVICE_WAIT`] for the device to appear.
fn resolve_device(source: &str) -> Result<PathBuf> {
    if source.starts_with("/dev/") {
        return Ok(PathBuf::from(source));
    }
    let (tag, value) = source.split_once('=').unwrap_or((source, ""));
    let link = Path::new("/dev/disk").join(format!("by-{}", tag.to_ascii_lowercase())).join(value);
    let started = Instant::now();
    loop {
        if let Ok(device) = std::fs::canonicalize(&link) {
            return Ok(device);
        }
        let blkid = std::process::Command::new("blkid").args(["-l", "-o", "device", "-t", source]).output();
        if let Some(out) = blkid.ok().filter(|out| out.status.success()) {
            let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !device.is_empty() {
                return Ok(PathBuf::from(device));
            }
        }
        if started.elapsed() >= DEVICE_WAIT {
            return Err(DeployError::Io {
                path: link,
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no device {source} appeared within {} s (data_partition)", DEVICE_WAIT.as_secs()),
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Splits mount options into flags and the filesystem's own options.
fn mount_options(options: &str) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => flags |= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "rw" | "defaults" | "nofail" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Carries out one step.
fn run(step: &Step) -> Result<()> {
    let failed = |path: &Path, what: &str, error: rustix::io::Errno| DeployError::Io {
        path: path.to_owned(),
        error: std::io::Error::new(std::io::Error::from(error).kind(), format!("{what}: {error}")),
    };
    match step {
        Step::Private { at } => {
            rustix::mount::mount_change(at, MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
                .map_err(|e| failed(at, "making the mounts private", e))
        }
        Step::Move { from, to } => {
            mount_point(to)?;
            rustix::mount::mount_move(from, to)
                .map_err(|e| failed(to, &format!("moving the mount {}", from.display()), e))
        }
        Step::Bind { from, to, read_only } => {
            mount_point(to)?;
            rustix::mount::mount_bind(from, to)
                .map_err(|e| failed(to, &format!("bind-mounting {}", from.display()), e))?;
            if *read_only {
                rustix::mount::mount_remount(to, MountFlags::BIND | MountFlags::RDONLY, "")
                    .map_err(|e| failed(to, "making the bind mount read-only", e))?;
            }
            Ok(())
        }
        Step::Partition { source, to, fstype, options } => {
            let mounted = resolve_device(source).and_then(|device| {
                mount_point(to)?;
                let (flags, data) = mount_options(options);
                let data = std::ffi::CString::new(data).expect("options hold no NUL (TOML strings cannot)");
                rustix::mount::mount(&device, to, fstype.as_str(), flags, Some(data.as_c_str()))
                    .map_err(|e| failed(to, &format!("mounting {source} ({}, {fstype})", device.display()), e))
            });
            match mounted {
                // As in fstab: the system boots without a partition marked nofail.
                Err(error) if options.split(',').any(|o| o == "nofail") => {
                    eprintln!("osdeploy: data partition {source} not mounted (nofail): {error}");
                    Ok(())
                }
                other => other,
            }
        }
    }
}

/// `prepare-root`: carries out the [`plan`]. A failure leaves the mounts made so far, and the
/// initramfs reboots.
pub fn prepare_root(paths: &BootPaths) -> Result<PrepareRootPlan> {
    let plan = plan(paths)?;
    for step in &plan.steps {
        run(step)?;
    }
    Ok(plan)
}
