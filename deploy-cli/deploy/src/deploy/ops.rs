//! The deployment commands: init-sysroot, switch, boot-check, mark-good, rollback, status, and the followed branch.
//!
//! Every command that changes something holds the sysroot lock ([`super::lock`]) for its whole run. The state file
//! and the bootloader are two files, written in an order that keeps every crash safe:
//!
//! - `switch` first disarms a pending trial of the standby slot, records the slot as empty, and only then empties it;
//!   the new commit is recorded as `trial` after checkout, merge and `syncfs`, and the bootloader is armed last. A
//!   crash at any point leaves the booted slot as the next boot and a rerun of `switch` redoes the work.
//! - `mark-good` and `rollback` change the bootloader first, then the state: the bootloader decides what boots.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use osdeploy_store::checkout::{CheckoutMethod, CheckoutOptions, CheckoutStats, checkout};
use osdeploy_store::chunker::ChunkerParams;
use osdeploy_store::fsutil::crash_point;
use osdeploy_store::object::ObjectKind;
use osdeploy_store::repo::{DEFAULT_COMPRESSION_LEVEL, RepoMode};
use osdeploy_store::{Access, CommitId, RefName, Repo, StoreError};
use rustix::fs::{FileType, Mode};
use serde::Serialize;

use super::etc::{self, MergeReport};
use super::health::{self, CheckResult};
use super::kernel::{self, KernelPlan};
use super::lock::SysrootLock;
use super::state::{BootloaderKind, Follows, HistoryEntry, SlotRecord, SlotState, Slots, State, now};
use super::{Config, DeployError, IoContext, Result, Sysroot};
use crate::bootloader::{BackendConfig, BlsEntry, Bootloader, GrubEnv, Slot, SystemdBoot, Trial};
use osdeploy_store::fsutil::{clear_dir, dev_of, open_dir, open_dir_beneath, type_at};

/// The ref that pins the commit deployed in `slot`, so that `prune` keeps it.
pub fn slot_ref(slot: Slot) -> RefName {
    RefName::reserved(&format!("slot-{slot}")).expect("a slot's pin is a valid ref name")
}

fn bootloader(sysroot: &Sysroot, kind: BootloaderKind) -> Result<Box<dyn Bootloader>> {
    Ok(kind.backend(sysroot).open()?)
}

/// What `init-sysroot` set up.
#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    /// The bootloader backend.
    pub bootloader: BootloaderKind,
    /// Where the backend keeps its configuration.
    pub bootloader_location: PathBuf,
    /// The user-data directories that were created (those that existed were left alone).
    pub created_data_dirs: Vec<PathBuf>,
}

/// `init-sysroot`: creates the layout in `sysroot` (an existing directory or mounted filesystem, or a new directory).
pub fn init_sysroot(sysroot: &Sysroot, kind: BootloaderKind) -> Result<InitReport> {
    let root = sysroot.root();
    std::fs::create_dir_all(root).at(root)?;
    if sysroot.state_path().exists() {
        return Err(DeployError::AlreadyInitialized { path: root.to_owned() });
    }
    std::fs::create_dir_all(sysroot.tmp_dir()).at(&sysroot.tmp_dir())?;
    let _lock = SysrootLock::acquire(sysroot)?;
    if sysroot.state_path().exists() {
        return Err(DeployError::AlreadyInitialized { path: root.to_owned() });
    }
    let repo = sysroot.repo();
    if !repo.join(osdeploy_store::layout::CONFIG).exists() {
        Repo::init(&repo, RepoMode::Bare, DEFAULT_COMPRESSION_LEVEL, ChunkerParams::default())?;
    }
    for slot in Slot::ALL {
        let dir = sysroot.slot_dir(slot);
        std::fs::create_dir_all(&dir).at(&dir)?;
    }
    let mut created_data_dirs = Vec::new();
    for dir in sysroot.data_dirs() {
        if std::fs::symlink_metadata(&dir).is_err() {
            std::fs::create_dir_all(&dir).at(&dir)?;
            created_data_dirs.push(dir);
        }
    }
    if kind == BootloaderKind::SystemdBoot {
        let sd = SystemdBoot::new(sysroot.boot_dir());
        for slot in Slot::ALL {
            let entry = BlsEntry {
                // Until a switch installs the slot's kernel and rewrites the entry.
                title: format!("osdeploy slot {slot} (nothing deployed)"),
                version: None,
                linux: format!("/osdeploy/{slot}-none/vmlinuz"),
                initrd: Vec::new(),
                options: "rw".to_owned(),
            };
            sd.write_entry(slot, &entry)?;
        }
        sd.install_loader_default()?;
    }
    if let BackendConfig::Grub(env) = kind.backend(sysroot) {
        GrubEnv::new(env).install_menu()?;
    }
    let bl = bootloader(sysroot, kind)?;
    bl.set_next(Slot::A)?;
    let mut state = State::new(kind);
    state.log("init", None, None, format!("sysroot created with the {} bootloader backend", bl.name()));
    state.save(sysroot)?;
    Ok(InitReport { bootloader: kind, bootloader_location: bl.location().to_owned(), created_data_dirs })
}

