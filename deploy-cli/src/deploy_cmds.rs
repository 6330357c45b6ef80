//! The deployment commands: init-sysroot, switch, boot-check, mark-good, rollback, status, and pull on a sysroot.
//! The work is done by `osdeploy_deploy::deploy::ops`; this module prints.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use osdeploy_deploy::bootloader::Slot;
use osdeploy_deploy::deploy::health::Outcome;
use osdeploy_deploy::deploy::prepare_root::{self, BootPaths, Step};
use osdeploy_deploy::deploy::pull::{PullTarget, plan_sysroot_pull, pull_into_sysroot};
use osdeploy_deploy::deploy::state::SlotRecord;
use osdeploy_deploy::deploy::{Config, Sysroot, ops};
use osdeploy_store::checkout::CheckoutMethod;
use osdeploy_transport::client::Progress;
use osdeploy_transport::pull::PullOptions;

use crate::output::{self, print_json};
use crate::reports;
use crate::transfer_bar::TransferBar;

/// `pull` into a sysroot's repository: without arguments the followed branch; the first pull with arguments makes
/// the sysroot follow that branch.
pub fn pull(
    sysroot: &Sysroot,
    args: Option<(String, String)>,
    options: PullOptions,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let target = match args {
        Some((remote, branch)) => PullTarget::branch(sysroot, remote, branch.parse()?),
        None => PullTarget::followed(sysroot)?,
    };
    let context = || format!("pulling {} from {}", target.branch, target.remote);
    if dry_run {
        let scratch = std::env::temp_dir();
        let planned = plan_sysroot_pull(sysroot, &target, options, &scratch);
        let plan = osdeploy_transport::runtime()?.block_on(planned).with_context(context)?;
        if json {
            return print_json(&plan);
        }
        reports::print_plan(&plan);
        return Ok(());
    }
    let progress = Arc::new(Progress::default());
    let bar = TransferBar::start(progress.clone());
    let done = osdeploy_transport::runtime()?
        .block_on(pull_into_sysroot(sysroot, &target, options, progress))
        .with_context(context)?;
    drop(bar);
    if json {
        return print_json(&done);
    }
    reports::print_pull(&target.branch, &done.stats);
    if done.now_follows {
        eprintln!("sysroot {} now follows {}/{}", sysroot.root().display(), target.remote, target.branch);
    }
    Ok(())
}

/// `init-sysroot`.
pub fn init_sysroot(sysroot: &Sysroot, kind: osdeploy_deploy::deploy::BootloaderKind) -> Result<()> {
    let report = ops::init_sysroot(sysroot, kind)?;
    println!(
        "initialized sysroot {}: repository {}, slots a and b in {}, bootloader {} at {}",
        sysroot.root().display(),
        sysroot.repo().display(),
        sysroot.slots_dir().display(),
        kind.as_str(),
        report.bootloader_location.display()
    );
    for dir in &report.created_data_dirs {
        println!("created {} (shared by both slots; osdeploy never writes it again)", dir.display());
    }
    Ok(())
}

/// `switch` and `switch --dry-run`.
pub fn switch(
    sysroot: &Sysroot,
    config_dir: &Path,
    target: Option<&str>,
    verify: bool,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let mut config = Config::load(config_dir)?;
    config.verify_on_switch |= verify;
    if dry_run {
        let plan = ops::plan_switch(sysroot, target, &config)?;
        if json {
            return print_json(&plan);
        }
        reports::print_switch_plan(&plan);
        return Ok(());
    }
    let report = ops::switch(sysroot, target, &config)?;
    if json {
        return print_json(&report);
    }
    let s = &report.stats;
    let how = match (report.methods.as_slice(), report.same_filesystem) {
        ([CheckoutMethod::Reflink], _) => "reflinked (FICLONE, no data copied)".to_owned(),
        ([CheckoutMethod::Copy], false) => {
            "copied (the slots are not on the repository's filesystem, so extents cannot be shared)".to_owned()
        }
        ([CheckoutMethod::Copy], true) => "copied (this filesystem cannot share extents)".to_owned(),
        _ => format!("placed by {}", report.method),
    };
    println!(
        "deployed {}{} into slot {} in {:.2}s: {} files {how}, {} hardlinks, {} dirs, {} symlinks, {} special, {}",
        report.commit,
        report.version.as_ref().map_or_else(String::new, |v| format!(" (version {v})")),
        report.slot,
        report.seconds,
        s.files,
        s.hardlinks,
        s.dirs,
        s.symlinks,
        s.specials,
        output::size(s.bytes)
    );
    println!("checkout method: {}", report.method);
    if let Some(note) = &report.etc.note {
        println!("/etc: {note}");
    }
    if !report.etc.kept_local.is_empty() {
        println!("/etc: local changes kept: {}", report.etc.kept_local.join(", "));
    }
    for path in &report.etc.conflicts {
        println!("/etc conflict: {path} changed locally and in the new release; the local version was kept");
    }
    if !report.etc.not_carried.is_empty() {
        println!("/etc: local changes NOT carried over: {}", report.etc.not_carried.join(", "));
    }
    if let Some(kernel) = &report.kernel {
        println!("kernel {kernel} installed on the boot partition for slot {}", report.slot);
    }
    println!(
        "slot {} boots next, on trial for {} boots; after a successful boot run `osdeploy mark-good`",
        report.slot, report.tries
    );
    Ok(())
}