/// What happens to /etc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EtcPlan {
    /// Three-way merge: the booted release's defaults, the new release's, the booted slot's files.
    Merge {
        /// The booted release.
        base: CommitId,
    },
    /// The booted release is no longer in the repository: the new release's /etc is used as it is.
    BaseMissing {
        /// The booted release.
        base: CommitId,
    },
    /// Nothing is deployed in the booted slot: the new release's /etc is used as it is.
    NothingDeployed,
}

/// A validated switch: everything `switch` will do, worked out before anything is written.
/// `switch --dry-run` prints it; [`switch`] carries it out.
#[derive(Clone, Debug, Serialize)]
pub struct SwitchPlan {
    /// The slot that is booted (and stays untouched).
    pub booted: Slot,
    /// The standby slot the release is deployed into.
    pub slot: Slot,
    /// The commit deployed.
    pub commit: CommitId,
    /// Its release version.
    pub version: Option<String>,
    /// How content will be placed: reflink, or copy (a sysroot's repository is bare).
    pub method: CheckoutMethod,
    /// Whether the slot and the repository are on one filesystem (required for reflinks).
    pub same_filesystem: bool,
    /// What happens to /etc.
    pub etc: EtcPlan,
    /// The standby slot's pending trial is cancelled before the slot is emptied.
    pub cancel_trial: bool,
    /// The bootloader backend armed last.
    pub bootloader: BootloaderKind,
    /// Boots the trial gets.
    pub tries: u32,
    /// Content is re-hashed before it is deployed (`--verify`, `verify_on_switch`).
    pub verify: bool,
    /// The kernel installed for the slot (GRUB and systemd-boot).
    pub kernel: Option<KernelPlan>,
}

/// What `switch` did.
#[derive(Clone, Debug, Serialize)]
pub struct SwitchReport {
    /// The slot deployed into (the standby slot).
    pub slot: Slot,
    /// The slot that was booted.
    pub booted: Slot,
    /// The commit deployed.
    pub commit: CommitId,
    /// Its release version.
    pub version: Option<String>,
    /// How content was placed: `reflink`, `copy`, `decompress` or a mix joined by `+` (see the store's checkout).
    pub method: String,
    /// The same, as the methods used.
    #[serde(skip)]
    pub methods: Vec<CheckoutMethod>,
    /// Whether the slot and the repository are on one filesystem (required for reflinks).
    pub same_filesystem: bool,
    /// The checkout's counts.
    pub stats: CheckoutStats,
    /// The /etc merge.
    pub etc: MergeReport,
    /// Boots the trial gets.
    pub tries: u32,
    /// The version of the kernel installed for the slot (GRUB and systemd-boot).
    pub kernel: Option<String>,
    /// Seconds taken.
    pub seconds: f64,
}

/// Empties a slot's directory without following symlinks (creating it if missing).
fn empty_slot(sysroot: &Sysroot, slot: Slot) -> Result<()> {
    let slots = sysroot.slots_dir();
    let slots_fd = open_dir(&slots)?;
    let path = sysroot.slot_dir(slot);
    match type_at(slots_fd.as_fd(), slot.as_str().as_ref(), &path)? {
        None => rustix::fs::mkdirat(&slots_fd, slot.as_str(), Mode::from_raw_mode(0o755)).at(&path),
        Some((FileType::Directory, _)) => {
            let fd = open_dir_beneath(slots_fd.as_fd(), Path::new(slot.as_str()), &path)?;
            let dev = dev_of(fd.as_fd(), &path)?;
            Ok(clear_dir(fd.as_fd(), &path, dev)?)
        }
        Some(_) => Err(DeployError::Unsafe { path, reason: "is not a directory (a slot must be one)".into() }),
    }
}

/// Resolves what to switch to: `target`, or the followed branch.
fn resolve_target(repo: &Repo, state: &State, sysroot: &Sysroot, target: Option<&str>) -> Result<CommitId> {
    let not_in_repo = |spec: String| DeployError::CommitNotInRepo { spec, repo: repo.path().to_owned() };
    let Some(spec) = target else {
        let follows = state
            .follows
            .as_ref()
            .ok_or_else(|| DeployError::NothingFollowed { sysroot: sysroot.root().to_owned() })?;
        let name = follows.local_ref()?;
        return repo.read_ref(&name)?.ok_or_else(|| not_in_repo(name.to_string()));
    };
    match repo.resolve(spec) {
        Ok(id) => Ok(id),
        Err(StoreError::CommitNotFound { .. }) => Err(not_in_repo(spec.to_owned())),
        Err(e) => Err(e.into()),
    }
}

/// Filesystems whose files can share extents (FICLONE): btrfs, and xfs made with reflink=1 (the
/// default of mkfs.xfs since xfsprogs 5.1; an older xfs falls back to copying at checkout).
fn can_share_extents(path: &Path) -> Result<bool> {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    let fs = rustix::fs::statfs(path).at(path)?;
    Ok(matches!(fs.f_type as i64, BTRFS_SUPER_MAGIC | XFS_SUPER_MAGIC))
}

/// Works out a switch to `target` (or the followed branch's commit) without writing anything.
fn plan(
    sysroot: &Sysroot,
    state: &State,
    boot: &crate::bootloader::BootState,
    repo: &Repo,
    target: Option<&str>,
    config: &Config,
) -> Result<SwitchPlan> {
    let booted = state.booted.unwrap_or(boot.default);
    let slot = booted.other();
    if boot.default == slot {
        return Err(DeployError::StandbyIsDefault { slot });
    }
    let commit = resolve_target(repo, state, sysroot, target)?;
    let version = Some(repo.commit_object(&commit)?.version).filter(|v| !v.is_empty());
    let etc = match state.slots.get(booted).commit {
        Some(base) if repo.has(ObjectKind::Commit, &base.0)? => EtcPlan::Merge { base },
        Some(base) => EtcPlan::BaseMissing { base },
        None => EtcPlan::NothingDeployed,
    };
    // The slot directory may not exist yet: its parent is on the same filesystem.
    let slot_dir = sysroot.slot_dir(slot);
    let slot_place = if slot_dir.exists() { slot_dir } else { sysroot.slots_dir() };
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).at(p);
    let same_filesystem = dev(&sysroot.repo())? == dev(&slot_place)?;
    let method =
        if same_filesystem && can_share_extents(&slot_place)? { CheckoutMethod::Reflink } else { CheckoutMethod::Copy };
    let kernel = kernel::plan(sysroot, repo, state.bootloader, slot, &commit, config.kernel_cmdline.as_deref())?;
    Ok(SwitchPlan {
        booted,
        slot,
        commit,
        version,
        method,
        same_filesystem,
        etc,
        cancel_trial: boot.trial.is_some_and(|t| t.slot == slot),
        bootloader: state.bootloader,
        tries: config.boot_tries,
        verify: config.verify_on_switch,
        kernel,
    })
}

/// `switch --dry-run`: the plan of a switch, computed without writing anything (not even the lock).
pub fn plan_switch(sysroot: &Sysroot, target: Option<&str>, config: &Config) -> Result<SwitchPlan> {
    let state = State::load(sysroot)?;
    let boot = bootloader(sysroot, state.bootloader)?.state()?;
    let repo = Repo::open(&sysroot.repo(), Access::Read)?;
    plan(sysroot, &state, &boot, &repo, target, config)
}