fn describe(record: &SlotRecord) -> String {
    let mut text = record.state.to_string();
    if let Some(commit) = &record.commit {
        text.push_str(&format!(", commit {commit}"));
    }
    if let Some(version) = &record.version {
        text.push_str(&format!(", version {version}"));
    }
    text
}

/// `prepare-root`.
pub fn prepare_root(paths: &BootPaths, dry_run: bool, json: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let plan = if dry_run { prepare_root::plan(paths)? } else { prepare_root::prepare_root(paths)? };
    if json {
        return print_json(&plan);
    }
    let version = plan.version.as_ref().map_or_else(String::new, |v| format!(", version {v}"));
    let done = if dry_run {
        "would make (dry run: nothing mounted)".to_owned()
    } else {
        format!("made in {} ms", started.elapsed().as_millis())
    };
    println!("slot {} ({}{version}) is the root filesystem; mounts {done}:", plan.slot, plan.state);
    for step in &plan.steps {
        match step {
            Step::Private { at } => println!("  make {} and the mounts under it private", at.display()),
            Step::Move { from, to } => println!("  move {} -> {}", from.display(), to.display()),
            Step::Bind { from, to, read_only } => {
                println!(
                    "  bind {} -> {}{}",
                    from.display(),
                    to.display(),
                    if *read_only { " (read-only)" } else { "" }
                )
            }
            Step::Partition { source, to, fstype, options } => {
                println!("  mount {source} ({fstype}{}) -> {}", format_options(options), to.display())
            }
        }
    }
    Ok(())
}

fn format_options(options: &str) -> String {
    if options.is_empty() { String::new() } else { format!(", {options}") }
}

/// `boot-check`.
pub fn boot_check(sysroot: &Sysroot, cmdline: Option<&Path>, json: bool) -> Result<()> {
    let report = ops::boot_check(sysroot, cmdline)?;
    if json {
        return print_json(&report);
    }
    if let Some(failed) = report.failed_trial {
        println!("the trial of slot {failed} failed: slot {failed} is marked bad");
    }
    let trial = match report.tries_left {
        Some(left) => format!(" (trial boot {}, {left} boots left)", report.slot.boot_attempts),
        None => String::new(),
    };
    println!("booted slot {}: {}{trial}", report.booted, describe(&report.slot));
    if report.simulated {
        println!("(the file bootloader backend: boot-check played the bootloader's part)");
    }
    Ok(())
}

/// `mark-good`.
pub fn mark_good(sysroot: &Sysroot, config_dir: &Path, json: bool) -> Result<()> {
    let config = Config::load(config_dir)?;
    let report = ops::mark_good(sysroot, config_dir, &config)?;
    if json {
        print_json(&report)?;
    } else {
        if report.checks.is_empty() {
            println!("no health checks in {}", config_dir.join("health.d").display());
        }
        for check in &report.checks {
            let outcome = match &check.outcome {
                Outcome::Passed => "passed".to_owned(),
                Outcome::Failed(status) => format!("failed ({status})"),
                Outcome::TimedOut => format!("timed out after {}s and was killed", config.health_check_timeout),
            };
            println!("health check {}: {outcome} in {:.1}s", check.name, check.seconds);
        }
    }
    if !report.marked {
        let failed: Vec<&str> = report.checks.iter().filter(|c| !c.passed()).map(|c| c.name.as_str()).collect();
        bail!("health checks failed ({}): slot {} was not marked good", failed.join(", "), report.slot);
    }
    if !json {
        println!("slot {} is good and the default", report.slot);
    }
    Ok(())
}

/// `rollback`.
pub fn rollback(sysroot: &Sysroot) -> Result<()> {
    let report = ops::rollback(sysroot)?;
    println!("slot {} boots next (rolled back from slot {})", report.to, report.from);
    if report.rejected_trial {
        println!("slot {} was on trial and is marked bad", report.from);
    }
    Ok(())
}

/// `status`.
pub fn status(sysroot: &Sysroot, json: bool) -> Result<()> {
    let status = ops::status(sysroot)?;
    if json {
        return print_json(&status);
    }
    let booted = status.booted.map_or_else(|| "unknown (no boot-check yet)".to_owned(), |s| s.to_string());
    println!("booted: {booted}   default: {}   next boot: {}", status.default, status.next_boot);
    println!("bootloader: {} ({})", status.bootloader.kind.as_str(), status.bootloader.location.display());
    match &status.follows {
        Some(f) => println!("follows: {f}"),
        None => println!("follows: nothing yet (the first `osdeploy pull REMOTE BRANCH` sets it)"),
    }
    for slot in Slot::ALL {
        let record = status.slots.get(slot);
        let mut line = format!("slot {slot}: {}", describe(record));
        if record.boot_attempts > 0 {
            line.push_str(&format!(", {} trial boots", record.boot_attempts));
        }
        if let Some(trial) = status.trial.filter(|t| t.slot == slot) {
            line.push_str(&format!(", {} boots left", trial.tries_left));
        }
        if let Some(reason) = &record.reason {
            line.push_str(&format!(" ({reason})"));
        }
        println!("{line}");
        if !record.etc_conflicts.is_empty() {
            println!("  /etc conflicts at its switch (local kept): {}", record.etc_conflicts.join(", "));
        }
    }
    if !status.history.is_empty() {
        println!("history:");
        for entry in &status.history {
            println!("  {}  {:<18} {}", output::date(entry.time), entry.event, entry.message);
        }
    }
    Ok(())
}