/// `switch`: deploys `target` (or the followed branch's commit) into the standby slot and arms it for a trial boot.
pub fn switch(sysroot: &Sysroot, target: Option<&str>, config: &Config) -> Result<SwitchReport> {
    let started = Instant::now();
    let _lock = SysrootLock::acquire(sysroot)?;
    let mut state = State::load(sysroot)?;
    let bl = bootloader(sysroot, state.bootloader)?;
    let boot = bl.state()?;
    let repo = Repo::open(&sysroot.repo(), Access::Write)?;
    let plan = plan(sysroot, &state, &boot, &repo, target, config)?;
    let (slot, commit, version) = (plan.slot, plan.commit, plan.version.clone());

    // Nothing may boot the standby slot while it is rewritten.
    if plan.cancel_trial {
        bl.set_next(boot.default)?;
    }
    *state.slots.get_mut(slot) = SlotRecord::default();
    state.log(
        "switch-started",
        Some(slot),
        Some(commit),
        format!("emptying slot {slot} to deploy {commit}{}", version_suffix(&version)),
    );
    state.save(sysroot)?;
    let pin = slot_ref(slot);
    if repo.read_ref(&pin)?.is_some() {
        repo.delete_ref(&pin)?;
    }
    crash_point("switch:before-empty");
    let (stats, etc) = match deploy_into_slot(sysroot, &repo, &plan) {
        Ok(done) => done,
        Err(error) => {
            // The partial tree is of no use, and removing it gives a full disk the room to record the failure.
            let _ = empty_slot(sysroot, slot);
            let record = state.slots.get_mut(slot);
            record.state = SlotState::Bad;
            record.commit = Some(commit);
            record.version = version.clone();
            record.reason = Some(format!("switch failed: {error}"));
            state.log("switch-failed", Some(slot), Some(commit), format!("switch failed: {error}"));
            state.save(sysroot)?;
            return Err(error);
        }
    };
    repo.write_ref(&pin, &commit)?;
    *state.slots.get_mut(slot) = SlotRecord {
        state: SlotState::Trial,
        commit: Some(commit),
        version: version.clone(),
        boot_attempts: 0,
        deployed_at: Some(now()),
        etc_conflicts: etc.conflicts.clone(),
        reason: None,
    };
    state.log(
        "switch",
        Some(slot),
        Some(commit),
        format!(
            "deployed {commit}{} into slot {slot} ({}), {} /etc conflicts; armed for {} trial boots",
            version_suffix(&version),
            stats.method(),
            etc.conflicts.len(),
            plan.tries
        ),
    );
    state.save(sysroot)?;
    crash_point("switch:recorded");
    bl.arm_trial(slot, plan.tries)?;
    Ok(SwitchReport {
        slot,
        booted: plan.booted,
        commit,
        version,
        method: stats.method(),
        methods: stats.methods(),
        same_filesystem: plan.same_filesystem,
        stats,
        etc,
        tries: plan.tries,
        kernel: plan.kernel.map(|k| k.release.version),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The part of a switch that writes the slot: empty it, check the commit out, merge /etc, sync, and
/// install its kernel.
fn deploy_into_slot(sysroot: &Sysroot, repo: &Repo, plan: &SwitchPlan) -> Result<(CheckoutStats, MergeReport)> {
    let slot_dir = sysroot.slot_dir(plan.slot);
    empty_slot(sysroot, plan.slot)?;
    crash_point("switch:emptied");
    let options = CheckoutOptions { sync: false, verify: plan.verify, ..Default::default() };
    let stats = checkout(repo, &plan.commit, &slot_dir, options).map_err(|error| DeployError::CheckoutFailed {
        slot: plan.slot,
        commit: plan.commit.to_string(),
        error,
    })?;
    crash_point("switch:checked-out");
    let mut etc = match plan.etc {
        EtcPlan::Merge { base } => {
            etc::merge(repo, Some(&base), &plan.commit, &sysroot.slot_dir(plan.booted), &slot_dir)?
        }
        EtcPlan::BaseMissing { base } => MergeReport {
            note: Some(format!("the booted release {base} is no longer in the repository: /etc was not merged")),
            ..Default::default()
        },
        EtcPlan::NothingDeployed => etc::merge(repo, None, &plan.commit, &sysroot.slot_dir(plan.booted), &slot_dir)?,
    };
    etc.kept_local.sort();
    if plan.kernel.is_some() {
        // The mount points prepare-root uses when this slot boots, where the release lacks them (the root may be
        // mounted read-only then).
        for dir in ["sysroot", "var", "home"] {
            let path = slot_dir.join(dir);
            match std::fs::create_dir(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e).at(&path),
                _ => {}
            }
        }
    }
    crash_point("switch:merged");
    osdeploy_store::fsutil::syncfs(&slot_dir)?;
    if let Some(kernel) = &plan.kernel {
        let release = plan.version.clone().unwrap_or_else(|| plan.commit.to_string()[..12].to_owned());
        let title = format!("osdeploy {release} (slot {})", plan.slot);
        kernel::install(sysroot, repo, plan.bootloader, plan.slot, &title, kernel)?;
    }
    Ok((stats, etc))
}

fn version_suffix(version: &Option<String>) -> String {
    version.as_ref().map_or_else(String::new, |v| format!(" (version {v})"))
}

/// What `boot-check` found.
#[derive(Clone, Debug, Serialize)]
pub struct BootCheckReport {
    /// The slot that booted.
    pub booted: Slot,
    /// Its record after the check.
    pub slot: SlotRecord,
    /// Boots its trial has left, when it is on trial.
    pub tries_left: Option<u32>,
    /// The other slot, when its trial was found failed at this boot (and it was marked bad).
    pub failed_trial: Option<Slot>,
    /// Whether boot-check played the bootloader (the file backend).
    pub simulated: bool,
}

/// Reads `osdeploy.slot=a|b` from a kernel command line file (the last one counts, as for the kernel).
pub fn slot_from_cmdline(path: &Path) -> Result<Slot> {
    let text = std::fs::read_to_string(path).at(path)?;
    let value = text.split_whitespace().filter_map(|arg| arg.strip_prefix("osdeploy.slot=")).next_back();
    let bad = |reason: String| DeployError::Cmdline { path: path.to_owned(), reason };
    match value {
        None => Err(bad("no osdeploy.slot= parameter: this boot was not started by an osdeploy boot entry".into())),
        Some(v) => v.parse().map_err(|e| bad(format!("osdeploy.slot: {e}"))),
    }
}

/// `boot-check`: records which slot booted (played by the file backend, read from the kernel command line
/// otherwise), counts a trial's attempt, and marks a trial that the bootloader gave up on as bad.
pub fn boot_check(sysroot: &Sysroot, cmdline: Option<&Path>) -> Result<BootCheckReport> {
    let _lock = SysrootLock::acquire(sysroot)?;
    let mut state = State::load(sysroot)?;
    let bl = bootloader(sysroot, state.bootloader)?;
    let simulated = state.bootloader == BootloaderKind::File;
    let booted = match (simulated, cmdline) {
        (true, Some(path)) => {
            return Err(DeployError::Cmdline {
                path: path.to_owned(),
                reason: "--cmdline does not apply to the file bootloader backend, which picks the slot itself".into(),
            });
        }
        (true, None) => bl.boot()?,
        (false, path) => slot_from_cmdline(path.unwrap_or(Path::new("/proc/cmdline")))?,
    };
    let boot = bl.state()?;
    state.booted = Some(booted);
    state.boot_count += 1;
    let other = booted.other();
    let mut failed_trial = None;
    if state.slots.get(other).state == SlotState::Trial && !boot.trial.is_some_and(|t| t.slot == other && t.pending()) {
        let reason = if boot.trial.is_some_and(|t| t.slot == other) {
            format!("its trial used up its boots without mark-good; the bootloader went back to slot {booted}")
        } else {
            "its trial was cancelled before it was marked good".to_owned()
        };
        let record = state.slots.get_mut(other);
        record.state = SlotState::Bad;
        record.reason = Some(reason.clone());
        let commit = record.commit;
        state.log("trial-failed", Some(other), commit, format!("slot {other} is bad: {reason}"));
        failed_trial = Some(other);
    }
    let record = state.slots.get_mut(booted);
    let tries_left =
        (record.state == SlotState::Trial).then(|| boot.trial.filter(|t| t.slot == booted).map_or(0, |t| t.tries_left));
    if record.state == SlotState::Trial {
        record.boot_attempts += 1;
    }
    let record = record.clone();
    state.log(
        "boot",
        Some(booted),
        record.commit,
        format!("booted slot {booted} ({}, attempt {})", record.state, record.boot_attempts),
    );
    state.save(sysroot)?;
    Ok(BootCheckReport { booted, slot: record, tries_left, failed_trial, simulated })
}

/// What `mark-good` did.
#[derive(Clone, Debug, Serialize)]
pub struct MarkGoodReport {
    /// The booted slot.
    pub slot: Slot,
    /// Every health check's result.
    pub checks: Vec<CheckResult>,
    /// Whether the slot was made the default (all checks passed).
    pub marked: bool,
}

/// `mark-good`: runs the health checks of `CONFIG_DIR/health.d/`; if all pass, the booted slot becomes good and the
/// bootloader's default.
pub fn mark_good(sysroot: &Sysroot, config_dir: &Path, config: &Config) -> Result<MarkGoodReport> {
    let _lock = SysrootLock::acquire(sysroot)?;
    let mut state = State::load(sysroot)?;
    let booted = state.booted.ok_or_else(|| DeployError::NotBooted { sysroot: sysroot.root().to_owned() })?;
    let record = state.slots.get(booted).clone();
    if record.state == SlotState::Empty {
        return Err(unusable(booted, &record, "there is nothing to mark good"));
    }
    let env = [
        ("OSDEPLOY_SYSROOT", sysroot.root().display().to_string()),
        ("OSDEPLOY_SLOT", booted.to_string()),
        ("OSDEPLOY_COMMIT", record.commit.map(|c| c.to_string()).unwrap_or_default()),
        ("OSDEPLOY_VERSION", record.version.clone().unwrap_or_default()),
    ];
    let checks = health::run_checks(&config_dir.join("health.d"), config.health_timeout(), &env)?;
    let failed: Vec<&str> = checks.iter().filter(|c| !c.passed()).map(|c| c.name.as_str()).collect();
    let marked = failed.is_empty();
    if marked {
        bootloader(sysroot, state.bootloader)?.mark_good(booted)?;
        let record = state.slots.get_mut(booted);
        record.state = SlotState::Good;
        record.reason = None;
        let commit = record.commit;
        state.log(
            "mark-good",
            Some(booted),
            commit,
            format!("slot {booted} is good and the default ({} health checks passed)", checks.len()),
        );
    } else {
        state.log(
            "mark-good-refused",
            Some(booted),
            record.commit,
            format!("health checks failed: {}", failed.join(", ")),
        );
    }
    state.save(sysroot)?;
    Ok(MarkGoodReport { slot: booted, checks, marked })
}

fn unusable(slot: Slot, record: &SlotRecord, what: &str) -> DeployError {
    DeployError::SlotUnusable {
        slot,
        state: record.state,
        reason: record.reason.as_ref().map_or_else(String::new, |r| format!(" ({r})")),
        what: what.to_owned(),
    }
}

/// What `rollback` did.
#[derive(Clone, Debug, Serialize)]
pub struct RollbackReport {
    /// The booted slot.
    pub from: Slot,
    /// The slot that boots next.
    pub to: Slot,
    /// Whether the booted slot was on trial and is now marked bad.
    pub rejected_trial: bool,
}

/// `rollback`: the other slot boots from the next boot on; a booted slot on trial is marked bad.
pub fn rollback(sysroot: &Sysroot) -> Result<RollbackReport> {
    let _lock = SysrootLock::acquire(sysroot)?;
    let mut state = State::load(sysroot)?;
    let booted = state.booted.ok_or_else(|| DeployError::NotBooted { sysroot: sysroot.root().to_owned() })?;
    let to = booted.other();
    let target = state.slots.get(to).clone();
    if matches!(target.state, SlotState::Empty | SlotState::Bad) {
        return Err(unusable(to, &target, "refusing to roll back to it"));
    }
    bootloader(sysroot, state.bootloader)?.set_next(to)?;
    let from = state.slots.get_mut(booted);
    let rejected_trial = from.state == SlotState::Trial;
    if rejected_trial {
        from.state = SlotState::Bad;
        from.reason = Some("rolled back while on trial".into());
    }
    state.log("rollback", Some(to), target.commit, format!("slot {to} boots next (rolled back from {booted})"));
    state.save(sysroot)?;
    Ok(RollbackReport { from: booted, to, rejected_trial })
}

/// The bootloader part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct BootloaderStatus {
    /// The backend.
    pub kind: BootloaderKind,
    /// Where it keeps its configuration.
    pub location: PathBuf,
}

/// `status`: everything about the sysroot's deployments (schema in docs/deployments.md).
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The slot `boot-check` last recorded as booted.
    pub booted: Option<Slot>,
    /// The bootloader's default (known-good) slot.
    pub default: Slot,
    /// The slot the next boot starts.
    pub next_boot: Slot,
    /// The armed or used-up trial, if any.
    pub trial: Option<Trial>,
    /// The branch the sysroot follows.
    pub follows: Option<Follows>,
    /// The bootloader backend.
    pub bootloader: BootloaderStatus,
    /// Both slots.
    pub slots: Slots,
    /// The newest history entries (at most 20), oldest first.
    pub history: Vec<HistoryEntry>,
}

/// Reads the status (no lock: the state and bootloader files are replaced atomically).
pub fn status(sysroot: &Sysroot) -> Result<Status> {
    let state = State::load(sysroot)?;
    let bl = bootloader(sysroot, state.bootloader)?;
    let boot = bl.state()?;
    let skip = state.history.len().saturating_sub(20);
    Ok(Status {
        booted: state.booted,
        default: boot.default,
        next_boot: boot.next,
        trial: boot.trial,
        follows: state.follows.clone(),
        bootloader: BootloaderStatus { kind: state.bootloader, location: bl.location().to_owned() },
        slots: state.slots.clone(),
        history: state.history[skip..].to_vec(),
    })
}

/// The branch the sysroot follows.
pub fn followed(sysroot: &Sysroot) -> Result<Follows> {
    State::load(sysroot)?.follows.ok_or_else(|| DeployError::NothingFollowed { sysroot: sysroot.root().to_owned() })
}

/// Records `remote`/`branch` as followed unless the sysroot already follows a branch; returns whether it did.
pub fn follow_if_unset(sysroot: &Sysroot, remote: &str, branch: &RefName) -> Result<bool> {
    let _lock = SysrootLock::acquire(sysroot)?;
    let mut state = State::load(sysroot)?;
    if state.follows.is_some() {
        return Ok(false);
    }
    let follows = Follows { remote: remote.to_owned(), branch: branch.clone() };
    state.log("follow", None, None, format!("following {follows}"));
    state.follows = Some(follows);
    state.save(sysroot)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline");
        for (text, expected) in [
            ("root=/dev/sda1 osdeploy.slot=b quiet\n", Ok(Slot::B)),
            ("osdeploy.slot=a osdeploy.slot=b", Ok(Slot::B)),
            ("root=/dev/sda1 quiet", Err("no osdeploy.slot=")),
            ("osdeploy.slot=c", Err("invalid slot")),
        ] {
            std::fs::write(&path, text).unwrap();
            match (slot_from_cmdline(&path), expected) {
                (Ok(slot), Ok(want)) => assert_eq!(slot, want),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e}"),
                (got, want) => panic!("{text}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn init_switch_errors_without_a_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let sysroot = Sysroot::new(dir.path().join("root"));
        let report = init_sysroot(&sysroot, BootloaderKind::File).unwrap();
        assert_eq!(report.created_data_dirs.len(), 3);
        assert!(matches!(init_sysroot(&sysroot, BootloaderKind::File), Err(DeployError::AlreadyInitialized { .. })));
        let err = switch(&sysroot, None, &Config::default()).unwrap_err();
        assert!(matches!(err, DeployError::NothingFollowed { .. }), "{err}");
        let err = switch(&sysroot, Some("0123456789abcdef"), &Config::default()).unwrap_err();
        assert!(matches!(err, DeployError::CommitNotInRepo { .. }), "{err}");
        assert!(matches!(mark_good(&sysroot, dir.path(), &Config::default()), Err(DeployError::NotBooted { .. })));
        let status = status(&sysroot).unwrap();
        assert_eq!((status.default, status.next_boot, status.booted), (Slot::A, Slot::A, None));
        assert!(follow_if_unset(&sysroot, "origin", &"stable".parse().unwrap()).unwrap());
        assert!(!follow_if_unset(&sysroot, "other", &"x".parse().unwrap()).unwrap());
        assert_eq!(followed(&sysroot).unwrap().local_ref().unwrap().as_str(), "origin/stable");
    }
}
